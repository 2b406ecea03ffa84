"""Find, name and validate Quick Draw numpy-bitmap files; nothing else in qdkit reads them.

The official format: `full_numpy_bitmap_<class>.npy`, uint8, shape (N, 784), each row a 28x28
drawing with 0 = background and 255 = ink. `<class>.npy`, (N, 28, 28) and (N, 1, 784) are
accepted too. Files are memory-mapped, never unpickled.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qdkit.files import atomic_path
from qdkit.errors import QdkitError

SIDE = 28
PIXELS = SIDE * SIDE
OFFICIAL_PREFIX = "full_numpy_bitmap_"
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class BitmapFile:
    path: Path
    class_name: str
    rows: int


def class_name_from_path(path: str | os.PathLike) -> str:
    """`full_numpy_bitmap_The Eiffel Tower.npy` -> `The Eiffel Tower`; `cat.npy` -> `cat`."""
    stem = Path(path).name[: -len(".npy")]
    return stem[len(OFFICIAL_PREFIX):] if stem.startswith(OFFICIAL_PREFIX) else stem


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
    head = f.read(len(_NPY_MAGIC))
    if head != _NPY_MAGIC:
        hint = " (it looks like an HTML page)" if head.lstrip().startswith(b"<") else ""
        raise QdkitError(f"{name}: not a .npy file{hint}")
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, SyntaxError, EOFError) as e:
        raise QdkitError(f"{name}: unreadable .npy header ({e})") from None
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
        with open(path, "rb") as f:
            return parse_header(f, str(path))
    except FileNotFoundError:
        raise QdkitError(f"{path}: no such file") from None
    except OSError as e:
        raise QdkitError(f"{path}: unreadable ({e.strerror})") from None


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


def find_bitmap_files(folder: str | os.PathLike, classes: list[str] | None = None) -> list[BitmapFile]:
    """Every valid bitmap file in `folder`, sorted by class name; `classes` picks (and orders) some."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QdkitError(f"{folder}: no such folder")
    by_class: dict[str, Path] = {}
    for path in sorted(folder.glob("*.npy")):
        name = class_name_from_path(path)
        if name in by_class:
            raise QdkitError(f"{path}: class {name!r} also comes from {by_class[name].name}")
        by_class[name] = path
    if not by_class:
        raise QdkitError(f"{folder}: no .npy bitmap files found")
    if classes is None:
        names = sorted(by_class)
    else:
        unknown = [c for c in classes if c not in by_class]
        if unknown:
            raise QdkitError(
                f"{folder}: unknown class {unknown[0]!r} (available: {', '.join(sorted(by_class))})"
            )
        if len(set(classes)) != len(classes):
            raise QdkitError(f"--classes names a class twice: {', '.join(classes)}")
        names = list(classes)
    return [BitmapFile(by_class[n], n, len(open_bitmaps(by_class[n]))) for n in names]


def save_bitmaps(path: str | os.PathLike, drawings: np.ndarray, overwrite: bool = True) -> Path:
    """Write drawings as an official-format (N, 784) uint8 .npy file, atomically."""
    drawings = np.ascontiguousarray(drawings, dtype=np.uint8).reshape(len(drawings), PIXELS)
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array(f, drawings, allow_pickle=False)
    return path
