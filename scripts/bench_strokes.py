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
    shared golden pairs (bear, bee, cat, dog, duck: line i of the strokes = row i of the bitmaps).
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()

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
    result = {
        "convert_drawings_per_s": round(convert_rate),
        "naive_drawings_per_s": round(naive_rate),
        "speedup": round(speedup, 2),
        "exact_fraction": exact,
        "drawings": total,
        "cores": os.cpu_count(),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
