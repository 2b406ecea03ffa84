"""A run's progress as one value: saved into last.pt and restored from it as a unit, every field
checked on the way in (a malformed checkpoint is one line naming it, never a KeyError)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qdkit.errors import QdkitError, first_line


@dataclass
class RunState:
    """Where a run is. `partial_*` are the global sums of an epoch cut short by Ctrl-C."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # > 0 only when resuming from a Ctrl-C inside an epoch
    partial_loss: float = 0.0  # loss sum, correct, count and seconds of the interrupted epoch so far
    partial_correct: float = 0.0
    partial_count: float = 0.0
    partial_seconds: float = 0.0
    best_val: float = -1.0
    best_epoch: int = 0
    since_best: int = 0
    train_seconds: float = 0.0
    finished: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def fresh(self) -> bool:
        return self.epoch == 0 and self.step_in_epoch == 0

    def partial_sums(self) -> list[float]:
        return [self.partial_loss, self.partial_correct, self.partial_count]

    def cut(self, step: int, sums: list[float], seconds: float) -> None:
        """Remember an epoch interrupted after `step` global steps."""
        self.step_in_epoch = step
        self.partial_loss, self.partial_correct, self.partial_count = sums
        self.partial_seconds = seconds

    def end_epoch(self) -> None:
        self.step_in_epoch = 0
        self.partial_loss = self.partial_correct = self.partial_count = self.partial_seconds = 0.0

    def record(self, row: dict[str, float], patience: int | None, epochs: int) -> tuple[bool, bool]:
        """Add a finished epoch's row; (improved on the best validation accuracy, patience ran out)."""
        self.epoch = int(row["epoch"])
        self.train_seconds += row["epoch_seconds"]
        self.history.append(row)
        improved = row["val_accuracy"] > self.best_val
        if improved:
            self.best_val, self.best_epoch, self.since_best = row["val_accuracy"], self.epoch, 0
        else:
            self.since_best += 1
        patience_hit = bool(patience) and self.since_best >= (patience or 0)
        self.finished = self.epoch >= epochs or patience_hit
        return improved, patience_hit

    def to_checkpoint(self) -> dict[str, Any]:
        """The fields of last.pt that hold this state (the layout every qdkit version has written)."""
        return {
            "epoch": self.epoch,
            "history": [dict(h) for h in self.history],
            "progress": {
                "step_in_epoch": self.step_in_epoch,
                "partial": [*self.partial_sums(), self.partial_seconds],
                "best_val_accuracy": self.best_val,
                "best_epoch": self.best_epoch,
                "since_best": self.since_best,
                "train_seconds": self.train_seconds,
                "finished": self.finished,
            },
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], path: Path, steps_per_epoch: int, epochs: int) -> RunState:
        """The state saved in `ckpt`, every field checked for type and range."""
        progress = ckpt.get("progress")
        if not isinstance(progress, dict):
            raise QdkitError(f"{path}: malformed training progress (no 'progress' mapping)")
        partial = progress.get("partial")
        if not isinstance(partial, (list, tuple)) or len(partial) != 4:
            raise QdkitError(
                f"{path}: malformed training progress: 'partial' is {str(partial)[:40]!r}, expected 4 numbers"
            )
        read = _Reader(path)
        state = cls(
            epoch=read.integer("epoch", ckpt.get("epoch"), 0, epochs),
            step_in_epoch=read.integer("step_in_epoch", progress.get("step_in_epoch"), 0, steps_per_epoch - 1),
            partial_loss=read.number("partial loss", partial[0]),
            partial_correct=read.number("partial correct", partial[1]),
            partial_count=read.number("partial count", partial[2]),
            partial_seconds=read.number("partial seconds", partial[3]),
            best_val=read.number("best_val_accuracy", progress.get("best_val_accuracy"), low=-1.0, high=1.0),
            best_epoch=read.integer("best_epoch", progress.get("best_epoch"), 0, epochs),
            since_best=read.integer("since_best", progress.get("since_best"), 0, epochs),
            train_seconds=read.number("train_seconds", progress.get("train_seconds")),
            finished=read.flag("finished", progress.get("finished")),
            history=read.history(ckpt.get("history", [])),
        )
        if len(state.history) != state.epoch:
            raise QdkitError(
                f"{path}: malformed training progress: {len(state.history)} epochs of history for epoch {state.epoch}"
            )
        return state


class _Reader:
    """Typed reads of checkpoint fields, each failure one line naming the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _bad(self, name: str, value: Any, expected: str) -> QdkitError:
        return QdkitError(
            f"{self.path}: malformed training progress: {name} is {repr(value)[:40]}, expected {expected}"
        )

    def integer(self, name: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(name, value, f"an integer in [{low}, {high}]")
        return value

    def number(self, name: str, value: Any, low: float = 0.0, high: float = math.inf) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not low <= value <= high:
            raise self._bad(name, value, f"a finite number in [{low}, {high}]")
        return float(value)

    def flag(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self._bad(name, value, "true or false")
        return value

    def history(self, value: Any) -> list[dict[str, float]]:
        def numbers(row: Any) -> bool:
            return isinstance(row, dict) and all(
                isinstance(k, str) and isinstance(v, (int, float)) for k, v in row.items()
            )

        if not isinstance(value, list) or not all(numbers(row) for row in value):
            raise self._bad("history", value, "a list of rows of numbers")
        return [dict(row) for row in value]


# --------------------------------------------------------------------------- random number generators


def rng_state(aug_gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "augment": aug_gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Any, aug_gen: torch.Generator, device: torch.device, path: Path) -> None:
    """Restore what rng_state saved; a malformed state is one line naming the checkpoint."""
    try:
        if not isinstance(state, dict):
            raise TypeError(f"a {type(state).__name__}, not a mapping")
        torch.set_rng_state(state["torch"])
        aug_gen.set_state(state["augment"])
        if device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise QdkitError(f"{path}: malformed random-number state ({first_line(err)})") from err


def seed_for(*parts: int) -> int:
    """A 32-bit seed drawn from several integers (seed, rank, purpose, ...)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])
