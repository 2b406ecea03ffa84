"""What `qdkit predict` reads: file, folder and glob arguments expanded into inputs, and those inputs
decoded into drawings in chunks, in a process pool while the caller runs the model.

Inputs are image files (any format PIL reads) and `.ndjson` stroke files, where each line is one
drawing (a Quick Draw ndjson object with a "drawing" key, or a bare stroke list), named
`FILE:LINE` with lines counted from 1. Folders are searched recursively and globs (`*`, `?`, `[]`,
`**`) are expanded here, for patterns the shell left quoted. Both follow a symbolic link to a
folder, but never into a folder already searched, so a link loop neither hangs nor repeats a file.
Anything that cannot be read — a FIFO, socket or device among the files, a folder without
permission — is one problem line and the rest go on.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdkit.constants import SIDE
from qdkit.errors import QdkitError, first_line
from qdkit.images import read_drawing
from qdkit.workers import die_with_parent

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
                  ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".jfif", ".avif")
STROKE_SUFFIXES = (".ndjson",)
INPUT_SUFFIXES = IMAGE_SUFFIXES + STROKE_SUFFIXES
MAX_LINE_BYTES = 16 << 20   # one ndjson drawing; real ones are a few KB (raw ones up to ~100 KB)
SMALL_JOB = 64              # fewer inputs than this are decoded in-process: forking costs more
WINDOW_PER_WORKER = 2       # chunks in flight per decoding process


# ----------------------------------------------------------------------------- expansion

_DIGITS = re.compile(r"(\d+)")


def natural_key(p: str | os.PathLike) -> list:
    """`img2.png` before `img10.png`: digit runs compare as numbers."""
    parts: list = _DIGITS.split(os.fspath(p))
    parts[1::2] = [int(t) for t in parts[1::2]]
    return parts


def _wanted(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in INPUT_SUFFIXES


def _not_regular(path: str | os.PathLike) -> str:
    """Why `path` is not a regular file, for a problem line."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder")]
    return next((what for test, what in kinds if test(mode)), "not a regular file")


class _Walker:
    """Lists folders, each real folder (device, inode) at most once, collecting problem lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.seen: set[tuple[int, int]] = set()

    def entries(self, folder: Path) -> list[os.DirEntry] | None:
        """The entries of `folder` sorted by name; None if it was listed before or cannot be."""
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in self.seen:
                return None
            self.seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as e:
            self.problems.append(f"{folder}: cannot read folder ({e.strerror or type(e).__name__}); "
                                 "its files are skipped")
            return None

    def inputs_under(self, folder: Path) -> list[Path]:
        """Every input file below `folder`, naturally sorted; non-regular ones are problems."""
        found: list[Path] = []
        stack = [folder]
        while stack:
            entries = self.entries(stack.pop())
            for entry in entries or ():
                if _is_dir(entry):
                    stack.append(Path(entry.path))
                elif _wanted(entry.name):
                    if _is_file(entry):
                        found.append(Path(entry.path))
                    else:
                        self.problems.append(f"{entry.path}: {_not_regular(entry.path)}, skipped")
        return sorted(found, key=natural_key)

    def folders_under(self, folder: Path) -> Iterator[Path]:
        """`folder` and every folder below it (not hidden ones), as `**` matches them."""
        stack = [folder]
        while stack:
            current = stack.pop()
            entries = self.entries(current)
            if entries is None:
                continue
            yield current
            stack += reversed([Path(e.path) for e in entries if not e.name.startswith(".") and _is_dir(e)])


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a symbolic link; the walker's `seen` set stops loops
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _glob(pattern: str, walker: _Walker) -> list[Path]:
    """glob.glob(pattern, recursive=True), except that `**` lists each real folder once."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    rest = parts[fixed:]
    matches: list[Path] = []

    def match(folder: Path, k: int) -> None:
        part = rest[k]
        if part == "**":
            if not folder.is_dir():
                return  # a path that does not exist matches nothing, as in glob
            if k + 1 == len(rest):  # a trailing `**`: the folder search takes it from here
                matches.append(folder)
                return
            for sub in walker.folders_under(folder):
                match(sub, k + 1)
            return
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return  # a path that does not exist matches nothing, as in glob
        for name in names:
            if (name.startswith(".") and not part.startswith(".")) or not fnmatch.fnmatchcase(name, part):
                continue
            if k + 1 == len(rest):
                matches.append(folder / name)
            elif (folder / name).is_dir():
                match(folder / name, k + 1)

    match(Path(*parts[:fixed]) if fixed else Path("."), 0)
    return sorted(matches, key=natural_key)


def expand_paths(specs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Files, folders (searched recursively for image and .ndjson suffixes) and glob patterns ->
    (input files, problem lines).

    Each spec that yields nothing is one problem line, and so is each file or folder that cannot be
    read. Duplicates are dropped — the same file named twice, or reached again through a symbolic
    link or another spec; the order of first mention is kept.
    """
    files: list[Path] = []
    problems: list[str] = []
    for spec in (os.fspath(s) for s in specs):
        p = Path(spec)
        walker = _Walker(problems)  # per spec: `a/ a/sub/` both list sub/
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            before = len(problems)
            found = walker.inputs_under(p)
            if not found and len(problems) == before:
                problems.append(f"{spec}: folder has no images ({', '.join(IMAGE_SUFFIXES[:6])}, ...) "
                                "or .ndjson files")
            files += found
        elif glob.has_magic(spec):
            found = []
            for m in _glob(spec, _Walker(problems)):  # its own walker: `**/test` then lists test/
                if m.is_file():
                    found.append(m)
                elif m.is_dir():
                    found += walker.inputs_under(m)
                else:
                    problems.append(f"{m}: {_not_regular(m)}, skipped")
            if not found:
                problems.append(f"{spec}: no file matches")
            files += found
        elif p.exists() or p.is_symlink():
            problems.append(f"{spec}: {_not_regular(p)}, not an image or .ndjson file")
        else:
            problems.append(f"{spec}: no such file or folder")
    return _distinct(files), list(dict.fromkeys(problems))


def _distinct(paths: list[Path]) -> list[Path]:
    """`paths` without second names of an entry already listed: the same name in the same real
    folder (device, inode), reached through another path. One stat per folder, not per file."""
    folders: dict[str, tuple[int, int] | str] = {}
    seen: set[tuple[tuple[int, int] | str, str]] = set()
    out = []
    for p in paths:
        parent = os.path.dirname(p) or "."
        if parent not in folders:
            try:
                st = os.stat(parent)
                folders[parent] = (st.st_dev, st.st_ino)
            except OSError:
                folders[parent] = parent  # reading the file will say what is wrong
        key = (folders[parent], p.name)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ----------------------------------------------------------------------------- work chunks

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


def chunks(files: Sequence[str | os.PathLike], image_chunk: int, line_chunk: int,
           problems: Callable[[str], None]) -> Iterator[Chunk]:
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
    return Decoded(out[:len(names)], names, errors)


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


def decoded_chunks(work: Iterable[Chunk], invert: str, workers: int,
                   warn: Callable[[str], None] = lambda msg: None) -> Generator[Decoded, None, None]:
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
