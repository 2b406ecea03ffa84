"""The dataset's published simplification of raw strokes (for raw files, a canvas, an API caller)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qdkit.strokes.drawing import Drawing

EPSILON = 2.0  # Ramer–Douglas–Peucker tolerance of the published simplification

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


def _rdp_keep(xs: np.ndarray, ys: np.ndarray, starts: np.ndarray, ends: np.ndarray, epsilon: float) -> np.ndarray:
    """Ramer–Douglas–Peucker over several polylines at once: the points to keep (endpoints always).

    The polylines lie one after another in `xs`/`ys`, polyline i at [starts[i], ends[i]]
    (inclusive). Distance is to the segment between the kept endpoints, so no dropped point lies
    farther than ε from the simplified polyline (even where a stroke doubles back). Every open span
    of every polyline is split in the same vectorised round, so a drawing costs a few numpy calls
    per level of the recursion rather than per span; the result is the one the recursive
    algorithm gives (a span's split point — its first farthest point — does not depend on order)."""
    keep = np.zeros(len(xs), dtype=bool)
    keep[starts] = keep[ends] = True
    a, b = starts, ends
    eps2 = epsilon * epsilon
    while True:
        open_ = b - a >= 2
        a, b = a[open_], b[open_]
        if len(a) == 0:
            return keep
        counts = b - a - 1
        span = np.repeat(np.arange(len(a)), counts)
        first = np.cumsum(counts) - counts
        inner = a[span] + 1 + (np.arange(len(span)) - first[span])
        ax, ay = xs[a][span], ys[a][span]
        dx, dy = xs[b][span] - ax, ys[b][span] - ay
        mx, my = xs[inner] - ax, ys[inner] - ay
        length2 = dx * dx + dy * dy
        t = np.where(length2 > 0, (mx * dx + my * dy) / np.where(length2 > 0, length2, 1.0), 0.0)
        t = np.minimum(np.maximum(t, 0.0), 1.0)  # project onto the segment, clamp to its ends
        ex, ey = mx - t * dx, my - t * dy
        dist2 = ex * ex + ey * ey
        peak = np.maximum.reduceat(dist2, first)
        split = peak > eps2
        # the first farthest point of each span that splits
        hit = np.flatnonzero((dist2 == peak[span]) & split[span])
        spans_hit, first_hit = np.unique(span[hit], return_index=True)
        k = inner[hit[first_hit]]
        keep[k] = True
        a, b = np.concatenate([a[spans_hit], k]), np.concatenate([k, b[spans_hit]])


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
    dense = [resample((s - low) * scale) for s in arrays]
    lengths = np.array([d.shape[1] for d in dense])
    ends = np.cumsum(lengths) - 1
    xy = np.concatenate(dense, axis=1)
    keep = _rdp_keep(xy[0], xy[1], ends - lengths + 1, ends, EPSILON)
    kept = np.clip(np.round(xy), 0, 255)
    return [
        kept[:, start : end + 1][:, keep[start : end + 1]] for start, end in zip(ends - lengths + 1, ends, strict=True)
    ]
