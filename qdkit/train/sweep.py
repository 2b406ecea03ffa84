"""The original project's manual grid as one command: train every (learning rate, batch size) pair,
then write a markdown table of test accuracy in the original README's layout (one table per
learning rate, one column per batch size).

A sweep named NAME puts each run in artifacts/NAME/lr<lr>-bs<batch>/ and runs/NAME/lr<lr>-bs<batch>/,
so TensorBoard pointed at runs/ shows every run of the grid (HParams tab included). Running the same
sweep again with `--name NAME` keeps finished runs, resumes interrupted ones from their last.pt and
trains only what is missing: no run is ever lost or overwritten.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from qdkit.checkpoint import write_atomic
from qdkit.data.store import open_store
from qdkit.errors import QdkitError
from qdkit.progress import format_seconds, plural
from qdkit.train.curves import read_results, write_sweep_figures
from qdkit.train.loop import TrainingInterrupted
from qdkit.train.plan import RunSettings, TrainConfig, check_run_name, format_lr
from qdkit.train.recipes import SWEEP_BATCH_SIZES, SWEEP_LRS
from qdkit.train.reporter import console
from qdkit.train.run import train

ORIGINAL_LRS, ORIGINAL_BATCH_SIZES = SWEEP_LRS, SWEEP_BATCH_SIZES  # the grid `qdkit sweep` trains by default


@dataclass
class SweepResult:
    name: str
    folder: Path  # artifacts/NAME
    table: str  # the markdown written to folder/sweep.md
    cells: dict[tuple[float, int], dict[str, Any]] = field(default_factory=dict)  # metrics, or {"error": ...}


def cell_name(lr: float, batch_size: int) -> str:
    return f"lr{format_lr(lr)}-bs{batch_size}"


class SweepClock:
    """The sweep's overall ETA: the mean wall time of the cells trained so far times the cells left."""

    def __init__(self, cells: int) -> None:
        self.cells, self.done, self._t0 = cells, 0, 0.0
        self.seconds: list[float] = []

    def next_cell(self) -> None:
        self.done += 1

    def start(self) -> None:
        self._t0 = time.monotonic()

    def trained(self) -> str:
        self.seconds.append(time.monotonic() - self._t0)
        left = self.cells - self.done
        line = f"{self.done}/{self.cells} cells done"
        if left:
            line += f"; about {format_seconds(left * sum(self.seconds) / len(self.seconds))} left for the sweep"
        return line


def sweep(
    lrs: Sequence[float] = SWEEP_LRS,
    batch_sizes: Sequence[int] = SWEEP_BATCH_SIZES,
    base: TrainConfig | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Train the grid lrs x batch_sizes with `base` for everything else; returns the table and metrics."""
    lrs, batch_sizes = list(lrs), list(batch_sizes)
    base = _checked_grid(lrs, batch_sizes, (base or TrainConfig()).resolved())
    name = check_run_name(name) if name else f"{datetime.now():%Y%m%d-%H%M%S}-sweep-{base.model}"
    folder = Path(base.artifacts_dir) / name
    runs = Path(base.runs_dir) / name
    say = log or console
    result = SweepResult(name, folder, "")
    eta = SweepClock(len(lrs) * len(batch_sizes))
    try:
        for lr in lrs:
            for bs in batch_sizes:
                eta.next_cell()
                cell = cell_name(lr, bs)
                run_dir = folder / cell
                cfg = replace(base, lr=lr, batch_size=bs, run_name=cell, runs_dir=str(runs), artifacts_dir=str(folder))
                if (run_dir / "metrics.json").is_file():
                    say(f"[{name}] {cell}: finished earlier, kept")
                    result.cells[(lr, bs)] = json.loads((run_dir / "metrics.json").read_text())
                    continue
                if (run_dir / "last.pt").is_file():
                    say(f"[{name}] {cell}: resuming from {run_dir / 'last.pt'}")
                    cfg = replace(cfg, resume=str(run_dir / "last.pt"), run_name=None)
                elif run_dir.exists():
                    result.cells[(lr, bs)] = {"error": f"{run_dir} exists without a checkpoint (left as is)"}
                    say(f"[{name}] {cell}: skipped, {result.cells[(lr, bs)]['error']}")
                    continue
                else:
                    say(f"[{name}] {cell}: training")
                try:
                    eta.start()
                    result.cells[(lr, bs)] = train(cfg, log=log)
                    say(f"[{name}] {eta.trained()}")
                except TrainingInterrupted:
                    raise
                except QdkitError as e:  # e.g. divergence at a high lr: record it, go on with the grid
                    result.cells[(lr, bs)] = {"error": str(e)}
                    say(f"[{name}] {cell}: failed: {e}")
    except TrainingInterrupted as e:
        _write(result, lrs, batch_sizes, base)
        raise TrainingInterrupted(
            f"{e}; or continue the whole sweep with: qdkit sweep ... --name {name}", e.checkpoint
        ) from e
    _write(result, lrs, batch_sizes, base)
    return result


def _checked_grid(lrs: list[float], batch_sizes: list[int], base: RunSettings) -> RunSettings:
    """`base` if the grid can run on its store at all; else one line, before any training."""
    if not lrs or not batch_sizes:
        raise QdkitError("sweep: give at least one --lr and one --batch-size")
    if base.resume or base.run_name:
        raise QdkitError("sweep: --resume and --run-name belong to single runs (use --name to continue a sweep)")
    store = open_store(base.data)  # a missing or broken store fails once, before any training
    n_train = store.counts.get("train", 0)
    too_big = [b for b in batch_sizes if b > n_train]
    if too_big:
        raise QdkitError(
            f"--batch-size {','.join(map(str, too_big))}: larger than the {n_train} training drawings in {base.data}"
        )
    return base


def _write(result: SweepResult, lrs: list[float], batch_sizes: list[int], base: TrainConfig) -> None:
    result.table = markdown_table(result.cells, lrs, batch_sizes, base, result.name)
    write_atomic(result.folder / "sweep.md", result.table)
    runs = {cell: read_results(result.folder / cell_name(*cell) / "results.csv") for cell in result.cells}
    write_sweep_figures(runs, result.folder, format_lr)
    rows = [
        {
            "lr": lr,
            "batch_size": bs,
            **{
                k: v
                for k, v in m.items()
                if k
                in ("run_name", "test_accuracy", "best_val_accuracy", "best_epoch", "epochs", "train_seconds", "error")
            },
        }
        for (lr, bs), m in result.cells.items()
    ]
    write_atomic(
        result.folder / "sweep.json",
        json.dumps({"name": result.name, "model": base.model, "data": str(base.data), "runs": rows}, indent=2) + "\n",
    )


def _cell_text(metrics: dict[str, Any] | None, best: float | None) -> str:
    if metrics is None:
        return "—"
    if "error" in metrics:
        return "diverged" if "diverged" in metrics["error"] else "failed"
    acc = metrics.get("test_accuracy")
    if acc is None:
        return "n/a"
    text = f"{100 * acc:.2f}%"
    return f"**{text}**" if best is not None and acc == best else text


def markdown_table(
    cells: dict[tuple[float, int], dict[str, Any]],
    lrs: list[float],
    batch_sizes: list[int],
    base: TrainConfig,
    name: str = "",
) -> str:
    """Test accuracy, one table per learning rate, columns = batch sizes (the original layout)."""
    accs = [m["test_accuracy"] for m in cells.values() if m.get("test_accuracy") is not None]
    best = max(accs) if accs else None
    lines = [
        f"## Test accuracy: {base.model}, {plural(base.epochs or 0, 'epoch')}, {base.optimizer}"
        + (f" ({name})" if name else ""),
        "",
        f"Data `{base.data}`; best run in bold; validation-selected checkpoint (best.pt) of each run.",
        "",
    ]
    for lr in lrs:
        lines += [
            f"### Learning rate {lr:g}",
            "",
            "| Batch size | " + " | ".join(str(b) for b in batch_sizes) + " |",
            "|---|" + "---:|" * len(batch_sizes),
            "| Test accuracy | " + " | ".join(_cell_text(cells.get((lr, b)), best) for b in batch_sizes) + " |",
            "",
        ]
    return "\n".join(lines)
