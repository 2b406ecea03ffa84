"""qdkit.strokes and stroke sources of convert: byte-exact rendering, simplify(), the file formats,
and every bad input as one line naming file and line."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from _helpers import FIXTURES, SHARED
from click.testing import CliRunner

from qdkit.cli import main
from qdkit.data.convert import convert
from qdkit.errors import QdkitError
from qdkit.strokes import (
    MAX_POINTS,
    MAX_STROKES,
    Drawing,
    StrokeError,
    pack_binary,
    parse_drawing,
    parse_ndjson_line,
    rasterize,
    rasterize_many,
    read_binary,
    simplify,
    to_bitmap,
)

GOLDEN_LINES = (FIXTURES / "golden_strokes.ndjson").read_bytes().splitlines()
GOLDEN_BITMAPS = np.load(FIXTURES / "golden_bitmaps.npy")
SPLITS = ("train", "validation", "test")


def test_golden_fixture_is_byte_exact():
    drawings = [parse_ndjson_line(line) for line in GOLDEN_LINES]
    assert all(d.simplified for d in drawings)
    got = rasterize_many(drawings).reshape(len(drawings), -1)
    assert got.dtype == np.uint8
    assert np.array_equal(got, GOLDEN_BITMAPS)
    assert np.array_equal(rasterize(drawings[0]).ravel(), GOLDEN_BITMAPS[0])


@pytest.mark.skipif(not (SHARED / "strokes").is_dir(), reason="../shared/quickdraw not on this machine")
def test_golden_shared_rows_are_byte_exact():
    for name in ("bear", "bee", "cat", "dog", "duck"):
        lines = (SHARED / "strokes" / f"{name}.ndjson").read_bytes().splitlines()
        rows = np.load(SHARED / "animals10" / f"full_numpy_bitmap_{name}.npy", mmap_mode="r")[: len(lines)]
        got = rasterize_many([parse_ndjson_line(line) for line in lines]).reshape(len(lines), -1)
        assert np.array_equal(got, rows), name


def test_stroke_lists_and_drawings_render_alike():
    obj = json.loads(GOLDEN_LINES[2])
    d = parse_drawing(obj)
    assert (d.word, d.recognized, d.countrycode) == (obj["word"], obj["recognized"], obj["countrycode"])
    assert d.to_json() == obj["drawing"]
    assert np.array_equal(rasterize(d.strokes), rasterize(d))
    assert np.array_equal(to_bitmap(obj["drawing"], simplified=True).ravel(), GOLDEN_BITMAPS[2])
    # bigger renderings follow the same recipe, scaled
    big = rasterize(d, side=112)
    assert big.shape == (112, 112) and big.max() == 255


def test_a_one_point_stroke_is_a_dot():
    dot = rasterize([np.array([[128.0], [128.0]])])
    assert dot.max() > 100 and 1 <= (dot > 0).sum() <= 9  # round caps of a zero-length segment


# --- simplify -------------------------------------------------------------------------------------


def _raw_strokes(rng: np.random.Generator, scale: float, shift: float) -> list[np.ndarray]:
    strokes = []
    for _ in range(rng.integers(1, 6)):
        n = int(rng.integers(2, 80))
        walk = np.cumsum(rng.normal(0, 1, (2, n)), axis=1)
        strokes.append(walk * scale + shift)
    return strokes


def _resampled(strokes: list[np.ndarray]) -> list[np.ndarray]:
    from _simplify_reference import reference_resample  # the procedure's own step (tests/)

    allxy = np.concatenate(strokes, axis=1)
    low = allxy.min(axis=1, keepdims=True)
    extent = (allxy - low).max()
    return [np.array(reference_resample(*((s - low) * 255.0 / extent).tolist())).T for s in strokes]


@pytest.mark.parametrize("seed", range(8))
def test_simplify_properties(seed):
    rng = np.random.default_rng(seed)
    raw = _raw_strokes(rng, scale=float(rng.choice([0.01, 3.0, 700.0])), shift=float(rng.uniform(-1e4, 1e4)))
    out = simplify(raw)
    allxy = np.concatenate(out, axis=1)
    assert len(out) == len(raw)
    assert np.array_equal(allxy, np.round(allxy)) and allxy.min() >= 0 and allxy.max() <= 255
    for stroke, dense in zip(out, _resampled(raw), strict=True):
        # every kept vertex is a (rounded) resampled point, the stroke's first and last among them;
        # RDP measures to the line through a span's ends (Google's; see tests/strokes/test_simplify_exact.py)
        assert 2 <= stroke.shape[1] <= dense.shape[1]
        assert set(map(tuple, stroke.T.tolist())) <= set(map(tuple, np.round(dense).T.tolist()))
        assert np.array_equal(stroke[:, [0, -1]], np.round(dense[:, [0, -1]]))
    assert sum(s.shape[1] for s in out) < sum(s.shape[1] for s in _resampled(raw))


def test_simplify_a_single_point_and_raw_drawings_render():
    assert [s.tolist() for s in simplify([np.array([[5.0], [7.0]])])] == [[[0.0, 0.0], [0.0, 0.0]]]  # twice
    raw = parse_drawing([[[10, 400, 800], [10, 20, 600], [0, 10, 20]]])
    assert not raw.simplified
    assert np.array_equal(rasterize(raw), rasterize(simplify(raw)))


# --- the binary format ----------------------------------------------------------------------------


def test_binary_round_trip():
    blob = b""
    drawings = [parse_ndjson_line(line) for line in GOLDEN_LINES]
    for d in drawings:
        blob += pack_binary(d)
    offset = 0
    for d in drawings:
        back, offset = read_binary(blob, offset)
        assert np.array_equal(back.xy, d.xy) and back.lengths == d.lengths
        assert (back.key_id, back.countrycode, back.recognized) == (d.key_id, d.countrycode, d.recognized)
    assert offset == len(blob)


# --- bad input: parsing -----------------------------------------------------------------------------

BAD_DRAWINGS = [
    ("not a list", "{}", "object has no 'drawing' key"),
    ("no strokes", '{"drawing": []}', "drawing has no strokes"),
    ("stroke not a pair", '{"drawing": [[1, 2, 3]]}', "stroke 0 xs is int"),
    ("stroke with one array", '{"drawing": [[[1, 2]]]}', "stroke 0 is not [xs, ys]"),
    ("lengths differ", '{"drawing": [[[1, 2], [3]]]}', "stroke 0 has 2 xs but 1 ys"),
    ("empty stroke", '{"drawing": [[[1], [1]], [[], []]]}', "stroke 1 is empty"),
    ("string coordinate", '{"drawing": [[["1", 2], [3, 4]]]}', "stroke 0 holds something other than numbers"),
    ("bool coordinate", '{"drawing": [[[true, 2], [3, 4]]]}', "stroke 0 holds something other than numbers"),
    ("null coordinate", '{"drawing": [[[null, 2], [3, 4]]]}', "stroke 0 holds something other than numbers"),
    ("nested coordinate", '{"drawing": [[[[1], 2], [3, 4]]]}', "stroke 0 holds something other than numbers"),
    ("out of range", '{"drawing": [[[1, 256], [3, 4]]]}', "coordinates outside 0..255"),
    ("negative", '{"drawing": [[[-1, 2], [3, 4]]]}', "coordinates outside 0..255"),
    ("NaN", '{"drawing": [[[NaN, 2], [3, 4]]]}', "is not JSON"),
    ("huge float", '{"drawing": [[[1e400, 2], [3, 4]]]}', "is not JSON"),
    ("times of other length", '{"drawing": [[[1, 2], [3, 4], [0]]]}', "stroke 0 has 2 points but 1 times"),
    ("truncated JSON", '{"drawing": [[[1, 2], [3, 4]]', "is not JSON"),
    ("wrong metadata type", '{"drawing": [[[1], [1]]], "recognized": "yes"}', "'recognized' is str"),
]


@pytest.mark.parametrize("line,message", [(b[1], b[2]) for b in BAD_DRAWINGS], ids=[b[0] for b in BAD_DRAWINGS])
def test_bad_drawings_say_what_is_wrong(line, message):
    with pytest.raises(StrokeError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        parse_ndjson_line(line)


def test_caps_on_strokes_and_points():
    with pytest.raises(StrokeError, match=f"at most {MAX_STROKES}"):
        parse_drawing([[[1], [1]]] * (MAX_STROKES + 1))
    with pytest.raises(StrokeError, match=f"more than {MAX_POINTS} points"):
        parse_drawing([[[1.0] * (MAX_POINTS // 2 + 1), [1.0] * (MAX_POINTS // 2 + 1)]] * 2)
    with pytest.raises(StrokeError, match="infinity"):
        parse_drawing([[[float("inf")], [1.0]]], simplified=False)
    with pytest.raises(StrokeError, match="beyond"):
        parse_drawing([[[1e12], [1.0]]], simplified=False)


def test_gzip_and_truncated_binary_are_refused():
    with pytest.raises(StrokeError, match="gzip"):
        parse_ndjson_line(gzip.compress(GOLDEN_LINES[0]))
    record = pack_binary(parse_ndjson_line(GOLDEN_LINES[0]))
    for cut in (5, 20, len(record) - 1):
        with pytest.raises(StrokeError, match="truncated"):
            read_binary(record[:cut])


# --- convert from every format gives the store of the same drawings' bitmaps -------------------------


def _kaggle_csv(lines: list[bytes]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["countrycode", "drawing", "key_id", "recognized", "timestamp", "word"])
    for line in lines:
        o = json.loads(line)
        writer.writerow(
            [o["countrycode"], json.dumps(o["drawing"]), o["key_id"], str(o["recognized"]), o["timestamp"], o["word"]]
        )
    return out.getvalue()


def _store(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with h5py.File(path) as f:
        return {s: {k: f[s][k][()] for k in f[s]} for s in SPLITS}


@pytest.fixture(scope="module")
def golden_store(tmp_path_factory) -> dict:
    """The golden drawings converted from their official bitmap rows (the reference)."""
    folder = tmp_path_factory.mktemp("npy")
    np.save(folder / "golden.npy", GOLDEN_BITMAPS)
    convert(
        folder,
        folder / "out",
        h5=True,
        png=False,
        per_class={"train": 4, "validation": 1, "test": 1},
        progress=False,
        workers=1,
    )
    return _store(folder / "out" / "quickdraw.h5")


@pytest.mark.parametrize(
    "name", ["full_simplified_golden.ndjson", "golden.ndjson", "full_binary_golden.bin", "golden.bin", "golden.csv"]
)
def test_convert_of_each_format_equals_convert_of_the_bitmaps(tmp_path, golden_store, name):
    path = tmp_path / "in" / name
    path.parent.mkdir()
    if name.endswith(".ndjson"):
        path.write_bytes(b"\n".join(GOLDEN_LINES) + b"\n")
    elif name.endswith(".bin"):
        path.write_bytes(b"".join(pack_binary(parse_ndjson_line(line)) for line in GOLDEN_LINES))
    else:
        path.write_text(_kaggle_csv(GOLDEN_LINES))
    convert(
        path.parent,
        tmp_path / "out",
        h5=True,
        png=True,
        per_class={"train": 4, "validation": 1, "test": 1},
        progress=False,
        workers=2,
    )
    got = _store(tmp_path / "out" / "quickdraw.h5")
    for split in SPLITS:
        for key in ("images", "labels", "source_index"):
            assert np.array_equal(got[split][key], golden_store[split][key]), (split, key)
        keys = [json.loads(GOLDEN_LINES[i])["key_id"] for i in got[split]["source_index"]]
        assert got[split]["key_id"].tolist() == [int(k) for k in keys]
        assert got[split]["countrycode"].tolist() == [
            json.loads(GOLDEN_LINES[i])["countrycode"].encode() for i in got[split]["source_index"]
        ]
    pngs = sorted(p.name for p in (tmp_path / "out" / "png" / "train" / "golden").iterdir())
    assert pngs == sorted(f"{i}.png" for i in golden_store["train"]["source_index"])
    with h5py.File(tmp_path / "out" / "quickdraw.h5") as f:
        source = json.loads(f.attrs["sources"])[0]
    assert source["file"] == name and source["rows"] == len(GOLDEN_LINES)


def _train_split_of(tmp_path: Path) -> dict[str, np.ndarray]:
    """Convert tmp_path/in, all six drawings per class into train; the train split of the store."""
    convert(tmp_path / "in", tmp_path / "out", h5=True, png=False, per_class={"train": 6}, progress=False, workers=1)
    return _store(tmp_path / "out" / "quickdraw.h5")["train"]


def test_raw_strokes_are_simplified_then_rendered(tmp_path):
    rng = np.random.default_rng(0)
    raws = [_raw_strokes(rng, 5.0, 300.0) for _ in range(6)]
    lines = [
        json.dumps({"word": "w", "drawing": [[s[0].tolist(), s[1].tolist(), list(range(s.shape[1]))] for s in raw]})
        for raw in raws
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "full_raw_w.ndjson").write_text("\n".join(lines) + "\n")
    got = _train_split_of(tmp_path)
    want = rasterize_many([simplify(raws[i]) for i in got["source_index"]])
    assert np.array_equal(got["images"], want)


def test_one_class_per_format_mixed_with_bitmaps(tmp_path):
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "full_numpy_bitmap_a.npy", GOLDEN_BITMAPS)
    (tmp_path / "in" / "b.ndjson").write_bytes(b"\n".join(GOLDEN_LINES))
    got = _train_split_of(tmp_path)
    a, b = got["labels"] == 0, got["labels"] == 1
    assert np.array_equal(got["images"][a], got["images"][b])
    assert (got["key_id"][a] == 0).all() and (got["key_id"][b] > 0).all()


# --- convert: bad lines, --skip-invalid, --recognized-only ---------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _convert(tmp_path: Path, out: str, splits: tuple[int, int, int], *flags: str):
    """`qdkit convert` of tmp_path/in into tmp_path/OUT, the store only, `splits` drawings per class."""
    counts = [str(n) for n in splits]
    return _cli("convert", "--in", str(tmp_path / "in"), "--out", str(tmp_path / out), "--h5", "--no-png",
                "--train", counts[0], "--validation", counts[1], "--test", counts[2], *flags)  # fmt: skip


def _stored_rows(store: Path) -> list[int]:
    """Every source row in the store, sorted."""
    with h5py.File(store) as f:
        return sorted(np.concatenate([f[s]["source_index"][()] for s in SPLITS]).tolist())


def _error(result) -> str:
    """The one error line (after any progress bar), checking there is exactly one and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("qdkit: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _write_lines(folder: Path, name: str, lines: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\n".join(lines) + b"\n")
    return folder / name


def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path):
    lines = list(GOLDEN_LINES) + [b'{"drawing": [[[1, 2], [3]]]}']
    path = _write_lines(tmp_path / "in", "cat.ndjson", lines)
    result = _convert(tmp_path, "out", (5, 1, 1))
    assert result.exit_code == 2
    assert _error(result) == f"qdkit: error: {path}: line 7: stroke 0 has 2 xs but 1 ys"
    assert not (tmp_path / "out").exists()


def test_skip_invalid_skips_and_counts(tmp_path):
    lines = list(GOLDEN_LINES) + [b"not json", b'{"drawing": [[[1, 2], [3, 900]]]}']
    _write_lines(tmp_path / "in", "full_simplified_cat.ndjson", lines)
    result = _convert(tmp_path, "out", (4, 1, 1), "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert "skipped 2 invalid drawing(s); first:" in result.stderr and "line 7: is not JSON" in result.stderr
    with h5py.File(tmp_path / "out" / "quickdraw.h5") as f:
        assert json.loads(f.attrs["sources"])[0]["skipped_invalid"] == 2
    assert _stored_rows(tmp_path / "out" / "quickdraw.h5") == list(range(6))


def test_recognized_only_keeps_recognized_drawings(tmp_path):
    lines = []
    for i, line in enumerate(GOLDEN_LINES):
        o = json.loads(line)
        o["recognized"] = i % 2 == 0
        lines.append(json.dumps(o).encode())
    _write_lines(tmp_path / "in", "cat.ndjson", lines)
    result = _convert(tmp_path, "out", (2, 1, 0), "--recognized-only")
    assert result.exit_code == 0, result.output
    assert _stored_rows(tmp_path / "out" / "quickdraw.h5") == [0, 2, 4]
    result = _convert(tmp_path, "out2", (3, 1, 0), "--recognized-only")
    assert result.exit_code == 2 and "has 3 recognized drawings, but the splits need 4" in _error(result)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("cat.ndjson", gzip.compress(b"\n".join(GOLDEN_LINES)), "is gzip-compressed"),
        ("cat.ndjson", b"", "is empty"),
        ("cat.ndjson", b"\n\n\r\n", "holds no drawings"),
        ("cat.bin", pack_binary(parse_ndjson_line(GOLDEN_LINES[0]))[:-3], "record 0: truncated record"),
        ("cat.csv", b"word,strokes\ncat,[]\n", "CSV header has no 'drawing' column"),
        ("cat.csv", b'drawing,word\n"[[[1],[1]]]",cat,extra\n', "line 2: has 3 fields, the header 2"),
    ],
)
def test_bad_stroke_files(tmp_path, name, content, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(content)
    result = _convert(tmp_path, "out", (1, 0, 0))
    assert result.exit_code == 2, result.output
    line = _error(result)
    assert line.startswith(f"qdkit: error: {tmp_path / 'in' / name}: ") and message in line
    assert not (tmp_path / "out").exists()


def test_two_files_for_one_class_are_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cat.ndjson").write_bytes(GOLDEN_LINES[0])
    np.save(tmp_path / "in" / "cat.npy", GOLDEN_BITMAPS)
    with pytest.raises(QdkitError, match="class 'cat' also comes from"):
        convert(tmp_path / "in", tmp_path / "out", h5=True, png=False, per_class={"train": 1}, progress=False)


def test_synth_ndjson_converts_to_the_synth_bitmaps(tmp_path):
    for fmt in ("bitmap", "ndjson"):
        assert _cli("synth", str(tmp_path / fmt), "--classes", "2", "--per-class", "8", "--format", fmt).exit_code == 0
        result = _cli(
            "convert",
            "--in",
            str(tmp_path / fmt),
            "--out",
            str(tmp_path / f"{fmt}-out"),
            "--h5",
            "--no-png",
            "--train",
            "6",
            "--validation",
            "1",
            "--test",
            "1",
        )
        assert result.exit_code == 0, result.output
    a, b = _store(tmp_path / "bitmap-out" / "quickdraw.h5"), _store(tmp_path / "ndjson-out" / "quickdraw.h5")
    assert all(np.array_equal(a[s]["images"], b[s]["images"]) for s in SPLITS)
    first = json.loads((tmp_path / "ndjson" / "full_simplified_circle.ndjson").read_bytes().splitlines()[0])
    assert first["word"] == "circle" and isinstance(parse_drawing(first), Drawing)


# --- qdkit render -------------------------------------------------------------------------------------


def test_render_writes_what_the_model_sees(tmp_path):
    from PIL import Image

    path = _write_lines(tmp_path / "in", "cat.ndjson", list(GOLDEN_LINES))
    result = _cli("render", str(path), "--out", str(tmp_path / "png"))
    assert result.exit_code == 0, result.output
    assert f"rendered {len(GOLDEN_LINES)} drawings" in result.stdout
    for i, row in enumerate(GOLDEN_BITMAPS):
        png = np.asarray(Image.open(tmp_path / "png" / f"cat-{i + 1}.png"))
        assert np.array_equal(255 - png.ravel(), row)  # black ink on white, the official pixels
    sheet = Image.open(tmp_path / "png" / "sheet.png")
    assert sheet.size == (len(GOLDEN_LINES) * 29 + 1, 29 + 1)
    # Again into the same folder: render's own PNGs are refreshed (no --overwrite needed), the rest kept.
    again = _cli("render", str(path), "--out", str(tmp_path / "png"), "--size", "64", "--limit", "2")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(
        [f"cat-{i + 1}.png" for i in range(len(GOLDEN_LINES))] + ["sheet.png"]
    )
    assert Image.open(tmp_path / "png" / "cat-1.png").size == (64, 64)


def test_render_bad_inputs(tmp_path):
    bad = _write_lines(tmp_path / "in", "dog.ndjson", [GOLDEN_LINES[0], b"[[[1, 2]]]"])
    result = _cli("render", str(bad), "--out", str(tmp_path / "png"))
    assert result.exit_code == 2
    assert _error(result) == (
        f"qdkit: error: {bad}: line 2: stroke 0 is not [xs, ys] or [xs, ys, ts] (--skip-invalid skips bad drawings)"
    )
    assert not (tmp_path / "png").exists()
    result = _cli("render", str(tmp_path / "in" / "x.png"), "--out", str(tmp_path / "png"))
    assert result.exit_code == 2 and "not a stroke file" in _error(result)
