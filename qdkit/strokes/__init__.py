"""Quick, Draw! strokes: the one definition of drawing → 28×28 bitmap.

Convert, predict and the service call this package and nothing else draws strokes. It holds
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

from qdkit.constants import SIDE
from qdkit.strokes.binary import binary_record_end, pack_binary, read_binary
from qdkit.strokes.drawing import (
    MAX_POINTS,
    MAX_RAW_COORD,
    MAX_STROKES,
    Drawing,
    StrokeError,
    parse_drawing,
    parse_ndjson_line,
    parse_strokes,
)
from qdkit.strokes.rasterize import rasterize, rasterize_many, simplified, to_bitmap
from qdkit.strokes.simplify import EPSILON, simplify

__all__ = [
    "EPSILON",
    "MAX_POINTS",
    "MAX_RAW_COORD",
    "MAX_STROKES",
    "SIDE",
    "Drawing",
    "StrokeError",
    "binary_record_end",
    "pack_binary",
    "parse_drawing",
    "parse_ndjson_line",
    "parse_strokes",
    "rasterize",
    "rasterize_many",
    "read_binary",
    "simplified",
    "simplify",
    "to_bitmap",
]
