"""The dataset's published simplification of raw strokes (for raw files, a canvas, an API caller)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qdkit.strokes.drawing import Drawing

EPSILON = 2.0             # Ramer–Douglas–Peucker tolerance of the published simplification

Strokes = list[np.ndarray]  # each float64 (2, n): xs, ys


def resample(stroke: np.ndarray, spacing: float = 1.0) -> np.ndarray:
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
        s = _rdp(resample(s), EPSILON)
        out.append(np.clip(np.round(s), 0, 255))
    return out
