"""The original project's classification view, as one PNG: a grid of drawings from a split, each
beside a bar chart of its top class probabilities (from the exported ONNX model); a mistake gets a
red title and a red bar, the true class's bar is green wherever it appears."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qdkit.constants import DEFAULT_STORE
from qdkit.errors import QdkitError
from qdkit.files import atomic_path
from qdkit.inference.onnxmodel import OnnxModel
from qdkit.outputs import PNG_SOFTWARE, is_qdkit_png, output_file

OK, WRONG, OTHER = "#2e7d32", "#c62828", "#90a4ae"


def visualize(
    model: str | os.PathLike | None = None,
    data: str | os.PathLike = DEFAULT_STORE,
    split: str = "test",
    out: str | os.PathLike | None = None,
    *,
    count: int = 16,
    top_k: int = 5,
    columns: int = 4,
    seed: int = 0,
    mistakes: bool = False,
    threads: int | None = None,
    warn: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> tuple[Path, str]:
    """Draw `count` random drawings of `split` (or only misclassified ones with `mistakes`);
    returns (the PNG path, a one-line summary). Default `out`: predictions.png beside the model; a
    file there that qdkit did not write is replaced only with `overwrite` (qdkit.outputs)."""
    from qdkit.data.store import open_store

    predictor = OnnxModel(model, threads=threads, warn=warn)
    out = output_file(
        out if out is not None else predictor.path.parent / "predictions.png",
        "picture",
        overwrite=overwrite,
        ours=is_qdkit_png,
    )
    store = open_store(data)
    arrays = store.split(split)
    names = predictor.class_names
    if len(names) != len(store.class_names):
        raise QdkitError(
            f"{predictor.path}: the model has {len(names)} classes, the store {data} has {len(store.class_names)}"
        )
    if len(arrays) == 0:
        raise QdkitError(f"{data}: split {split!r} is empty")
    labels = np.asarray(arrays.labels)
    pick = _pick(predictor, arrays, labels, count, seed, mistakes, f"the {split} split of {data}")
    drawings = np.asarray(arrays.images[pick])
    probs = predictor.run(drawings)[1]
    assert probs is not None
    plural = "s" if len(pick) != 1 else ""
    what = f"misclassified {split} drawing{plural}" if mistakes else f"random {split} drawing{plural}"
    heading = f"{Path(predictor.path).name}: {len(pick)} {what}"
    n_right = _write_grid(out, drawings, probs, labels[pick], names, store.class_names, top_k, columns, heading)
    return out, f"wrote {out}: {len(pick)} {what}, {n_right} right"


def _write_grid(
    out: Path,
    drawings: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    truth_names: list[str],
    top_k: int,
    columns: int,
    heading: str,
) -> int:
    """The PNG at `out`: one cell per drawing, the drawing beside its `top_k` bars; returns how many
    the model gets right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, min(top_k, len(names)))
    cols = max(1, min(columns, len(drawings)))
    rows = -(-len(drawings) // cols)
    height = rows * 2.3 + 0.9
    fig = plt.figure(figsize=(cols * 4.4, height), dpi=100)
    outer = fig.add_gridspec(
        rows, cols, wspace=0.08, hspace=0.5, left=0.015, right=0.985, top=1 - 0.95 / height, bottom=0.25 / height
    )
    n_right = 0
    for n, (drawing, p, label) in enumerate(zip(drawings, probs, labels, strict=True)):
        cell = outer[divmod(n, cols)].subgridspec(1, 2, width_ratios=[1, 1.2], wspace=0.42)
        order = np.argsort(-p, kind="stable")[:k]
        right = int(order[0]) == int(label)
        n_right += right
        title = truth_names[label] if right else f"{truth_names[label]} → {names[order[0]]}"
        _draw_drawing(fig.add_subplot(cell[0]), drawing, title, right)
        _draw_bars(fig.add_subplot(cell[1]), p, order, int(label), names)
    fig.suptitle(
        f"{heading}, {n_right} right\nmistakes in red, the true class's bar in green",
        fontsize=11 if cols > 1 else 9,
    )
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)
    return n_right


def _pick(
    predictor: OnnxModel, arrays: Any, labels: np.ndarray, count: int, seed: int, mistakes: bool, where: str
) -> np.ndarray:
    """Sorted rows of up to `count` random drawings; with `mistakes`, only ones the model gets wrong."""
    rng = np.random.default_rng(seed)
    if mistakes:
        wrong = np.flatnonzero(predictor.run(np.asarray(arrays.images), want_probs=False)[0].argmax(1) != labels)
        if len(wrong) == 0:
            raise QdkitError(f"{predictor.path}: no mistakes on {where} to show")
        return np.sort(rng.choice(wrong, min(count, len(wrong)), replace=False))
    return np.sort(rng.choice(len(arrays), min(count, len(arrays)), replace=False))


def _draw_drawing(ax: Any, drawing: np.ndarray, title: str, right: bool) -> None:
    """The drawing, framed and titled green-black when the model is right, red when wrong."""
    ax.imshow(255 - drawing, cmap="gray", vmin=0, vmax=255, interpolation="nearest")  # ink dark on white
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(OK if right else WRONG)
        spine.set_linewidth(1.5 if right else 2.5)
    ax.set_title(title, fontsize=10, color="black" if right else WRONG, fontweight="normal" if right else "bold")


def _draw_bars(bx: Any, p: np.ndarray, order: np.ndarray, label: int, names: list[str]) -> None:
    """The top classes' probabilities `p[order]` as bars: the true class green, a wrong top-1 red."""
    colours = [OK if int(i) == label else (WRONG if j == 0 else OTHER) for j, i in enumerate(order)]
    y = np.arange(len(order))
    bx.barh(y, p[order], color=colours, height=0.7)
    bx.set_yticks(y, [names[i] for i in order], fontsize=8)
    bx.invert_yaxis()
    bx.set_xlim(0, 1)
    bx.set_xticks([0, 0.5, 1], ["0", ".5", "1"], fontsize=7)
    bx.tick_params(axis="y", length=0)
    for side in ("top", "right"):
        bx.spines[side].set_visible(False)
    for yy, v in zip(y, p[order], strict=True):
        inside = v > 0.75  # the label goes inside a long bar, in white
        bx.text(
            v - 0.02 if inside else v + 0.02,
            float(yy),
            f"{v:.0%}",
            va="center",
            ha="right" if inside else "left",
            fontsize=7,
            color="white" if inside else "black",
        )
