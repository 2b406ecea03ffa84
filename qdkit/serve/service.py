"""The model behind `qdkit serve` and its batcher, shared by every transport (the page's routes,
/predict, v2 over HTTP and gRPC): the one place a batch of drawings becomes bitmaps and outputs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from qdkit.constants import QDKIT_VERSION, SIDE
from qdkit.inference.onnxmodel import is_quantized
from qdkit.inference.predictor import Predictor
from qdkit.inference.v2spec import MAX_DRAWINGS, check_name
from qdkit.serve.batcher import DynamicBatcher, ItemErrors
from qdkit.serve.protocol import MAX_HEAD_BYTES
from qdkit.serve.requests import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from qdkit.strokes import MAX_POINTS, MAX_STROKES, Drawing, StrokeError, rasterize_many


class Service:
    """The model and its batcher, shared by the routes."""

    def __init__(self, predictor: Predictor, name: str, max_batch: int, max_wait: float, max_body: int) -> None:
        from qdkit.serve.oip import ModelStats

        self.predictor, self.name, self.max_body = predictor, check_name(name), int(max_body)
        self.stats = ModelStats()
        self.batcher = DynamicBatcher(
            self.compute, max_batch=max_batch, max_wait=max_wait, on_batch=self.stats.batch_ran
        )

    def compute(self, items: Sequence[Drawing | np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs in the batcher's thread: (bitmaps, logits, probabilities) of drawings and ready bitmaps."""
        started = time.perf_counter_ns()
        bitmaps = np.empty((len(items), SIDE, SIDE), np.uint8)
        strokes = [i for i, item in enumerate(items) if isinstance(item, Drawing)]
        errors: list[tuple[int, StrokeError]] = []
        if strokes:  # simplified when their request was read; errors= keeps one bad drawing to itself
            drawn = rasterize_many([item for item in items if isinstance(item, Drawing)], errors=errors)
            bitmaps[strokes] = drawn
        for i, item in enumerate(items):
            if not isinstance(item, Drawing):
                bitmaps[i] = item
        ready = time.perf_counter_ns()
        logits, probs = self.predictor.logits_and_proba(bitmaps)
        self.stats.last_split = (ready - started, time.perf_counter_ns() - ready)
        if errors:
            raise ItemErrors((bitmaps, logits, probs), {strokes[i]: e for i, e in errors})
        return bitmaps, logits, probs

    def ready(self) -> str | None:
        """None when the service takes traffic; else why not (the batcher is saturated)."""
        return self.batcher.saturated()

    def facts(self) -> dict[str, Any]:
        meta = self.predictor.metadata
        return {
            "name": self.name,
            "classes": self.predictor.class_names,
            "model_name": meta.get("model_name"),
            "run_name": meta.get("run_name"),
            "epoch": meta.get("epoch"),
            "val_accuracy": meta.get("val_accuracy"),
            "test_accuracy": meta.get("test_accuracy"),
            "exported_at": meta.get("exported_at"),
            "quantized": is_quantized(meta),
            "file": self.predictor.path.name,
            "qdkit_version": QDKIT_VERSION,
            "limits": {
                "max_strokes": MAX_STROKES,
                "max_points": MAX_POINTS,
                "max_drawings": MAX_DRAWINGS,
                "max_image_pixels": MAX_IMAGE_PIXELS,
                "max_image_side": MAX_IMAGE_SIDE,
                "max_head_bytes": MAX_HEAD_BYTES,
                "max_body_bytes": self.max_body,
                "max_batch": self.batcher.max_batch,
            },
        }

    def predictions(self, bitmaps: np.ndarray, probs: np.ndarray, top_k: int, bitmap: bool) -> list[dict[str, Any]]:
        out = []
        for i, p in enumerate(self.predictor.top_k(probs, top_k)):
            one: dict[str, Any] = {
                "top": [
                    {"class": c, "probability": round(q, 6)} for c, q in zip(p.labels, p.probabilities, strict=True)
                ]
            }
            if bitmap:
                one["bitmap"] = bitmaps[i].tolist()
            out.append(one)
        return out
