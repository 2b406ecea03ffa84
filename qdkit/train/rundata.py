"""The store a run trains on: its splits (`open_run_data`, checked for training) and its identity,
which checkpoints record and a resumed run must match (`store_identity`, `check_same_store`).
Used by qdkit.train.plan."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qdkit.data.store import SplitArrays, Store, open_store
from qdkit.errors import QdkitError

if TYPE_CHECKING:
    from qdkit.train.plan import RunSettings


@dataclass
class RunData:
    """The store's splits a run trains, selects and tests on (test may be None)."""

    store: Store
    train: SplitArrays
    validation: SplitArrays
    test: SplitArrays | None

    @property
    def class_names(self) -> list[str]:
        return self.store.class_names


def open_run_data(cfg: RunSettings) -> RunData:
    """The store's splits, checked for training with `cfg`."""
    path = Path(cfg.data)
    store = open_store(path)
    if len(store.class_names) < 2:
        raise QdkitError(f"{path}: has {len(store.class_names)} class; training needs at least two")
    for split in ("train", "validation"):
        if store.counts.get(split, 0) == 0:
            what = "no" if split not in store.counts else "an empty"
            raise QdkitError(
                f"{path}: {what} {split!r} split; training needs drawings in train and validation "
                f"(convert with --{split} N)"
            )
    test = store.split("test") if store.counts.get("test", 0) > 0 else None
    return RunData(store, store.split("train"), store.split("validation"), test)


def store_identity(data: RunData) -> dict[str, Any]:
    """What a checkpoint records of the store it was trained on: class names, counts per split and a
    fingerprint, the SHA-256 of every image, label and source index of the splits (~0.6 GB/s; computed
    by the process that writes checkpoints, and to check a resume)."""
    h = hashlib.sha256(repr(data.class_names).encode())
    for arrays in (data.train, data.validation, data.test):
        if arrays is None:
            continue
        h.update(arrays.name.encode())
        for part in (arrays.labels.astype(np.int64), arrays.source_index.astype(np.int64), arrays.images):
            h.update(np.ascontiguousarray(part).data)
    counts = {a.name: len(a) for a in (data.train, data.validation, data.test) if a is not None}
    return {"class_names": list(data.class_names), "counts": counts, "fingerprint": h.hexdigest()}


def check_same_store(ckpt: dict[str, Any], now: dict[str, Any], path: Path, data_path: str) -> None:
    """A resumed run must train on the store it started on (`now`: store_identity of the store given;
    checkpoints from before the fingerprint existed are checked by their class names alone)."""
    saved = ckpt.get("store")
    what = f"{data_path}: not the store the run being resumed ({path}) was trained on"
    if ckpt["class_names"] != now["class_names"]:
        old, new = ckpt["class_names"], now["class_names"]
        raise QdkitError(f"{what}: classes {_short(new)} ({len(new)}), the run's {_short(old)} ({len(old)})")
    if saved is None:
        return
    if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint"), str):
        raise QdkitError(f"{path}: malformed 'store' record")
    if saved.get("counts") != now["counts"]:
        raise QdkitError(f"{what}: drawings per split {now['counts']}, the run's {saved.get('counts')}")
    if saved["fingerprint"] != now["fingerprint"]:
        raise QdkitError(f"{what}: same classes and counts, different drawings or labels (fingerprint differs)")


def _short(names: list[str], limit: int = 6) -> str:
    return ",".join(names[:limit]) + (",…" if len(names) > limit else "")
