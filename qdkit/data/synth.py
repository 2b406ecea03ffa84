"""Synthetic Quick-Draw-format doodles of ten simple shapes: the offline stand-in for the real data.

Each drawing is a few jittered pen strokes (random rotation, aspect, shear, wobbly control points,
now and then a missing or an extra stroke), taken through the dataset's own pipeline exactly like a
real drawing: `strokes.simplify` (the published simplification of raw strokes) and then
`strokes.rasterize` (the published rendering) — so a synthetic bitmap is the rendering of its
simplified strokes, and `--format ndjson` writes those strokes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from qdkit.data import bitmaps  # save_bitmaps through the module: the seam tests patch
from qdkit.data.bitmaps import PIXELS, bitmap_filename
from qdkit.errors import QdkitError
from qdkit.files import atomic_path
from qdkit.progress import progress
from qdkit.strokes import Drawing, rasterize_many, simplify

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "line",
    "zigzag",
    "spiral",
    "cross",
    "arrow",
    "house",
)

FORMATS = ("bitmap", "ndjson")

Stroke = np.ndarray  # (k, 2) float points, x right and y down, roughly within [-1, 1]


def _closed(corners: list[tuple[float, float]] | np.ndarray) -> Stroke:
    corners = np.asarray(corners, float)
    return np.vstack([corners, corners[:1]])


def _jitter(points: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    return points + rng.normal(0.0, amount, points.shape)


# --- the ten shapes: each returns strokes in unit coordinates, before the shared distortions ---


def _circle(rng: np.random.Generator) -> list[Stroke]:
    # People rarely close a circle exactly: the sweep under- or overshoots, and the radius drifts.
    start = rng.uniform(0, 2 * np.pi)
    t = np.linspace(start, start + 2 * np.pi * rng.uniform(0.85, 1.12), 32)
    r = 1 + np.linspace(0, rng.normal(0, 0.12), t.size) + 0.05 * np.sin(t * rng.integers(2, 4) + rng.uniform(0, 6))
    return [np.column_stack([r * np.cos(t), r * np.sin(t)])]


def _square(rng: np.random.Generator) -> list[Stroke]:
    corners = _jitter(np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float), rng, 0.08)
    corners = np.roll(corners, rng.integers(4), axis=0)
    if rng.random() < 0.25:  # drawn as two L-shaped strokes
        return [corners[:3], np.vstack([corners[2:], corners[:1]])]
    return [_closed(corners)]


def _triangle(rng: np.random.Generator) -> list[Stroke]:
    apex_x = rng.uniform(-0.5, 0.5)  # not always isosceles
    corners = _jitter(np.array([(apex_x, -1), (1, 0.85), (-1, 0.85)]), rng, 0.1)
    return [_closed(np.roll(corners, rng.integers(3), axis=0))]


def _star(rng: np.random.Generator) -> list[Stroke]:
    phase = -np.pi / 2 + rng.normal(0, 0.15)
    if rng.random() < 0.5:  # pentagram: one stroke through every second tip
        t = phase + np.arange(5) * 4 * np.pi / 5
        return [_closed(_jitter(np.column_stack([np.cos(t), np.sin(t)]), rng, 0.07))]
    t = phase + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.3, 0.55))
    return [_closed(_jitter(np.column_stack([r * np.cos(t), r * np.sin(t)]), rng, 0.06))]


def _line(rng: np.random.Generator) -> list[Stroke]:
    bend = rng.normal(0, 0.08)
    return [np.array([(-1, 0), (0, bend), (1, 0)], float)]


def _zigzag(rng: np.random.Generator) -> list[Stroke]:
    n = int(rng.integers(4, 9))
    x = np.linspace(-1, 1, n)
    y = rng.uniform(0.15, 0.55) * np.where(np.arange(n) % 2 == 0, -1, 1)
    return [_jitter(np.column_stack([x, y]), rng, 0.05)]


def _spiral(rng: np.random.Generator) -> list[Stroke]:
    turns = rng.uniform(1.6, 3.2)
    t = np.linspace(0, 2 * np.pi * turns, int(24 * turns))
    r = (t / t[-1]) ** rng.uniform(0.8, 1.2)
    t = rng.choice((-1, 1)) * t + rng.uniform(0, 2 * np.pi)
    return [np.column_stack([r * np.cos(t), r * np.sin(t)])]


def _cross(rng: np.random.Generator) -> list[Stroke]:
    # A plus sign, sometimes a Latin cross (bar above centre), sometimes a three-line asterisk.
    bar_y = 0.0 if rng.random() < 0.6 else rng.uniform(-0.5, -0.2)
    half = rng.uniform(0.6, 1.0)
    strokes = [np.array([(0, -1), (0, 1)], float), np.array([(-half, bar_y), (half, bar_y)])]
    if rng.random() < 0.12:
        strokes.append(np.array([(-0.75, -0.75), (0.75, 0.75)]))
    return [_jitter(s, rng, 0.05) for s in strokes]


def _arrow(rng: np.random.Generator) -> list[Stroke]:
    head, spread = rng.uniform(0.3, 0.6), rng.uniform(0.5, 1.0)
    tip = np.array([1.0, 0.0])
    barbs = _jitter(np.array([(1 - head, -head * spread), (1, 0), (1 - head, head * spread)]), rng, 0.05)
    if rng.random() < 0.5:  # shaft and head in one stroke
        return [np.vstack([[(-1, 0)], tip, barbs[0]]), barbs[1:]]
    return [np.array([(-1, 0), (1, 0)], float), barbs]


def _house(rng: np.random.Generator) -> list[Stroke]:
    eave = rng.uniform(-0.3, 0.1)
    body = _jitter(np.array([(-1, eave), (-1, 1), (1, 1), (1, eave)]), rng, 0.06)
    overhang = rng.uniform(0, 0.2)
    peak = (rng.uniform(-0.2, 0.2), rng.uniform(-1, eave - 0.25))  # a low roof makes it square-ish
    roof = _jitter(np.array([(-1 - overhang, eave), peak, (1 + overhang, eave)]), rng, 0.06)
    strokes = [body, roof]
    if rng.random() < 0.6:  # the top edge of the body is often left to the roof's base
        strokes.append(np.array([(-1, eave), (1, eave)]))
    if rng.random() < 0.4:
        x0 = rng.uniform(-0.6, 0.2)
        strokes.append(_jitter(np.array([(x0, 1), (x0, 0.45), (x0 + 0.35, 0.45), (x0 + 0.35, 1)]), rng, 0.04))
    return strokes


_SHAPES: dict[str, tuple[Callable[[np.random.Generator], list[Stroke]], float]] = {
    # name: (shape, rotation spread in radians: lines, arrows and spirals turn freely, houses don't)
    "circle": (_circle, np.pi),
    "square": (_square, 0.2),
    "triangle": (_triangle, 0.25),
    "star": (_star, 0.25),
    "line": (_line, np.pi),
    "zigzag": (_zigzag, 0.6),
    "spiral": (_spiral, np.pi),
    "cross": (_cross, 0.45),
    "arrow": (_arrow, 1.2),
    "house": (_house, 0.15),
}
assert tuple(_SHAPES) == CLASS_NAMES


# --- the distortions every drawing gets ---


def _wobble(stroke: Stroke, rng: np.random.Generator, amount: float) -> Stroke:
    """Resample the stroke densely and bend it with smooth noise, like an unsteady hand."""
    seg = np.hypot(*np.diff(stroke, axis=0).T)
    dist = np.concatenate([[0.0], np.cumsum(seg)])
    n = int(np.clip(dist[-1] * 8, 2, 64))
    at = np.linspace(0, dist[-1], n)
    dense = np.column_stack([np.interp(at, dist, stroke[:, 0]), np.interp(at, dist, stroke[:, 1])])
    knots = rng.normal(0, amount, (n // 6 + 2, 2))  # few knots -> low-frequency wander
    k_at = np.linspace(0, dist[-1], len(knots))
    return dense + np.column_stack([np.interp(at, k_at, knots[:, 0]), np.interp(at, k_at, knots[:, 1])])


def _distort(strokes: list[Stroke], rng: np.random.Generator, rotation: float) -> list[Stroke]:
    """Rotate, stretch and shear the whole drawing; drop, shorten or add a stroke now and then."""
    angle = rng.uniform(-rotation, rotation)
    c, s = np.cos(angle), np.sin(angle)
    stretch = np.exp(rng.normal(0, 0.18, 2))
    shear = rng.normal(0, 0.12)
    matrix = np.array([[c, -s], [s, c]]) @ np.array([[stretch[0], shear], [0, stretch[1]]])
    strokes = [_wobble(st, rng, rng.uniform(0.02, 0.08)) @ matrix.T for st in strokes]

    roll = rng.random()
    if roll < 0.12 and len(strokes) > 1:  # a stroke never got drawn
        del strokes[rng.integers(len(strokes))]
    elif roll < 0.25:  # the pen lifted early
        i = rng.integers(len(strokes))
        keep = max(2, int(len(strokes[i]) * rng.uniform(0.55, 0.9)))
        strokes[i] = strokes[i][:keep]
    if rng.random() < 0.18:  # a stray extra stroke
        lo, hi = np.vstack(strokes).min(0), np.vstack(strokes).max(0)
        a = rng.uniform(lo, hi)
        strokes.append(np.vstack([a, a + rng.normal(0, 0.5, 2)]))
    return strokes


def class_drawings(name: str, n: int, rng: np.random.Generator) -> list[Drawing]:
    """`n` synthetic doodles of shape `name`, as simplified strokes (y down, 0..255)."""
    if name not in _SHAPES:
        raise QdkitError(f"unknown synthetic class {name!r} (available: {', '.join(CLASS_NAMES)})")
    shape, rotation = _SHAPES[name]
    return [
        Drawing.from_strokes(
            simplify([st.T for st in _distort(shape(rng), rng, rotation)]), True, word=name, recognized=True
        )
        for _ in range(n)
    ]


def render_class(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` synthetic doodles of shape `name` as an (n, 784) uint8 array (0 = background, 255 = ink)."""
    return rasterize_many(class_drawings(name, n, rng)).reshape(n, PIXELS)


def ndjson_filename(class_name: str) -> str:
    return f"full_simplified_{class_name}.ndjson"


def _write_ndjson(path: Path, drawings: list[Drawing]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for key_id, d in enumerate(drawings):
            f.write(
                orjson.dumps(
                    {
                        "word": d.word,
                        "countrycode": "",
                        "recognized": True,
                        "key_id": str(key_id),
                        "drawing": d.to_json(),
                    }
                )
                + b"\n"
            )


def class_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of class `index`: independent of how many classes are written."""
    # Same stream as SeedSequence(seed).spawn(...)[index]; negative seeds wrap into 64 bits.
    return np.random.default_rng(np.random.SeedSequence(seed % 2**64, spawn_key=(index,)))


def write_synth(
    out_dir: str | os.PathLike,
    num_classes: int = 10,
    per_class: int = 2500,
    seed: int = 0,
    overwrite: bool = False,
    fmt: str = "bitmap",
) -> list[Path]:
    """Write `full_numpy_bitmap_<shape>.npy` (fmt "bitmap") or the same drawings' strokes as
    `full_simplified_<shape>.ndjson` (fmt "ndjson") for the first `num_classes` shapes; return the paths."""
    if fmt not in FORMATS:
        raise QdkitError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise QdkitError(f"--classes must be between 1 and {len(CLASS_NAMES)}, got {num_classes}")
    if per_class < 1:
        raise QdkitError(f"--per-class must be at least 1, got {per_class}")
    out_dir = Path(out_dir)
    names = CLASS_NAMES[:num_classes]
    paths = [out_dir / (bitmap_filename(name) if fmt == "bitmap" else ndjson_filename(name)) for name in names]
    if not overwrite:  # refuse before any work, so a refusal never leaves half the classes rewritten
        for path in paths:
            if path.exists():
                raise QdkitError(f"{path}: already exists (pass --overwrite to replace it)")
    created_dir = not out_dir.exists()
    new = [path for path in paths if not path.exists()]
    bar = progress(list(zip(names, paths, strict=True)), desc="synth", unit="class")
    try:
        for index, (name, path) in enumerate(bar):
            bar.set_postfix_str(name)
            drawings = class_drawings(name, per_class, class_rng(seed, index))
            if fmt == "bitmap":
                bitmaps.save_bitmaps(path, rasterize_many(drawings).reshape(per_class, PIXELS), overwrite=True)
            else:
                _write_ndjson(path, drawings)
    except BaseException:
        # A failed run (a full disk, Ctrl-C) leaves no half set of classes: remove the files it created.
        bar.close()
        for path in new:
            with contextlib.suppress(OSError):
                path.unlink()
        if created_dir:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    return paths
