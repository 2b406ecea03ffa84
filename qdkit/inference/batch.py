"""`qdkit predict`: `predict_files`, the batch path over files, folders, globs and stroke files.

It expands the inputs (qdkit.inference.paths), decodes them in a process pool while one `Predictor`
(qdkit.inference.predictor) runs the batches (qdkit.inference.decode), and keeps every good result when some inputs
fail.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qdkit.errors import QdkitError
from qdkit.inference.decode import SMALL_JOB, chunks, decoded_chunks, default_workers
from qdkit.inference.onnxmodel import check_model_file, default_model_path
from qdkit.inference.paths import expand_paths
from qdkit.inference.predictor import Prediction, Predictor

__all__ = ["FileResults", "predict_files"]


@dataclass
class FileResults:
    """What `predict_files` returns: the good predictions in input order, and one line per failure."""

    predictions: list[Prediction] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    model: Path | None = None  # the model file used (the newest export when none was given)
    class_names: list[str] = field(default_factory=list)


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
    result.model = model_path
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
        result.class_names = list(predictor.class_names)
        for part in itertools.chain([first] if first else [], decoded):
            for msg in part.errors:
                failed(msg)
            if len(part.drawings):
                result.predictions += predictor.top_k(predictor.predict_proba(part.drawings), top_k, part.names)
    finally:
        decoded.close()
    result.seconds = time.perf_counter() - t0
    return result
