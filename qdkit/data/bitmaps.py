"""Find, name and validate Quick Draw numpy-bitmap files; nothing else in qdkit reads them.

The official format: `full_numpy_bitmap_<class>.npy`, uint8, shape (N, 784), each row a 28x28
drawing with 0 = background and 255 = ink. `<class>.npy`, (N, 28, 28) and (N, 1, 784) are
accepted too. Files are memory-mapped, never unpickled.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qdkit.constants import NPY_MAGIC, SIDE
from qdkit.errors import QdkitError, first_line
from qdkit.files import atomic_path

PIXELS = SIDE * SIDE
OFFICIAL_PREFIX = "full_numpy_bitmap_"
# Official files have 128-byte headers; numpy itself refuses more than 10,000 bytes by default. The cap
# is checked from the declared length before anything is read, so a crafted header claiming 4 GiB
# costs 12 bytes, not a 4 GiB read.
MAX_HEADER_BYTES = 1 << 16


def header_end(prefix: bytes, name: str) -> int:
    """Where the .npy header that `prefix` (at least its first 12 bytes) starts ends, checked
    against MAX_HEADER_BYTES before the header itself is read."""
    if not prefix.startswith(NPY_MAGIC):
        hint = " (it looks like an HTML page)" if prefix.lstrip().startswith(b"<") else ""
        raise QdkitError(f"{name}: not a .npy file{hint}")
    major = prefix[6:7]
    if major not in (b"\x01", b"\x02", b"\x03"):
        raise QdkitError(f"{name}: unreadable .npy header (unknown format version {prefix[6:8].hex()})")
    len_end = 10 if major == b"\x01" else 12  # the header length: 2 bytes in format 1.0, 4 in 2.0 and 3.0
    if len(prefix) < len_end:
        raise QdkitError(f"{name}: unreadable .npy header (file ends after {len(prefix)} bytes)")
    length = int.from_bytes(prefix[8:len_end], "little")
    if length > MAX_HEADER_BYTES:
        raise QdkitError(
            f"{name}: .npy header claims {length} bytes (more than {MAX_HEADER_BYTES}): not a Quick Draw file"
        )
    return len_end + length


@dataclass(frozen=True)
class BitmapFile:
    path: Path
    class_name: str
    rows: int


def class_name_from_path(path: str | os.PathLike) -> str:
    """`full_numpy_bitmap_The Eiffel Tower.npy` -> `The Eiffel Tower`; `cat.npy` -> `cat`."""
    stem = Path(path).name[: -len(".npy")]
    return stem[len(OFFICIAL_PREFIX) :] if stem.startswith(OFFICIAL_PREFIX) else stem


def bitmap_filename(class_name: str) -> str:
    return f"{OFFICIAL_PREFIX}{class_name}.npy"


def safe_dirname(class_name: str) -> str:
    """A class name made safe as one folder name: no separators, no traversal, no control chars."""
    name = re.sub(r"[\x00-\x1f/\\:*?\"<>|]", "_", class_name).strip().strip(".")
    if not name:
        raise QdkitError(f"class name {class_name!r} cannot be used as a folder name")
    return name


def parse_header(f: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from the .npy header at the start of `f`; never unpickles.

    `name` (a path or URL) is what error messages call the file.
    """
    header_end(f.read(12), name)
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f, max_header_size=MAX_HEADER_BYTES + 1)
    except (ValueError, SyntaxError, EOFError, TypeError, OverflowError) as e:
        raise QdkitError(f"{name}: unreadable .npy header ({first_line(e, 100)})") from None
    if any(n < 0 for n in shape):
        raise QdkitError(f"{name}: unreadable .npy header (negative dimension in shape {tuple(shape)})")
    if dtype.hasobject:
        raise QdkitError(f"{name}: holds Python objects (a pickled array); qdkit never unpickles data")
    if fortran:
        raise QdkitError(f"{name}: Fortran-ordered array; expected a C-ordered Quick Draw bitmap file")
    return tuple(shape), dtype, f.tell()


def check_layout(shape: tuple[int, ...], dtype: np.dtype, name: str) -> int:
    """The row count of a valid Quick Draw bitmap array of this shape and dtype, else a QdkitError."""
    if dtype != np.uint8:
        raise QdkitError(f"{name}: dtype is {dtype}, expected uint8 (0 = background, 255 = ink)")
    if not (
        (len(shape) == 2 and shape[1] == PIXELS)
        or (len(shape) == 3 and shape[1:] == (SIDE, SIDE))
        or (len(shape) == 3 and shape[1:] == (1, PIXELS))
    ):
        raise QdkitError(f"{name}: shape is {shape}, expected (N, 784), (N, 28, 28) or (N, 1, 784)")
    return shape[0]


def read_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, read without loading or unpickling anything."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise QdkitError(f"{path}: not a regular file ({_file_kind(mode)})")
            return parse_header(f, str(path))
    except FileNotFoundError:
        raise QdkitError(f"{path}: no such file") from None
    except OSError as e:
        raise QdkitError(f"{path}: unreadable ({e.strerror})") from None


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a plain file"


def _stderr_warning(message: str) -> None:
    print(f"qdkit: warning: {message}", file=sys.stderr)


def input_folder(folder: str | os.PathLike, what: str) -> Path:
    """`folder` as a Path after checking it is a folder; the error says what it is otherwise."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    if folder.exists():
        try:
            kind = "a file" if folder.is_file() else _file_kind(folder.stat().st_mode)
        except OSError:
            kind = "not readable"
        raise QdkitError(f"{folder}: is {kind}, not a folder (--in takes the folder holding the {what})")
    raise QdkitError(f"{folder}: no such folder")


def open_bitmaps(path: str | os.PathLike) -> np.ndarray:
    """Validate a bitmap file and memory-map it as a read-only (N, 784) uint8 array."""
    path = Path(path)
    shape, dtype, offset = read_header(path)
    rows = check_layout(shape, dtype, str(path))
    need = offset + rows * PIXELS
    size = path.stat().st_size
    if size < need:
        raise QdkitError(f"{path}: truncated: {size} bytes, the header promises {need}")
    if rows == 0:
        return np.zeros((0, PIXELS), np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(rows, PIXELS))


def find_class_files(
    folder: str | os.PathLike,
    class_of: Callable[[Path], str | None],
    what: str,
    classes: list[str] | None = None,
    warn: Callable[[str], None] = _stderr_warning,
) -> list[tuple[str, Path]]:
    """(class name, path) of every file in `folder` that `class_of` names, sorted by class name;
    `classes` picks (and orders) some. One file per class.

    Anything that is not a regular file (a FIFO, a socket, a folder named *.npy) is skipped with a
    warning: opening a FIFO would wait forever.
    """
    folder = input_folder(folder, what)
    by_class: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = class_of(path)
        if name is None:
            continue
        if not path.is_file():
            try:
                kind = _file_kind(path.stat().st_mode)
            except OSError:
                kind = "a dangling link"
            warn(f"{path}: skipped: {kind}, not a regular file")
            continue
        if name in by_class:
            raise QdkitError(f"{path}: class {name!r} also comes from {by_class[name].name}")
        by_class[name] = path
    if not by_class:
        raise QdkitError(f"{folder}: no {what} found")
    if classes is None:
        names = sorted(by_class)
    else:
        unknown = [c for c in classes if c not in by_class]
        if unknown:
            raise QdkitError(f"{folder}: unknown class {unknown[0]!r} (available: {', '.join(sorted(by_class))})")
        if len(set(classes)) != len(classes):
            raise QdkitError(f"--classes names a class twice: {', '.join(classes)}")
        names = list(classes)
    return [(n, by_class[n]) for n in names]


def bitmap_class(path: Path) -> str | None:
    """The class a bitmap file's name denotes, or None for other files."""
    return class_name_from_path(path) if path.name.endswith(".npy") and len(path.name) > 4 else None


def find_bitmap_files(
    folder: str | os.PathLike, classes: list[str] | None = None, warn: Callable[[str], None] = _stderr_warning
) -> list[BitmapFile]:
    """Every valid bitmap file in `folder`, sorted by class name; `classes` picks (and orders) some."""
    found = find_class_files(folder, bitmap_class, ".npy bitmap files", classes, warn)
    return [BitmapFile(path, name, len(open_bitmaps(path))) for name, path in found]


def save_bitmaps(path: str | os.PathLike, drawings: np.ndarray, overwrite: bool = True) -> Path:
    """Write drawings as an official-format (N, 784) uint8 .npy file, atomically."""
    drawings = np.ascontiguousarray(drawings, dtype=np.uint8).reshape(len(drawings), PIXELS)
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(drawings))
            # Python's write, not ndarray.tofile: on a full disk it raises OSError(ENOSPC), which
            # atomic_path turns into one line; tofile's short-write error carries no errno.
            f.write(drawings.data)
    return path
