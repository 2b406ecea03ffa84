"""Inference on the deploy path: `Predictor`, a qdkit ONNX model (qdkit.onnxmodel) that takes any
drawing-like input, and `predict_files`, the batch path behind `qdkit predict`.

`Predictor("model.onnx").predict(x)` takes drawing arrays, images (paths, PIL images, pixel arrays),
strokes (a `qdkit.strokes.Drawing`, a stroke list, a Quick Draw ndjson object) or a list of them,
and returns one `Prediction` (top-k class names and probabilities) per drawing; `logits` /
`predict_proba` give the raw (N, classes) arrays. `predict_files` expands files, folders and globs
(qdkit.inputs), decodes them in a process pool while the session runs (qdkit.decoding), and keeps
every good result when some inputs fail.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qdkit.constants import SIDE
from qdkit.decoding import SMALL_JOB, chunks, decoded_chunks, default_workers
from qdkit.errors import QdkitError
from qdkit.images import image_to_drawing, read_drawing
from qdkit.inputs import expand_paths
from qdkit.onnxmodel import OnnxModel, check_model_file, default_model_path


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


@dataclass
class FileResults:
    """What `predict_files` returns: the good predictions in input order, and one line per failure."""

    predictions: list[Prediction] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # gone since it was listed: reading it will say so
        return 0


def predict_files(
    specs: Sequence[str | os.PathLike],
    model: str | os.PathLike | None = None,
    *,
    top_k: int = 3,
    batch_size: int = 256,
    invert: str = "auto",
    threads: int | None = None,
    workers: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> FileResults:
    """Predict every image and every .ndjson line that `specs` name. An input that fails is one
    line in `errors` (and passed to `warn` at once); the rest go on. Raises QdkitError only when
    nothing can be done at all."""
    t0 = time.perf_counter()
    result = FileResults()

    def failed(msg: str) -> None:
        result.errors.append(msg)
        if warn:
            warn(msg)

    model_path = check_model_file(model if model is not None else default_model_path())  # before any decoding
    files, problems = expand_paths(specs)
    if not files:  # said once, as the error
        raise QdkitError(problems[0] if len(problems) == 1 else "nothing to predict: " + "; ".join(problems))
    for msg in problems:
        failed(msg)
    workers = default_workers() if workers is None else max(1, int(workers))
    stroke_bytes = sum(_size(f) for f in files if f.suffix.lower() == ".ndjson")
    if len(files) < SMALL_JOB and stroke_bytes < SMALL_JOB * 1024:
        workers = 1  # forking a pool costs more than decoding a few inputs
    # Image chunks no bigger than a batch, and small enough that every worker gets some.
    image_chunk = max(1, min(int(batch_size), -(-len(files) // (2 * workers))))
    work = chunks(files, image_chunk, int(batch_size), failed)
    # Start the decoding pool (it forks) before the session creates its threads; a bad model then
    # costs at most the few chunks already in flight.
    decoded = decoded_chunks(work, invert, workers, warn or (lambda msg: None))
    try:
        first = next(decoded, None)
        predictor = Predictor(model_path, threads=threads, batch_size=batch_size, warn=warn, spin=workers <= 1)
        for part in itertools.chain([first] if first else [], decoded):
            for msg in part.errors:
                failed(msg)
            if len(part.drawings):
                result.predictions += predictor.top_k(predictor.predict_proba(part.drawings), top_k, part.names)
    finally:
        decoded.close()
    result.seconds = time.perf_counter() - t0
    return result
