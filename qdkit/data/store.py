"""The HDF5 store: one file, a group per split with `images` (uint8, (N, 28, 28), contiguous —
neither chunked nor compressed — so it can be memory-mapped), `labels` and `source_index`.

`StoreWriter` is used by convert; `open_store` by everyone else. Readers memory-map `images` at
the dataset's file offset instead of reading through h5py, which makes batch reads a single
numpy fancy index and keeps readers picklable (no h5py object survives past `open_store`).

A store is never modified in place: convert writes it under a temporary name and renames it, so a
reader that has it mapped keeps the old file (inode) until it closes it. A store rewritten in place
by something else (`cp other.h5 quickdraw.h5`) would make a mapped read fault with SIGBUS, which
Python cannot recover from; every batch read therefore first checks that the file it mapped has
not changed size or modification time (`SplitArrays.check_unchanged`) and stops with one line.

`open_store` trusts nothing in the file: class names, labels (dtype, shape, range), source
indices, the layout of each split, and no external storage, virtual datasets or links to other
files (an HDF5 file can make a dataset read from any file on the machine); the checks are in
qdkit.data.storecheck.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from qdkit.constants import QDKIT_VERSION, SIDE
from qdkit.data.storecheck import check_class_names, check_sources, check_split, decoded_attrs
from qdkit.errors import QdkitError, first_line

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")


class StoreWriter:
    """Writes a store in one pass, class by class, into preallocated contiguous datasets."""

    def __init__(
        self,
        path: str | os.PathLike,
        class_names: list[str],
        counts: dict[str, int],
        attrs: dict[str, Any],
        extras: dict[str, Any] | None = None,
    ) -> None:
        """`extras`: per-drawing datasets beside the images, name -> dtype (stroke sources keep
        `key_id` and `countrycode`)."""
        if not class_names:
            raise QdkitError(f"{path}: a store needs at least one class")
        self.path = Path(path)
        self.extras = extras or {}
        self.counts = counts
        self._next = {s: 0 for s in counts}
        self._file = h5py.File(self.path, "w", libver="latest")
        f = self._file
        f.attrs["format"] = "qdkit-store"
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["qdkit_version"] = QDKIT_VERSION
        f.attrs["class_names"] = json.dumps(class_names)
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        label_dtype = np.int16 if len(class_names) < 2**15 else np.int32
        for split, n in counts.items():
            g = f.create_group(split)
            # No chunks, no filters: a contiguous block on disk that np.memmap can map directly.
            g.create_dataset("images", shape=(n, SIDE, SIDE), dtype=np.uint8)
            g.create_dataset("labels", shape=(n,), dtype=label_dtype)
            g.create_dataset("source_index", shape=(n,), dtype=np.int64)
            for name, dtype in self.extras.items():
                g.create_dataset(name, shape=(n,), dtype=dtype)
            g.attrs["count"] = n

    def append(
        self,
        split: str,
        images: np.ndarray,
        label: int,
        source_index: np.ndarray,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Rows of one class; `extras` fills the extra datasets (left zero/empty where not given)."""
        start, n = self._next[split], len(images)
        if n == 0:
            return
        g = self._file[split]
        g["images"][start : start + n] = images.reshape(n, SIDE, SIDE)
        g["labels"][start : start + n] = label
        g["source_index"][start : start + n] = source_index
        for name, values in (extras or {}).items():
            g[name][start : start + n] = values
        self._next[split] = start + n

    def close(self, attrs: dict[str, Any] | None = None) -> None:
        """Check every split is full, add the attributes known only at the end, close."""
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = json.dumps(value)
        for split, n in self.counts.items():
            if self._next[split] != n:
                raise RuntimeError(f"{self.path}: split {split} got {self._next[split]} of {n} rows")
        self._file.close()

    def abort(self) -> None:
        """Close a store whose writing failed (the caller deletes the file).

        After a failed write (a full disk) HDF5 cannot close the file — it still has metadata to
        flush — and crashes the interpreter when the handle is collected later; emptying the file
        first frees the space that close needs.
        """
        if self._file.id.valid:
            with contextlib.suppress(OSError):
                os.truncate(self.path, 0)
            with contextlib.suppress(Exception):
                self._file.close()


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file on disk."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = path.stat()
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class SplitArrays:
    """One split: `images` (N, 28, 28) uint8, memory-mapped when the store allows it."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    source_index: np.ndarray
    path: Path | None = None
    stamp: FileStamp | None = None  # set when `images` is a memory-map of `path`

    def __len__(self) -> int:
        return len(self.labels)

    def check_unchanged(self) -> None:
        """Raise a QdkitError when the mapped store file was rewritten in place since it was opened.

        Reading a mapping whose file shrank kills the process with SIGBUS ("Bus error", nothing
        else printed); a same-size rewrite silently changes the data. A store replaced by rename
        (how qdkit writes stores) is fine: the mapping keeps the old file.
        """
        if self.stamp is None or self.path is None:
            return
        try:
            now = FileStamp.of(self.path)
        except OSError:
            return  # deleted or renamed away: the mapping still holds the old file
        if (now.dev, now.ino) == (self.stamp.dev, self.stamp.ino) and now != self.stamp:
            raise QdkitError(
                f"{self.path}: the store changed on disk while in use (rewritten in place: "
                f"{self.stamp.size} -> {now.size} bytes); replace a store in use by renaming "
                "a new file over it, as `qdkit convert` does"
            )


@dataclass
class Store:
    path: Path
    class_names: list[str]
    attrs: dict[str, Any]
    counts: dict[str, int]
    memory_mappable: bool
    # Per split: (byte offset, shape) of `images`, or None where it must be read through h5py.
    _layout: dict[str, tuple[int, tuple[int, ...]] | None] = field(repr=False, default_factory=dict)

    def split(self, name: str) -> SplitArrays:
        if name not in self.counts:
            raise QdkitError(f"{self.path}: no split {name!r} (has {', '.join(self.counts)})")
        stamp = None
        with _open_h5(self.path) as f:
            g = f[name]
            labels = g["labels"][()].astype(np.int64)
            source_index = g["source_index"][()].astype(np.int64)
            layout = self._layout[name]
            if layout is None:
                images = g["images"][()]
            elif layout[1][0] == 0:
                images = np.zeros((0, SIDE, SIDE), np.uint8)
            else:
                stamp = FileStamp.of(self.path)
                if stamp.size < layout[0] + int(np.prod(layout[1])):
                    raise QdkitError(
                        f"{self.path}: the store changed on disk since it was opened (now {stamp.size} bytes)"
                    )
                images = np.memmap(self.path, dtype=np.uint8, mode="r", offset=layout[0], shape=layout[1])
        return SplitArrays(name, images, labels, source_index, self.path, stamp)


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[h5py.File]:
    """The store open for reading; any read error inside the block (a store cut short in its labels,
    say) is one line. Only a regular file is opened: HDF5 would wait forever on a FIFO."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise QdkitError(f"{path}: no such store (make one with `qdkit convert --h5`)") from None
    except OSError as e:
        raise QdkitError(f"{path}: unreadable ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise QdkitError(f"{path}: is {kind}, not an HDF5 store")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise QdkitError(f"{path}: not a readable HDF5 store (truncated or corrupt: {first_line(e)})") from None
    try:
        with f:
            yield f
    except (OSError, RuntimeError) as e:
        raise QdkitError(f"{path}: unreadable store (truncated or corrupt: {first_line(e)})") from None


def open_store(path: str | os.PathLike, warn: bool | Callable[[str], None] = True) -> Store:
    """Open and validate a store; readers get memory-maps where the layout allows.

    `warn`: True prints a one-line `qdkit: warning:` on stderr, a callable gets the message, False
    stays quiet.
    """
    path = Path(path)
    with _open_h5(path) as f:
        attrs = decoded_attrs(path, f.attrs)
        if attrs.get("format") != "qdkit-store":
            raise QdkitError(f"{path}: not a qdkit store (no 'qdkit-store' format attribute)")
        _check_version(path, attrs.get("format_version"))
        class_names = check_class_names(path, attrs.pop("class_names", None))
        check_sources(path, attrs.get("sources"))
        counts: dict[str, int] = {}
        layout: dict[str, tuple[int, tuple[int, ...]] | None] = {}
        size = path.stat().st_size
        for split in [s for s in SPLITS if s in f] + sorted(set(f) - set(SPLITS)):
            g = check_split(path, f, split, len(class_names))
            ds = g["images"]
            counts[split] = len(ds)
            offset = ds.id.get_offset()
            if ds.chunks is None and not ds.compression and offset is not None:
                if offset + ds.size > size:
                    raise QdkitError(
                        f"{path}: truncated: split {split!r} needs {offset + ds.size} bytes, file has {size}"
                    )
                layout[split] = (offset, ds.shape)
            elif ds.chunks is None and len(ds) == 0:
                layout[split] = (0, ds.shape)
            else:
                layout[split] = None
        if not counts:
            raise QdkitError(f"{path}: holds no splits")
    mappable = all(v is not None for v in layout.values())
    if not mappable and warn:
        message = (
            f"{path}: images are chunked or compressed; reading through h5py (slower). "
            "Re-create it with `qdkit convert --h5` for memory-mapped loading."
        )
        if callable(warn):
            warn(message)
        else:
            print(f"qdkit: warning: {message}", file=sys.stderr)
    return Store(path, class_names, attrs, counts, mappable, layout)


def _check_version(path: Path, version: Any) -> None:
    if not isinstance(version, int) or isinstance(version, bool):
        raise QdkitError(f"{path}: format_version is {version!r}, expected an integer")
    if version > FORMAT_VERSION:
        raise QdkitError(
            f"{path}: store format {version} is newer than this qdkit reads ({FORMAT_VERSION}); upgrade qdkit"
        )


def _source_field(source: dict, key: str) -> str:
    value = str(source[key])
    return f"{key}={value[:16]}…" if key == "sha256" else f"{key}={value}"


def describe(path: str | os.PathLike) -> str:
    """A human-readable summary: classes, counts per split and class, mappability, sources."""
    store = open_store(path, warn=False)
    splits = list(store.counts)
    per_class = {s: np.bincount(store.split(s).labels, minlength=len(store.class_names)) for s in splits}
    name_w = max([len("class")] + [len(c) for c in store.class_names])
    lines = [
        f"store      {store.path} ({store.path.stat().st_size / 2**20:.1f} MiB)",
        f"format     {store.attrs.get('format_version')}  (qdkit {store.attrs.get('qdkit_version')})",
        "mappable   "
        + (
            "yes (contiguous uint8 images)"
            if store.memory_mappable
            else "no (chunked or compressed; read through h5py)"
        ),
        f"seed       {store.attrs.get('seed')}",
        f"classes    {len(store.class_names)}",
        "",
        f"{'class':<{name_w}}  " + "  ".join(f"{s:>10}" for s in splits),
    ]
    for i, name in enumerate(store.class_names):
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{per_class[s][i]:>10}" for s in splits))
    lines.append(f"{'total':<{name_w}}  " + "  ".join(f"{store.counts[s]:>10}" for s in splits))
    sources = store.attrs.get("sources") or []
    if sources:
        lines += ["", "sources"]
        lines += [
            "  " + "  ".join([s["file"]] + [_source_field(s, k) for k in ("format", "rows", "sha256") if k in s])
            for s in sources
        ]
    return "\n".join(lines)
