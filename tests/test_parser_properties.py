"""Property tests of the stroke parsers (issue 18): whatever the input — JSON-ish values, bytes, a
binary record, a CSV row — the result is a valid Drawing or a StrokeError/QdkitError, never another
exception, and quickly. A valid Drawing is then simplified and rasterized the same way (StrokeError
for degenerate coordinates, never another exception)."""

from __future__ import annotations

import csv
import io
import json
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdkit.data.strokefiles import RecordReader, StrokeFile
from qdkit.errors import QdkitError
from qdkit.strokes import Drawing, parse_drawing, parse_ndjson_line, read_binary, simplified

FAST = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e-300, max_value=1e-300),  # denormals and tiny ranges
    st.sampled_from([0, 255, 1e7, -1e7, 1e308, 5e-324, True, False]),
)
leaf = st.one_of(numbers, st.none(), st.text(max_size=4), st.booleans())
values = st.recursive(
    leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=40,
)
strokes = st.lists(st.lists(st.lists(numbers, min_size=0, max_size=8), min_size=1, max_size=4), min_size=0, max_size=5)
meta = st.fixed_dictionaries(
    {},
    optional={
        "word": st.one_of(st.text(max_size=5), numbers),
        "key_id": st.one_of(st.text(max_size=25), st.integers(-(2**70), 2**70), st.sampled_from(["²", "٣", "1²"])),
        "countrycode": st.one_of(st.text(max_size=3), st.none()),
        "recognized": st.one_of(st.booleans(), st.text(max_size=3)),
        "timestamp": st.one_of(st.text(max_size=6), numbers),
    },
)


def _valid(d: Drawing) -> None:
    assert isinstance(d, Drawing) and d.xy.shape == (2, sum(d.lengths)) and all(n >= 1 for n in d.lengths)
    assert np.isfinite(d.xy).all()
    try:
        s = simplified(d)
    except QdkitError:
        return
    assert s.simplified and s.xy.min() >= 0 and s.xy.max() <= 255


def _either(parse, *args, **kw) -> None:
    try:
        d = parse(*args, **kw)
    except QdkitError:  # StrokeError is one
        return
    _valid(d)


@FAST
@given(st.one_of(values, strokes))
def test_parse_drawing_any_value(obj):
    _either(parse_drawing, obj)


@FAST
@given(strokes, meta, st.sampled_from([None, True, False]))
def test_parse_drawing_ndjson_objects(drawing, extra, simplified_flag):
    _either(parse_drawing, {"drawing": drawing, **extra}, simplified=simplified_flag)


@FAST
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_parse_ndjson_line_any_bytes(line):
    _either(parse_ndjson_line, line)


@FAST
@given(strokes, meta)
def test_parse_ndjson_line_of_json(drawing, extra):
    try:
        line = json.dumps({"drawing": drawing, **extra}, allow_nan=True).encode()
    except (ValueError, OverflowError):
        return
    _either(parse_ndjson_line, line)


@FAST
@given(st.binary(max_size=300), st.integers(0, 40))
def test_read_binary_any_bytes(buf, offset):
    _either(lambda: read_binary(buf, offset)[0])


@FAST
@given(
    st.integers(0, 2**64 - 1),
    st.binary(min_size=2, max_size=2),
    st.integers(-128, 127),
    st.integers(0, 2**32 - 1),
    st.lists(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=6), max_size=5),
    st.integers(0, 4),
)
def test_read_binary_well_framed_records(key_id, country, recognized, timestamp, stroke_list, cut):
    body = b"".join(struct.pack("<H", len(s)) + bytes(x for x, _ in s) + bytes(y for _, y in s) for s in stroke_list)
    record = struct.pack("<Q2sbIH", key_id, country, recognized, timestamp, len(stroke_list)) + body
    _either(lambda: read_binary(record[: len(record) - cut])[0])


@FAST
@given(
    st.lists(
        st.sampled_from(["drawing", "key_id", "word", "countrycode", "recognized", "timestamp", "x"]),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    st.lists(
        st.one_of(st.text(max_size=30), strokes.map(json.dumps), st.sampled_from(["²", "٣", "true", ""])), max_size=6
    ),
)
def test_csv_row_path(tmp_path_factory, header, fields):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(header)
    header_line = buf.getvalue().encode()
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    row = buf.getvalue().encode()
    path = tmp_path_factory.mktemp("csv") / "cat.csv"
    path.write_bytes(header_line + row)
    try:
        reader = RecordReader(StrokeFile(path, "cat", "csv"))
    except QdkitError:
        return
    start = len(header_line)
    _either(reader.drawing, start, start + len(row.rstrip(b"\n")))
