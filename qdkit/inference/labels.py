"""Accuracy of `qdkit predict` where the inputs carry their answer: an image inside a folder named
after one of the model's classes (as convert's PNG splits are: png/test/cat/000001.png) counts as a
drawing of that class. The report says how many inputs were labelled this way, the top-1 and top-k
accuracy on them, and the worst classes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qdkit.inference.predictor import Prediction

_RECORD = re.compile(r"\.(ndjson|bin|csv):\d+$", re.IGNORECASE)  # a drawing of a stroke file, FILE:LINE


@dataclass
class FolderAccuracy:
    labelled: int  # predictions whose folder names a class
    total: int  # all predictions
    top1: int
    topk: int
    k: int
    per_class: dict[str, tuple[int, int]] = field(default_factory=dict)  # class -> (correct, seen)

    def worst(self, count: int = 3) -> list[tuple[str, float, int]]:
        """The `count` classes with the lowest top-1 accuracy: (class, accuracy, drawings)."""
        rows = [(name, right / seen, seen) for name, (right, seen) in self.per_class.items() if seen]
        return sorted(rows, key=lambda r: (r[1], r[0]))[:count]

    def summary(self) -> str:
        where = "" if self.labelled == self.total else f" (of {self.total} predicted)"
        line = (
            f"accuracy on {self.labelled} input(s) in class-named folders{where}: top-1 {self.top1 / self.labelled:.2%}"
        )
        if self.k > 1:
            line += f", top-{self.k} {self.topk / self.labelled:.2%}"
        worst = [f"{name} {acc:.0%} of {seen}" for name, acc, seen in self.worst() if acc < 1]
        return line + ("; worst: " + ", ".join(worst) if worst else "; every class right")


def label_of(source: str | None, classes: set[str]) -> str | None:
    """The class an input's folder names, or None (a stroke file's FILE:LINE, a folder like any other)."""
    if not source or _RECORD.search(source):
        return None
    parent = Path(source).parent.name
    return parent if parent in classes else None


def folder_accuracy(predictions: Sequence[Prediction], class_names: Sequence[str]) -> FolderAccuracy | None:
    """The accuracy on the predictions whose input sits in a class-named folder; None when there are none."""
    classes = set(class_names)
    k = max((len(p.labels) for p in predictions), default=1)
    report = FolderAccuracy(0, len(predictions), 0, 0, k)
    for p in predictions:
        truth = label_of(p.source, classes)
        if truth is None:
            continue
        report.labelled += 1
        right, seen = report.per_class.get(truth, (0, 0))
        hit = p.label == truth
        report.per_class[truth] = (right + hit, seen + 1)
        report.top1 += hit
        report.topk += truth in p.labels
    return report if report.labelled else None


def prediction_summary(predictions: Sequence[Prediction], count: int = 5) -> str:
    """One line for a predictions file written elsewhere: how often each class came first."""
    if not predictions:
        return "no predictions"
    tally: dict[str, int] = {}
    for p in predictions:
        tally[p.label] = tally.get(p.label, 0) + 1
    top = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{name} {n}" for name, n in top[:count])
    more = f", {len(top) - count} more class(es)" if len(top) > count else ""
    return f"top-1 classes: {shown}{more}"
