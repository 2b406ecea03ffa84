"""The HDF5 store: one file, a group per split with `images` (uint8, (N, 28, 28), contiguous —
neither chunked nor compressed — so it can be memory-mapped), `labels` and `source_index`.

`StoreWriter` is used by convert; `open_store` by everyone else. Readers memory-map `images` at
the dataset's file offset instead of reading through h5py, which makes batch reads a single
numpy fancy index and keeps readers picklable (no h5py object survives past `open_store`).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from qdkit import __version__
from qdkit.errors import QdkitError

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
SIDE = 28


class StoreWriter:
    """Writes a store in one pass, class by class, into preallocated contiguous datasets."""

    def __init__(self, path: str | os.PathLike, class_names: list[str], counts: dict[str, int],
                 attrs: dict[str, Any]) -> None:
        self.path = Path(path)
        self.counts = counts
        self._next = {s: 0 for s in counts}
        self._file = h5py.File(self.path, "w", libver="latest")
        f = self._file
        f.attrs["format"] = "qdkit-store"
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["qdkit_version"] = __version__
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
            g.attrs["count"] = n

    def append(self, split: str, images: np.ndarray, label: int, source_index: np.ndarray) -> None:
        start, n = self._next[split], len(images)
        if n == 0:
            return
        g = self._file[split]
        g["images"][start:start + n] = images.reshape(n, SIDE, SIDE)
        g["labels"][start:start + n] = label
        g["source_index"][start:start + n] = source_index
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
        if self._file.id.valid:
            self._file.close()


@dataclass
class SplitArrays:
    """One split: `images` (N, 28, 28) uint8, memory-mapped when the store allows it."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    source_index: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


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
        with _open_h5(self.path) as f:
            g = f[name]
            labels = g["labels"][()].astype(np.int64)
            source_index = g["source_index"][()]
            layout = self._layout[name]
            if layout is None:
                images = g["images"][()]
            elif layout[1][0] == 0:
                images = np.zeros((0, SIDE, SIDE), np.uint8)
            else:
                images = np.memmap(self.path, dtype=np.uint8, mode="r", offset=layout[0], shape=layout[1])
        return SplitArrays(name, images, labels, source_index)


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise QdkitError(f"{path}: no such store (make one with `qdkit convert --h5`)") from None
    except OSError as e:
        raise QdkitError(f"{path}: not a readable HDF5 store (truncated or corrupt: {e})") from None


def open_store(path: str | os.PathLike, warn: bool = True) -> Store:
    """Open and validate a store; readers get memory-maps where the layout allows."""
    path = Path(path)
    with _open_h5(path) as f:
        if f.attrs.get("format") != "qdkit-store":
            raise QdkitError(f"{path}: not a qdkit store (no 'qdkit-store' format attribute)")
        attrs = {k: _decode(v) for k, v in f.attrs.items()}
        class_names = attrs.pop("class_names")
        counts, layout = {}, {}
        size = path.stat().st_size
        for split in [s for s in SPLITS if s in f] + sorted(set(f) - set(SPLITS)):
            g = f[split]
            missing = {"images", "labels"} - set(g)
            if missing:
                raise QdkitError(f"{path}: split {split!r} lacks {', '.join(sorted(missing))}")
            ds = g["images"]
            if ds.dtype != np.uint8 or ds.shape[1:] != (SIDE, SIDE) or len(g["labels"]) != len(ds):
                raise QdkitError(f"{path}: split {split!r} has images {ds.shape} {ds.dtype}, "
                                 f"expected (N, 28, 28) uint8 with one label each")
            counts[split] = len(ds)
            offset = ds.id.get_offset()
            if ds.chunks is None and not ds.compression and offset is not None:
                if offset + ds.size > size:
                    raise QdkitError(f"{path}: truncated: split {split!r} needs {offset + ds.size} bytes, "
                                     f"file has {size}")
                layout[split] = (offset, ds.shape)
            elif ds.chunks is None and len(ds) == 0:
                layout[split] = (0, ds.shape)
            else:
                layout[split] = None
    mappable = all(v is not None for v in layout.values())
    if not mappable and warn:
        warnings.warn(f"{path}: images are chunked or compressed; reading through h5py (slower). "
                      "Re-create it with `qdkit convert --h5` for memory-mapped loading.", stacklevel=2)
    return Store(path, class_names, attrs, counts, mappable, layout)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(path: str | os.PathLike) -> str:
    """A human-readable summary: classes, counts per split and class, mappability, sources."""
    store = open_store(path, warn=False)
    splits = list(store.counts)
    per_class = {s: np.bincount(store.split(s).labels, minlength=len(store.class_names)) for s in splits}
    name_w = max([len("class")] + [len(c) for c in store.class_names])
    lines = [
        f"store      {store.path} ({store.path.stat().st_size / 2**20:.1f} MiB)",
        f"format     {store.attrs.get('format_version')}  (qdkit {store.attrs.get('qdkit_version')})",
        f"mappable   {'yes (contiguous uint8 images)' if store.memory_mappable else 'no (chunked or compressed; read through h5py)'}",
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
        lines += [f"  {s['file']}  rows={s['rows']}  sha256={s['sha256'][:16]}…" for s in sources]
    return "\n".join(lines)
