"""The original project's pictures, drawn with matplotlib from results.csv (TensorBoard has the same
numbers live):

- a run's curves.png: train and validation accuracy (left) and loss (right) per epoch;
- a sweep's lr<lr>.png, one per learning rate, next to sweep.md: the validation accuracy and loss of
  every batch size of that rate (train dashed), as the original README showed its grid.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qdkit.files import atomic_path
from qdkit.outputs import PNG_SOFTWARE

Rows = Sequence[Mapping[str, Any]]


def read_results(path: Path) -> list[dict[str, float]]:
    """results.csv as rows of floats; [] when it is missing or unreadable (a run that never finished an epoch)."""
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]
    except (OSError, ValueError):
        return []


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": PNG_SOFTWARE})
    return path


def _axes(plt: Any, title: str) -> tuple[Any, Any, Any]:
    from matplotlib.ticker import MaxNLocator

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    fig.suptitle(title)
    for ax, what in ((acc, "accuracy"), (loss, "loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    return fig, acc, loss


def write_run_curves(history: Rows, path: Path, title: str) -> Path | None:
    """curves.png of one run (train and validation accuracy and loss); None without any epoch."""
    if not history:
        return None
    plt = _pyplot()
    fig, acc, loss = _axes(plt, title)
    epochs = [int(r["epoch"]) for r in history]
    for key, label, style in (("train", "train", "--"), ("val", "validation", "-")):
        acc.plot(epochs, [r[f"{key}_accuracy"] for r in history], style, marker="o", label=label)
        loss.plot(epochs, [r[f"{key}_loss"] for r in history], style, marker="o", label=label)
    acc.legend()
    loss.legend()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_sweep_figures(runs: Mapping[tuple[float, int], Rows], folder: Path, lr_label: Any) -> list[Path]:
    """One lr<lr>.png per learning rate in `folder`: every batch size's curves; returns the files written."""
    written: list[Path] = []
    lrs = sorted({lr for lr, _ in runs}, reverse=True)
    if not lrs:
        return written
    plt = _pyplot()
    for lr in lrs:
        cells = sorted((bs, rows) for (r, bs), rows in runs.items() if r == lr and rows)
        if not cells:
            continue
        fig, acc, loss = _axes(plt, f"learning rate {lr_label(lr)}: batch sizes (validation solid, train dashed)")
        for i, (bs, rows) in enumerate(cells):
            color = f"C{i % 10}"
            epochs = [int(r["epoch"]) for r in rows]
            for key, style in (("val", "-"), ("train", "--")):
                label = f"batch {bs}" if key == "val" else None
                acc.plot(epochs, [r[f"{key}_accuracy"] for r in rows], style, color=color, label=label)
                loss.plot(epochs, [r[f"{key}_loss"] for r in rows], style, color=color, label=label)
        acc.legend(fontsize="small")
        try:
            written.append(_save(fig, folder / f"lr{lr_label(lr)}.png"))
        finally:
            plt.close(fig)
    return written
