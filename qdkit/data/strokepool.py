"""Stroke files on a process pool (for convert): which records a split may draw from, and the
chosen ones parsed, simplified and rasterized in workers, in order. A worker that dies, or a file
that changes under the workers, is one line naming the file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from qdkit.data.strokefiles import RecordIndex, StrokeFile, check_unchanged, record_reader, where
from qdkit.errors import QdkitError
from qdkit.strokes import SIDE, StrokeError, rasterize_many
from qdkit.strokes.drawing import ascii_int

_TASK_RECORDS = 1000  # records per pool task: amortises IPC, small enough to balance two cores


def _results(sf: StrokeFile, index: RecordIndex, futures: list) -> Iterator:
    """The futures' results in order; a worker that died (a truncated file's mapping ends in SIGBUS,
    which kills the process) is one line naming the file and what happened to it."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        for fut in futures:
            yield fut.result()
    except QdkitError:  # a bad record: unless the file changed under the workers, which says more
        check_unchanged(sf, index)
        raise
    except BrokenProcessPool:
        for fut in futures:
            fut.cancel()
        check_unchanged(sf, index)
        raise QdkitError(
            f"{sf.path}: a worker process died while reading it (killed for memory, or the file changed); "
            "nothing written"
        ) from None


@dataclass
class Scan:
    """What a worker learnt about a chunk of records without rasterizing them."""

    valid: np.ndarray  # bool
    recognized: np.ndarray  # bool (False where unknown)
    first_error: str | None


def _scan_task(sf: StrokeFile, index: RecordIndex) -> Scan:
    reader = record_reader(sf)
    valid = np.zeros(len(index), dtype=bool)
    recognized = np.zeros(len(index), dtype=bool)
    first_error = None
    for i, (start, end, number) in enumerate(
        zip(index.starts.tolist(), index.ends.tolist(), index.numbers.tolist(), strict=True)
    ):
        try:
            d = reader.ready(start, end)
        except StrokeError as err:
            first_error = first_error or f"{where(sf, number)}: {err}"
            continue
        valid[i] = True
        recognized[i] = bool(d.recognized)
    return Scan(valid, recognized, first_error)


@dataclass
class Rendered:
    images: np.ndarray  # uint8 (k, 28, 28)
    key_ids: np.ndarray  # uint64, 0 where the source has none
    countrycodes: np.ndarray  # S2, b"" where the source has none


def _render_task(sf: StrokeFile, index: RecordIndex) -> Rendered:
    reader = record_reader(sf)
    drawings = []
    for start, end, number in zip(index.starts.tolist(), index.ends.tolist(), index.numbers.tolist(), strict=True):
        try:
            drawings.append(reader.ready(start, end))
        except StrokeError as err:
            raise QdkitError(f"{where(sf, number)}: {err}") from None  # pickled back: keep it plain
    key_ids = np.array([_key_id(d.key_id) for d in drawings], dtype=np.uint64)
    countrycodes = np.array([(d.countrycode or "").encode("ascii", "replace")[:2] for d in drawings], dtype="S2")
    return Rendered(rasterize_many(drawings), key_ids, countrycodes)


def _key_id(value: str | None) -> int:
    return ascii_int(value) or 0


def _chunks(index: RecordIndex, size: int = _TASK_RECORDS, workers: int = 2) -> Iterator[RecordIndex]:
    """Tasks of at most `size` records, and at least two per worker so a small class keeps all busy."""
    size = max(64, min(size, -(-len(index) // (2 * workers))))
    for start in range(0, len(index), size):
        yield RecordIndex(
            index.starts[start : start + size], index.ends[start : start + size], index.numbers[start : start + size]
        )


def _workers(pool: Executor) -> int:
    return getattr(pool, "_max_workers", None) or os.cpu_count() or 1


def eligible_records(
    sf: StrokeFile,
    index: RecordIndex,
    pool: Executor,
    *,
    recognized_only: bool,
    skip_invalid: bool,
    on_skip: Callable[[int, str | None], None],
) -> RecordIndex:
    """The records a split may draw from: all of them, or (parsing every record on the pool) only
    the valid ones (`skip_invalid`) and/or those the game recognized. `on_skip(count, first_error)`
    hears about invalid records skipped; without `skip_invalid` the first invalid one is an error."""
    if not (recognized_only or skip_invalid):
        return index
    chunks = _chunks(index, 4 * _TASK_RECORDS, _workers(pool))
    scans = list(_results(sf, index, [pool.submit(_scan_task, sf, chunk) for chunk in chunks]))
    valid = np.concatenate([s.valid for s in scans])
    first_error = next((s.first_error for s in scans if s.first_error), None)
    if first_error and not skip_invalid:
        raise QdkitError(f"{first_error} (--skip-invalid skips bad drawings)")
    if first_error:
        on_skip(int((~valid).sum()), first_error)
    keep = valid & np.concatenate([s.recognized for s in scans]) if recognized_only else valid
    return index.take(np.flatnonzero(keep))


def render_records(
    sf: StrokeFile, index: RecordIndex, pool: Executor, progress: Callable[[int], None] | None = None
) -> Rendered:
    """Parse and rasterize the records of `index` on the pool, in order."""
    futures = [pool.submit(_render_task, sf, chunk) for chunk in _chunks(index, workers=_workers(pool))]
    parts = []
    for part in _results(sf, index, futures):
        parts.append(part)
        if progress is not None:
            progress(len(parts[-1].images))
    if not parts:
        return Rendered(np.empty((0, SIDE, SIDE), np.uint8), np.empty(0, np.uint64), np.empty(0, "S2"))
    return Rendered(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.key_ids for p in parts]),
        np.concatenate([p.countrycodes for p in parts]),
    )
