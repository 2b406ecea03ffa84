"""Hostile variants of the issue-10 defect groups that the issue does not name: our own table, per
layer (store, download, convert). Each row is an input a careless or hostile user (or mirror) could
produce, and the one-line outcome qdkit promises for it. docs/reliability.md lists the promises."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest
from _helpers import FakeBucket, one_line_error, serve_bucket, synthetic_binary, synthetic_ndjson
from click.testing import CliRunner

from qdkit.cli import main
from qdkit.data.bitmaps import PIXELS, bitmap_filename, open_bitmaps, save_bitmaps
from qdkit.data.download import download_classes
from qdkit.data.loader import BatchLoader, fetch
from qdkit.data.store import open_store
from qdkit.errors import QdkitError

# --- the store (groups 3, 4, 9) ----------------------------------------------------------------------


def _virtual_images(f, tmp_path):
    other = tmp_path / "elsewhere.h5"
    with h5py.File(other, "w") as g:
        g["images"] = np.full((200, 28, 28), 7, np.uint8)
    layout = h5py.VirtualLayout(shape=(200, 28, 28), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(other), "images", shape=(200, 28, 28))
    del f["test/images"]
    f["test"].create_virtual_dataset("images", layout)


def _soft_link_labels(f, tmp_path):
    del f["test/labels"]
    f["test/labels"] = h5py.SoftLink("/validation/labels")


def _external_split(f, tmp_path):
    other = tmp_path / "split.h5"
    with h5py.File(other, "w") as g:
        src = f["test"]
        grp = g.create_group("test")
        for name in ("images", "labels", "source_index"):
            grp[name] = src[name][()]
    del f["test"]
    f["test"] = h5py.ExternalLink(str(other), "/test")


def _replace(split, name, data):
    def edit(f, tmp_path):
        del f[split][name]
        f[split][name] = data

    return edit


def _attr(name, value):
    def edit(f, tmp_path):
        f.attrs[name] = value

    return edit


def _subgroup(f, tmp_path):
    f["train"].create_group("nested")


def _no_splits(f, tmp_path):
    for split in list(f):
        del f[split]


def _uint64_label(f, tmp_path):
    labels = f["test/labels"][()].astype(np.uint64)
    labels[0] = 2**63
    del f["test/labels"]
    f["test/labels"] = labels


STORE_CASES = {
    "virtual-dataset-from-another-file": (_virtual_images, "reads its data from another file"),
    "soft-link-labels": (_soft_link_labels, "is a SoftLink; a qdkit store holds no links"),
    "split-is-an-external-link": (_external_split, "/test is a ExternalLink"),
    "class-name-empty-string": (_attr("class_names", '["", "b", "c", "d"]'), "not a JSON list of non-empty names"),
    "class-names-json-object": (_attr("class_names", '{"a": 0}'), "not a JSON list"),
    "format-version-bool": (_attr("format_version", True), "format_version is True"),
    "bool-labels": (_replace("test", "labels", np.zeros(200, bool)), r"labels \(200,\) bool"),
    "uint64-label-2**63": (_uint64_label, "label 9223372036854775808, outside 0..3"),
    "string-source-index": (_replace("test", "source_index", np.array([b"x"] * 200)), r"source_index \(200,\) \|S1"),
    "2d-source-index": (_replace("test", "source_index", np.zeros((200, 1), np.int64)), r"source_index \(200, 1\)"),
    "images-28x29": (_replace("test", "images", np.zeros((200, 28, 29), np.uint8)), r"images \(200, 28, 29\)"),
    "images-float": (_replace("test", "images", np.zeros((200, 28, 28), np.float32)), "float32"),
    "group-inside-a-split": (_subgroup, "split 'train': nested is a group, expected a dataset"),
    "no-splits": (_no_splits, "holds no splits"),
    "attribute-not-utf8": (_attr("seed", np.bytes_(b"\xff\xfe")), "attribute 'seed' is not UTF-8 text"),
    "class-names-nested-100k-deep": (_attr("class_names", "[" * 100_000 + "]" * 100_000), "not a JSON list"),
}


@pytest.mark.parametrize("case", sorted(STORE_CASES))
def test_hostile_store(store_path, tmp_path, case):
    edit, message = STORE_CASES[case]
    copy = tmp_path / "hostile.h5"
    shutil.copy(store_path, copy)
    with h5py.File(copy, "r+") as f:
        edit(f, tmp_path)
    with pytest.raises(QdkitError, match=message) as err:
        open_store(copy)
    assert "\n" not in str(err.value) and str(copy) in str(err.value)
    train = [
        "train",
        "--data",
        str(copy),
        "--epochs",
        "1",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--artifacts-dir",
        str(tmp_path / "artifacts"),
    ]
    for command in (["info", str(copy)], train):
        line = one_line_error(CliRunner().invoke(main, command))
        assert str(copy) in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_evaluate_refuses_a_store_with_label_minus_one(tmp_path_factory, store_path, tmp_path):
    """Issue 10 group 3's worst case: evaluate used to count -1 as the last class and pass."""
    from _helpers import exported

    _, model = exported(tmp_path_factory, store_path)
    copy = tmp_path / "minus.h5"
    shutil.copy(store_path, copy)
    with h5py.File(copy, "r+") as f:
        f["test/labels"][0] = -1
    line = one_line_error(
        CliRunner().invoke(
            main, ["evaluate", "--model", str(model), "--data", str(copy), "--out", str(tmp_path / "eval")]
        )
    )
    assert f"{copy}: split 'test' has label -1, outside 0..3" in line
    assert not (tmp_path / "eval").exists()


def test_store_cut_inside_its_labels_is_one_line(store_path, tmp_path):
    """Truncated after the images (their check passes) but inside the labels: a read error, one line."""
    cut = tmp_path / "cut.h5"
    data = store_path.read_bytes()
    with h5py.File(store_path) as f:
        labels_at = f["test/labels"].id.get_offset()
    cut.write_bytes(data[: labels_at + 10])
    with pytest.raises(QdkitError, match="truncated or corrupt") as err:
        open_store(cut)
    assert str(cut) in str(err.value)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_store_that_is_a_fifo_or_a_folder(tmp_path, kind):
    """HDF5 would block forever reading a FIFO; a folder gets a message saying what it is."""
    path = tmp_path / "quickdraw.h5"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "qdkit", "info", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{path}: is " in done.stderr and "not an HDF5 store" in done.stderr


def test_store_rewritten_in_place_with_the_same_size(store_path, tmp_path):
    """No SIGBUS here (same size), but the data under the mapping changed: refused, not silently read."""
    live = tmp_path / "live.h5"
    shutil.copy(store_path, live)
    arrays = open_store(live).split("train")
    fetch(arrays, np.arange(4))
    with open(live, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        f.write(b"\xff" * 100)
    os.utime(live, ns=(arrays.stamp.mtime_ns + 10**9, arrays.stamp.mtime_ns + 10**9))
    with pytest.raises(QdkitError, match="changed on disk while in use"):
        next(iter(BatchLoader(arrays, batch_size=8)))


def test_store_deleted_while_mapped_keeps_serving(store_path, tmp_path):
    live = tmp_path / "live.h5"
    shutil.copy(store_path, live)
    arrays = open_store(live).split("validation")
    expected = np.array(arrays.images[:5])
    live.unlink()
    images, _ = fetch(arrays, np.arange(5))
    np.testing.assert_array_equal(images[:, 0].numpy(), expected)


# --- download (group 5) ----------------------------------------------------------------------------


@pytest.fixture
def bucket(tmp_path):
    with serve_bucket(tmp_path / "bucket") as fake:
        yield fake


def _get(bucket: FakeBucket, out, limit=None, fmt="bitmap", name="cat"):
    return download_classes([name], out, limit=limit, base_url=bucket.url, timeout=5, fmt=fmt)


def test_weak_etag_server_changing_the_file(bucket, tmp_path):
    """A weak ETag may not go in If-Range (so none is sent); comparing the ETags still catches the change."""
    bucket.add("cat", 60)
    bucket.weak_etag = True
    bucket.before_request = lambda n: bucket.add("cat", 60, seed=8) if n == 2 else None
    with pytest.raises(QdkitError, match=r"changed on the server during the download \(ETag\)"):
        _get(bucket, tmp_path / "out", limit=30)
    assert list((tmp_path / "out").iterdir()) == []


def test_garbage_validator_file_restarts_the_part(bucket, tmp_path):
    source = bucket.add("cat", 80)
    out = tmp_path / "out"
    out.mkdir()
    part = out / (bitmap_filename("cat") + ".part")
    part.write_bytes(bucket.bitmap("cat").read_bytes()[:3000])
    (out / (part.name + ".validator")).write_text("{not json")
    (path,) = _get(bucket, out)
    assert np.array_equal(open_bitmaps(path), source)
    assert bucket.ranges()[-1].startswith("bytes=1024-"), "started over after the header, not at 3000"


def test_part_longer_than_the_remote_stroke_file_starts_over(bucket, tmp_path):
    data = synthetic_ndjson(50)
    bucket.add_file("simplified", "cat.ndjson", data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "full_simplified_cat.ndjson.part").write_bytes(data + b"{}\n" * 1000)
    (path,) = _get(bucket, out, fmt="simplified")
    assert path.read_bytes() == data


def test_stroke_server_that_hides_the_size(tmp_path):
    """Content-Range with an unknown total (`*`): a stroke download cannot be made safe; one line."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = synthetic_ndjson(5)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/*")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(QdkitError, match="does not say the file's size"):
            download_classes(
                ["cat"],
                tmp_path,
                limit=2,
                base_url=f"http://127.0.0.1:{server.server_port}",
                timeout=5,
                fmt="simplified",
            )
    finally:
        server.shutdown()
        server.server_close()


def test_binary_record_with_no_strokes_is_a_record(bucket, tmp_path):
    empty = struct.pack("<Q2sbIH", 9, b"FR", 0, 0, 0)
    records = [empty] + synthetic_binary(10)
    bucket.add_file("binary", "cat.bin", b"".join(records))
    (path,) = _get(bucket, tmp_path, limit=3, fmt="binary")
    assert path.read_bytes() == b"".join(records[:3])


def test_bitmap_whose_header_is_cut_off(bucket, tmp_path):
    path = bucket.bitmap("cat")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x93NUMPY\x01\x00\x76\x00{'descr'")
    with pytest.raises(QdkitError, match="unreadable .npy header"):
        _get(bucket, tmp_path, limit=2)


def test_class_name_that_is_url_syntax(bucket, tmp_path):
    """`#` would end the URL path and `%2F` decode to a slash: both are quoted, so the server sees the
    file name asked for (`?`, `/` and the like are refused as class names before any request)."""
    save = bucket.add("what#x%2F", 4)
    (path,) = _get(bucket, tmp_path, name="what#x%2F")
    assert np.array_equal(open_bitmaps(path), save)
    assert bucket.requests[0][0] == "/full/numpy_bitmap/what%23x%252F.npy"
    with pytest.raises(QdkitError, match="invalid class name"):
        _get(bucket, tmp_path, name="what?x")


@pytest.mark.parametrize(
    "fmt, name", [("bitmap", "full_numpy_bitmap_cat.npy"), ("simplified", "full_simplified_cat.ndjson")]
)
def test_download_onto_a_folder_of_that_name(bucket, tmp_path, fmt, name):
    bucket.add("cat", 5)
    bucket.add_file("simplified", "cat.ndjson", synthetic_ndjson(5))
    (tmp_path / name).mkdir()
    (tmp_path / name / "keep").write_text("mine")
    with pytest.raises(QdkitError, match=f"{name}: is a folder"):
        _get(bucket, tmp_path, fmt=fmt)
    assert (tmp_path / name / "keep").read_text() == "mine" and bucket.requests == []


def test_download_to_a_folder_that_is_a_file(tmp_path):
    target = tmp_path / "raw"
    target.write_text("mine")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(
        main, ["download", "--classes", "cat", "--out", str(target), "--base-url", f"http://127.0.0.1:{port}"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert target.read_text() == "mine"


# --- convert (groups 6-10, 16) ----------------------------------------------------------------------


def _raw(tmp_path, classes=("a", "b"), rows=40):
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in classes:
        save_bitmaps(raw / bitmap_filename(name), rng.integers(0, 256, (rows, PIXELS), dtype=np.uint8))
    return raw


def _convert(raw, out, *extra):
    return CliRunner().invoke(
        main,
        ["convert", "--in", str(raw), "--out", str(out), "--train", "20", "--validation", "5", "--test", "5", *extra],
    )


def test_dangling_symlink_and_socket_inputs_are_skipped(tmp_path):
    raw = _raw(tmp_path)
    (raw / "ghost.npy").symlink_to(tmp_path / "nowhere.npy")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(raw / "sock.npy"))
    try:
        result = _convert(raw, tmp_path / "out", "--no-png", "--h5")
    finally:
        sock.close()
    assert result.exit_code == 0, result.output
    assert f"{raw / 'ghost.npy'}: skipped: a dangling link" in result.stderr
    assert f"{raw / 'sock.npy'}: skipped: a socket" in result.stderr
    assert open_store(tmp_path / "out" / "quickdraw.h5").class_names == ["a", "b"]


def test_in_that_is_a_fifo(tmp_path):
    fifo = tmp_path / "raw"
    os.mkfifo(fifo)
    line = one_line_error(_convert(fifo, tmp_path / "out"))
    assert f"{fifo}: is a FIFO, not a folder" in line


def test_overwrite_through_a_symlinked_png_never_touches_its_target(tmp_path):
    """OUT/png a symlink to a folder of the user's: --overwrite replaces the link, the target survives."""
    raw = _raw(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    (out / "png").symlink_to(precious)
    assert _convert(raw, out, "--overwrite").exit_code == 0
    assert (precious / "keep.txt").read_text() == "mine" and sorted(p.name for p in precious.iterdir()) == ["keep.txt"]
    assert (out / "png").is_dir() and not (out / "png").is_symlink()


def test_overwrite_through_a_symlinked_store_never_touches_its_target(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    (out / "quickdraw.h5").symlink_to(target)
    assert _convert(raw, out, "--overwrite", "--no-png", "--h5").exit_code == 0
    assert target.read_text() == "mine"
    open_store(out / "quickdraw.h5")


def test_stale_old_folder_of_a_killed_overwrite_is_cleared(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out"
    assert _convert(raw, out).exit_code == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / f".png.old-{dead.pid}").mkdir()
    (out / f".png.old-{dead.pid}" / "x.png").write_bytes(b"old")
    assert _convert(raw, out, "--overwrite").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["png"]


def test_out_that_is_a_fifo(tmp_path):
    raw = _raw(tmp_path)
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    line = one_line_error(_convert(raw, fifo))
    assert str(fifo) in line


def test_classes_that_are_only_separators_and_spaces_with_no_png(tmp_path):
    raw = _raw(tmp_path)
    for classes in (",,,", " , "):
        line = one_line_error(_convert(raw, tmp_path / "out", "--no-png", "--h5", "--classes", classes))
        assert "names no class" in line
    assert not (tmp_path / "out").exists()


def test_disk_full_with_both_outputs_names_the_one_that_failed(tmp_path, monkeypatch):
    """PNGs and the store at once: the message names what was being written when the disk filled."""
    import qdkit.images as images

    raw = _raw(tmp_path)

    def full(drawing, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images, "write_png", full)  # the forked PNG workers inherit it
    line = one_line_error(_convert(raw, tmp_path / "out", "--h5", "--workers", "1"))
    assert line == f"qdkit: error: no space left on device while writing {tmp_path / 'out' / 'png'}"
    assert not (tmp_path / "out").exists()


# --- stroke files, issue 18: one bad drawing costs only itself (render, the shared reader) ------------

_GOOD_LINE = b'{"word": "cat", "drawing": [[[0, 50, 100], [0, 80, 20]]]}'
_GOOD_RECORD = struct.pack("<Q2sbIH", 1, b"FR", 1, 0, 1) + struct.pack("<H", 3) + bytes([0, 50, 100, 0, 80, 20])


def _raw_line(xs, ys):
    return ('{"drawing": [[' + xs + ", " + ys + ", [0, 1, 2]]]}").encode()


STROKE_FILE_CASES = {
    # name: (file name, the bad record, what the skip warning / error says; None: a good drawing;
    # "either": a drawing or a counted skip, as simplify decides — never a traceback)
    "denormal-extent": ("cat.ndjson", _raw_line("[0, 5e-324, 1e-323]", "[0, 0, 0]"), "either"),
    "tiny-normal-extent": ("cat.ndjson", _raw_line("[0, 1e-308, 2e-308]", "[0, 1e-308, 0]"), "either"),
    "inf-coordinate": ("cat.ndjson", _raw_line("[0, 1e999, 2]", "[0, 1, 0]"), "number is infinity"),
    "1e308-range": ("cat.ndjson", _raw_line("[-1e308, 1e308, 0]", "[0, 1, 0]"), "coordinates beyond"),
    "key-id-superscript-two": ("cat.ndjson", b'{"key_id": "\\u00b2", "drawing": [[[0, 9], [0, 9]]]}', None),
    "binary-record-of-120k-points": (
        "cat.bin",
        struct.pack("<Q2sbIH", 2, b"FR", 1, 0, 2) + (struct.pack("<H", 60_000) + bytes(120_000)) * 2,
        "more than 100000 points",
    ),
    "csv-drawing-field-over-131072-chars": (
        "cat.csv",
        b'"[[[' + b"1, " * 50_000 + b"1], [" + b"1, " * 50_000 + b'1]]]",5',
        None,  # 300 KB: over csv's default field limit, under qdkit's record cap: a drawing
    ),
}


@pytest.mark.parametrize("case", sorted(STROKE_FILE_CASES))
def test_hostile_stroke_file_record(tmp_path, case):
    name, bad, message = STROKE_FILE_CASES[case]
    if name.endswith(".bin"):
        data = _GOOD_RECORD * 3 + bad + _GOOD_RECORD * 3
    elif name.endswith(".csv"):
        good = b'"[[[0, 50, 100], [0, 80, 20]]]",5'
        data = b"drawing,key_id\n" + b"\n".join([good] * 3 + [bad] + [good] * 3) + b"\n"
    else:
        data = b"\n".join([_GOOD_LINE] * 3 + [bad] + [_GOOD_LINE] * 3) + b"\n"
    path = tmp_path / name
    path.write_bytes(data)
    result = CliRunner().invoke(main, ["render", str(path), "--out", str(tmp_path / "png"), "--skip-invalid"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    if message is None or (message == "either" and "rendered 7 drawings" in result.stdout):
        assert "rendered 7 drawings" in result.stdout, result.output
        return
    if message == "either":
        assert "rendered 6 drawings" in result.stdout and "skipped 1 invalid drawing(s)" in result.stderr
        return
    assert "rendered 6 drawings" in result.stdout and "skipped 1 invalid drawing(s)" in result.stderr
    assert message in result.stderr
    line = one_line_error(CliRunner().invoke(main, ["render", str(path), "--out", str(tmp_path / "png2")]))
    assert str(path) in line and message in line
