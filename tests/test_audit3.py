"""Issue 18, the third reliability audit: nothing a user had is lost, no traceback anywhere. Degenerate
raw coordinates, odd key_ids, huge CSV headers, files changing under convert, render's output folder,
special files, read errors. docs/reliability.md lists each promise with its test."""

from __future__ import annotations

import faulthandler
import json
import os
import struct
import sys

import numpy as np
import pytest
from _helpers import one_line_error
from click.testing import CliRunner
from PIL import Image

from qdkit.cli import main
from qdkit.data.store import open_store
from qdkit.strokes import MAX_POINTS, StrokeError, pack_binary, parse_drawing, read_binary, simplified

GOOD = {"word": "cat", "key_id": "5", "drawing": [[[0, 50, 100, 120], [0, 80, 20, 90]]]}
# raw strokes simplification refuses: a 1,000-point zigzag across the canvas resamples to 255,000
# points, over simplify's cap (a denormal extent, the audit's case, now simplifies like any other)
DEGENERATE = {"word": "cat", "drawing": [[[0, 1] * 500, [0, 0] * 500, list(range(1000))]]}


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _ndjson(path, n_good=24, bad_at=12, bad=DEGENERATE):
    lines = [json.dumps(GOOD)] * n_good
    if bad is not None:
        lines.insert(bad_at, json.dumps(bad))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "strokes",
    [
        [[[0, 5e-324, 1e-323], [0, 1e-310, 0], [0, 1, 2]]],  # denormal extent
        [[[0, 1e-308, 2e-308], [0, 0, 0], [0, 1, 2]]],  # tiny normal extent, huge scale
        [[[-9.9e6, 9.9e6], [0, 1], [0, 1]]],  # the widest range allowed
    ],
)
def test_degenerate_raw_coordinates_are_a_stroke_error_or_a_drawing(strokes):
    d = parse_drawing(strokes)
    try:
        out = simplified(d)
    except StrokeError:
        return
    assert out.simplified and np.isfinite(out.xy).all() and out.xy.min() >= 0 and out.xy.max() <= 255


def test_degenerate_drawing_in_predict_costs_only_itself(model_path, tmp_path):
    path = _ndjson(tmp_path / "cat.ndjson")
    result = _cli("predict", str(path), "--model", str(model_path))
    assert "Traceback" not in result.output
    assert result.exit_code == 1, result.output  # one input failed, the rest predicted
    assert sum(line.startswith(f"{path}:") for line in result.stdout.splitlines()) == 24
    assert f"{path}:13: " in result.stderr  # the one bad drawing, named


def test_degenerate_drawing_in_convert_fails_or_is_a_counted_skip(tmp_path):
    raw = tmp_path / "raw"
    for name in ("cat", "dog"):
        _ndjson(raw / f"{name}.ndjson")
    args = ["convert", "--in", str(raw), "--train", "10", "--validation", "5", "--test", "5", "--h5", "--no-png"]
    line = one_line_error(
        _cli(*args, "--out", str(tmp_path / "a"), "--seed", "3", "--skip-invalid", "--recognized-only")
    )
    assert "has 0 recognized valid drawings" in line  # GOOD carries no recognized flag
    result = _cli(*args, "--out", str(tmp_path / "b"), "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert "skipped 1 invalid drawing(s)" in result.stderr and "line 13" in result.stderr
    store = open_store(tmp_path / "b" / "quickdraw.h5")
    assert [s["skipped_invalid"] for s in store.attrs["sources"]] == [1, 1]
    full = _cli(*args, "--out", str(tmp_path / "c"), "--train", "15")  # needs every record: hits line 13
    assert f"{raw / 'cat.ndjson'}: line 13: " in one_line_error(full)
    assert not (tmp_path / "c").exists()


def test_degenerate_drawing_in_render(tmp_path):
    path = _ndjson(tmp_path / "in" / "cat.ndjson")
    line = one_line_error(_cli("render", str(path), "--out", str(tmp_path / "png")))
    assert f"{path}: line 13: " in line and "--skip-invalid skips bad drawings" in line
    assert not (tmp_path / "png").exists()
    result = _cli("render", str(path), "--out", str(tmp_path / "png"), "--skip-invalid")
    assert result.exit_code == 0 and "rendered 24 drawings" in result.stdout
    assert "skipped 1 invalid drawing(s)" in result.stderr


@pytest.mark.parametrize("key_id", ["²", "٣", "1²", "00000000000000000000000000000000000000000001"])
def test_non_ascii_digit_key_ids(tmp_path, key_id):
    """ "²".isdigit() is True and int("²") fails; "٣" is a digit int() reads as 3: neither is a key_id."""
    from qdkit.data.strokepool import _key_id

    assert _key_id(key_id) == 0
    d = parse_drawing({**GOOD, "key_id": key_id})
    assert read_binary(pack_binary(simplified(d)))[0].key_id == "0"
    raw = tmp_path / "raw"
    for name in ("cat", "dog"):
        _ndjson(raw / f"{name}.ndjson", bad={**GOOD, "key_id": key_id, "timestamp": "٣.5"})
    args = ["--train", "15", "--validation", "5", "--test", "5", "--h5", "--no-png"]
    result = _cli("convert", "--in", str(raw), "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 0, result.output


def test_csv_header_longer_than_the_csv_field_limit(tmp_path, model_path):
    path = tmp_path / "cat.csv"
    rows = [f'"{json.dumps(GOOD["drawing"])}",5' for _ in range(3)]
    path.write_text(f"drawing,{'x' * 200_000}\n" + "\n".join(rows) + "\n")
    result = _cli("render", str(path), "--out", str(tmp_path / "png"))
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output  # a long header is no error once the limit is sane
    (tmp_path / "big.csv").write_text("drawing," + "y" * (9 << 20) + "\n" + rows[0] + "\n")
    line = one_line_error(_cli("render", str(tmp_path / "big.csv"), "--out", str(tmp_path / "png2")))
    assert "CSV header is" in line and str(tmp_path / "big.csv") in line


def test_binary_record_over_the_point_cap_is_refused(tmp_path):
    n = 60_000  # two strokes of 60,000 points: 240 KB, over MAX_POINTS = 100,000
    record = struct.pack("<Q2sbIH", 1, b"FR", 1, 0, 2) + (struct.pack("<H", n) + bytes(2 * n)) * 2
    with pytest.raises(StrokeError, match=f"more than {MAX_POINTS} points"):
        read_binary(record)
    path = tmp_path / "cat.bin"
    good = pack_binary(parse_drawing(GOOD["drawing"], simplified=True))
    path.write_bytes(good * 3 + record + good * 3)
    result = _cli("render", str(path), "--out", str(tmp_path / "png"), "--skip-invalid")
    assert result.exit_code == 0 and "rendered 6 drawings" in result.stdout, result.output
    assert f"{path}: record 3: drawing has more than {MAX_POINTS} points" in result.stderr


def test_stroke_file_truncated_while_convert_reads_it(tmp_path, monkeypatch):
    """The workers have the file mapped (the --skip-invalid scan); truncating it then kills the next
    worker that touches a page past the end (SIGBUS): one line, and no output left behind."""
    import qdkit.data.strokepool as strokepool

    raw = tmp_path / "raw"
    for name in ("cat", "dog"):
        _ndjson(raw / f"{name}.ndjson", n_good=4000, bad=None)
    real = strokepool.eligible_records

    def then_truncate(sf, index, pool, **kw):
        out = real(sf, index, pool, **kw)
        with open(sf.path, "r+b") as f:
            f.truncate(0)
        return out

    monkeypatch.setattr(strokepool, "eligible_records", then_truncate)
    out = tmp_path / "out"
    args = ["--train", "3000", "--validation", "500", "--test", "500", "--skip-invalid", "--workers", "2", "--h5"]
    was_enabled = faulthandler.is_enabled()
    faulthandler.disable()  # pytest's, inherited by the forked workers: it would print the SIGBUS dump
    try:
        line = one_line_error(_cli("convert", "--in", str(raw), "--out", str(out), *args))
    finally:
        if was_enabled:
            faulthandler.enable()
    assert f"{raw / 'cat.ndjson'}: changed on disk while being read" in line and "nothing written" in line
    assert not out.exists()


def test_stroke_file_that_grows_during_convert(tmp_path, monkeypatch):
    import qdkit.data.strokepool as strokepool

    raw = tmp_path / "raw"
    for name in ("cat", "dog"):
        _ndjson(raw / f"{name}.ndjson", n_good=30, bad=None)
    real = strokepool.render_records

    def then_grow(sf, index, pool, progress=None):
        out = real(sf, index, pool, progress)
        with open(sf.path, "a") as f:
            f.write(json.dumps(GOOD) + "\n")
        return out

    monkeypatch.setattr(strokepool, "render_records", then_grow)
    args = ["--train", "10", "--validation", "5", "--test", "5", "--h5", "--no-png"]
    line = one_line_error(_cli("convert", "--in", str(raw), "--out", str(tmp_path / "out"), *args))
    assert "changed on disk while being read" in line and str(raw / "cat.ndjson") in line
    assert not (tmp_path / "out").exists()


def test_render_writes_only_its_own_files(tmp_path):
    """--out . and --overwrite: the user's files in the folder stay; render's own are refreshed."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "photo.png").write_bytes(b"not qdkit's")
    path = _ndjson(tmp_path / "in" / "cat.ndjson", n_good=3, bad=None)
    for extra in ([], ["--overwrite"], []):
        result = _cli("render", str(path), "--out", str(mine), *extra)
        assert result.exit_code == 0, result.output
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "photo.png").read_bytes() == b"not qdkit's"
    assert sorted(p.name for p in mine.iterdir()) == [
        "cat-1.png",
        "cat-2.png",
        "cat-3.png",
        "notes.txt",
        "photo.png",
        "sheet.png",
    ]
    (mine / "cat-1.png").write_bytes(b"the user's own cat-1.png")
    line = one_line_error(_cli("render", str(path), "--out", str(mine)))
    assert f"{mine / 'cat-1.png'}: already exists and was not written by qdkit" in line
    assert (mine / "cat-1.png").read_bytes() == b"the user's own cat-1.png"
    cwd = os.getcwd()
    os.chdir(mine)
    try:
        result = _cli("render", str(path), "--out", ".", "--overwrite")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert Image.open(mine / "cat-1.png").size == (28, 28) and (mine / "notes.txt").read_text() == "mine"


def test_render_inputs_with_the_same_stem_get_distinct_names(tmp_path):
    a = _ndjson(tmp_path / "a" / "cat.ndjson", n_good=2, bad=None)
    b = _ndjson(tmp_path / "b" / "cat.ndjson", n_good=3, bad=None)
    result = _cli("render", str(a), str(b), str(a), "--out", str(tmp_path / "png"))
    assert result.exit_code == 0 and "rendered 5 drawings" in result.stdout, result.output
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == ["cat-1.png", "cat-2.png", "cat~2-1.png", "cat~2-2.png", "cat~2-3.png", "sheet.png"]


def test_render_name_longer_than_the_filesystem_allows(tmp_path):
    long = tmp_path / ("c" * 248 + ".ndjson")  # 255 bytes: the longest name; its PNG's temporary is longer
    _ndjson(long, n_good=2, bad=None)
    line = one_line_error(_cli("render", str(long), "--out", str(tmp_path / "png")))
    assert "File name too long" in line and "rename the input file" in line
    assert not (tmp_path / "png").exists()


@pytest.mark.parametrize("command", ["render", "predict", "convert"])
def test_a_link_to_a_device_and_a_read_error(tmp_path, model_path, command):
    """A link to /dev/zero is a device, not "no such file"; EIO (/proc/self/mem at offset 0 in the
    reading process) is "cannot read: Input/output error", not "is empty"."""
    if not os.path.exists("/proc/self/mem") or sys.platform != "linux":
        pytest.skip("needs Linux /proc/self/mem and /dev/zero")
    for target, message in (
        ("/dev/zero", "a device"),
        ("/proc/self/mem", "cannot read (Input/output error)"),
    ):
        folder = tmp_path / os.path.basename(target)
        folder.mkdir()
        link = folder / "cat.ndjson"
        link.symlink_to(target)
        if command == "render":
            result = _cli("render", str(link), "--out", str(tmp_path / "png"))
        elif command == "predict":
            result = _cli("predict", str(link), "--model", str(model_path))
        else:
            _ndjson(folder / "dog.ndjson", bad=None)
            splits = ["--train", "5", "--validation", "1", "--test", "1", "--h5", "--no-png"]
            result = _cli("convert", "--in", str(folder), "--out", str(folder / "o"), *splits)
        assert "Traceback" not in result.output, result.output
        if command == "convert" and target == "/dev/zero":  # among a folder's inputs: skipped, as FIFOs are
            assert result.exit_code == 0 and f"{link}: skipped: a character device" in result.stderr
            continue
        assert result.exit_code != 0 and message in result.output, result.output


def test_convert_again_refreshes_its_own_png_folder(tmp_path):
    raw = tmp_path / "raw"
    for name in ("cat", "dog"):
        _ndjson(raw / f"{name}.ndjson", n_good=20, bad=None)
    out = tmp_path / "data"
    args = ["convert", "--in", str(raw), "--out", str(out), "--train", "10", "--validation", "5", "--test", "5"]
    for _ in range(2):
        result = _cli(*args)
        assert result.exit_code == 0, result.output
    assert (out / "png" / ".qdkit-png").is_file()
    (out / "png" / "my-notes.txt").write_text("mine")  # the folder now holds something qdkit did not write
    line = one_line_error(_cli(*args))
    assert f"{out / 'png'}: already exists (pass --overwrite" in line
    assert (out / "png" / "my-notes.txt").read_text() == "mine"


# --- download: a first line that never ends, a server that drips -------------------------------------


def test_download_limit_1_of_a_line_that_never_ends(tmp_path):
    from _helpers import serve_bucket

    from qdkit.data.download import download_classes
    from qdkit.data.strokefiles import MAX_RECORD_BYTES
    from qdkit.errors import QdkitError

    with serve_bucket(tmp_path / "bucket") as bucket:
        bucket.add_file("simplified", "cat.ndjson", b'{"word": "' + b"x" * (40 << 20) + b'"}\n')
        with pytest.raises(QdkitError, match="line 1 is longer than 8,388,608 bytes: not a Quick Draw drawing"):
            download_classes(["cat"], tmp_path / "out", limit=1, base_url=bucket.url, timeout=5, fmt="simplified")
        assert bucket.bytes_sent < MAX_RECORD_BYTES + (17 << 20), bucket.bytes_sent  # never the 40 MiB
    assert list((tmp_path / "out").iterdir()) == []  # the worthless .part is gone


def test_download_from_a_server_dripping_bytes_gives_up(tmp_path):
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from qdkit.data.download import download_classes
    from qdkit.errors import QdkitError

    class Drip(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(206)
            self.send_header("Content-Range", "bytes 0-65535/1000000")
            self.send_header("Content-Length", "65536")
            self.end_headers()
            try:
                self.wfile.write(b"{")
                for _ in range(200):  # 20 bytes/s: each read returns within the socket timeout
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(QdkitError, match=r"bytes/s over 1 s \(at least 1,000 bytes/s expected\); giving up"):
            download_classes(
                ["cat"],
                tmp_path,
                limit=1,
                base_url=f"http://127.0.0.1:{server.server_port}",
                timeout=5,
                fmt="simplified",
                min_rate=1000,
                rate_window=1,
            )
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - t0 < 5


def test_rasterize_many_with_one_bad_drawing_keeps_the_others():
    from qdkit.strokes import rasterize, rasterize_many

    good, bad = parse_drawing(GOOD), parse_drawing(DEGENERATE)
    with pytest.raises(StrokeError):
        rasterize_many([good, bad, good])
    errors: list = []
    images = rasterize_many([good, bad, good], errors=errors)
    assert [i for i, _ in errors] == [1] and isinstance(errors[0][1], StrokeError)
    assert np.array_equal(images[0], rasterize(good)) and np.array_equal(images[2], rasterize(good))
    assert not images[1].any()
