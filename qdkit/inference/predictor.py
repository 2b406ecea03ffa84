"""`Predictor`: a qdkit ONNX model (qdkit.inference.onnxmodel) that takes any drawing-like input — drawing
arrays, images (paths, PIL images, pixel arrays), strokes (a `qdkit.strokes.Drawing`, a stroke list,
a Quick Draw ndjson object) or a list of them — and returns one `Prediction` (top-k class names and
probabilities) per drawing. A foundation: `qdkit predict` (qdkit.inference.batch) and `qdkit serve` both
build on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qdkit.constants import SIDE
from qdkit.errors import QdkitError
from qdkit.images import image_to_drawing, read_drawing
from qdkit.inference.onnxmodel import OnnxModel


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one drawing, best first."""

    labels: list[str]
    probabilities: list[float]
    indices: list[int]
    source: str | None = None  # the file (or FILE:LINE of a stroke file) it came from, where there was one

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.source,
            "top": [
                {"class": c, "probability": round(float(p), 6)}
                for c, p in zip(self.labels, self.probabilities, strict=True)
            ],
        }


class Predictor(OnnxModel):
    """A qdkit ONNX model that accepts any drawing-like input.

    Inputs (`predict`, `predict_proba`, `logits`, `logits_and_proba`):
      - numpy arrays shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28): drawings already in the Quick Draw
        convention (0 = background, 255 = ink, values 0..255), used as they are;
      - any other numpy array (H, W) / (H, W, C), a PIL image, or a path: an image, normalised by
        qdkit.images (grayscale, ink polarity per `invert`, cropped and fitted like Quick Draw);
      - strokes: a `qdkit.strokes.Drawing`, a stroke list `[[xs, ys], ...]` (simplified 0..255
        coordinates) or `[[xs, ys, ts], ...]` (raw), or a Quick Draw ndjson object
        `{"drawing": [...], ...}` — rasterized by qdkit.strokes, exactly as the dataset's bitmaps;
      - a list of any of those.
    `predict` always returns a list of `Prediction`, one per drawing.
    """

    def logits(self, x: Any, invert: str | bool = "auto") -> np.ndarray:
        """(N, classes) float32 logits."""
        return self.run(as_drawings(x, invert), want_probs=False)[0]

    def logits_and_proba(self, x: Any, invert: str | bool = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Both (N, classes) float32 arrays from one run."""
        logits, probs = self.run(as_drawings(x, invert), want_probs=True)
        assert probs is not None
        return logits, probs

    def predict_proba(self, x: Any, invert: str | bool = "auto") -> np.ndarray:
        """(N, classes) float32 class probabilities."""
        return self.logits_and_proba(x, invert)[1]

    def predict(self, x: Any, top_k: int = 3, invert: str | bool = "auto") -> list[Prediction]:
        """One `Prediction` per drawing in `x`, with its `top_k` classes best first."""
        return self.top_k(self.predict_proba(x, invert), top_k, _sources(x))

    def top_k(self, probs: np.ndarray, k: int, sources: Sequence[str | None] | None = None) -> list[Prediction]:
        """`Prediction`s from (N, classes) probabilities; `sources` names each row."""
        k = max(1, min(int(k), probs.shape[1]))
        # Stable descending order, so equal probabilities list the lower class index first.
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(probs, order, axis=1)
        names = self.class_names
        return [
            Prediction(
                [names[i] for i in idx], [float(p) for p in pr], [int(i) for i in idx], sources[n] if sources else None
            )
            for n, (idx, pr) in enumerate(zip(order.tolist(), top.tolist(), strict=True))
        ]


def _sources(x: Any) -> list[str | None] | None:
    if isinstance(x, (str, os.PathLike)):
        return [os.fspath(x)]
    if isinstance(x, (list, tuple)) and not _is_strokes(x) and any(isinstance(v, (str, os.PathLike)) for v in x):
        return [os.fspath(v) if isinstance(v, (str, os.PathLike)) else None for v in x]
    return None


def _is_number_list(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray)) and (len(v) == 0 or isinstance(v[0], (int, float, np.number)))


def _is_strokes(x: Any) -> bool:
    """Whether `x` is one stroke list `[[xs, ys(, ts)], ...]` rather than a list of inputs."""
    return (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and all(isinstance(s, (list, tuple)) and len(s) in (2, 3) and all(map(_is_number_list, s)) for s in x)
    )


def as_drawings(x: Any, invert: str | bool = "auto") -> np.ndarray:
    """Any input `Predictor` takes (see its docstring), or a list of them -> (N, 28, 28) uint8."""
    from PIL import Image

    if isinstance(x, np.ndarray):
        if x.shape[-2:] == (SIDE, SIDE) and x.ndim in (2, 3, 4) and (x.ndim < 4 or x.shape[1] == 1):
            if x.dtype != np.uint8:
                if not np.isfinite(x).all():
                    raise QdkitError("drawing array holds NaN or infinity")
                x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
            return np.ascontiguousarray(x.reshape(-1, SIDE, SIDE))
        return image_to_drawing(x, invert)[None]
    if isinstance(x, (str, os.PathLike)):
        return read_drawing(x, invert)[None]
    if isinstance(x, Image.Image):
        return image_to_drawing(x, invert)[None]
    if isinstance(x, dict) or _is_strokes(x) or type(x).__name__ == "Drawing":
        from qdkit.strokes import Drawing, parse_drawing, rasterize

        return rasterize(x if isinstance(x, Drawing) else parse_drawing(x))[None]
    if isinstance(x, (list, tuple)):
        if not x:
            return np.zeros((0, SIDE, SIDE), np.uint8)
        return np.concatenate([as_drawings(v, invert) for v in x])
    raise TypeError(f"cannot predict on {type(x).__name__}: pass drawing arrays, images, paths or strokes")
