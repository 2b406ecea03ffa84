"""The binary record format of the dataset (quickdraw-dataset README: "The binary data format"):
key_id uint64, country code 2 bytes, recognized uint8, timestamp uint32, stroke count uint16, then
per stroke its point count uint16 and the x and y uint8 arrays."""

from __future__ import annotations

import mmap
import struct

import numpy as np

from qdkit.strokes.drawing import MAX_POINTS, MAX_STROKES, Drawing, StrokeError, ascii_int

_RECORD_HEAD = struct.Struct("<Q2sbIH")  # key_id, countrycode, recognized, timestamp, n_strokes


def read_binary(buf: bytes | memoryview | mmap.mmap, offset: int = 0) -> tuple[Drawing, int]:
    """The record at `offset` of a binary file's bytes: (drawing, offset of the next record)."""
    end = len(buf)
    if offset + _RECORD_HEAD.size > end:
        raise StrokeError("truncated record header")
    key_id, country, recognized, timestamp, n_strokes = _RECORD_HEAD.unpack_from(buf, offset)
    pos = offset + _RECORD_HEAD.size
    if n_strokes == 0:
        raise StrokeError("record has no strokes")
    if n_strokes > MAX_STROKES:
        raise StrokeError(f"record has {n_strokes} strokes (at most {MAX_STROKES})")
    strokes: list[np.ndarray] = []
    lengths: list[int] = []
    points = 0
    for i in range(n_strokes):
        if pos + 2 > end:
            raise StrokeError(f"truncated record (stroke {i})")
        (n,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        if n == 0:
            raise StrokeError(f"stroke {i} is empty")
        if pos + 2 * n > end:
            raise StrokeError(f"truncated record (stroke {i})")
        points += n
        if points > MAX_POINTS:  # the cap of parsed drawings, for binary records too
            raise StrokeError(f"drawing has more than {MAX_POINTS} points")
        xy = np.frombuffer(buf, dtype=np.uint8, count=2 * n, offset=pos).reshape(2, n)
        strokes.append(xy)
        lengths.append(n)
        pos += 2 * n
    try:
        countrycode = bytes(country).decode("ascii").rstrip("\x00")
    except UnicodeDecodeError as err:
        raise StrokeError("country code is not ASCII") from err
    drawing = Drawing(
        np.concatenate(strokes, axis=1).astype(np.float64),
        tuple(lengths),
        True,
        key_id=str(key_id),
        countrycode=countrycode,
        recognized=bool(recognized),
        timestamp=str(timestamp),
    )
    return drawing, pos


def binary_record_end(buf: bytes | memoryview | mmap.mmap, offset: int) -> int:
    """Offset just past the record at `offset`, reading only its lengths (for indexing a file)."""
    end = len(buf)
    if offset + _RECORD_HEAD.size > end:
        raise StrokeError("truncated record header")
    (n_strokes,) = struct.unpack_from("<H", buf, offset + _RECORD_HEAD.size - 2)
    pos = offset + _RECORD_HEAD.size
    for i in range(n_strokes):
        if pos + 2 > end:
            raise StrokeError(f"truncated record (stroke {i})")
        (n,) = struct.unpack_from("<H", buf, pos)
        pos += 2 + 2 * n
    if pos > end:
        raise StrokeError("truncated record")
    return pos


def pack_binary(drawing: Drawing) -> bytes:
    """One binary record (simplified strokes, 0..255). key_id and timestamp default to 0."""
    if not drawing.simplified:
        raise StrokeError("the binary format holds simplified strokes only")
    country = (drawing.countrycode or "").encode("ascii", "replace")[:2].ljust(2, b"\x00")
    parts = [
        _RECORD_HEAD.pack(
            ascii_int(drawing.key_id) or 0,
            country,
            int(bool(drawing.recognized)),
            ascii_int((drawing.timestamp or "").split(".")[0], 2**32) or 0,
            len(drawing.lengths),
        )
    ]
    for s in drawing.strokes:
        parts.append(struct.pack("<H", s.shape[1]))
        parts.append(np.round(s).astype(np.uint8).tobytes())
    return b"".join(parts)
