"""How `qdkit predict` shows predictions: an aligned table for people, JSON or CSV for programs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from qdkit.errors import QdkitError
from qdkit.inference.predictor import Prediction

FORMATS = ("table", "json", "csv")
MAX_PATH_WIDTH = 60  # longer paths push the table's columns out instead of widening every row


def format_predictions(predictions: Sequence[Prediction], fmt: str = "table", top_k: int = 3) -> str:
    """`table` (aligned, for people), `json` (a list of {path, top: [{class, probability}]}) or `csv`
    (path, class_1, probability_1, ...)."""
    if fmt == "json":
        return json.dumps([p.as_dict() for p in predictions], indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        k = max((len(p.labels) for p in predictions), default=top_k)
        w.writerow(["path"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "probability")])
        for p in predictions:
            cells = [v for c, pr in zip(p.labels, p.probabilities, strict=True) for v in (c, f"{pr:.6f}")]
            w.writerow([p.source or "", *cells])
        return buf.getvalue()
    if fmt != "table":
        raise QdkitError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not predictions:
        return ""
    width = min(MAX_PATH_WIDTH, max(len(p.source or "") for p in predictions))
    name_w = max(len(c) for p in predictions for c in p.labels)
    lines = []
    for p in predictions:
        row = "  ".join(f"{c:<{name_w}} {pr:6.1%}" for c, pr in zip(p.labels, p.probabilities, strict=True))
        lines.append(f"{p.source or '':<{width}}  {row}")
    return "\n".join(lines) + "\n"
