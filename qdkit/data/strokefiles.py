"""Quick Draw stroke files on disk: name them, index their records, read chosen records as bitmaps.

Formats (the official per-class files and the Kaggle Doodle competition's CSVs):

| file name                                        | kind         | a record is                      |
|--------------------------------------------------|--------------|----------------------------------|
| `full_simplified_<class>.ndjson`                 | `simplified` | one JSON line                    |
| `full_raw_<class>.ndjson`                        | `raw`        | one JSON line (simplified first) |
| `<class>.ndjson`                                 | `ndjson`     | one JSON line, raw iff timed     |
| `full_binary_<class>.bin`, `<class>.bin`         | `binary`     | one binary record                |
| `<class>.csv`                                    | `csv`        | one CSV row with a `drawing`     |

A record's number (line or record of the file, counted from 0; for CSV the row after the header)
is its `source_index` in the store, so every stored bitmap traces back to its strokes. Files are
memory-mapped and indexed with numpy (newline positions) or by walking record lengths (binary), so
memory stays bounded for 100k+ drawings per class; records are parsed and rasterized in pool
workers, which die with their parent.
"""

from __future__ import annotations

import csv
import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qdkit.errors import QdkitError
from qdkit.strokes import (
    Drawing,
    StrokeError,
    binary_record_end,
    parse_ndjson_line,
    read_binary,
    simplified,
)

# (prefix, suffix, kind), most specific first
_NAMES = (
    ("full_simplified_", ".ndjson", "simplified"),
    ("full_raw_", ".ndjson", "raw"),
    ("", ".ndjson", "ndjson"),
    ("full_binary_", ".bin", "binary"),
    ("", ".bin", "binary"),
    ("", ".csv", "csv"),
)
STROKE_SUFFIXES = (".ndjson", ".bin", ".csv")
MAX_RECORD_BYTES = 8 << 20  # one drawing's line or record; beyond this it is not a drawing
# csv's default field limit (131,072 characters) would refuse a long header or drawing with a bare
# _csv.Error; a drawing's field is capped by MAX_RECORD_BYTES instead.
csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_BYTES))


@dataclass(frozen=True)
class StrokeFile:
    path: Path
    class_name: str
    kind: str  # simplified | raw | ndjson | binary | csv

    @property
    def unit(self) -> str:
        return "record" if self.kind == "binary" else "line"


def stroke_file(path: str | os.PathLike) -> StrokeFile | None:
    """The StrokeFile a name denotes (`full_raw_cat.ndjson` → class `cat`, kind `raw`), else None."""
    path = Path(path)
    for prefix, suffix, kind in _NAMES:
        name = path.name
        if name.endswith(suffix) and name.startswith(prefix) and len(name) > len(prefix) + len(suffix):
            return StrokeFile(path, name[len(prefix) : -len(suffix)], kind)
    return None


@dataclass(frozen=True)
class RecordIndex:
    """Where each record of a file lies: bytes [starts[i], ends[i]) and its number in the file."""

    starts: np.ndarray
    ends: np.ndarray
    numbers: np.ndarray  # line (or record) number counted from 0 — the store's source_index
    stamp: tuple[int, int, int] | None = None  # (size, mtime_ns, inode) of the file when indexed

    def __len__(self) -> int:
        return len(self.starts)

    def take(self, rows: np.ndarray) -> RecordIndex:
        return RecordIndex(self.starts[rows], self.ends[rows], self.numbers[rows], self.stamp)


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def check_unchanged(sf: StrokeFile, index: RecordIndex) -> None:
    """A one-line QdkitError if the file is no longer the one `index` was made from (truncated,
    grown, rewritten or replaced while it was being read)."""
    if index.stamp is None:
        return
    try:
        now: tuple[int, int, int] | None = _stamp(os.stat(sf.path))
    except OSError:
        now = None
    if now != index.stamp:
        was = index.stamp[0]
        what = "removed" if now is None else f"{was:,} bytes when indexed, {now[0]:,} now"
        raise QdkitError(f"{sf.path}: changed on disk while being read ({what}); nothing written")


def _map(path: Path, stamp: list | None = None) -> mmap.mmap | None:
    """The file memory-mapped read-only; None when it is empty (mmap refuses size 0). A device or
    other non-regular file (a link to /dev/zero, say) is refused: it has no size to map."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise QdkitError(f"{path}: is not a regular file ({_kind(st.st_mode)})")
        if stamp is not None:
            stamp.append(_stamp(st))
        if st.st_size == 0:
            if f.read(1):  # an OSError (EIO) here is "cannot read", not "is empty"
                raise QdkitError(f"{path}: says it is 0 bytes long but holds data (copy it to a regular file first)")
            return None
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def _line_index(buf: mmap.mmap, first_number: int = 0, skip_first: bool = False) -> RecordIndex:
    """Records = non-empty lines. Newlines found with numpy over the mapped bytes, block by block."""
    size = len(buf)
    view = np.frombuffer(buf, dtype=np.uint8)
    newlines = [np.flatnonzero(view[i : i + (64 << 20)] == 10) + i for i in range(0, size, 64 << 20)]
    ends = np.concatenate(newlines + [np.array([size])]).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    numbers = np.arange(len(starts), dtype=np.int64)
    if skip_first:  # a CSV header: rows are numbered from the line after it
        starts, ends, numbers = starts[1:], ends[1:], numbers[1:] - 1
    stripped = ends - starts - (view[np.maximum(ends - 1, 0)] == 13)  # CRLF line ends
    keep = stripped > 0
    del view
    return RecordIndex(starts[keep], ends[keep], numbers[keep] + first_number)


def _binary_index(sf: StrokeFile, buf: mmap.mmap) -> RecordIndex:
    starts, pos, size = [], 0, len(buf)
    while pos < size:
        starts.append(pos)
        try:
            pos = binary_record_end(buf, pos)
        except StrokeError as err:
            raise QdkitError(f"{sf.path}: record {len(starts) - 1}: {err} (file cut short?)") from err
    s = np.array(starts, dtype=np.int64)
    return RecordIndex(s, np.append(s[1:], size), np.arange(len(s), dtype=np.int64))


def _csv_columns(sf: StrokeFile, header: bytes) -> dict[str, int]:
    if len(header) > MAX_RECORD_BYTES:
        raise QdkitError(f"{sf.path}: CSV header is {len(header):,} bytes long (at most {MAX_RECORD_BYTES:,})")
    try:
        names = next(csv.reader([header.decode("utf-8", "replace").strip()]), [])
    except csv.Error as err:
        raise QdkitError(f"{sf.path}: CSV header is not a CSV row ({err})") from None
    if "drawing" not in names:
        raise QdkitError(f"{sf.path}: CSV header has no 'drawing' column (found: {', '.join(names)[:80]})")
    return {n: i for i, n in enumerate(names)}


def index_records(sf: StrokeFile) -> RecordIndex:
    """Every record of the file (one pass over its bytes; nothing parsed but binary lengths)."""
    stamp: list = []
    try:
        buf = _map(sf.path, stamp)
    except FileNotFoundError as err:
        raise QdkitError(f"{sf.path}: no such file") from err
    except OSError as err:
        raise QdkitError(f"{sf.path}: cannot read ({err.strerror or err})") from err
    if buf is None:
        raise QdkitError(f"{sf.path}: is empty")
    try:
        index = _index_mapped(sf, buf)
    except OSError as err:  # EIO and the like while reading the mapped bytes
        raise QdkitError(f"{sf.path}: cannot read ({err.strerror or err})") from err
    finally:
        buf.close()
    if len(index) == 0:
        raise QdkitError(f"{sf.path}: holds no drawings")
    return replace(index, stamp=stamp[0])


def _index_mapped(sf: StrokeFile, buf: mmap.mmap) -> RecordIndex:
    if buf[:2] == b"\x1f\x8b":
        raise QdkitError(f"{sf.path}: is gzip-compressed, not {sf.kind} data (gunzip it first)")
    if sf.kind == "binary":
        return _binary_index(sf, buf)
    if sf.kind == "csv":
        _csv_columns(sf, buf[: buf.find(b"\n") if buf.find(b"\n") >= 0 else len(buf)])
        return _line_index(buf, skip_first=True)
    return _line_index(buf)


class RecordReader:
    """Parses records of one file in a worker: the format's one function from bytes to Drawing."""

    def __init__(self, sf: StrokeFile) -> None:
        self.sf = sf
        self.buf = _map(sf.path)
        self.columns: dict[str, int] = {}
        if sf.kind == "csv" and self.buf is not None:
            self.columns = _csv_columns(sf, self.buf[: self.buf.find(b"\n")])

    def drawing(self, start: int, end: int) -> Drawing:
        sf, buf = self.sf, self.buf
        assert buf is not None
        if end - start > MAX_RECORD_BYTES:
            raise StrokeError(f"is {end - start:,} bytes long (at most {MAX_RECORD_BYTES:,} bytes per drawing)")
        if sf.kind == "binary":
            return read_binary(buf[start:end])[0]
        line = buf[start:end]
        if sf.kind == "csv":
            return self._csv_drawing(line)
        return parse_ndjson_line(line, simplified={"simplified": True, "raw": False}.get(sf.kind))

    def ready(self, start: int, end: int) -> Drawing:
        """The record as the simplified drawing that is rasterized: every way one drawing can fail
        (parse, validation, simplification of degenerate raw coordinates) is a StrokeError here, per
        record, so scanning, rendering and predicting agree on which records are valid."""
        return simplified(self.drawing(start, end))

    def _csv_drawing(self, line: bytes) -> Drawing:
        try:
            row = next(csv.reader([line.decode("utf-8").rstrip("\r")]))
        except (UnicodeDecodeError, csv.Error) as err:
            raise StrokeError(f"is not a CSV row ({err})") from err
        if len(row) != len(self.columns):
            raise StrokeError(f"has {len(row)} fields, the header {len(self.columns)}")
        fields = dict(zip(self.columns, row, strict=True))
        drawing = parse_ndjson_line(fields["drawing"].encode())
        return replace(
            drawing,
            key_id=fields.get("key_id") or None,
            countrycode=fields.get("countrycode") or None,
            word=fields.get("word") or None,
            timestamp=fields.get("timestamp") or None,
            recognized={"true": True, "false": False}.get(fields.get("recognized", "").lower()),
        )


_readers: dict[Path, RecordReader] = {}


def record_reader(sf: StrokeFile) -> RecordReader:
    """One reader per file per worker process (the map and CSV header are reused across tasks)."""
    if sf.path not in _readers:
        _readers.clear()
        _readers[sf.path] = RecordReader(sf)
    return _readers[sf.path]


def display_number(sf: StrokeFile, number: int) -> int:
    """A record's number as people see it: its line in the file counted from 1, as editors do (a CSV
    row's line includes the header); binary records counted from 0, as source_index does."""
    return number if sf.unit == "record" else number + 2 if sf.kind == "csv" else number + 1


def where(sf: StrokeFile, number: int) -> str:
    """`FILE: line N` (or `record N`): a record as messages name it."""
    return f"{sf.path}: {sf.unit} {display_number(sf, number)}"


def iter_drawings(sf: StrokeFile) -> Iterator[tuple[int, Drawing]]:
    """(record number, Drawing) for every record, in this process (for predict and small jobs)."""
    index = index_records(sf)
    reader = RecordReader(sf)
    for start, end, number in zip(index.starts.tolist(), index.ends.tolist(), index.numbers.tolist(), strict=True):
        try:
            yield number, reader.drawing(start, end)
        except StrokeError as err:
            raise QdkitError(f"{where(sf, number)}: {err}") from err
