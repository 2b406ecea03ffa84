"""Split each class into train/validation/test and write PNG folders and/or the HDF5 store.

A class comes from a bitmap file (.npy) or a stroke file (ndjson, binary, CSV: qdkit.data.strokefiles),
whose chosen drawings are rasterized by qdkit.strokes. Streams class by class from memory-mapped
inputs, so peak memory is one class's selected rows whatever the dataset size. Rasterizing and PNG
encoding run in a process pool over all cores while the main process fills the store and hashes
the sources.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdkit import images as image_files
from qdkit.constants import DEFAULT_STORE, QDKIT_VERSION
from qdkit.data import strokepool  # through the modules: the seams tests patch
from qdkit.data.bitmaps import BitmapFile, bitmap_class, find_class_files, open_bitmaps, safe_dirname
from qdkit.data.store import SPLITS, StoreWriter
from qdkit.data.strokefiles import StrokeFile, check_unchanged, index_records, stroke_file
from qdkit.errors import QdkitError
from qdkit.files import atomic_path, disk_full_is_error, output_lock, sha256_file
from qdkit.outputs import mark_folder, marked_folder
from qdkit.progress import progress as progress_bar
from qdkit.progress import write_line
from qdkit.workers import die_with_parent, sigterm_as_interrupt

STORE_NAME = DEFAULT_STORE.name
PNG_DIR = "png"
PNG_MARKER = ".qdkit-png"  # in the PNG folder: qdkit wrote it, so a later convert refreshes it


def _source_sha256(path: Path, info: dict) -> str:
    """The file's SHA-256, checked to be of the file that was indexed (a file that grew or shrank
    during convert would be recorded with its new hash and its old row count)."""
    digest = sha256_file(path)
    indexed = info.get("bytes")
    now = path.stat().st_size
    if indexed is not None and now != indexed:
        raise QdkitError(
            f"{path}: changed on disk during convert ({indexed:,} bytes when indexed, {now:,} now); nothing written"
        )
    return digest


_PNG_TASK_ROWS = 500  # rows per pool task: large enough to amortise IPC, small enough to balance


def split_indices(rows: int, per_class: dict[str, int], seed: int, class_name: str) -> dict[str, np.ndarray]:
    """Disjoint source-row indices per split, deterministic in (seed, class name) alone — so adding
    or removing other classes never changes a class's split. Sorted, for sequential reads."""
    rng = np.random.default_rng([seed, zlib.crc32(class_name.encode())])
    chosen = rng.permutation(rows)[: sum(per_class.values())]
    out, start = {}, 0
    for split in SPLITS:
        n = per_class.get(split, 0)
        out[split] = np.sort(chosen[start : start + n])
        start += n
    return out


def _write_pngs(images: np.ndarray, names: np.ndarray, folder: str) -> int:
    """Pool task: write each drawing as `<folder>/<source row>.png`."""
    for image, name in zip(images, names.tolist(), strict=True):
        image_files.write_png(image, os.path.join(folder, f"{name}.png"))
    return len(images)


Source = BitmapFile | StrokeFile
STROKE_EXTRAS = {"key_id": np.uint64, "countrycode": "S2"}  # per drawing, when a class comes from strokes


def _source_class(path: Path) -> str | None:
    sf = stroke_file(path)
    return bitmap_class(path) or (sf.class_name if sf else None)


def find_sources(folder: str | os.PathLike, classes: list[str] | None = None) -> list[Source]:
    """One source per class: a bitmap file or a stroke file, sorted by class (or in `classes` order)."""
    found = find_class_files(folder, _source_class, ".npy bitmap files or .ndjson/.bin/.csv stroke files", classes)
    return [
        BitmapFile(path, name, len(open_bitmaps(path))) if bitmap_class(path) else stroke_file(path)  # type: ignore[misc]
        for name, path in found
    ]


Rows = tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray] | None]  # split, images, source rows, extras


def _bitmap_rows(bf: BitmapFile, per_class: dict[str, int], seed: int, info: dict) -> Iterator[Rows]:
    info.update(format="bitmap", rows=bf.rows)
    drawings = open_bitmaps(bf.path)
    for split, idx in split_indices(bf.rows, per_class, seed, bf.class_name).items():
        yield split, np.asarray(drawings[idx]), idx, None


def _stroke_rows(
    sf: StrokeFile,
    per_class: dict[str, int],
    seed: int,
    info: dict,
    pool: Executor,
    *,
    recognized_only: bool,
    skip_invalid: bool,
    progress: Callable[[int], None] | None,
) -> Iterator[Rows]:
    """The chosen drawings of a stroke file, rasterized on the pool. Splits draw from the eligible
    records (valid, recognized when asked) exactly as from the rows of a bitmap file."""
    index = index_records(sf)
    info.update(format=sf.kind, rows=len(index), bytes=index.stamp[0] if index.stamp else None)

    def skipped(count: int, first: str | None) -> None:
        info["skipped_invalid"] = count
        write_line(f"qdkit: warning: skipped {count} invalid drawing(s); first: {first}")

    eligible = strokepool.eligible_records(
        sf, index, pool, recognized_only=recognized_only, skip_invalid=skip_invalid, on_skip=skipped
    )
    need = sum(per_class.values())
    if len(eligible) < need:
        what = (
            "recognized valid"
            if recognized_only and skip_invalid
            else "recognized"
            if recognized_only
            else "valid"
            if skip_invalid
            else ""
        )
        raise QdkitError(
            f"{sf.path}: has {len(eligible)} {what + ' ' if what else ''}drawings, but the splits need "
            f"{need} per class (lower --train/--validation/--test)"
        )
    splits = split_indices(len(eligible), per_class, seed, sf.class_name)
    chosen = np.sort(np.concatenate(list(splits.values())))
    rendered = strokepool.render_records(sf, eligible.take(chosen), pool, progress)
    check_unchanged(sf, index)
    for split, positions in splits.items():
        rows = np.searchsorted(chosen, positions)
        yield (
            split,
            rendered.images[rows],
            eligible.numbers[positions],
            {"key_id": rendered.key_ids[rows], "countrycode": rendered.countrycodes[rows]},
        )


def _check_rows(files: list[BitmapFile], need: int) -> None:
    for bf in files:
        if bf.rows < need:
            raise QdkitError(
                f"{bf.path}: has {bf.rows} drawings, but the splits need {need} per class "
                f"(lower --train/--validation/--test)"
            )


def _check_outputs(out_dir: Path, png: bool, h5: bool) -> None:
    """Refuse, before any work, outputs that are in the way as the wrong kind of thing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise QdkitError(f"{out_dir}: is a file, not an output folder")
    if png and (out_dir / PNG_DIR).exists() and not (out_dir / PNG_DIR).is_dir():
        raise QdkitError(f"{out_dir / PNG_DIR}: is a file, not the PNG folder qdkit writes (move it away first)")
    if h5 and (out_dir / STORE_NAME).is_dir():
        raise QdkitError(f"{out_dir / STORE_NAME}: is a folder, not a store qdkit writes (move it away first)")


def _count_into(bar: Any) -> Callable[[Future], None]:
    """A done-callback adding a finished PNG task's rows to the bar (failed or cancelled tasks add none)."""
    return lambda f: bar.update(f.result()) if not f.cancelled() and f.exception() is None else None


@dataclass
class _Outputs:
    """What one conversion writes through; the ExitStack that opened them closes them."""

    png_root: Path  # out_dir/png, named in disk-full errors
    png_tmp: Path | None  # the PNG folder being written, renamed into place at the end
    pool: ProcessPoolExecutor | None  # rasterizes strokes and encodes PNGs
    writer: StoreWriter | None
    bar: Any  # qdkit.progress: a tqdm bar on a terminal, plain lines elsewhere


def _start_pool(stack: contextlib.ExitStack, workers: int) -> ProcessPoolExecutor:
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    # Workers die with this process (even on kill -9); on any failure queued tasks are dropped.
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),))
    stack.callback(pool.shutdown, wait=True, cancel_futures=True)
    return pool


def _open_writer(
    stack: contextlib.ExitStack,
    path: Path,
    class_names: list[str],
    per_class: dict[str, int],
    seed: int,
    has_strokes: bool,
) -> StoreWriter:
    counts = {s: per_class.get(s, 0) * len(class_names) for s in SPLITS}
    writer = StoreWriter(
        path, class_names, counts, {"seed": seed, "per_class": per_class}, STROKE_EXTRAS if has_strokes else None
    )
    stack.callback(writer.abort)
    return writer


def _checked_sources(
    in_dir: str | os.PathLike, classes: list[str] | None, per_class: dict[str, int]
) -> tuple[list[Source], list[str], list[str]]:
    """(sources, their class names, their PNG folder names), refused before any work if a class
    has too few drawings or two classes would share a folder."""
    if classes is not None and not [c for c in classes if c.strip()]:
        raise QdkitError("--classes names no class (give comma-separated names, e.g. cat,dog)")
    files = find_sources(in_dir, classes)
    _check_rows([f for f in files if isinstance(f, BitmapFile)], sum(per_class.values()))
    class_names = [bf.class_name for bf in files]
    dirnames = [safe_dirname(c) for c in class_names]
    if len(set(dirnames)) != len(dirnames):
        raise QdkitError(f"{in_dir}: two class names map to the same folder name")
    return files, class_names, dirnames


def _write_class(
    outs: _Outputs,
    label: int,
    source: Source,
    dirname: str,
    info: dict,
    per_class: dict[str, int],
    seed: int,
    *,
    recognized_only: bool,
    skip_invalid: bool,
) -> list[Future]:
    """Hand one class's drawings to the PNG tasks and the store; returns the PNG tasks, which
    count their rows into the bar as they finish."""
    if isinstance(source, StrokeFile):
        assert outs.pool is not None
        rows = _stroke_rows(
            source,
            per_class,
            seed,
            info,
            outs.pool,
            recognized_only=recognized_only,
            skip_invalid=skip_invalid,
            progress=outs.bar.update if outs.png_tmp is None else None,
        )
    else:
        rows = _bitmap_rows(source, per_class, seed, info)
    futures = []
    for split, images, source_index, extras in rows:
        if outs.pool is not None and outs.png_tmp is not None:
            folder = outs.png_tmp / split / dirname
            with disk_full_is_error(outs.png_root):
                folder.mkdir(parents=True, exist_ok=True)
            for start in range(0, len(images), _PNG_TASK_ROWS):
                part = slice(start, start + _PNG_TASK_ROWS)
                fut = outs.pool.submit(_write_pngs, images[part], source_index[part], str(folder))
                fut.add_done_callback(_count_into(outs.bar))
                futures.append(fut)
        if outs.writer is not None:
            outs.writer.append(split, images, label, source_index, extras)
            if outs.pool is None:
                outs.bar.update(len(images))
    return futures


def _write_classes(
    outs: _Outputs,
    files: list[Source],
    dirnames: list[str],
    per_class: dict[str, int],
    seed: int,
    *,
    recognized_only: bool,
    skip_invalid: bool,
) -> None:
    """Every class through `_write_class`, then wait for the PNG tasks and close the store with
    its sources (each file's facts and hash)."""
    futures, sources = [], []
    for label, (source, dirname) in enumerate(zip(files, dirnames, strict=True)):
        info: dict = {}
        futures += _write_class(
            outs,
            label,
            source,
            dirname,
            info,
            per_class,
            seed,
            recognized_only=recognized_only,
            skip_invalid=skip_invalid,
        )
        if outs.writer is not None:
            sources.append(
                {
                    "class": source.class_name,
                    "file": source.path.name,
                    **info,
                    "sha256": _source_sha256(source.path, info),
                }
            )
    with disk_full_is_error(outs.png_root):
        if outs.png_tmp is not None:
            mark_folder(outs.png_tmp, PNG_MARKER, "convert")
        for fut in futures:
            fut.result()  # re-raise the first worker error, if any
    if outs.writer is not None:
        outs.writer.close({"sources": sources})
    outs.bar.close()


def convert(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    h5: bool = False,
    png: bool = True,
    per_class: dict[str, int] | None = None,
    classes: list[str] | None = None,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    recognized_only: bool = False,
    skip_invalid: bool = False,
) -> str:
    """Convert every bitmap or stroke file in `in_dir`; returns a one-paragraph summary.

    `recognized_only` keeps the drawings the game recognized (stroke sources; bitmaps carry no flag);
    `skip_invalid` skips bad drawings of stroke files (and reports how many) instead of failing."""
    per_class = per_class or {"train": 2000, "validation": 400, "test": 100}
    if not (h5 or png):
        raise QdkitError("nothing to do: neither PNGs nor the HDF5 store requested")
    files, class_names, dirnames = _checked_sources(in_dir, classes, per_class)
    out_dir = Path(out_dir)
    _check_outputs(out_dir, png, h5)
    workers = workers or os.cpu_count() or 1
    has_strokes = any(isinstance(f, StrokeFile) for f in files)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        stack.enter_context(output_lock(out_dir, [PNG_DIR, STORE_NAME], "qdkit convert"))
        png_tmp = (
            stack.enter_context(
                atomic_path(out_dir / PNG_DIR, overwrite or marked_folder(out_dir / PNG_DIR, PNG_MARKER, SPLITS))
            )
            if png
            else None
        )
        h5_tmp = stack.enter_context(atomic_path(out_dir / STORE_NAME, overwrite)) if h5 else None
        outs = _Outputs(  # in this order: the stack closes the bar, then the writer, then the pool
            out_dir / PNG_DIR,
            png_tmp,
            _start_pool(stack, workers) if png_tmp is not None or has_strokes else None,
            _open_writer(stack, h5_tmp, class_names, per_class, seed, has_strokes) if h5_tmp is not None else None,
            stack.enter_context(
                progress_bar(
                    total=sum(per_class.values()) * len(files),
                    unit="img",
                    desc="convert",
                    disable=not progress,
                    dynamic_ncols=True,
                )
            ),
        )
        _write_classes(
            outs, files, dirnames, per_class, seed, recognized_only=recognized_only, skip_invalid=skip_invalid
        )
    return _summary(out_dir, png, h5, per_class, len(files), time.perf_counter() - t0)


def _summary(out_dir: Path, png: bool, h5: bool, per_class: dict[str, int], classes: int, seconds: float) -> str:
    wrote = []
    if png:
        wrote.append(str(out_dir / PNG_DIR))
    if h5:
        wrote.append(f"{out_dir / STORE_NAME} ({(out_dir / STORE_NAME).stat().st_size / 2**20:.1f} MiB)")
    split_counts = ", ".join(f"{s} {per_class.get(s, 0) * classes}" for s in SPLITS)
    return (
        f"converted {classes} classes ({split_counts} drawings) in {seconds:.1f} s "
        f"(qdkit {QDKIT_VERSION}) -> {' and '.join(wrote)}"
    )
