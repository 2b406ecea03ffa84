"""npy -> PNG splits + HDF5 store: exact pixels, disjoint deterministic splits, atomic output."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import one_line_error, small_tmpfs
from click.testing import CliRunner
from conftest import CLASSES, PER_CLASS
from PIL import Image

from qdkit.cli import main
from qdkit.data.bitmaps import find_bitmap_files, open_bitmaps
from qdkit.data.convert import convert, split_indices
from qdkit.data.store import SPLITS, open_store
from qdkit.errors import QdkitError


def test_store_holds_exactly_the_source_rows(raw_dir, store_path):
    store = open_store(store_path)
    files = find_bitmap_files(raw_dir)
    assert store.class_names == [f.class_name for f in files]
    assert store.memory_mappable
    assert store.counts == {s: PER_CLASS[s] * CLASSES for s in SPLITS}
    seen = {label: set() for label in range(CLASSES)}
    for split in SPLITS:
        arrays = store.split(split)
        assert isinstance(arrays.images, np.memmap)
        for label, bf in enumerate(files):
            rows = arrays.source_index[arrays.labels == label]
            assert len(rows) == PER_CLASS[split]
            source = open_bitmaps(bf.path)
            np.testing.assert_array_equal(arrays.images[arrays.labels == label].reshape(-1, 784), source[rows])
            assert not seen[label] & set(rows.tolist()), "splits overlap"
            seen[label] |= set(rows.tolist())
    assert {s["file"] for s in store.attrs["sources"]} == {f.path.name for f in files}
    assert all(len(s["sha256"]) == 64 for s in store.attrs["sources"])
    assert store.attrs["seed"] == 0 and store.attrs["format_version"] == 1


def test_png_pixels_are_the_inverted_source(raw_dir, store_path, png_dir):
    arrays = open_store(store_path).split("validation")
    names = open_store(store_path).class_names
    pngs = sorted((png_dir / "validation").rglob("*.png"))
    assert len(pngs) == len(arrays)
    for i in range(0, len(arrays), 17):
        path = png_dir / "validation" / names[arrays.labels[i]] / f"{arrays.source_index[i]}.png"
        image = Image.open(path)
        assert image.mode == "L" and image.size == (28, 28)
        np.testing.assert_array_equal(255 - np.asarray(image), arrays.images[i])


def test_splits_are_deterministic_and_independent_of_other_classes():
    a = split_indices(1000, PER_CLASS, seed=3, class_name="cat")
    b = split_indices(1000, PER_CLASS, seed=3, class_name="cat")
    c = split_indices(1000, PER_CLASS, seed=4, class_name="cat")
    for s in SPLITS:
        np.testing.assert_array_equal(a[s], b[s])
    assert not all(np.array_equal(a[s], c[s]) for s in SPLITS)
    assert len(np.unique(np.concatenate(list(a.values())))) == sum(PER_CLASS.values())


def test_same_seed_gives_identical_store(raw_dir, store_path, tmp_path):
    convert(raw_dir, tmp_path, h5=True, png=False, per_class=PER_CLASS, seed=0, progress=False)
    a, b = open_store(store_path), open_store(tmp_path / "quickdraw.h5")
    for s in SPLITS:
        np.testing.assert_array_equal(a.split(s).images, b.split(s).images)
        np.testing.assert_array_equal(a.split(s).source_index, b.split(s).source_index)
    assert not (tmp_path / "png").exists()


def test_class_subset_keeps_each_class_split(raw_dir, store_path, tmp_path):
    full = open_store(store_path)
    name = full.class_names[2]
    convert(raw_dir, tmp_path, h5=True, png=False, per_class=PER_CLASS, classes=[name], seed=0, progress=False)
    sub = open_store(tmp_path / "quickdraw.h5")
    assert sub.class_names == [name]
    np.testing.assert_array_equal(
        sub.split("test").source_index, full.split("test").source_index[full.split("test").labels == 2]
    )


def test_existing_output_needs_overwrite(raw_dir, tmp_path):
    args = [
        "convert",
        "--in",
        str(raw_dir),
        "--out",
        str(tmp_path),
        "--h5",
        "--train",
        "20",
        "--validation",
        "5",
        "--test",
        "5",
    ]
    runner = CliRunner()
    assert runner.invoke(main, args).exit_code == 0
    stamp = (tmp_path / "quickdraw.h5").stat().st_mtime_ns
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "--overwrite" in again.stderr and "Traceback" not in again.output
    assert (tmp_path / "quickdraw.h5").stat().st_mtime_ns == stamp
    assert runner.invoke(main, args + ["--overwrite", "--seed", "1"]).exit_code == 0
    assert open_store(tmp_path / "quickdraw.h5").attrs["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["png", "quickdraw.h5"]


def test_failure_midway_leaves_nothing_that_looks_complete(raw_dir, tmp_path, monkeypatch):
    import qdkit.images as images

    calls = {"n": 0}
    real = images.write_png

    def flaky(drawing, path):  # forked PNG workers inherit this patch
        calls["n"] += 1
        if calls["n"] > 30:
            raise OSError("disk full")
        real(drawing, path)

    monkeypatch.setattr(images, "write_png", flaky)
    with pytest.raises(OSError, match="disk full"):
        convert(raw_dir, tmp_path, h5=True, png=True, per_class=PER_CLASS, seed=0, workers=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_output_folder_that_is_a_file(raw_dir, tmp_path):
    target = tmp_path / "out"
    target.write_text("not a folder")
    result = CliRunner().invoke(
        main,
        [
            "convert",
            "--in",
            str(raw_dir),
            "--out",
            str(target),
            "--h5",
            "--train",
            "20",
            "--validation",
            "5",
            "--test",
            "5",
        ],
    )
    assert result.exit_code == 2 and str(target) in result.stderr and "Traceback" not in result.output
    assert target.read_text() == "not a folder"


def test_nothing_to_do_is_an_error(raw_dir, tmp_path):
    with pytest.raises(QdkitError):
        convert(raw_dir, tmp_path, h5=False, png=False)


# --- issue 10: faults and hostile use of convert --------------------------------------------------


def _cli(args: list[str]):
    return CliRunner().invoke(main, ["convert", *args])


def _small(raw_dir, out) -> list[str]:
    return ["--in", str(raw_dir), "--out", str(out), "--train", "20", "--validation", "5", "--test", "5"]


@pytest.mark.parametrize("what, flags", [("quickdraw.h5", ["--no-png", "--h5"]), ("png", ["--png"])])
def test_disk_full_is_one_line_and_leaves_nothing(raw_dir, tmp_path, what, flags):
    """Issue 10 group 6, on a real 1 MiB tmpfs (the 4 x 300 drawings need ~1 MiB in either form)."""

    with small_tmpfs(tmp_path / "disk", "600k") as disk:
        out = disk / "out"
        result = _cli(
            [
                "--in",
                str(raw_dir),
                "--out",
                str(out),
                *flags,
                "--train",
                "200",
                "--validation",
                "50",
                "--test",
                "50",
                "--workers",
                "2",
            ]
        )
        line = one_line_error(result)
        assert line == f"qdkit: error: no space left on device while writing {out / what}"
        assert list(disk.iterdir()) == [], "temporaries and the empty output folder removed"


def test_disk_full_in_the_store_writer_by_a_failing_write(raw_dir, tmp_path, monkeypatch):
    """The same without root: HDF5 reports ENOSPC as text in a RuntimeError; that is recognised too."""
    import qdkit.data.store as store

    def full(self, *args):
        raise RuntimeError(
            "Can't write data (file write failed: errno = 28, error message = 'No space left on device')"
        )

    monkeypatch.setattr(store.StoreWriter, "append", full)
    with pytest.raises(QdkitError, match=r"^no space left on device while writing .*quickdraw\.h5$"):
        convert(raw_dir, tmp_path / "out", h5=True, png=False, per_class=PER_CLASS, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("classes", [",", " ", " , ,"])
def test_empty_class_list_is_one_line_and_writes_nothing(raw_dir, tmp_path, classes):
    """Issue 10 group 10: no traceback, no 0-class store; with --no-png no "converted 0 classes", exit 0."""

    for flags in (["--h5"], ["--no-png", "--h5"]):
        line = one_line_error(_cli([*_small(raw_dir, tmp_path / "out"), "--classes", classes, *flags]))
        assert "--classes names no class" in line
        assert not (tmp_path / "out").exists()


def test_overwrite_when_png_is_a_file_or_the_store_a_folder(raw_dir, tmp_path):
    """Issue 10 group 16: a file where png/ goes (or a folder where the store goes) is one line, untouched."""

    out = tmp_path / "out"
    out.mkdir()
    (out / "png").write_text("mine")
    line = one_line_error(_cli([*_small(raw_dir, out), "--overwrite"]))
    assert f"{out / 'png'}: is a file" in line and (out / "png").read_text() == "mine"
    (out / "png").unlink()
    (out / "quickdraw.h5").mkdir()
    (out / "quickdraw.h5" / "keep.txt").write_text("mine")
    line = one_line_error(_cli([*_small(raw_dir, out), "--overwrite", "--h5", "--no-png"]))
    assert f"{out / 'quickdraw.h5'}: is a folder" in line and (out / "quickdraw.h5" / "keep.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["quickdraw.h5"], "no temporaries left"


def test_old_png_folder_that_cannot_be_removed(raw_dir, tmp_path, monkeypatch):
    """Issue 10 group 16: non-zero, and nothing hidden left behind (what is left is named and visible)."""
    import shutil

    import qdkit.files as files

    out = tmp_path / "out"
    assert _cli(_small(raw_dir, out)).exit_code == 0
    real = shutil.rmtree

    def stubborn(path, ignore_errors=False, onerror=None, **kw):
        if onerror is not None and ".png.old-" in str(path):
            return onerror(None, str(path), (PermissionError, PermissionError(13, "Permission denied"), None))
        return real(path, ignore_errors=ignore_errors, onerror=onerror, **kw)

    monkeypatch.setattr(files.shutil, "rmtree", stubborn)
    line = one_line_error(_cli([*_small(raw_dir, out), "--overwrite", "--seed", "3"]))
    assert "the old folder could not be removed" in line and str(out / "png.old") in line
    assert sorted(p.name for p in out.iterdir()) == ["png", "png.old"], "nothing hidden"


def test_old_png_folder_not_writable_is_refused_before_any_work(raw_dir, tmp_path, monkeypatch):
    import qdkit.files as files

    out = tmp_path / "out"
    assert _cli(_small(raw_dir, out)).exit_code == 0
    locked = out / "png" / "test"
    real = files.os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: False if str(p) == str(locked) else real(p, mode))
    line = one_line_error(_cli([*_small(raw_dir, out), "--overwrite"]))
    assert f"{locked} cannot be removed (not writable); nothing was written" in line
    assert sorted(p.name for p in out.iterdir()) == ["png"]


def test_a_second_convert_into_the_same_folder_is_refused(raw_dir, tmp_path):
    """Issue 10 group 9: while one convert holds OUT, another fails at once (one line) instead of racing it."""
    from qdkit.files import output_lock

    out = tmp_path / "out"
    with output_lock(out, ["png", "quickdraw.h5"]):
        line = one_line_error(_cli([*_small(raw_dir, out), "--h5", "--overwrite"]))
    assert "another qdkit convert is writing into this folder" in line
    assert list(out.iterdir()) == []


def test_two_real_converts_at_once_never_both_succeed(raw_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "qdkit", "convert", *_small(raw_dir, out), "--h5", "--workers", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another qdkit convert is writing" in loser or "already exists" in loser, loser
    assert sorted(p.name for p in out.iterdir()) == ["png", "quickdraw.h5"]
    open_store(out / "quickdraw.h5")


def test_temporaries_of_a_killed_run_are_cleared_and_a_live_ones_refused(raw_dir, tmp_path):
    import os
    import subprocess

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / f".quickdraw.h5.tmp-{dead.pid}").write_bytes(b"half a store")
    (out / f".png.tmp-{dead.pid}").mkdir()
    assert _cli([*_small(raw_dir, out), "--h5"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["png", "quickdraw.h5"]

    live = subprocess.Popen(["sleep", "30"])
    try:
        (out / f".quickdraw.h5.tmp-{live.pid}").write_bytes(b"another run, still writing")
        line = one_line_error(_cli([*_small(raw_dir, out), "--h5", "--overwrite"]))
        assert f"a temporary of a run still in progress (PID {live.pid})" in line
    finally:
        live.kill()
        live.wait()
    assert os.path.exists(out / f".quickdraw.h5.tmp-{live.pid}"), "another run's file is not ours to delete"


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory):
    """Enough drawings that PNG writing takes seconds: time to find and kill the workers mid-run."""
    from qdkit.data.bitmaps import save_bitmaps

    raw = tmp_path_factory.mktemp("bigraw")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        save_bitmaps(raw / f"{name}.npy", rng.integers(0, 256, (30000, 784), dtype=np.uint8))
    return raw


def _start_busy_convert(big_raw, out):
    import subprocess
    import sys
    import time

    from _helpers import children_of

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qdkit",
            "convert",
            "--in",
            str(big_raw),
            "--out",
            str(out),
            "--train",
            "29000",
            "--validation",
            "0",
            "--test",
            "0",
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = children_of(proc.pid)
        if len(workers) >= 2 and any(out.glob(".png.tmp-*/train/*/*.png")):
            return proc, workers
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the pool workers never started")


def _gone(pids, seconds=10.0) -> list[int]:
    import time

    from _helpers import alive

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def test_kill_9_of_convert_takes_its_workers_with_it(big_raw, tmp_path):
    """Issue 10 group 7: no pool worker outlives a SIGKILLed convert (they used to live on with PPID 1)."""
    import signal

    proc, workers = _start_busy_convert(big_raw, tmp_path / "out")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert _gone(workers) == [], "orphaned pool workers"
    # What a SIGKILL cannot clean up (its temporaries) the next run clears, under the output lock.
    assert any((tmp_path / "out").glob(".png.tmp-*"))
    small = ["--train", "5", "--validation", "0", "--test", "0"]
    assert _cli(["--in", str(big_raw), "--out", str(tmp_path / "out"), *small]).exit_code == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["png"]


def test_sigterm_is_handled_like_ctrl_c(big_raw, tmp_path):
    """Issue 10 group 7: SIGTERM stops cleanly: workers gone, temporaries and the new folder removed."""
    import signal

    proc, workers = _start_busy_convert(big_raw, tmp_path / "out")
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    err = proc.stderr.read()
    proc.stderr.close()
    assert code != 0 and "Traceback" not in err, err
    assert _gone(workers) == []
    assert not (tmp_path / "out").exists(), "a killed run leaves nothing behind"
