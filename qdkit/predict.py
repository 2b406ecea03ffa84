"""Inference on the deploy path: one onnxruntime session over a self-describing qdkit ONNX model.

`Predictor("model.onnx").predict(x)` takes paths, PIL images or numpy arrays and returns one
`Prediction` (top-k class names and probabilities) per drawing; `logits` / `predict_proba` give the
raw (N, classes) arrays. `predict_files` is the batch path behind `qdkit predict`: it expands
files, folders and glob patterns, decodes images in a process pool while the session runs, and
keeps every good result when some files fail.

The ONNX contract (inputs, outputs, metadata) is described in qdkit.onnxmodel.
"""
from __future__ import annotations

import csv
import glob
import io
import itertools
import json
import multiprocessing as mp
import os
import re
import sys
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from qdkit.errors import QdkitError, first_line
from qdkit.images import SIDE, image_to_drawing, read_drawing
from qdkit.onnxmodel import QdkitWarning, default_model_path, make_session, parse_metadata

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
                  ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".jfif", ".avif")
FORMATS = ("table", "json", "csv")


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one drawing, best first."""

    labels: list[str]
    probabilities: list[float]
    indices: list[int]
    source: str | None = None  # the file it came from, where there was one

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.source, "top": [{"class": c, "probability": round(float(p), 6)}
                                             for c, p in zip(self.labels, self.probabilities)]}


@dataclass
class FileResults:
    """What `predict_files` returns: the good predictions in input order, and one line per failure."""

    predictions: list[Prediction] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class Predictor:
    """One onnxruntime session over an exported model.

    Inputs (`predict`, `predict_proba`, `logits`):
      - numpy arrays shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28): drawings already in the Quick Draw
        convention (0 = background, 255 = ink, values 0..255), used as they are;
      - any other numpy array (H, W) / (H, W, C), a PIL image, or a path: an image, normalised by
        qdkit.images (grayscale, ink polarity per `invert`, cropped and fitted like Quick Draw);
      - a list of any of those.
    `predict` always returns a list of `Prediction`, one per drawing.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, batch_size: int = 256,
                 warn: Callable[[str], None] | None = None, spin: bool = True) -> None:
        self.path = Path(model) if model is not None else default_model_path()
        self.batch_size = max(1, int(batch_size))
        self.session = make_session(self.path, threads=threads, providers=providers, spin=spin)
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map)
        self._warn = warn or (lambda msg: warnings.warn(msg, QdkitWarning, stacklevel=3))
        self._check_io()

    def _check_io(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise QdkitError(f"{self.path}: the model takes {len(inputs)} inputs; qdkit feeds one (pixels)")
        spec = inputs[0]
        shape = list(spec.shape)

        def fits(dim: Any, want: int) -> bool:  # a symbolic (named or unknown) dimension fits anything
            return not isinstance(dim, int) or dim == want

        if len(shape) == 4 and fits(shape[1], 1) and fits(shape[2], SIDE) and fits(shape[3], SIDE):
            self._rank = 4
        elif len(shape) == 3 and fits(shape[1], SIDE) and fits(shape[2], SIDE):
            self._rank = 3
        else:
            raise QdkitError(f"{self.path}: input {spec.name!r} has shape {shape}; qdkit feeds 28x28 "
                             f"drawings as (N, 1, 28, 28) or (N, 28, 28)")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise QdkitError(f"{self.path}: input {spec.name!r} has a fixed batch of {shape[0]}; "
                             "qdkit needs a dynamic batch axis (re-export with `qdkit export`)")
        self._fixed_batch = shape[0] == 1
        types = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(double)": np.float64}
        if spec.type not in types:
            raise QdkitError(f"{self.path}: input {spec.name!r} is {spec.type}; qdkit feeds uint8 or float pixels")
        self.input_name, self._dtype = spec.name, types[spec.type]
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._logits_name = "logits" if "logits" in outputs else next(iter(outputs))
        self._probs_name = "probabilities" if "probabilities" in outputs else None
        out_shape = outputs[self._logits_name].shape
        if out_shape and len(out_shape) != 2:
            raise QdkitError(f"{self.path}: output {self._logits_name!r} has shape {out_shape}; "
                             "qdkit expects (N, classes)")
        n_out = out_shape[-1] if out_shape else None

        names = self.metadata.get("class_names")
        if not self.metadata or not isinstance(names, list):
            self.is_qdkit = False
            if not isinstance(n_out, int):
                probe = self._session_run([self._logits_name], np.zeros((1, SIDE, SIDE), np.uint8))[0]
                if probe.ndim != 2:
                    raise QdkitError(f"{self.path}: output {self._logits_name!r} has shape {list(probe.shape)}; "
                                     "qdkit expects (N, classes)")
                n_out = int(probe.shape[-1])
            self.class_names = [str(i) for i in range(n_out)]
            self._warn(f"{self.path}: no qdkit metadata (not made by `qdkit export`); class indices "
                       f"stand in for names and raw 0..255 pixels (0 = background) are fed as they are")
        else:
            self.is_qdkit = True
            self.class_names = [str(c) for c in names]
            if isinstance(n_out, int) and n_out != len(self.class_names):
                raise QdkitError(f"{self.path}: the model has {n_out} outputs but its metadata names "
                                 f"{len(self.class_names)} classes")

    # --------------------------------------------------------------------------- arrays

    def _feed(self, drawings: np.ndarray) -> np.ndarray:
        x = drawings.reshape(len(drawings), 1, SIDE, SIDE) if self._rank == 4 else drawings.reshape(-1, SIDE, SIDE)
        return x if x.dtype == self._dtype else x.astype(self._dtype)

    def _session_run(self, names: list[str], drawings: np.ndarray) -> list[np.ndarray]:
        try:
            return self.session.run(names, {self.input_name: self._feed(drawings)})
        except Exception as e:  # a foreign graph whose dimensions only looked right
            raise QdkitError(f"{self.path}: onnxruntime failed on a batch of {len(drawings)} drawings "
                             f"({first_line(e)})") from None

    def _run(self, drawings: np.ndarray, want_probs: bool) -> tuple[np.ndarray, np.ndarray | None]:
        names = [self._logits_name] + ([self._probs_name] if want_probs and self._probs_name else [])
        step = 1 if self._fixed_batch else self.batch_size
        logits, probs = [], []
        for start in range(0, len(drawings), step):
            out = self._session_run(names, drawings[start:start + step])
            logits.append(out[0])
            if len(out) > 1:
                probs.append(out[1])
        if not logits:
            n = len(self.class_names)
            return np.zeros((0, n), np.float32), (np.zeros((0, n), np.float32) if want_probs else None)
        lg = np.concatenate(logits).astype(np.float32, copy=False)
        if not want_probs:
            return lg, None
        if probs:
            return lg, np.concatenate(probs).astype(np.float32, copy=False)
        if not self.is_qdkit and lg.min() >= 0 and np.allclose(lg.sum(axis=1), 1, atol=1e-3):
            return lg, lg  # a foreign model whose only output already is probabilities
        return lg, softmax(lg.astype(np.float32, copy=True))

    def drawings(self, x: Any, invert: str | bool = "auto") -> np.ndarray:
        """`x` (see the class docstring) as a (N, 28, 28) uint8 array of drawings."""
        return as_drawings(x, invert)

    def logits(self, x: Any, invert: str | bool = "auto") -> np.ndarray:
        """(N, classes) float32 logits."""
        return self._run(as_drawings(x, invert), want_probs=False)[0]

    def logits_and_proba(self, x: Any, invert: str | bool = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Both (N, classes) float32 arrays from one run."""
        logits, probs = self._run(as_drawings(x, invert), want_probs=True)
        return logits, probs

    def predict_proba(self, x: Any, invert: str | bool = "auto") -> np.ndarray:
        """(N, classes) float32 class probabilities."""
        return self._run(as_drawings(x, invert), want_probs=True)[1]

    def predict(self, x: Any, top_k: int = 3, invert: str | bool = "auto") -> list[Prediction]:
        """One `Prediction` per drawing in `x`, with its `top_k` classes best first."""
        sources = _sources(x)
        probs = self.predict_proba(x, invert)
        return self.top_k(probs, top_k, sources)

    def top_k(self, probs: np.ndarray, k: int, sources: Sequence[str | None] | None = None) -> list[Prediction]:
        k = max(1, min(int(k), probs.shape[1]))
        # Stable descending order, so equal probabilities list the lower class index first.
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(probs, order, axis=1)
        names = self.class_names
        return [Prediction([names[i] for i in idx], [float(p) for p in pr], [int(i) for i in idx],
                           sources[n] if sources else None)
                for n, (idx, pr) in enumerate(zip(order.tolist(), top.tolist()))]


def _sources(x: Any) -> list[str | None] | None:
    if isinstance(x, (str, os.PathLike)):
        return [os.fspath(x)]
    if isinstance(x, (list, tuple)) and any(isinstance(v, (str, os.PathLike)) for v in x):
        return [os.fspath(v) if isinstance(v, (str, os.PathLike)) else None for v in x]
    return None


def as_drawings(x: Any, invert: str | bool = "auto") -> np.ndarray:
    """Paths, PIL images, drawing arrays or image arrays (or a list of them) -> (N, 28, 28) uint8."""
    from PIL import Image

    if isinstance(x, np.ndarray):
        if x.shape[-2:] == (SIDE, SIDE) and x.ndim in (2, 3, 4) and (x.ndim < 4 or x.shape[1] == 1):
            if x.dtype != np.uint8:
                x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
            return np.ascontiguousarray(x.reshape(-1, SIDE, SIDE))
        return image_to_drawing(x, invert)[None]
    if isinstance(x, (str, os.PathLike)):
        return read_drawing(x, invert)[None]
    if isinstance(x, Image.Image):
        return image_to_drawing(x, invert)[None]
    if isinstance(x, (list, tuple)):
        if not x:
            return np.zeros((0, SIDE, SIDE), np.uint8)
        return np.concatenate([as_drawings(v, invert) for v in x])
    raise TypeError(f"cannot predict on {type(x).__name__}: pass paths, PIL images or numpy arrays")


# ----------------------------------------------------------------------------- files

def _images_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        found += [Path(root, n) for n in names if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return sorted(found, key=_natural_key)


def expand_paths(specs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Files, folders (searched recursively for image suffixes) and glob patterns -> (files, problems).

    A quoted pattern the shell did not expand is expanded here. Each spec that yields nothing is
    one problem line; duplicates are dropped, the order of first mention is kept.
    """
    files: list[Path] = []
    problems: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        p = Path(spec)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = _images_under(p)
            if not found:
                problems.append(f"{spec}: folder has no images ({', '.join(IMAGE_SUFFIXES[:6])}, ...)")
            files.extend(found)
        elif glob.has_magic(spec):
            matched = sorted(glob.glob(spec, recursive=True), key=lambda s: _natural_key(Path(s)))
            found = []
            for m in map(Path, matched):
                if m.is_file():
                    found.append(m)
                elif m.is_dir():
                    found.extend(_images_under(m))
            if not found:
                problems.append(f"{spec}: no file matches")
            files.extend(found)
        elif p.exists():
            problems.append(f"{spec}: not a regular file")
        else:
            problems.append(f"{spec}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique, problems


_DIGITS = re.compile(r"(\d+)")


def _natural_key(p: Path) -> list:
    """`img2.png` before `img10.png`: digit runs compare as numbers."""
    parts = _DIGITS.split(str(p))
    parts[1::2] = [int(t) for t in parts[1::2]]
    return parts


def _decode_chunk(paths: list[str], invert: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Pool task: decode `paths` -> (drawings of the good ones, (index, message) per failure)."""
    out = np.empty((len(paths), SIDE, SIDE), np.uint8)
    good = np.ones(len(paths), bool)
    errors = []
    for i, p in enumerate(paths):
        try:
            out[i] = read_drawing(p, invert)
        except QdkitError as e:
            good[i] = False
            errors.append((i, str(e)))
        except Exception as e:  # never lose the batch to one odd file
            good[i] = False
            errors.append((i, f"{p}: unreadable image ({type(e).__name__}: {str(e)[:100]})"))
    return out[good], errors


def _decoded_chunks(paths: list[str], invert: str, chunk: int, workers: int,
                    warn: Callable[[str], None] = lambda msg: None
                    ) -> Iterator[tuple[int, np.ndarray, list[tuple[int, str]]]]:
    """(start, drawings, errors) per chunk of `paths`, in order. With workers > 1, a forked process
    pool decodes ahead (PNG decoding is Python-bound: threads would serialise on the GIL). Should a
    worker die (killed for memory, say), the rest is decoded here, so no result is lost."""
    starts = list(range(0, len(paths), chunk))
    if workers <= 1 or len(paths) <= chunk:
        for s in starts:
            yield (s, *_decode_chunk(paths[s:s + chunk], invert))
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    done = 0  # chunks handed out so far
    try:
        pending: list[tuple[int, Future]] = []
        queue = iter(starts)
        for s in queue:  # keep a bounded number of chunks in flight
            pending.append((s, pool.submit(_decode_chunk, paths[s:s + chunk], invert)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            s, fut = pending.pop(0)
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_decode_chunk, paths[nxt:nxt + chunk], invert)))
            result = fut.result()
            done += 1
            yield (s, *result)
    except BrokenProcessPool:
        warn(f"an image decoding process died near {paths[starts[done]]}; decoding the rest in this process")
        pool.shutdown(wait=False, cancel_futures=True)
        for s in starts[done:]:
            yield (s, *_decode_chunk(paths[s:s + chunk], invert))
    finally:  # also when the consumer stops early (an error): drop the queued chunks
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def predict_files(specs: Sequence[str | os.PathLike], model: str | os.PathLike | None = None, *,
                  top_k: int = 3, batch_size: int = 256, invert: str = "auto", threads: int | None = None,
                  workers: int | None = None, warn: Callable[[str], None] | None = None) -> FileResults:
    """Predict every image that `specs` name. A file that fails is one line in `errors` (and passed
    to `warn` at once); the rest go on. Raises QdkitError only when nothing can be done at all."""
    import time

    t0 = time.perf_counter()
    warn = warn or (lambda msg: print(f"qdkit: warning: {msg}", file=sys.stderr))
    model_path = Path(model) if model is not None else default_model_path()
    if not model_path.is_file():  # before any decoding starts
        raise QdkitError(f"{model_path}: no such model file")
    files, problems = expand_paths(specs)
    result = FileResults()
    for msg in problems:
        warn(msg)
        result.errors.append(msg)
    if not files:
        raise QdkitError(problems[0] if len(problems) == 1 else "no images to predict: " + "; ".join(problems))
    paths = [os.fspath(f) for f in files]
    workers = default_workers() if workers is None else max(1, int(workers))
    if len(paths) < 64:
        workers = 1  # forking a pool costs more than decoding a few files
    # Chunks no bigger than a batch, and small enough that every worker gets some.
    chunk = max(1, min(int(batch_size), -(-len(paths) // (2 * workers))))
    # Start the decoding pool (it forks) before the session creates its threads; a bad model then
    # costs at most the few chunks already in flight.
    chunks = _decoded_chunks(paths, invert, chunk, workers, warn)
    try:
        first = next(chunks, None)
        predictor = Predictor(model_path, threads=threads, batch_size=batch_size, warn=warn, spin=workers <= 1)
        for start, drawings, errors in itertools.chain([first] if first else [], chunks):
            good_idx = np.setdiff1d(np.arange(start, min(start + chunk, len(paths))),
                                    [start + i for i, _ in errors], assume_unique=True)
            for _, msg in errors:
                warn(msg)
                result.errors.append(msg)
            if len(drawings):
                probs = predictor.predict_proba(drawings)
                result.predictions += predictor.top_k(probs, top_k, [paths[i] for i in good_idx])
    finally:
        chunks.close()
    result.seconds = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------- output

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
            w.writerow([p.source or ""] + [v for c, pr in zip(p.labels, p.probabilities) for v in (c, f"{pr:.6f}")])
        return buf.getvalue()
    if fmt != "table":
        raise QdkitError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not predictions:
        return ""
    width = min(60, max(len(p.source or "") for p in predictions))
    name_w = max(len(c) for p in predictions for c in p.labels)
    lines = []
    for p in predictions:
        cells = "  ".join(f"{c:<{name_w}} {pr:6.1%}" for c, pr in zip(p.labels, p.probabilities))
        lines.append(f"{p.source or '':<{width}}  {cells}")
    return "\n".join(lines) + "\n"
