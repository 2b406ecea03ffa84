"""Input files -> drawings, in chunks, in a bounded process pool while the caller runs the model:
runs of image files (qdkit.images) and the lines of .ndjson stroke files (qdkit.strokes), each
failure one line naming the file (and line), never a lost batch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from qdkit.constants import SIDE
from qdkit.errors import QdkitError, first_line
from qdkit.images import read_drawing
from qdkit.inference.paths import STROKE_SUFFIXES
from qdkit.workers import die_with_parent

MAX_LINE_BYTES = 16 << 20  # one ndjson drawing; real ones are a few KB (raw ones up to ~100 KB)
SMALL_JOB = 64  # fewer inputs than this are decoded in-process: forking costs more
WINDOW_PER_WORKER = 2  # chunks in flight per decoding process


@dataclass(frozen=True)
class ImageChunk:
    """Image files to decode."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class LineChunk:
    """Lines of one .ndjson file as (number from 1, raw bytes; the worker parses them); a line
    over MAX_LINE_BYTES arrives as None."""

    path: str
    lines: tuple[tuple[int, bytes | None], ...]


Chunk = ImageChunk | LineChunk


@dataclass
class Decoded:
    """What one chunk became: the good drawings, their names (path or FILE:LINE), one line per failure."""

    drawings: np.ndarray
    names: list[str]
    errors: list[str]


class _NotText(Exception):
    """A stroke file that is not text at all: one problem for the file, not one per line."""


def _ndjson_lines(path: str) -> Iterator[tuple[int, bytes | None]]:
    """(line number from 1, bytes) of every non-blank line; None for a line over MAX_LINE_BYTES."""
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            raise _NotText("is gzip-compressed data, not text (gunzip it first)")
        f.seek(0)
        number = 0
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (more := f.readline(MAX_LINE_BYTES)) and not more.endswith(b"\n"):
                    pass  # skip the rest of the over-long line without holding it
                yield number, None
            elif line.strip():
                yield number, line


def chunks(
    files: Sequence[str | os.PathLike], image_chunk: int, line_chunk: int, problems: Callable[[str], None]
) -> Iterator[Chunk]:
    """The work in input order: runs of image files, and each .ndjson file's lines, in chunks.
    A stroke file that cannot be opened is passed to `problems`."""
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
        try:
            block: list[tuple[int, bytes | None]] = []
            lines = 0
            for item in _ndjson_lines(f):
                block.append(item)
                lines += 1
                if len(block) == line_chunk:
                    yield LineChunk(f, tuple(block))
                    block = []
            if block:
                yield LineChunk(f, tuple(block))
            if not lines:
                problems(f"{f}: no drawings (the file is empty or blank)")
        except OSError as e:
            problems(f"{f}: cannot read ({e.strerror or first_line(e)})")
        except _NotText as e:
            problems(f"{f}: {e}")
    if images:
        yield ImageChunk(tuple(images))


def decode_chunk(chunk: Chunk, invert: str) -> Decoded:
    """Pool task: a chunk -> its drawings; a failure is one line naming the file (and line)."""
    if isinstance(chunk, LineChunk):
        return _decode_lines(chunk)
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


def _decode_lines(chunk: LineChunk) -> Decoded:
    from qdkit.strokes import parse_ndjson_line, rasterize_many

    drawings: list = []
    names: list[str] = []
    errors: list[str] = []
    for number, line in chunk.lines:
        where = f"{chunk.path}:{number}"
        if line is None:
            errors.append(f"{where}: line longer than {MAX_LINE_BYTES:,} bytes, not a drawing")
            continue
        try:
            drawings.append(parse_ndjson_line(line))
            names.append(where)
        except QdkitError as e:
            errors.append(f"{where}: {e}")
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
        near = first.paths[0] if isinstance(first, ImageChunk) else f"{first.path}:{first.lines[0][0]}"
        warn(f"an image decoding process died near {near}; decoding the rest in this process")
        pool.shutdown(wait=False, cancel_futures=True)
        yield from (decode_chunk(c, invert) for c, _ in list(window))
        yield from (decode_chunk(c, invert) for c in todo)
    finally:  # also when the consumer stops early (an error, Ctrl-C): drop the queued chunks
        pool.shutdown(wait=True, cancel_futures=True)
