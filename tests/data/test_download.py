"""qdkit.data.download against a local HTTP server that honours Range (and, on request, misbehaves)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from _helpers import FakeBucket, serve_bucket, synthetic_binary, synthetic_ndjson
from click.testing import CliRunner

from qdkit.cli import main
from qdkit.data.bitmaps import PIXELS, bitmap_filename, open_bitmaps
from qdkit.data.download import download_classes
from qdkit.errors import QdkitError


@pytest.fixture
def bucket(tmp_path):
    with serve_bucket(tmp_path / "bucket") as fake:
        yield fake


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "raw"


def _get(bucket: FakeBucket, classes: list[str], out: Path, limit: int | None = None) -> list[Path]:
    return download_classes(classes, out, limit=limit, base_url=bucket.url, timeout=5)


def test_whole_files_equal_the_source(bucket, out):
    cat, tower = bucket.add("cat", 37), bucket.add("The Eiffel Tower", 12, seed=1)
    paths = _get(bucket, ["cat", "The Eiffel Tower"], out)
    assert paths == [out / bitmap_filename("cat"), out / bitmap_filename("The Eiffel Tower")]
    assert np.array_equal(open_bitmaps(paths[0]), cat)
    assert np.array_equal(open_bitmaps(paths[1]), tower)
    assert paths[0].read_bytes() == bucket.bitmap("cat").read_bytes()
    assert "/full/numpy_bitmap/The%20Eiffel%20Tower.npy" in [p for p, _ in bucket.requests]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths), "no .part left"


def test_limit_fetches_only_header_and_rows(bucket, out):
    source = bucket.add("cat", 500)
    (path,) = _get(bucket, ["cat"], out, limit=5)
    drawings = open_bitmaps(path)
    assert drawings.shape == (5, PIXELS) and np.array_equal(drawings, source[:5])
    assert np.array_equal(np.load(path, allow_pickle=False), source[:5]), "a valid .npy with its own header"
    assert all(r is not None for r in bucket.ranges())
    file_size = bucket.bitmap("cat").stat().st_size
    assert bucket.bytes_sent <= 1024 + 5 * PIXELS < file_size / 50
    assert [p.name for p in out.iterdir()] == [path.name]


def test_limit_beyond_the_file_gives_every_row(bucket, out):
    source = bucket.add("cat", 3)
    (path,) = _get(bucket, ["cat"], out, limit=10)
    assert np.array_equal(open_bitmaps(path), source)


def test_resume_whole_file_from_part(bucket, out):
    """A .part with no recorded validator (an older qdkit's), from a server that sends none: resumed
    after the prefix check (the validator tests below cover servers that send them)."""
    bucket.validators = False
    bucket.add("cat", 40)
    source_bytes = bucket.bitmap("cat").read_bytes()
    out.mkdir()
    part = out / (bitmap_filename("cat") + ".part")
    part.write_bytes(source_bytes[:3000])
    (path,) = _get(bucket, ["cat"], out)
    assert path.read_bytes() == source_bytes and not part.exists()
    assert bucket.ranges()[-1] == f"bytes=3000-{len(source_bytes) - 1}"
    assert bucket.bytes_sent <= 1024 + len(source_bytes) - 3000


def test_resume_limited_download_from_part(bucket, out):
    bucket.validators = False
    source = bucket.add("cat", 100)
    source_bytes = bucket.bitmap("cat").read_bytes()
    out.mkdir()
    (out / (bitmap_filename("cat") + ".part")).write_bytes(source_bytes[:2000])
    (path,) = _get(bucket, ["cat"], out, limit=20)
    assert np.array_equal(open_bitmaps(path), source[:20])
    assert bucket.ranges()[-1] == f"bytes=2000-{128 + 20 * PIXELS - 1}"


def test_part_from_a_different_file_is_restarted(bucket, out):
    source = bucket.add("cat", 10)
    out.mkdir()
    (out / (bitmap_filename("cat") + ".part")).write_bytes(b"\x93NUMPY garbage that is no prefix" * 40)
    (path,) = _get(bucket, ["cat"], out)
    assert np.array_equal(open_bitmaps(path), source)


def test_interrupted_download_leaves_only_a_part_that_resumes(bucket, out):
    source = bucket.add("cat", 200)
    bucket.mode = "cut"
    with pytest.raises(QdkitError, match="run again to resume") as err:
        _get(bucket, ["cat"], out)
    assert "\n" not in str(err.value)
    part = out / (bitmap_filename("cat") + ".part")
    assert not (out / bitmap_filename("cat")).exists() and part.exists()
    held = part.stat().st_size
    bucket.mode = "normal"
    (path,) = _get(bucket, ["cat"], out)
    assert np.array_equal(open_bitmaps(path), source)
    assert bucket.ranges()[-1].startswith(f"bytes={held}-")


def test_existing_files_are_skipped(bucket, out, capsys):
    bucket.add("cat", 30)
    _get(bucket, ["cat"], out, limit=8)
    bucket.requests.clear()
    _get(bucket, ["cat"], out, limit=8)
    assert bucket.requests == [], "enough rows on disk: no request at all"
    assert "already holds 8 drawings, skipped" in capsys.readouterr().err

    (path,) = _get(bucket, ["cat"], out)  # the whole file now: 8 rows are not enough
    assert len(open_bitmaps(path)) == 30
    bucket.requests.clear()
    _get(bucket, ["cat"], out)
    assert len(bucket.requests) == 1, "only the header, to learn the remote row count"


def test_server_ignoring_range_still_works(bucket, out):
    source = bucket.add("cat", 50)
    bucket.mode = "ignore-range"
    (path,) = _get(bucket, ["cat"], out, limit=4)
    assert np.array_equal(open_bitmaps(path), source[:4])
    part = out / (bitmap_filename("cat") + ".part")
    part.write_bytes(bucket.bitmap("cat").read_bytes()[:5000])
    (path,) = _get(bucket, ["cat"], out)  # a 200 answer to a resume: the .part starts over
    assert np.array_equal(open_bitmaps(path), source) and not part.exists()


def test_size_mismatch_is_an_error(bucket, out):
    bucket.add("cat", 6)
    with open(bucket.bitmap("cat"), "ab") as f:
        f.write(b"trailing junk")
    with pytest.raises(QdkitError, match=r"cat\.npy: size mismatch: the server reports 4845 bytes, .* promises 4832"):
        _get(bucket, ["cat"], out)
    assert list(out.iterdir()) == []


def test_unknown_class_is_a_404_error(bucket, out):
    with pytest.raises(QdkitError) as err:
        _get(bucket, ["nope"], out)
    assert str(err.value) == f"unknown class 'nope' ({bucket.url}/full/numpy_bitmap/nope.npy: HTTP 404)"
    assert list(out.iterdir()) == []


def test_offline_is_one_line_error(out):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(QdkitError) as err:
        download_classes(["cat"], out, base_url=f"http://127.0.0.1:{port}", timeout=5)
    message = str(err.value)
    assert message.startswith(f"cannot reach http://127.0.0.1:{port}/full/numpy_bitmap/cat.npy: ")
    assert message.endswith("(offline?)")
    assert "\n" not in message


def test_html_page_is_an_error(bucket, out):
    bucket.mode = "html"
    with pytest.raises(QdkitError, match=r"cat\.npy: not a \.npy file \(the server sent an HTML page\)"):
        _get(bucket, ["cat"], out)
    assert list(out.iterdir()) == []


def test_wrong_dtype_is_an_error(bucket, out):
    bucket.add("cat", 3, dtype=np.float32)
    with pytest.raises(QdkitError, match="dtype is float32, expected uint8"):
        _get(bucket, ["cat"], out, limit=2)


def test_bad_class_names(out):
    with pytest.raises(QdkitError, match="no class names"):
        download_classes([], out)
    with pytest.raises(QdkitError, match="invalid class name '../cat'"):
        download_classes(["../cat"], out)


def test_bad_base_url(out):
    with pytest.raises(QdkitError, match="base URL 'storage/bucket': expected an http:// or https:// address"):
        download_classes(["cat"], out, base_url="storage/bucket")


def test_cli_download(bucket, out):
    a, b = bucket.add("a", 20), bucket.add("b", 20, seed=2)
    runner = CliRunner()
    args = ["download", "--classes", "a,b", "--limit", "5", "--out", str(out), "--base-url", bucket.url]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 files in" in result.stdout
    assert np.array_equal(open_bitmaps(out / bitmap_filename("a")), a[:5])
    assert np.array_equal(open_bitmaps(out / bitmap_filename("b")), b[:5])


def test_cli_download_unknown_class(bucket, out):
    result = CliRunner().invoke(main, ["download", "--classes", "xyz", "--out", str(out), "--base-url", bucket.url])
    assert result.exit_code == 2
    assert result.stderr == f"qdkit: error: unknown class 'xyz' ({bucket.url}/full/numpy_bitmap/xyz.npy: HTTP 404)\n"
    assert "Traceback" not in result.output


# --- issue 10 group 5: a file that changes on the server, hostile headers ----------------------------


def _rewrite_on(bucket: FakeBucket, request_number: int, name: str = "cat", seed: int = 99) -> None:
    """Replace the class file by another version (same size) just before request `request_number`."""

    def change(n: int) -> None:
        if n == request_number:
            path = bucket.bitmap(name)
            rows = len(np.load(path))
            np.save(path, np.random.default_rng(seed).integers(0, 256, (rows, PIXELS)).astype(np.uint8))

    bucket.before_request = change


@pytest.mark.parametrize(
    "mode, validators",
    [("normal", True), ("ignore-if-range", True)],
    ids=["server-honours-if-range", "server-ignores-if-range"],
)
def test_file_changing_between_header_and_rows_is_refused(bucket, out, mode, validators):
    """The header request sees one version, the rows request another: no spliced file, no .part."""
    bucket.add("cat", 50)
    bucket.mode, bucket.validators = mode, validators
    _rewrite_on(bucket, 2)
    with pytest.raises(
        QdkitError,
        match=r"cat\.npy: the file changed on the server during the download \(.*\); "
        "run again$",
    ):
        _get(bucket, ["cat"], out, limit=20)
    assert list(out.iterdir()) == []
    if mode == "normal":
        assert any(r for r in bucket.requests[1:]), "the rows request carried a Range"


def test_size_change_is_caught_without_validators(bucket, out):
    bucket.validators = False
    bucket.add("cat", 50)

    def grow(n: int) -> None:
        if n == 2:
            np.save(bucket.bitmap("cat"), np.zeros((60, PIXELS), np.uint8))

    bucket.before_request = grow
    with pytest.raises(QdkitError, match=r"changed on the server during the download \(size\)"):
        _get(bucket, ["cat"], out)
    assert list(out.iterdir()) == []


def test_resume_after_the_file_changed_starts_over(bucket, out):
    """A .part remembers the version it holds: a resume against a newer version starts from byte 0."""
    bucket.add("cat", 200)
    bucket.mode = "cut"
    with pytest.raises(QdkitError, match="run again to resume"):
        _get(bucket, ["cat"], out)
    part = out / (bitmap_filename("cat") + ".part")
    assert part.exists() and (out / (part.name + ".validator")).exists()
    new = bucket.add("cat", 200, seed=5)  # same size, other rows
    bucket.mode = "normal"
    bucket.requests.clear()
    (path,) = _get(bucket, ["cat"], out)
    assert np.array_equal(open_bitmaps(path), new)
    assert bucket.ranges()[-1].startswith(f"bytes={1024}-") or bucket.ranges()[-1].startswith("bytes=0-")
    assert sorted(p.name for p in out.iterdir()) == [path.name]


def test_header_claiming_4_gib_is_refused_after_one_small_request(bucket, out):
    path = bucket.bitmap("cat")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little") + bytes(3 << 20))
    with pytest.raises(QdkitError, match=r"cat\.npy: \.npy header claims 4294967295 bytes"):
        _get(bucket, ["cat"], out, limit=5)
    assert len(bucket.requests) == 1 and bucket.bytes_sent <= 1024
    assert list(out.iterdir()) == []


def test_negative_shape_from_the_server_is_one_line(bucket, out):
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (-3, 784), }"
    header += " " * (117 - len(header)) + "\n"
    path = bucket.bitmap("cat")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    result = CliRunner().invoke(main, ["download", "--classes", "cat", "--out", str(out), "--base-url", bucket.url])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("qdkit: error: ") and "negative dimension" in result.stderr
    assert result.stderr.count("\n") == 1


# --- issue 8 item 4: the stroke formats -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["simplified", "raw"])
def test_ndjson_limit_fetches_whole_lines_with_growing_ranges(bucket, out, fmt):
    data = synthetic_ndjson(3000, raw=fmt == "raw")
    bucket.add_file(fmt, "cat.ndjson", data)
    (path,) = download_classes(["cat"], out, limit=37, base_url=bucket.url, timeout=5, fmt=fmt)
    assert path == out / f"full_{fmt}_cat.ndjson"
    assert path.read_bytes() == b"".join(data.splitlines(keepends=True)[:37])
    assert all(p == f"/full/{fmt}/cat.ndjson" for p, _ in bucket.requests)
    assert all(r is not None for r in bucket.ranges())
    assert bucket.bytes_sent < len(data) / 5, "only about the lines asked for"
    assert sorted(p.name for p in out.iterdir()) == [path.name], "no .part or validator left"


def test_ndjson_limit_needing_many_ranges(bucket, out):
    """Short lines first, then ever longer ones: each estimate falls short and the range grows again."""
    lines = [b'{"drawing": [[[0], [0]]], "pad": "' + b"x" * (i * i // 40) + b'"}\n' for i in range(2000)]
    data = b"".join(lines)
    bucket.add_file("simplified", "cat.ndjson", data)
    (path,) = download_classes(["cat"], out, limit=1500, base_url=bucket.url, timeout=5, fmt="simplified")
    assert path.read_bytes() == b"".join(lines[:1500])
    assert len(bucket.requests) >= 3, "grew the range more than once"
    assert bucket.bytes_sent < len(data) * 0.8


def test_ndjson_whole_file_and_limit_beyond_it(bucket, out):
    data = synthetic_ndjson(40)[:-1]  # the last line without its newline: still a drawing
    bucket.add_file("simplified", "The Eiffel Tower.ndjson", data)
    (path,) = download_classes(["The Eiffel Tower"], out, base_url=bucket.url, timeout=5, fmt="simplified")
    assert path.name == "full_simplified_The Eiffel Tower.ndjson" and path.read_bytes() == data
    path.unlink()
    (path,) = download_classes(["The Eiffel Tower"], out, limit=100, base_url=bucket.url, timeout=5, fmt="simplified")
    assert path.read_bytes() == data
    bucket.requests.clear()
    download_classes(["The Eiffel Tower"], out, limit=40, base_url=bucket.url, timeout=5, fmt="simplified")
    assert bucket.requests == [], "40 drawings on disk already: no request"


def test_binary_limit_walks_whole_records(bucket, out):
    records = synthetic_binary(2000)
    bucket.add_file("binary", "cat.bin", b"".join(records))
    (path,) = download_classes(["cat"], out, limit=123, base_url=bucket.url, timeout=5, fmt="binary")
    assert path == out / "full_binary_cat.bin"
    assert path.read_bytes() == b"".join(records[:123])
    assert bucket.bytes_sent < len(b"".join(records)) / 4


def test_binary_whole_file_is_checked_to_the_last_record(bucket, out):
    records = synthetic_binary(50, seed=1)
    bucket.add_file("binary", "cat.bin", b"".join(records))
    (path,) = download_classes(["cat"], out, base_url=bucket.url, timeout=5, fmt="binary")
    assert path.read_bytes() == b"".join(records)
    bucket.add_file("binary", "dog.bin", b"".join(records)[:-5])
    with pytest.raises(QdkitError, match=r"dog\.bin: truncated binary record 49"):
        download_classes(["dog"], out, base_url=bucket.url, timeout=5, fmt="binary")
    assert sorted(p.name for p in out.iterdir()) == [path.name]


def test_binary_record_claiming_gigabytes_is_refused(bucket, out):
    import struct

    stroke = struct.pack("<H", 65535) + bytes(2 * 65535)
    bucket.add_file("binary", "cat.bin", struct.pack("<Q2sbIH", 1, b"US", 1, 1, 65535) + stroke * 9)
    with pytest.raises(QdkitError, match="binary record 0 claims more than"):
        download_classes(["cat"], out, limit=3, base_url=bucket.url, timeout=5, fmt="binary")


def test_ndjson_limited_download_resumes_after_a_cut(bucket, out):
    data = synthetic_ndjson(3000, seed=2)
    bucket.add_file("simplified", "cat.ndjson", data)
    bucket.mode = "cut"
    with pytest.raises(QdkitError, match="run again to resume"):
        download_classes(["cat"], out, limit=1500, base_url=bucket.url, timeout=5, fmt="simplified")
    part = out / "full_simplified_cat.ndjson.part"
    held = part.stat().st_size
    bucket.mode = "normal"
    bucket.requests.clear()
    (path,) = download_classes(["cat"], out, limit=1500, base_url=bucket.url, timeout=5, fmt="simplified")
    assert path.read_bytes() == b"".join(data.splitlines(keepends=True)[:1500])
    assert any(r.startswith(f"bytes={held}-") for r in bucket.ranges()), "resumed where it stopped"


@pytest.mark.parametrize(
    "body, what",
    [
        (b"<!doctype html><p>quota</p>", "HTML page"),
        (b"\x1f\x8b\x08\x00gzipped", "gzip-compressed"),
        (b"PK\x03\x04zip", "does not start with a JSON object"),
    ],
)
def test_ndjson_that_is_something_else(bucket, out, body, what):
    bucket.add_file("simplified", "cat.ndjson", body)
    with pytest.raises(QdkitError, match=rf"cat\.ndjson: not an ndjson stroke file \(.*{what}"):
        download_classes(["cat"], out, limit=3, base_url=bucket.url, timeout=5, fmt="simplified")
    assert list(out.iterdir()) == []


def test_stroke_file_changing_during_a_limited_download(bucket, out):
    data = synthetic_ndjson(3000, seed=4)
    path = bucket.add_file("simplified", "cat.ndjson", data)
    bucket.before_request = lambda n: path.write_bytes(synthetic_ndjson(3000, seed=7)) if n == 2 else None
    with pytest.raises(QdkitError, match="changed on the server during the download"):
        download_classes(["cat"], out, limit=2000, base_url=bucket.url, timeout=5, fmt="simplified")
    assert list(out.iterdir()) == []


def test_cli_download_formats(bucket, out):
    bucket.add_file("simplified", "cat.ndjson", synthetic_ndjson(30))
    bucket.add_file("binary", "cat.bin", b"".join(synthetic_binary(30)))
    for fmt, name in (("simplified", "full_simplified_cat.ndjson"), ("binary", "full_binary_cat.bin")):
        result = CliRunner().invoke(
            main,
            [
                "download",
                "--classes",
                "cat",
                "--format",
                fmt,
                "--limit",
                "4",
                "--out",
                str(out),
                "--base-url",
                bucket.url,
            ],
        )
        assert result.exit_code == 0, result.output
        assert (out / name).exists()
    bad = CliRunner().invoke(main, ["download", "--classes", "cat", "--format", "svg", "--out", str(out)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


@pytest.mark.parametrize("fmt", ["simplified", "raw", "binary"])
def test_downloaded_stroke_files_convert(bucket, out, tmp_path, fmt):
    """The saved names are the ones `qdkit convert` reads; a --limit download converts to a store."""
    from qdkit.data.store import open_store

    for seed, name in enumerate(("cat", "dog")):
        if fmt == "binary":
            bucket.add_file("binary", f"{name}.bin", b"".join(synthetic_binary(200, seed=seed)))
        else:
            bucket.add_file(fmt, f"{name}.ndjson", synthetic_ndjson(200, seed=seed, word=name, raw=fmt == "raw"))
    runner = CliRunner()
    got = runner.invoke(
        main,
        [
            "download",
            "--classes",
            "cat,dog",
            "--format",
            fmt,
            "--limit",
            "30",
            "--out",
            str(out),
            "--base-url",
            bucket.url,
        ],
    )
    assert got.exit_code == 0, got.output
    made = runner.invoke(
        main,
        [
            "convert",
            "--in",
            str(out),
            "--out",
            str(tmp_path / "data"),
            "--no-png",
            "--h5",
            "--train",
            "20",
            "--validation",
            "5",
            "--test",
            "5",
        ],
    )
    assert made.exit_code == 0, made.output
    store = open_store(tmp_path / "data" / "quickdraw.h5")
    assert store.class_names == ["cat", "dog"] and store.counts == {"train": 40, "validation": 10, "test": 10}
    assert max(store.split("train").source_index) < 30, "only the downloaded drawings"
