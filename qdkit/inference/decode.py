"""Input files -> drawings, in chunks, in a bounded process pool while the caller runs the model:
runs of image files (qdkit.images) and the records of stroke files (qdkit.data.strokefiles), each
failure one line naming the file (and line), never a lost batch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdkit.constants import SIDE
from qdkit.data.strokefiles import (
    STROKE_SUFFIXES,
    RecordIndex,
    StrokeFile,
    display_number,
    index_records,
    record_reader,
    stroke_file,
)
from qdkit.errors import QdkitError, first_line
from qdkit.images import read_drawing
from qdkit.workers import die_with_parent

SMALL_JOB = 64  # fewer inputs than this are decoded in-process: forking costs more
WINDOW_PER_WORKER = 2  # chunks in flight per decoding process


@dataclass(frozen=True)
class ImageChunk:
    """Image files to decode."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class RecordChunk:
    """Records of one stroke file (.ndjson, .bin, .csv: qdkit.data.strokefiles), parsed in the worker."""

    file: StrokeFile
    index: RecordIndex

    def place(self, i: int) -> str:
        """FILE:N, N the record's line from 1 (its record number for .bin), as predictions are named."""
        return f"{self.file.path}:{display_number(self.file, int(self.index.numbers[i]))}"


Chunk = ImageChunk | RecordChunk


@dataclass
class Decoded:
    """What one chunk became: the good drawings, their names (path or FILE:LINE), one line per failure."""

    drawings: np.ndarray
    names: list[str]
    errors: list[str]


def _stroke_file(path: str) -> StrokeFile:
    # Any name predict was given: the format from the suffix, whatever the rest of the name says.
    found = stroke_file(path)
    if found is not None:
        return found
    kind = {".bin": "binary", ".csv": "csv"}.get(Path(path).suffix.lower(), "ndjson")
    return StrokeFile(Path(path), "", kind)


def chunks(
    files: Sequence[str | os.PathLike], image_chunk: int, line_chunk: int, problems: Callable[[str], None]
) -> Iterator[Chunk]:
    """The work in input order: runs of image files, and each stroke file's records, in chunks.
    A stroke file that cannot be read or indexed is passed to `problems`."""
    images: list[str] = []
    for f in (os.fspath(p) for p in files):
        if not f.lower().endswith(STROKE_SUFFIXES):
            images.append(f)
            if len(images) == image_chunk:
                yield ImageChunk(tuple(images))
                images = []
            continue
        if images:
            yield ImageChunk(tuple(images))
            images = []
        sf = _stroke_file(f)
        try:
            index = index_records(sf)
        except QdkitError as e:
            problems(str(e))
            continue
        for start in range(0, len(index), line_chunk):
            yield RecordChunk(sf, index.take(np.arange(start, min(start + line_chunk, len(index)))))
    if images:
        yield ImageChunk(tuple(images))


def decode_chunk(chunk: Chunk, invert: str) -> Decoded:
    """Pool task: a chunk -> its drawings; a failure is one line naming the file (and line)."""
    if isinstance(chunk, RecordChunk):
        return _decode_records(chunk)
    out = np.empty((len(chunk.paths), SIDE, SIDE), np.uint8)
    names: list[str] = []
    errors: list[str] = []
    for p in chunk.paths:
        try:
            out[len(names)] = read_drawing(p, invert)
            names.append(p)
        except QdkitError as e:
            errors.append(str(e))
        except Exception as e:  # never lose the batch to one odd file
            errors.append(f"{p}: unreadable image ({type(e).__name__}: {first_line(e, 100)})")
    return Decoded(out[: len(names)], names, errors)


def _decode_records(chunk: RecordChunk) -> Decoded:
    from qdkit.strokes import StrokeError, rasterize_many

    drawings: list = []
    names: list[str] = []
    errors: list[str] = []
    try:
        reader = record_reader(chunk.file)
    except OSError as e:
        return Decoded(np.zeros((0, SIDE, SIDE), np.uint8), [], [f"{chunk.file.path}: cannot read ({e.strerror})"])
    for i, (start, end) in enumerate(zip(chunk.index.starts.tolist(), chunk.index.ends.tolist(), strict=True)):
        try:
            drawings.append(reader.ready(start, end))  # simplified here: one bad drawing costs only itself
            names.append(chunk.place(i))
        except (StrokeError, QdkitError) as e:
            errors.append(f"{chunk.place(i)}: {e}")
    return Decoded(rasterize_many(drawings) if drawings else np.zeros((0, SIDE, SIDE), np.uint8), names, errors)


# ----------------------------------------------------------------------------- parallel decoding


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decoded_chunks(
    work: Iterable[Chunk], invert: str, workers: int, warn: Callable[[str], None] = lambda msg: None
) -> Generator[Decoded, None, None]:
    """`decode_chunk` of each chunk, in order. With workers > 1 a forked process pool decodes a few
    chunks ahead (PNG decoding is Python-bound: threads would serialise on the GIL); its workers
    exit if this process dies (qdkit.workers). Should a worker die (killed for memory, say), the
    rest is decoded here, so no result is lost.

    The window of chunks in flight is bounded (WINDOW_PER_WORKER per worker), so a million-line
    .ndjson file is never read ahead into memory: Executor.map would submit every chunk at once.
    """
    todo = iter(work)
    if workers <= 1:
        yield from (decode_chunk(c, invert) for c in todo)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),))
    window: deque[tuple[Chunk, Future[Decoded] | None]] = deque()
    try:
        while True:
            while len(window) < WINDOW_PER_WORKER * workers and (c := next(todo, None)) is not None:
                window.append((c, None))  # in the window before submit(), which may raise
                window[-1] = (c, pool.submit(decode_chunk, c, invert))
            if not window:
                return
            future = window[0][1]
            assert future is not None
            result = future.result()
            window.popleft()
            yield result
    except BrokenProcessPool:
        first = window[0][0]
        near = first.paths[0] if isinstance(first, ImageChunk) else first.place(0)
        warn(f"an image decoding process died near {near}; decoding the rest in this process")
        pool.shutdown(wait=False, cancel_futures=True)
        yield from (decode_chunk(c, invert) for c, _ in list(window))
        yield from (decode_chunk(c, invert) for c in todo)
    finally:  # also when the consumer stops early (an error, Ctrl-C): drop the queued chunks
        pool.shutdown(wait=True, cancel_futures=True)
