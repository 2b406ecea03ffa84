"""Strokes → store: `qdkit convert` of simplified ndjson vs the naive published rendering, in one run.

    python scripts/bench_strokes.py [--drawings 100000] [--json FILE]

(a) `qdkit convert --h5 --no-png` (a subprocess, end to end: indexing, parsing, rasterizing on all
    cores, the store) of real simplified strokes from ../shared/quickdraw/strokes, repeated to
    `--drawings` drawings over ten classes (synthetic `qdkit synth --format ndjson` strokes where
    the shared folder is missing);
(b) the competitor: the same drawings rendered one at a time the naive way — the published
    procedure followed literally (quickdraw-dataset issue #19: a fresh cairo surface per drawing,
    one move_to/line_to call per point from Python), single process, on a sample;
(c) the byte-exact fraction of qdkit.strokes.rasterize against the official bitmap rows of the
    shared golden pairs (bear, bee, cat, dog, duck: line i of the strokes = row i of the bitmaps);
(d) simplify(): µs per real raw drawing (every drawing of ../shared/quickdraw/raw, parsed once; random
    walks where the folder is missing) for qdkit.strokes.simplify (the kernel it uses, and the numpy
    fallback) beside the previous implementation (a copy below, `old_simplify`, the competitor),
    timed alternately drawing by drawing in one run; and the exact fractions (strokes identical,
    bitmaps identical) of both on the shared raw/simplified pairs (same key_id).

    python scripts/bench_strokes.py --only simplify [--json FILE]   # (d) alone, about a minute
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "quickdraw"
CLASSES = ("bear", "bee", "cat", "dog", "duck", "car", "house", "tree", "airplane", "banana")


def naive_rasterize(strokes: list) -> np.ndarray:
    """The published vector_to_raster for one drawing, literally: fresh surface, a call per point."""
    import cairocffi as cairo

    side, original_side, line_diameter, padding = 28, 256.0, 16, 16
    surface = cairo.ImageSurface(cairo.FORMAT_ARGB32, side, side)
    ctx = cairo.Context(surface)
    ctx.set_antialias(cairo.ANTIALIAS_BEST)
    ctx.set_line_cap(cairo.LINE_CAP_ROUND)
    ctx.set_line_join(cairo.LINE_JOIN_ROUND)
    ctx.set_line_width(line_diameter)
    total_padding = padding * 2.0 + line_diameter
    new_scale = float(side) / float(original_side + total_padding)
    ctx.scale(new_scale, new_scale)
    ctx.translate(total_padding / 2.0, total_padding / 2.0)
    ctx.set_source_rgb(0, 0, 0)
    ctx.paint()
    vector_image = [np.array(s[:2]) for s in strokes]
    bbox = np.hstack(vector_image).max(axis=1)
    offset = ((original_side, original_side) - bbox) / 2.0
    centered = [stroke + offset.reshape(-1, 1) for stroke in vector_image]
    ctx.set_source_rgb(1, 1, 1)
    for xv, yv in centered:
        ctx.move_to(xv[0], yv[0])
        for x, y in zip(xv, yv, strict=True):
            ctx.line_to(x, y)
        ctx.stroke()
    surface.flush()
    return np.copy(np.asarray(surface.get_data())[::4]).reshape(side, side)


def old_resample(stroke: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """The previous qdkit resampling (np.interp over the arc length), kept as (d)'s competitor."""
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


def old_rdp_keep(xs: np.ndarray, ys: np.ndarray, starts: np.ndarray, ends: np.ndarray, epsilon: float) -> np.ndarray:
    """The previous qdkit RDP: distance to the segment, all spans of a drawing split per numpy round."""
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
        t = np.minimum(np.maximum(t, 0.0), 1.0)
        ex, ey = mx - t * dx, my - t * dy
        dist2 = ex * ex + ey * ey
        peak = np.maximum.reduceat(dist2, first)
        split = peak > eps2
        hit = np.flatnonzero((dist2 == peak[span]) & split[span])
        spans_hit, first_hit = np.unique(span[hit], return_index=True)
        k = inner[hit[first_hit]]
        keep[k] = True
        a, b = np.concatenate([a[spans_hit], k]), np.concatenate([k, b[spans_hit]])


def old_simplify(drawing) -> list[np.ndarray]:
    """The previous qdkit.strokes.simplify (before issue #14), verbatim but for names."""
    arrays = drawing.strokes
    allxy = np.concatenate(arrays, axis=1)
    low = allxy.min(axis=1, keepdims=True)
    extent = float((allxy - low).max())
    scale = 255.0 / extent if extent > 0 else 0.0
    dense = [old_resample((s - low) * scale) for s in arrays]
    lengths = np.array([d.shape[1] for d in dense])
    ends = np.cumsum(lengths) - 1
    xy = np.concatenate(dense, axis=1)
    keep = old_rdp_keep(xy[0], xy[1], ends - lengths + 1, ends, 2.0)
    kept = np.clip(np.round(xy), 0, 255)
    return [kept[:, a : e + 1][:, keep[a : e + 1]] for a, e in zip(ends - lengths + 1, ends, strict=True)]


def raw_drawings() -> list:
    """Every real raw drawing of ../shared/quickdraw/raw (random walks where it is missing)."""
    from qdkit.strokes import Drawing, parse_ndjson_line

    if (SHARED / "raw").is_dir():
        return [
            parse_ndjson_line(line)
            for path in sorted((SHARED / "raw").glob("*.ndjson"))
            for line in path.read_bytes().splitlines()
        ]
    print("../shared/quickdraw/raw missing: timing random-walk drawings", file=sys.stderr)
    rng = np.random.default_rng(0)
    drawings = []
    for _ in range(2000):
        strokes = [
            np.cumsum(rng.normal(0, 4, (2, int(rng.integers(2, 80)))), axis=1) for _ in range(rng.integers(1, 9))
        ]
        drawings.append(Drawing.from_strokes(strokes, False))
    return drawings


def bench_simplify(repeats: int) -> dict:
    """(d): simplify's µs per drawing beside the previous implementation's, and exact fractions."""
    from qdkit.strokes import parse_drawing, rasterize_many

    module = importlib.import_module("qdkit.strokes.simplify")
    numpy_kernel = module._numpy_kernel

    def new_numpy(d):
        return module._simplified_xy(d.xy, d.lengths, numpy_kernel)

    drawings = raw_drawings()
    competitors = {"new": module.simplify, "numpy": new_numpy, "old": old_simplify}
    times: dict[str, list[float]] = {name: [] for name in competitors}
    clock = time.perf_counter
    for d in drawings:  # alternately, drawing by drawing: all three see the same machine
        for name, fn in competitors.items():
            best = float("inf")
            for _ in range(repeats):
                t0 = clock()
                fn(d)
                best = min(best, clock() - t0)
            times[name].append(best)
    us = {name: np.array(t) * 1e6 for name, t in times.items()}
    result: dict = {
        "kernel": module.KERNEL,
        "drawings_timed": len(drawings),
        "repeats": repeats,
        **{f"{name}_median_us": round(float(np.median(v)), 1) for name, v in us.items()},
        **{f"{name}_p99_us": round(float(np.percentile(v, 99)), 1) for name, v in us.items()},
        **{f"{name}_max_us": round(float(v.max()), 1) for name, v in us.items()},
    }
    result["speedup_median"] = round(result["old_median_us"] / result["new_median_us"], 1)
    print(
        f"(d) simplify, µs per real raw drawing ({len(drawings):,} drawings, best of {repeats} each, one run): "
        f"qdkit ({module.KERNEL} kernel) median {result['new_median_us']} (p99 {result['new_p99_us']}, "
        f"max {result['new_max_us']}); numpy fallback median {result['numpy_median_us']}; previous "
        f"implementation median {result['old_median_us']} (p99 {result['old_p99_us']}): "
        f"{result['speedup_median']}x"
    )
    if (SHARED / "raw").is_dir():
        pairs = []
        for path in sorted((SHARED / "raw").glob("*.ndjson")):
            twins_path = SHARED / "strokes" / path.name
            if not twins_path.exists():
                continue
            twins = {o["key_id"]: o["drawing"] for o in map(json.loads, twins_path.read_bytes().splitlines())}
            for obj in map(json.loads, path.read_bytes().splitlines()):
                if obj["key_id"] in twins:
                    pairs.append((obj["key_id"], parse_drawing(obj["drawing"]), twins[obj["key_id"]]))
        official = rasterize_many([parse_drawing(want, simplified=True) for _, _, want in pairs])
        for name, fn in (("new", module.simplify), ("old", old_simplify)):
            outs = [fn(raw) for _, raw, _ in pairs]
            same = [
                [s.astype(int).tolist() for s in out] == want for out, (_, _, want) in zip(outs, pairs, strict=True)
            ]
            bitmaps = rasterize_many([parse_drawing([s.tolist() for s in out], simplified=True) for out in outs])
            same_bitmap = (bitmaps == official).all(axis=(1, 2))
            result[f"{name}_strokes_exact"] = f"{sum(same)}/{len(pairs)}"
            result[f"{name}_bitmaps_exact"] = f"{int(same_bitmap.sum())}/{len(pairs)}"
            result[f"{name}_strokes_exact_fraction"] = round(sum(same) / len(pairs), 4)
            result[f"{name}_bitmaps_exact_fraction"] = round(float(same_bitmap.mean()), 4)
            if name == "new":
                result["new_misses"] = [key for (key, _, _), ok in zip(pairs, same, strict=True) if not ok]
        print(
            f"(d) exact on {len(pairs):,} shared raw/simplified pairs: qdkit strokes {result['new_strokes_exact']} "
            f"= {result['new_strokes_exact_fraction']:.4f}, bitmaps {result['new_bitmaps_exact']} "
            f"(misses: {', '.join(result['new_misses']) or 'none'}); previous implementation strokes "
            f"{result['old_strokes_exact']} = {result['old_strokes_exact_fraction']:.4f}, bitmaps "
            f"{result['old_bitmaps_exact']} = {result['old_bitmaps_exact_fraction']:.4f}"
        )
    return result


def source_lines(tmp: Path) -> dict[str, list[bytes]]:
    if (SHARED / "strokes").is_dir():
        return {c: (SHARED / "strokes" / f"{c}.ndjson").read_bytes().splitlines() for c in CLASSES}
    print("../shared/quickdraw missing: using synthetic strokes", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "qdkit", "synth", str(tmp / "synth"), "--per-class", "25", "--format", "ndjson"],
        check=True,
        capture_output=True,
    )
    return {
        p.stem.removeprefix("full_simplified_"): p.read_bytes().splitlines()
        for p in sorted((tmp / "synth").glob("*.ndjson"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drawings", type=int, default=100_000, help="total drawings converted in (a)")
    parser.add_argument("--naive-sample", type=int, default=5_000, help="drawings rendered naively in (b)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a) and (b); medians reported")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", choices=["simplify"], default=None, help="run (d) alone")
    parser.add_argument("--simplify-repeats", type=int, default=3, help="(d): timings per drawing, best kept")
    args = parser.parse_args()
    if args.only == "simplify":
        result = bench_simplify(args.simplify_repeats)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return

    from qdkit.strokes import parse_ndjson_line, rasterize_many

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        lines = source_lines(tmp)
        per_class = -(-args.drawings // len(lines))
        (tmp / "in").mkdir()
        for name, class_lines in lines.items():
            repeated = (class_lines * (per_class // len(class_lines) + 1))[:per_class]
            (tmp / "in" / f"full_simplified_{name}.ndjson").write_bytes(b"\n".join(repeated) + b"\n")
        total = per_class * len(lines)
        train, rest = per_class - 2 * (per_class // 10), per_class // 10
        cmd = [
            sys.executable,
            "-m",
            "qdkit",
            "convert",
            "--in",
            str(tmp / "in"),
            "--out",
            str(tmp / "out"),
            "--h5",
            "--no-png",
            "--train",
            str(train),
            "--validation",
            str(rest),
            "--test",
            str(rest),
        ]
        sample = [json.loads(line)["drawing"] for class_lines in lines.values() for line in class_lines]
        sample = (sample * (args.naive_sample // len(sample) + 1))[: args.naive_sample]
        convert_rates, naive_rates = [], []
        for _ in range(args.rounds):  # alternated, so both see the same machine
            t0 = time.perf_counter()
            subprocess.run(cmd + ["--overwrite"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            convert_rates.append(total / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            naive = [naive_rasterize(d) for d in sample]
            naive_rates.append(len(sample) / (time.perf_counter() - t0))
        convert_rate, naive_rate = float(np.median(convert_rates)), float(np.median(naive_rates))
        print(
            f"(a) qdkit convert: {total:,} drawings, median of {args.rounds}: {convert_rate:,.0f} drawings/s "
            f"({os.cpu_count()} cores; runs {', '.join(f'{r:,.0f}' for r in convert_rates)})"
        )
        print(
            f"(b) naive published procedure: {naive_rate:,.0f} drawings/s (one process; runs "
            f"{', '.join(f'{r:,.0f}' for r in naive_rates)})"
        )
        drawings = [parse_ndjson_line(json.dumps({"drawing": d})) for d in sample[:500]]
        assert np.array_equal(np.stack(naive[:500]), rasterize_many(drawings)), "naive and qdkit differ"

    exact = None
    if (SHARED / "animals10").is_dir():
        hits = count = 0
        for name in ("bear", "bee", "cat", "dog", "duck"):
            class_lines = (SHARED / "strokes" / f"{name}.ndjson").read_bytes().splitlines()
            rows = np.load(SHARED / "animals10" / f"full_numpy_bitmap_{name}.npy", mmap_mode="r")
            got = rasterize_many([parse_ndjson_line(line) for line in class_lines]).reshape(len(class_lines), -1)
            hits += int((got == rows[: len(class_lines)]).all(axis=1).sum())
            count += len(class_lines)
        exact = hits / count
        print(f"(c) byte-exact against the official bitmaps: {hits}/{count} = {exact:.4f}")
    speedup = convert_rate / naive_rate
    print(f"speedup (a)/(b): {speedup:.2f}x")
    simplified = bench_simplify(args.simplify_repeats)
    result = {
        "convert_drawings_per_s": round(convert_rate),
        "naive_drawings_per_s": round(naive_rate),
        "speedup": round(speedup, 2),
        "exact_fraction": exact,
        "drawings": total,
        "cores": os.cpu_count(),
        "simplify": simplified,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
