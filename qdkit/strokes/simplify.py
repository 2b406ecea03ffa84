"""Google's simplification of raw strokes, exactly (for raw files, a canvas, an API caller).

The dataset's simplified strokes were made from the raw ones by (quickdraw-dataset README) "align to
the top-left, scale to a maximum of 255, resample at 1-pixel spacing, Ramer–Douglas–Peucker with
ε = 2"; Google never published the code. The procedure below reproduces Google's files on all
3,888 real raw/simplified pairs at hand (docs/strokes.md lists the evidence for every step):

1. align and scale: v' = (v − min) · 255 / extent, the extent the larger of the x and y ranges
   (multiply first, then divide);
2. resample each stroke at arc length 0, 1, 2, … (below the stroke's length), each sample the
   interpolation p0 · (1 − t) + p1 · t on its segment with t = (s − arc[j]) / seg[j], the arc a
   running sum of the segments' lengths √(dx² + dy²); the last raw point appended unless the last
   sample is it;
3. Ramer–Douglas–Peucker as the `rdp` package's rdp_rec: distance to the LINE through the span's end
   points, |cross(e − s, s − p)| / |e − s| (to the point s where e = s), the first farthest point
   splits the span when its distance > ε; a norm |(dx, dy)| is √(dx · dx + dy²) with the last
   multiply-add fused (rounded once), as numpy's norm, a BLAS dot product, computed it for Google;
4. round half to even; a stroke left with one point keeps it twice ([[x, x], [y, y]]).

Two implementations, identical to the last bit (tested against each other and against a plain
reference in the tests): a small C kernel (`_simplify.c`, built by setup.py where a compiler is
present; about 20 µs a drawing) and numpy (used where it is not built). Both bound the work: a
drawing whose strokes would resample to more than MAX_SAMPLES points, or whose RDP would evaluate
more than MAX_RDP_WORK distances, is refused with a StrokeError (real drawings are far inside both).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from qdkit.strokes.drawing import Drawing, StrokeError

EPSILON = 2.0  # Ramer–Douglas–Peucker tolerance of the published simplification
# Caps on one drawing's simplification. Over all 4,691 real raw drawings of ../shared/quickdraw/raw:
# resampled points median 959, 99th percentile 2,914, largest 35,929; RDP distance evaluations
# median 4,222, 99th percentile 18,047, largest 439,279. At the caps: C kernel ~10 ms, numpy ~90 ms.
MAX_SAMPLES = 100_000
MAX_RDP_WORK = 2_000_000

Strokes = list[np.ndarray]  # each float64 (2, n): xs, ys

try:  # the compiled kernel; QDKIT_PURE_SIMPLIFY=1 forces the numpy implementation
    if os.environ.get("QDKIT_PURE_SIMPLIFY"):
        raise ImportError
    from qdkit.strokes._simplify import kernel as _c_kernel
except ImportError:
    _c_kernel = None

KERNEL = "C" if _c_kernel is not None else "numpy"  # which implementation simplify() uses


def _numpy_kernel(
    xy: np.ndarray, lengths: Sequence[int], epsilon: float, max_samples: int, max_work: int
) -> tuple[int, float, Any, Any]:
    """The C kernel's contract in numpy: (status, value, kept xy bytes-like or array, lengths)."""
    # One function, step for step in the order of _simplify.c, so the two can be read side by side
    # (they must agree to the last bit); splitting it would hide that correspondence.
    lengths_a = np.asarray(lengths, dtype=np.int64)
    if lengths_a.ndim != 1 or len(lengths_a) == 0 or lengths_a.min() < 1 or lengths_a.sum() != xy.shape[1]:
        return 5, -1.0, None, None
    if not np.isfinite(xy).all():
        return 1, 0.0, None, None
    low = xy.min(axis=1)
    with np.errstate(over="ignore"):  # an infinite range is refused just below
        ranges = xy.max(axis=1) - low
    extent = float(max(ranges[0], ranges[1]))
    # (v - min) * 255 must stay finite; multiplying before dividing keeps denormal extents finite too
    if not math.isfinite(extent * 255.0):
        return 2, extent, None, None
    if extent > 0:
        scaled = (xy - low[:, None]) * 255.0 / extent
    else:
        scaled = np.zeros_like(xy)
    ends_raw = np.cumsum(lengths_a) - 1  # each stroke's last raw point
    starts_raw = ends_raw - lengths_a + 1
    # segment lengths, then the arc lengths as a running sum along each stroke: a row per stroke of
    # a zero-padded matrix, so that add.accumulate adds in the kernel's order (a cumsum over all
    # strokes at once would round differently)
    d = np.diff(scaled, axis=1)
    seg = np.sqrt(d[0] * d[0] + d[1] * d[1])  # seg[i]: from point i to i + 1 (across strokes: unused)
    rows = np.repeat(np.arange(len(lengths_a)), lengths_a)
    cols = np.arange(len(rows)) - starts_raw[rows]
    inner_pt = cols > 0  # every point but a stroke's first ends a segment
    width = int(lengths_a.max())
    if len(lengths_a) * width <= 4 * len(rows) + 4096:
        pad = np.zeros((len(lengths_a), width))
        pad[rows[inner_pt], cols[inner_pt]] = seg[np.flatnonzero(inner_pt) - 1]
        arc = np.add.accumulate(pad, axis=1)[rows, cols]  # arc length at every raw point
    else:  # one long stroke among many short ones: stroke by stroke, not a huge padded matrix
        arc = np.zeros(len(rows))
        for a, e in zip(starts_raw.tolist(), ends_raw.tolist(), strict=True):
            arc[a + 1 : e + 1] = np.cumsum(seg[a:e])
    totals = arc[ends_raw]
    bound = sum(math.ceil(total) + 1.0 for total in totals.tolist())
    if bound > max_samples:
        return 3, bound, None, None
    # samples at k = 0, 1, ... below each stroke's length: segment j (point j to j + 1) holds the k
    # with arc[j] <= k < arc[j + 1], i.e. ceil(arc[j]) <= k < ceil(arc[j + 1])
    first_k = np.ceil(arc)
    segs = np.flatnonzero(inner_pt) - 1  # the segments inside strokes, by their first point
    per_seg = (first_k[segs + 1] - first_k[segs]).astype(np.int64)
    j = np.repeat(segs, per_seg)
    offsets = np.arange(len(j)) - np.repeat(np.cumsum(per_seg) - per_seg, per_seg)
    at = first_k[j] + offsets
    t = (at - arc[j]) / seg[j]
    u = 1.0 - t
    px = scaled[0, j] * u + scaled[0, j + 1] * t
    py = scaled[1, j] * u + scaled[1, j + 1] * t
    # samples per stroke; each stroke's last raw point appended unless its last sample is it
    sample_stroke = rows[j]
    n_samples = np.bincount(sample_stroke, minlength=len(lengths_a))
    sample_end = np.cumsum(n_samples)  # one past each stroke's last sample
    has = n_samples > 0
    last = np.where(has, sample_end - 1, 0)
    lx, ly = scaled[0, ends_raw], scaled[1, ends_raw]
    append = ~has | (px[last] != lx) | (py[last] != ly) if len(px) else np.ones(len(lengths_a), dtype=bool)
    where = sample_end[append]
    px, py = np.insert(px, where, lx[append]), np.insert(py, where, ly[append])
    counts = n_samples + append
    ends = np.cumsum(counts) - 1
    points = np.stack([px, py])
    keep = _rdp_keep(points[0], points[1], ends - counts + 1, ends, epsilon, max_work)
    if keep is None:
        return 4, float(max_work), None, None
    kept = np.clip(np.round(points[:, keep]), 0.0, 255.0) + 0.0
    out_lengths = np.add.reduceat(keep.astype(np.int64), ends - counts + 1)
    single = np.flatnonzero(out_lengths == 1)
    if len(single):  # a stroke left with one point keeps it twice
        at = (np.cumsum(out_lengths) - out_lengths)[single]
        kept = np.insert(kept, at, kept[:, at], axis=1)
        out_lengths[single] = 2
    return 0, 0.0, kept, tuple(out_lengths.tolist())


def _rdp_keep(
    xs: np.ndarray, ys: np.ndarray, starts: np.ndarray, ends: np.ndarray, epsilon: float, max_work: int
) -> np.ndarray | None:
    """Ramer–Douglas–Peucker (rdp_rec semantics) over several polylines at once: the points to keep,
    or None when it would evaluate more than `max_work` distances.

    The polylines lie one after another in `xs`/`ys`, polyline i at [starts[i], ends[i]]
    (inclusive). Every open span of every polyline is split in the same vectorised round, so a
    drawing costs a few numpy calls per level of the recursion rather than per span; the result is
    the recursive algorithm's (a span's split point, its first farthest point, does not depend on
    the order), and the work counted is the same sum the C kernel counts."""
    keep = np.zeros(len(xs), dtype=bool)
    keep[starts] = keep[ends] = True
    a, b = starts, ends
    work = 0
    while True:
        open_ = b - a >= 2
        a, b = a[open_], b[open_]
        if len(a) == 0:
            return keep
        counts = b - a - 1
        total = int(counts.sum())
        work += total
        if work > max_work:
            return None
        first = np.cumsum(counts) - counts  # each span's first inner point, in the flat arrays below
        inner = np.arange(total) + np.repeat(a + 1 - first, counts)
        sx, sy = np.repeat(xs[a], counts), np.repeat(ys[a], counts)
        dx, dy = np.repeat(xs[b] - xs[a], counts), np.repeat(ys[b] - ys[a], counts)
        qx, qy = xs[inner] - sx, ys[inner] - sy  # p - s
        ex, ey = xs[b] - xs[a], ys[b] - ys[a]
        length = np.repeat(np.sqrt(_fused_square_add(ex, ey * ey)), counts)  # |e - s|, as the kernel
        same = length == 0  # a closed span (e = s): the distance to the point s
        if same.any():
            length[same] = 1.0
            dist = np.abs(dx * -qy - dy * -qx) / length
            dist[same] = np.sqrt(_fused_square_add(qx[same], qy[same] * qy[same]))
        else:
            dist = np.abs(dx * -qy - dy * -qx) / length  # |dx (sy - py) - dy (sx - px)| / |e - s|
        peak = np.maximum.reduceat(dist, first)
        split = peak > epsilon
        if not split.any():
            return keep
        # the first farthest point of each span that splits (hits come in span order)
        hit = np.flatnonzero((dist == np.repeat(peak, counts)) & np.repeat(split, counts))
        span_of_hit = np.searchsorted(first, hit, side="right") - 1
        lead = np.ones(len(hit), dtype=bool)
        lead[1:] = span_of_hit[1:] != span_of_hit[:-1]
        k = inner[hit[lead]]
        spans_hit = span_of_hit[lead]
        keep[k] = True
        a, b = np.concatenate([a[spans_hit], k]), np.concatenate([k, b[spans_hit]])


_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's split of a double into two 26-bit halves
_TINY = 2.0**-450  # below this a * a loses bits to underflow: exact rationals instead


def _fused_square_add(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * a + c rounded once, as a fused multiply-add gives it (numpy has no fma): the exact product
    by Dekker's two-product, then Boldo and Melquiond's emulation (uh + ul = a * a exactly,
    th + tl = c + uh exactly, v = tl + ul rounded to odd, RN(th + v) is the correctly rounded
    a * a + c; "Emulation of FMA and correctly rounded sums: proved algorithms using rounding to
    odd", IEEE Trans. Computers 57(4), 2008). Tested against rational arithmetic in the tests."""
    uh = a * a
    t = a * _SPLIT
    hi = t - (t - a)
    lo = a - hi
    ul = ((hi * hi - uh) + 2.0 * hi * lo) + lo * lo
    th = c + uh
    bb = th - c
    tl = (c - (th - bb)) + (uh - bb)
    v = tl + ul
    bv = v - tl
    err = (tl - (v - bv)) + (ul - bv)  # v + err = tl + ul exactly
    even = (v.view(np.int64) & 1) == 0
    odd_fix = (err != 0) & even
    if odd_fix.any():  # round to odd: the neighbour toward the exact sum, whose last bit is 1
        v = np.where(odd_fix, np.nextafter(v, np.where(err > 0, np.inf, -np.inf)), v)
    out = th + v
    tiny = (a != 0) & (np.abs(a) < _TINY)
    if tiny.any():
        from fractions import Fraction

        for i in np.flatnonzero(tiny):
            out[i] = float(Fraction(float(a[i])) ** 2 + Fraction(float(c[i])))
    return out


_MESSAGES = {
    1: "drawing holds NaN or infinity",
    5: "stroke lengths do not match the points",
}


def _simplified_xy(xy: np.ndarray, lengths: Sequence[int], kernel: Any = None) -> tuple[np.ndarray, tuple[int, ...]]:
    """(kept points float64 (2, K), points per stroke) of raw points `xy` (2, P) split by `lengths`."""
    run = kernel or _c_kernel or _numpy_kernel
    if xy.ndim != 2 or xy.shape[0] != 2:
        raise StrokeError(f"points are not a (2, P) array of xs and ys (shape {xy.shape})")
    if not (xy.dtype == np.float64 and xy.flags.c_contiguous):
        xy = np.ascontiguousarray(xy, dtype=np.float64)
    status, value, out, out_lengths = run(xy, lengths, EPSILON, MAX_SAMPLES, MAX_RDP_WORK)
    if status == 0:
        if not isinstance(out, np.ndarray):
            out = np.frombuffer(out, dtype=np.float64).reshape(2, -1)
        return out, out_lengths
    if status == 2:
        raise StrokeError(f"coordinates span {value:g}: too large a range to scale")
    if status == 3:
        raise StrokeError(
            f"strokes would resample to {value:,.0f} points (at most {MAX_SAMPLES:,}): too long a path to simplify"
        )
    if status == 4:
        raise StrokeError(
            f"drawing too intricate to simplify (RDP would take over {MAX_RDP_WORK:,} distance evaluations)"
        )
    raise StrokeError(_MESSAGES.get(status, f"cannot simplify (status {status})"))


def _points(strokes: Drawing | Sequence[Any]) -> tuple[np.ndarray, Sequence[int]]:
    if isinstance(strokes, Drawing):
        return strokes.xy, strokes.lengths
    if isinstance(strokes, (str, bytes, dict)) or not hasattr(strokes, "__iter__"):
        raise StrokeError(f"drawing is {type(strokes).__name__}, not a sequence of (2, n) arrays")
    strokes = list(strokes)
    if len(strokes) == 0:
        raise StrokeError("drawing has no strokes")
    arrays = []
    for i, stroke in enumerate(strokes):
        try:
            a = np.asarray(stroke, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as err:
            raise StrokeError(f"stroke {i} is not an array of numbers") from err
        if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] == 0:
            raise StrokeError(f"stroke {i} is not a (2, n) array of xs and ys (shape {a.shape})")
        arrays.append(a[:2])
    return np.concatenate(arrays, axis=1), [a.shape[1] for a in arrays]


def simplify_drawing(drawing: Drawing) -> Drawing:
    """`simplify` of a raw Drawing, as a simplified Drawing (its metadata kept)."""
    xy, lengths = _simplified_xy(drawing.xy, drawing.lengths)
    return Drawing(
        xy,
        lengths,
        True,
        word=drawing.word,
        key_id=drawing.key_id,
        countrycode=drawing.countrycode,
        recognized=drawing.recognized,
        timestamp=drawing.timestamp,
    )


def simplify(strokes: Drawing | Sequence[np.ndarray]) -> Strokes:
    """Google's simplification of raw strokes (the module docstring has the steps): any coordinate
    range in; (2, n) float64 arrays of integers in 0..255 out, aligned to the top-left (minimum 0),
    the longest side 255. Raises StrokeError for a drawing it cannot simplify (NaN or infinite
    coordinates, a range too large to scale, more than the caps' work).

    Not idempotent (as the dataset's own is not): never apply it to already-simplified strokes."""
    xy, lengths = _points(strokes)
    out, out_lengths = _simplified_xy(xy, lengths)
    result = []
    start = 0
    for n in out_lengths:
        result.append(out[:, start : start + n])
        start += n
    return result
