"""What `open_store` checks in a store before trusting it (qdkit.data.store): its class names and
sources, each split's layout, labels and source indices, and that nothing reads from another file.
Every failure is one QdkitError line naming the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from qdkit.constants import SIDE
from qdkit.errors import QdkitError


def check_class_names(path: Path, names: Any) -> list[str]:
    if names is None:
        raise QdkitError(f"{path}: no class_names attribute")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise QdkitError(f"{path}: class_names is not a JSON list of non-empty names: {str(names)[:60]!r}")
    if not names:
        raise QdkitError(f"{path}: class_names is empty (a store needs at least one class)")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise QdkitError(f"{path}: class_names lists {twice!r} twice")
    return names


def check_sources(path: Path, sources: Any) -> None:
    if sources is None:
        return
    if not isinstance(sources, list) or not all(
        isinstance(s, dict) and isinstance(s.get("file"), str) for s in sources
    ):
        raise QdkitError(f"{path}: malformed 'sources' attribute (expected a JSON list of objects with a file name)")


_INTEGER_KINDS = "iu"


def check_split(path: Path, f: h5py.File, split: str, num_classes: int) -> h5py.Group:
    """The split's group, after checking it is one, holds only local data, and has valid labels."""
    where = f"{path}: split {split!r}"
    g = _local(path, f, split)
    if not isinstance(g, h5py.Group):
        raise QdkitError(f"{where} is a dataset, expected a group with images, labels and source_index")
    missing = {"images", "labels", "source_index"} - set(g)
    if missing:
        raise QdkitError(f"{where} lacks {', '.join(sorted(missing))}")
    for name in g:
        ds = _local(path, g, name)
        if not isinstance(ds, h5py.Dataset):
            raise QdkitError(f"{where}: {name} is a group, expected a dataset")
    images, labels, source_index = g["images"], g["labels"], g["source_index"]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise QdkitError(f"{where} has images {images.shape} {images.dtype}, expected (N, 28, 28) uint8")
    n = len(images)
    for name, ds in (("labels", labels), ("source_index", source_index)):
        if ds.dtype.kind not in _INTEGER_KINDS or ds.shape != (n,):
            raise QdkitError(f"{where} has {name} {ds.shape} {ds.dtype}, expected ({n},) integers (one per image)")
    lo, hi = _min_max(labels)
    if n and (lo < 0 or hi >= num_classes):
        bad = lo if lo < 0 else hi
        raise QdkitError(f"{where} has label {bad}, outside 0..{num_classes - 1} ({num_classes} classes)")
    return g


def _local(path: Path, parent: h5py.Group, name: str) -> Any:
    """parent[name], refusing anything that reads from another file."""
    where = f"{path}: {parent.name.rstrip('/')}/{name}"
    link = parent.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise QdkitError(f"{where} is a {type(link).__name__}; a qdkit store holds no links")
    obj = parent[name]
    if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
        raise QdkitError(f"{where} reads its data from another file (external or virtual storage); refused")
    return obj


def _min_max(ds: h5py.Dataset, block: int = 1 << 22) -> tuple[int, int]:
    """The smallest and largest value of a 1-D integer dataset, read in blocks (bounded memory)."""
    lo, hi = 0, 0
    for start in range(0, len(ds), block):
        part = ds[start : start + block]
        lo, hi = (
            (int(part.min()), int(part.max())) if start == 0 else (min(lo, int(part.min())), max(hi, int(part.max())))
        )
    return lo, hi


def decoded_attrs(path: Path, attrs: h5py.AttributeManager) -> dict[str, Any]:
    out = {}
    for key in attrs:
        try:
            out[key] = _decode(attrs[key])
        except UnicodeDecodeError:
            raise QdkitError(f"{path}: attribute {key!r} is not UTF-8 text") from None
    return out


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value
