"""The plain, slow reference of Google's simplification (pure Python floats, one operation at a time).

Kept in the tests only: `qdkit.strokes.simplify` (C kernel or numpy fallback) must give exactly what
this gives, for every input. Every float operation below is the one the dataset's pipeline performs,
in the same order (see docs/strokes.md, "How Google simplified raw strokes"):

1. align and scale: v' = (v - min) * 255 / extent, extent = the larger of the x and y ranges;
2. resample each stroke at arc-length 0, 1, 2, ... (< its length), each sample the linear
   interpolation p0 * (1 - t) + p1 * t on its segment, t = (s - arc[j]) / seg[j]; the last raw
   point appended unless the last sample is it;
3. Ramer-Douglas-Peucker (the `rdp` package's recursive rdp_rec): distance to the LINE through the
   span's ends, |cross(e - s, s - p)| / |e - s| (to the point s where |e - s| = 0), the first farthest
   point splits when its distance > 2.0; a norm |(dx, dy)| is sqrt(dx * dx + dy * dy) with the
   last multiply-add fused (rounded once), as numpy's norm (a BLAS dot product) gave Google;
4. round half to even; a stroke left with one point keeps it twice.
"""

from __future__ import annotations

import math
from fractions import Fraction


def fused_square_add(a: float, c: float) -> float:
    """a * a + c rounded once (a fused multiply-add), exactly, by rational arithmetic."""
    return float(Fraction(a) * Fraction(a) + Fraction(c))


def reference_simplify(strokes: list[tuple[list[float], list[float]]]) -> list[list[list[int]]]:
    allx = [x for xs, _ in strokes for x in xs]
    ally = [y for _, ys in strokes for y in ys]
    mx, my = min(allx), min(ally)
    extent = max(max(allx) - mx, max(ally) - my)
    out = []
    for xs, ys in strokes:
        if extent > 0:
            sx = [(x - mx) * 255.0 / extent for x in xs]
            sy = [(y - my) * 255.0 / extent for y in ys]
        else:
            sx, sy = [0.0] * len(xs), [0.0] * len(ys)
        pts = reference_resample(sx, sy)
        kept = reference_rdp(pts, 2.0)
        if len(kept) == 1:
            kept = kept * 2
        out.append([[int(round(x)) for x, _ in kept], [int(round(y)) for _, y in kept]])
    return out


def reference_resample(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    n = len(xs)
    if n < 2:
        return [(xs[0], ys[0])]
    seg = []
    arc = [0.0]
    for i in range(n - 1):
        dx, dy = xs[i + 1] - xs[i], ys[i + 1] - ys[i]
        seg.append(math.sqrt(dx * dx + dy * dy))
        arc.append(arc[-1] + seg[-1])
    total = arc[-1]
    pts = []
    j = 0
    k = 0
    while k < total:  # samples at 0.0, 1.0, ... below the stroke's length
        s = float(k)
        while arc[j + 1] <= s:  # the last segment starting at or before s
            j += 1
        t = (s - arc[j]) / seg[j]
        pts.append((xs[j] * (1.0 - t) + xs[j + 1] * t, ys[j] * (1.0 - t) + ys[j + 1] * t))
        k += 1
    last = (xs[-1], ys[-1])
    if not pts or pts[-1] != last:
        pts.append(last)
    return pts


def reference_rdp(pts: list[tuple[float, float]], epsilon: float) -> list[tuple[float, float]]:
    """rdp_rec's result, with a stack instead of recursion (each span is decided on its own)."""
    n = len(pts)
    keep = [True] + [False] * (n - 2) + [True] if n > 1 else [True]
    spans = [(0, n - 1)]
    while spans:
        a, b = spans.pop()
        if b - a < 2:
            continue
        (sx, sy), (ex, ey) = pts[a], pts[b]
        dmax, index = 0.0, -1
        length = math.sqrt(fused_square_add(ex - sx, (ey - sy) * (ey - sy)))
        for i in range(a + 1, b):
            px, py = pts[i]
            if length == 0:  # e == s (or too close to tell): the distance to the point s
                dx, dy = px - sx, py - sy
                d = math.sqrt(fused_square_add(dx, dy * dy))
            else:
                dx, dy = ex - sx, ey - sy
                d = abs(dx * (sy - py) - dy * (sx - px)) / length
            if d > dmax:
                dmax, index = d, i
        if dmax > epsilon:
            keep[index] = True
            spans += [(a, index), (index, b)]
    return [p for p, k in zip(pts, keep, strict=True) if k]
