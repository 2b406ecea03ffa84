"""Quick, Draw! strokes: the one definition of drawing → 28×28 bitmap.

Convert, predict and the service call this module and nothing else draws strokes. It holds
- `Drawing` and `parse_drawing`: the stroke format `[[xs, ys], ...]` (simplified) or
  `[[xs, ys, ts], ...]` (raw), validated;
- `simplify`: the dataset's published simplification of raw strokes (any coordinate range);
- `rasterize`: the dataset's published rendering (cairo), byte for byte the official bitmaps;
- the binary record format of the dataset (`read_binary`, `pack_binary`).

The rendering (quickdraw-dataset README and its issues #19/#27): cairo on a 28×28 ARGB32 surface,
best antialiasing, round caps and joins, line width 16 and padding 16 in the 256-unit space of the
simplified strokes, scale 28 / (256 + 2·16 + 16) then translate by half the total padding; the
drawing centred by (256 − max x, 256 − max y) / 2; each stroke stroked on its own, starting with
move_to(p0), line_to(p0) — the zero-length first segment gives a one-point stroke its round dot.
"""
from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from qdkit.constants import SIDE
from qdkit.errors import QdkitError

ORIGINAL_SIDE = 256.0     # simplified strokes live in 0..255
LINE_DIAMETER = 16.0      # in the 256-unit space
PADDING = 16.0            # in the 256-unit space, each side
EPSILON = 2.0             # Ramer–Douglas–Peucker tolerance of the published simplification
MAX_STROKES = 1_000       # caps on one drawing: a 20-second game drawing has a few dozen strokes
MAX_POINTS = 100_000      # and a few thousand raw points
MAX_RAW_COORD = 1e7       # raw coordinates beyond this are not a drawing

Strokes = list[np.ndarray]  # each float64 (2, n): xs, ys


class StrokeError(QdkitError):
    """A drawing that is not valid Quick Draw strokes; the caller prefixes file/line or field."""


@dataclass(frozen=True, eq=False)
class Drawing:
    """One drawing: all points in one (2, P) float64 array, split into strokes by `lengths`."""

    xy: np.ndarray                   # float64 (2, P): xs, ys of every stroke, one after another
    lengths: tuple[int, ...]         # points per stroke, each ≥ 1
    simplified: bool                 # True: already the dataset's simplified 0..255 strokes
    word: str | None = None
    key_id: str | None = None
    countrycode: str | None = None
    recognized: bool | None = None
    timestamp: str | None = None

    @classmethod
    def from_strokes(cls, strokes: Sequence[Any], simplified: bool, **meta: Any) -> Drawing:
        arrays = [np.asarray(s, dtype=np.float64)[:2] for s in strokes]
        return cls(np.concatenate(arrays, axis=1), tuple(a.shape[1] for a in arrays), simplified, **meta)

    @property
    def strokes(self) -> list[np.ndarray]:
        """The strokes as (2, n) views of `xy`."""
        return np.split(self.xy, np.cumsum(self.lengths[:-1]), axis=1)

    @property
    def points(self) -> int:
        return self.xy.shape[1]

    def to_json(self) -> list[list[list[float]]]:
        """The stroke list as JSON lists (ints where the coordinates are whole)."""
        xy = self.xy.astype(np.int64) if np.all(self.xy == np.round(self.xy)) else self.xy
        return [[s[0].tolist(), s[1].tolist()] for s in np.split(xy, np.cumsum(self.lengths[:-1]), axis=1)]


# ---------------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------------

_NUMBER_TYPES = {int, float}


def _coordinates(values: Any, what: str) -> list:
    if not isinstance(values, list):
        raise StrokeError(f"{what} is {type(values).__name__}, not a list of numbers")
    return values


def parse_strokes(strokes: Any, *, simplified: bool | None = None) -> tuple[np.ndarray, list[int], bool]:
    """Validate `[[xs, ys], ...]` or `[[xs, ys, ts], ...]`; returns (all points as float64 (2, P),
    points per stroke, simplified). simplified=None: raw iff a stroke carries a third (time) array."""
    if isinstance(strokes, tuple):
        strokes = list(strokes)
    if not isinstance(strokes, list):
        raise StrokeError(f"drawing is {type(strokes).__name__}, not a list of strokes")
    if not strokes:
        raise StrokeError("drawing has no strokes")
    if len(strokes) > MAX_STROKES:
        raise StrokeError(f"drawing has {len(strokes)} strokes (at most {MAX_STROKES})")
    # One flat list and one numpy conversion for the whole drawing: per-stroke numpy calls would
    # cost more than rasterizing it.
    xs_all: list = []
    ys_all: list = []
    lengths = []
    timed = False
    for i, stroke in enumerate(strokes):
        if isinstance(stroke, np.ndarray):
            stroke = stroke.tolist()
        if not isinstance(stroke, (list, tuple)) or len(stroke) not in (2, 3):
            raise StrokeError(f"stroke {i} is not [xs, ys] or [xs, ys, ts]")
        xs = _coordinates(stroke[0], f"stroke {i} xs")
        ys = _coordinates(stroke[1], f"stroke {i} ys")
        n = len(xs)
        if len(ys) != n:
            raise StrokeError(f"stroke {i} has {n} xs but {len(ys)} ys")
        if len(stroke) == 3:
            timed = True
            ts = _coordinates(stroke[2], f"stroke {i} ts")
            if len(ts) != n:
                raise StrokeError(f"stroke {i} has {n} points but {len(ts)} times")
            if not set(map(type, ts)) <= _NUMBER_TYPES:
                raise StrokeError(f"stroke {i} ts holds something other than numbers")
        if n == 0:
            raise StrokeError(f"stroke {i} is empty")
        lengths.append(n)
        xs_all += xs
        ys_all += ys
        if len(xs_all) > MAX_POINTS:
            raise StrokeError(f"drawing has more than {MAX_POINTS} points")
    if not set(map(type, xs_all)) <= _NUMBER_TYPES or not set(map(type, ys_all)) <= _NUMBER_TYPES:
        bad = next(i for i, s in enumerate(strokes)
                   if not set(map(type, list(s[0]) + list(s[1]))) <= _NUMBER_TYPES)
        raise StrokeError(f"stroke {bad} holds something other than numbers")  # bools and strings too
    xy = np.array([xs_all, ys_all], dtype=np.float64)
    if not np.isfinite(xy).all():
        raise StrokeError("drawing holds NaN or infinity")
    if simplified is None:
        simplified = not timed
    if simplified and (xy.min() < 0 or xy.max() > 255):
        raise StrokeError("coordinates outside 0..255 (simplified strokes)")
    if not simplified and np.abs(xy).max() > MAX_RAW_COORD:
        raise StrokeError(f"coordinates beyond ±{MAX_RAW_COORD:.0e}")
    return xy, lengths, simplified


_META = {"word": str, "key_id": str, "countrycode": str, "recognized": bool, "timestamp": str}


def parse_drawing(obj: Any, *, simplified: bool | None = None) -> Drawing:
    """A Drawing from a stroke list, or from a Quick Draw ndjson object (`{"drawing": ..., "word": ...}`).

    simplified=None: raw iff a stroke carries a third (time) array; True/False forces it.
    """
    meta: dict[str, Any] = {}
    if isinstance(obj, dict):
        if "drawing" not in obj:
            raise StrokeError("object has no 'drawing' key")
        for key, kind in _META.items():
            value = obj.get(key)
            if value is None:
                continue
            if kind is str and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # key_id is a string in ndjson, a number in some exports
            if not isinstance(value, kind):
                raise StrokeError(f"'{key}' is {type(value).__name__}, not {kind.__name__}")
            meta[key] = value
        obj = obj["drawing"]
    xy, lengths, simplified = parse_strokes(obj, simplified=simplified)
    return Drawing(xy, tuple(lengths), simplified, **meta)


def parse_ndjson_line(line: str | bytes, *, simplified: bool | None = None) -> Drawing:
    """One line of a Quick Draw ndjson file (or a bare stroke list)."""
    if isinstance(line, bytes) and line[:2] == b"\x1f\x8b":
        raise StrokeError("is gzip-compressed data, not text (gunzip it first)")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        raise StrokeError(f"is not JSON ({str(err).split(':')[0]})") from err
    return parse_drawing(obj, simplified=simplified)


# ---------------------------------------------------------------------------------------------
# Simplification (the published recipe, for raw strokes)
# ---------------------------------------------------------------------------------------------

def _resample(stroke: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """Points every `spacing` units of arc length along the polyline, ending on its last point."""
    if stroke.shape[1] < 2:
        return stroke
    seg = np.hypot(*np.diff(stroke, axis=1))
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] == 0:
        return stroke[:, :1]
    at = np.arange(0.0, arc[-1], spacing)
    if arc[-1] - at[-1] > 1e-9:
        at = np.append(at, arc[-1])
    return np.stack([np.interp(at, arc, stroke[0]), np.interp(at, arc, stroke[1])])


def _rdp(points: np.ndarray, epsilon: float) -> np.ndarray:
    """Ramer–Douglas–Peucker on a (2, n) polyline: the kept points, endpoints always kept.

    Distance is to the segment between the kept endpoints, so no dropped point lies farther than
    ε from the simplified polyline (even where a stroke doubles back). Iterative: long strokes
    cannot overflow the stack."""
    n = points.shape[1]
    if n < 3:
        return points
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    xs, ys = points[0], points[1]
    eps2 = epsilon * epsilon
    todo = [(0, n - 1)]
    while todo:
        a, b = todo.pop()
        if b - a < 2:
            continue
        dx, dy = xs[b] - xs[a], ys[b] - ys[a]
        mx, my = xs[a + 1:b] - xs[a], ys[a + 1:b] - ys[a]
        length2 = dx * dx + dy * dy
        if length2 > 0:  # distance to the segment: project, clamp to its ends
            t = np.minimum(np.maximum((mx * dx + my * dy) / length2, 0.0), 1.0)
            mx, my = mx - t * dx, my - t * dy
        dist2 = mx * mx + my * my
        i = int(dist2.argmax())
        if dist2[i] > eps2:
            k = a + 1 + i
            keep[k] = True
            todo += [(a, k), (k, b)]
    return points[:, keep]


def simplify(strokes: Drawing | Sequence[np.ndarray]) -> Strokes:
    """The dataset's simplification of raw strokes: align to the top-left (minimum 0), scale
    uniformly so the maximum is 255, resample every stroke at 1-unit spacing, Ramer–Douglas–Peucker
    with ε = 2, round to integers. Any coordinate range in; (2, n) float64 arrays of ints in 0..255 out.

    Not idempotent (as the dataset's own is not): never apply it to already-simplified strokes."""
    arrays = strokes.strokes if isinstance(strokes, Drawing) else [np.asarray(s, dtype=np.float64)[:2] for s in strokes]
    allxy = np.concatenate(arrays, axis=1)
    low = allxy.min(axis=1, keepdims=True)
    extent = float((allxy - low).max())
    scale = 255.0 / extent if extent > 0 else 0.0
    out = []
    for s in arrays:
        s = (s - low) * scale
        s = _rdp(_resample(s), EPSILON)
        out.append(np.clip(np.round(s), 0, 255))
    return out


# ---------------------------------------------------------------------------------------------
# Rasterization (the published recipe, through cairo)
# ---------------------------------------------------------------------------------------------

class _Canvas:
    """One cairo surface + context with the dataset's settings, reused for every drawing.

    The path of a stroke is handed to cairo as one `cairo_path_data_t` array built with numpy (one
    C call per stroke instead of one per point); cairo still transforms and strokes exactly as the
    published move_to/line_to loop does, so the pixels are the same."""

    def __init__(self, side: int = SIDE) -> None:
        import cairocffi as cairo  # the system cairo library; imported only when something draws

        self.cairo, self.lib, self.ffi = cairo, cairo.cairo, cairo.ffi
        self.side = side
        self.surface = cairo.ImageSurface(cairo.FORMAT_ARGB32, side, side)
        ctx = cairo.Context(self.surface)
        ctx.set_antialias(cairo.ANTIALIAS_BEST)
        ctx.set_line_cap(cairo.LINE_CAP_ROUND)
        ctx.set_line_join(cairo.LINE_JOIN_ROUND)
        ctx.set_line_width(LINE_DIAMETER)
        total_padding = PADDING * 2.0 + LINE_DIAMETER
        scale = float(side) / (ORIGINAL_SIDE + total_padding)
        ctx.scale(scale, scale)
        ctx.translate(total_padding / 2.0, total_padding / 2.0)
        self.ctx = ctx
        self.ctx_ptr = ctx._pointer
        self.path = self.ffi.new("cairo_path_t *")
        self.buffer = np.empty((0, 2, 2))
        self.base = self.ffi.NULL
        stride = self.surface.get_stride()
        self.pixels = np.frombuffer(self.ffi.buffer(self.lib.cairo_image_surface_get_data(self.surface._pointer),
                                                    stride * side), dtype=np.uint8).reshape(side, stride)

    def _path_buffer(self, points: int) -> np.ndarray:
        """A reused array of `cairo_path_data_t` elements, all LINE_TO: header (type, length) + point."""
        if len(self.buffer) < points:
            self.buffer = np.empty((max(points, 2 * len(self.buffer)), 2, 2), dtype=np.float64)
            header = self.buffer[:, 0, :].view(np.int32)  # (elements, 4): type, length, padding
            header[:, 0] = 1  # CAIRO_PATH_LINE_TO
            header[:, 1] = 2  # header + one point
            self.base = self.ffi.cast("cairo_path_data_t *", self.buffer.ctypes.data)
        return self.buffer

    def draw(self, xy: np.ndarray, lengths: Sequence[int], out: np.ndarray) -> None:
        lib, ctx_ptr, path = self.lib, self.ctx_ptr, self.path
        centred = xy + ((ORIGINAL_SIDE - xy.max(axis=1)) / 2.0)[:, None]
        self._path_buffer(xy.shape[1])[:xy.shape[1], 1, :] = centred.T
        lib.cairo_set_source_rgb(ctx_ptr, 0.0, 0.0, 0.0)
        lib.cairo_paint(ctx_ptr)
        lib.cairo_set_source_rgb(ctx_ptr, 1.0, 1.0, 1.0)
        path.status = 0
        start = 0
        for n in lengths:
            # move_to p0, then line_to p0 ... p(n-1) as one appended path: the published loop's
            # calls, with the zero-length first segment that gives a one-point stroke its dot.
            lib.cairo_move_to(ctx_ptr, centred[0, start], centred[1, start])
            path.data = self.base + 2 * start
            path.num_data = 2 * n
            lib.cairo_append_path(ctx_ptr, path)
            lib.cairo_stroke(ctx_ptr)  # each stroke on its own: one path would change the overlaps
            start += n
        lib.cairo_surface_flush(self.surface._pointer)
        out[...] = self.pixels[:, 0:4 * self.side:4]  # blue byte of each ARGB32 pixel (grey: r = g = b)
        lib.cairo_surface_mark_dirty(self.surface._pointer)


_local = threading.local()


def _canvas(side: int) -> _Canvas:
    canvases = _local.__dict__.setdefault("canvases", {})
    if side not in canvases:
        try:
            canvases[side] = _Canvas(side)
        except OSError as err:  # cairocffi could not find libcairo
            raise QdkitError("the cairo library is missing: install it (Debian/Ubuntu: apt install libcairo2; "
                             "macOS: brew install cairo; conda: conda install cairo)") from err
    return canvases[side]


def _simplified(drawing: Drawing | Sequence[np.ndarray]) -> Drawing:
    if not isinstance(drawing, Drawing):
        return Drawing.from_strokes(drawing, True)
    return drawing if drawing.simplified else Drawing.from_strokes(simplify(drawing), True)


def rasterize(drawing: Drawing | Sequence[np.ndarray], side: int = SIDE) -> np.ndarray:
    """uint8 (side, side), 255 ink on 0: a Drawing (raw ones are simplified first) or simplified
    stroke arrays. At side 28, byte for byte the official bitmap of the same simplified strokes."""
    out = np.empty((side, side), dtype=np.uint8)
    d = _simplified(drawing)
    _canvas(side).draw(d.xy, d.lengths, out)
    return out


def rasterize_many(drawings: Sequence[Drawing | Sequence[np.ndarray]], side: int = SIDE) -> np.ndarray:
    """uint8 (N, side, side): `rasterize` of each, on one reused surface."""
    out = np.empty((len(drawings), side, side), dtype=np.uint8)
    canvas = _canvas(side)
    for i, drawing in enumerate(drawings):
        d = _simplified(drawing)
        canvas.draw(d.xy, d.lengths, out[i])
    return out


def to_bitmap(strokes: Any, *, simplified: bool = False) -> np.ndarray:
    """Parse a JSON stroke list, simplify it unless `simplified`, rasterize: uint8 (28, 28)."""
    return rasterize(parse_drawing(strokes, simplified=simplified))


# ---------------------------------------------------------------------------------------------
# The binary format of the dataset (quickdraw-dataset README: "The binary data format")
# ---------------------------------------------------------------------------------------------

_RECORD_HEAD = struct.Struct("<Q2sbIH")  # key_id, countrycode, recognized, timestamp, n_strokes


def read_binary(buf: bytes | memoryview, offset: int = 0) -> tuple[Drawing, int]:
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
    strokes, lengths = [], []
    for i in range(n_strokes):
        if pos + 2 > end:
            raise StrokeError(f"truncated record (stroke {i})")
        (n,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        if n == 0:
            raise StrokeError(f"stroke {i} is empty")
        if pos + 2 * n > end:
            raise StrokeError(f"truncated record (stroke {i})")
        xy = np.frombuffer(buf, dtype=np.uint8, count=2 * n, offset=pos).reshape(2, n)
        strokes.append(xy)
        lengths.append(n)
        pos += 2 * n
    try:
        countrycode = bytes(country).decode("ascii").rstrip("\x00")
    except UnicodeDecodeError as err:
        raise StrokeError("country code is not ASCII") from err
    drawing = Drawing(np.concatenate(strokes, axis=1).astype(np.float64), tuple(lengths), True,
                      key_id=str(key_id), countrycode=countrycode, recognized=bool(recognized),
                      timestamp=str(timestamp))
    return drawing, pos


def binary_record_end(buf: bytes | memoryview, offset: int) -> int:
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
    country = (drawing.countrycode or "").encode("ascii")[:2].ljust(2, b"\x00")
    parts = [_RECORD_HEAD.pack(int(drawing.key_id or 0), country, int(bool(drawing.recognized)),
                               int(float(drawing.timestamp)) if drawing.timestamp and
                               drawing.timestamp.replace(".", "", 1).isdigit() else 0,
                               len(drawing.lengths))]
    for s in drawing.strokes:
        parts.append(struct.pack("<H", s.shape[1]))
        parts.append(np.round(s).astype(np.uint8).tobytes())
    return b"".join(parts)
