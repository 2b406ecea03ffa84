"""The dataset's published rendering of simplified strokes, through cairo: byte for byte the official
bitmaps. See the package docstring for the recipe."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from qdkit.constants import SIDE
from qdkit.errors import QdkitError
from qdkit.strokes.drawing import Drawing, StrokeError, parse_drawing
from qdkit.strokes.simplify import simplify_drawing

ORIGINAL_SIDE = 256.0  # simplified strokes live in 0..255
LINE_DIAMETER = 16.0  # in the 256-unit space
PADDING = 16.0  # in the 256-unit space, each side


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
        self.pixels = np.frombuffer(
            self.ffi.buffer(self.lib.cairo_image_surface_get_data(self.surface._pointer), stride * side), dtype=np.uint8
        ).reshape(side, stride)

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
        self._path_buffer(xy.shape[1])[: xy.shape[1], 1, :] = centred.T
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
        out[...] = self.pixels[:, 0 : 4 * self.side : 4]  # blue byte of each ARGB32 pixel (grey: r = g = b)
        lib.cairo_surface_mark_dirty(self.surface._pointer)


_local = threading.local()


def _canvas(side: int) -> _Canvas:
    canvases = _local.__dict__.setdefault("canvases", {})
    if side not in canvases:
        try:
            canvases[side] = _Canvas(side)
        except OSError as err:  # cairocffi could not find libcairo
            raise QdkitError(
                "the cairo library is missing: install it (Debian/Ubuntu: apt install libcairo2; "
                "macOS: brew install cairo; conda: conda install cairo)"
            ) from err
    return canvases[side]


def simplified(drawing: Drawing | Sequence[np.ndarray]) -> Drawing:
    """The drawing as the simplified strokes that are rasterized (raw ones simplified, metadata kept),
    or simplify's StrokeError for raw strokes it refuses. Callers that read many drawings call this
    per drawing, so one bad drawing costs only itself."""
    if not isinstance(drawing, Drawing):
        return Drawing.from_strokes(drawing, True)
    return drawing if drawing.simplified else simplify_drawing(drawing)


def rasterize(drawing: Drawing | Sequence[np.ndarray], side: int = SIDE) -> np.ndarray:
    """uint8 (side, side), 255 ink on 0: a Drawing (raw ones are simplified first) or simplified
    stroke arrays. At side 28, byte for byte the official bitmap of the same simplified strokes."""
    out = np.empty((side, side), dtype=np.uint8)
    d = simplified(drawing)
    _canvas(side).draw(d.xy, d.lengths, out)
    return out


def rasterize_many(
    drawings: Sequence[Drawing | Sequence[np.ndarray]],
    side: int = SIDE,
    errors: list[tuple[int, StrokeError]] | None = None,
) -> np.ndarray:
    """uint8 (N, side, side): `rasterize` of each, on one reused surface.

    A drawing that cannot be simplified raises StrokeError — unless `errors` is given: then its
    image is left blank, (its index, the error) appended to `errors`, and the others still drawn, so
    one bad drawing of a batch costs only itself."""
    out = np.empty((len(drawings), side, side), dtype=np.uint8)
    canvas = _canvas(side)
    for i, drawing in enumerate(drawings):
        try:
            d = simplified(drawing)
        except StrokeError as err:
            if errors is None:
                raise
            errors.append((i, err))
            out[i] = 0
            continue
        canvas.draw(d.xy, d.lengths, out[i])
    return out


def to_bitmap(strokes: Any, *, simplified: bool = False) -> np.ndarray:
    """Parse a JSON stroke list, simplify it unless `simplified`, rasterize: uint8 (28, 28)."""
    return rasterize(parse_drawing(strokes, simplified=simplified))
