"""qdkit.data.synth: procedural Quick-Draw-format doodles."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import one_line_error, small_tmpfs
from click.testing import CliRunner

from qdkit.cli import main
from qdkit.data.bitmaps import PIXELS, SIDE, bitmap_filename, find_bitmap_files, open_bitmaps
from qdkit.data.synth import CLASS_NAMES, class_rng, render_class, write_synth
from qdkit.errors import QdkitError


@pytest.fixture(scope="module")
def drawings() -> dict[str, np.ndarray]:
    """60 drawings of every class, rendered once for the whole module."""
    return {name: render_class(name, 60, class_rng(0, i)) for i, name in enumerate(CLASS_NAMES)}


def _read_all(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}


def test_ten_distinct_class_names():
    assert len(CLASS_NAMES) == 10 and len(set(CLASS_NAMES)) == 10


def test_render_shape_dtype_and_ink_range(drawings):
    for name, d in drawings.items():
        assert d.shape == (60, PIXELS) and d.dtype == np.uint8, name
        assert (d.max(axis=1) == 255).all(), f"{name}: every drawing has full-ink pixels"
        assert (d.min(axis=1) == 0).all(), f"{name}: every drawing has background"
        ink = (d > 0).mean()
        assert 0.05 < ink < 0.5, f"{name}: ink covers {ink:.0%} of the frame"


def test_drawings_are_framed_and_antialiased_like_quick_draw(drawings):
    for name, d in drawings.items():
        ink = d.reshape(-1, SIDE, SIDE) > 0
        rows, cols = ink.any(axis=2), ink.any(axis=1)

        def spans_frame(lines: np.ndarray) -> np.ndarray:
            first = lines.argmax(axis=1)
            last = SIDE - 1 - lines[:, ::-1].argmax(axis=1)
            return (first <= 1) & (last >= SIDE - 2)

        # The longer side of the bounding box fills the frame, in one direction or the other.
        assert (spans_frame(rows) | spans_frame(cols)).all(), name
        grey = ((d > 0) & (d < 255)).sum(axis=1)
        assert (grey >= 10).all(), f"{name}: downsampling leaves antialiased edge pixels"


def test_classes_differ_and_drawings_vary(drawings):
    means = np.stack([d.astype(float).mean(axis=0) for d in drawings.values()])
    gaps = np.abs(means[:, None] - means[None]).mean(axis=2)[~np.eye(10, dtype=bool)]
    assert gaps.min() > 2, "every pair of classes has a different average picture"
    for name, d in drawings.items():
        assert len(np.unique(d, axis=0)) == len(d), f"{name}: no two drawings are identical"


def test_render_unknown_class():
    with pytest.raises(QdkitError, match="unknown synthetic class 'blob'"):
        render_class("blob", 1, np.random.default_rng(0))


def test_write_loads_with_find_bitmap_files(tmp_path):
    paths = write_synth(tmp_path, num_classes=4, per_class=7, seed=3)
    assert [p.name for p in paths] == [bitmap_filename(n) for n in CLASS_NAMES[:4]]
    found = find_bitmap_files(tmp_path)
    assert sorted(f.class_name for f in found) == sorted(CLASS_NAMES[:4])
    assert all(f.rows == 7 for f in found)
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".npy"], "no temporaries left behind"


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for folder, seed in (("a", 5), ("b", 5), ("c", 6), ("neg", -1)):
        write_synth(tmp_path / folder, num_classes=3, per_class=10, seed=seed)
    a, b, c, neg = (_read_all(tmp_path / f) for f in ("a", "b", "c", "neg"))
    assert a == b
    assert all(a[name] != c[name] for name in a)
    assert all(a[name] != neg[name] for name in a)


def test_fewer_classes_are_a_prefix_of_all_classes(tmp_path):
    write_synth(tmp_path / "three", num_classes=3, per_class=12, seed=1)
    write_synth(tmp_path / "ten", num_classes=10, per_class=12, seed=1)
    three, ten = _read_all(tmp_path / "three"), _read_all(tmp_path / "ten")
    assert len(three) == 3 and len(ten) == 10
    assert all(ten[name] == data for name, data in three.items())


def test_refuses_to_overwrite_before_writing_anything(tmp_path):
    write_synth(tmp_path, num_classes=2, per_class=5, seed=0)
    before = _read_all(tmp_path)
    with pytest.raises(QdkitError, match="already exists \\(pass --overwrite to replace it\\)"):
        write_synth(tmp_path, num_classes=3, per_class=5, seed=9)
    assert _read_all(tmp_path) == before, "the third class was not written either"
    write_synth(tmp_path, num_classes=3, per_class=5, seed=9, overwrite=True)
    after = _read_all(tmp_path)
    assert len(after) == 3 and after[bitmap_filename(CLASS_NAMES[0])] != before[bitmap_filename(CLASS_NAMES[0])]


def test_cli_synth(tmp_path):
    out = tmp_path / "raw"
    runner = CliRunner()
    result = runner.invoke(main, ["synth", str(out), "--classes", "3", "--per-class", "6", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 synthetic class files (6 drawings each)" in result.stdout
    assert [f.rows for f in find_bitmap_files(out)] == [6, 6, 6]
    assert len(open_bitmaps(out / bitmap_filename(CLASS_NAMES[2]))) == 6

    again = runner.invoke(main, ["synth", str(out), "--classes", "3", "--per-class", "6"])
    assert again.exit_code == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
    assert "Traceback" not in again.output

    forced = runner.invoke(main, ["synth", str(out), "--classes", "3", "--per-class", "4", "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert [f.rows for f in find_bitmap_files(out)] == [4, 4, 4]


def test_disk_full_is_one_line_and_leaves_no_half_set(tmp_path):
    """Issue 10 group 6: on a full disk, one line naming the file; the class files of this run and the
    folder it created are removed (a half set of classes would convert into a different dataset)."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "raw"
        result = CliRunner().invoke(main, ["synth", str(out), "--classes", "3", "--per-class", "600"])
        line = one_line_error(result)
        assert line.startswith(f"qdkit: error: no space left on device while writing {out}/full_numpy_bitmap_")
        assert list(disk.iterdir()) == []


def test_files_that_were_there_survive_a_failed_run(tmp_path, monkeypatch):
    """Only what the failed run created is removed; files it was told to overwrite stay complete."""
    import qdkit.data.bitmaps as bitmaps

    write_synth(tmp_path, num_classes=1, per_class=5, seed=0)
    before = _read_all(tmp_path)
    real, calls = bitmaps.save_bitmaps, []

    def full_on_third(path, drawings, overwrite=True):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, drawings, overwrite=overwrite)

    monkeypatch.setattr(bitmaps, "save_bitmaps", full_on_third)
    with pytest.raises(OSError):
        write_synth(tmp_path, num_classes=3, per_class=5, seed=0, overwrite=True)
    assert _read_all(tmp_path) == before
