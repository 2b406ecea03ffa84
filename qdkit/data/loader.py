"""Readers over one split of the HDF5 store, both memory-mapped.

- `QuickDrawDataset`: a map-style torch Dataset for DataLoader users. It holds only the path and
  the split name and opens its memory-map lazily in each process, so it pickles under both fork
  and spawn (h5py objects never cross a process boundary).
- `BatchLoader`: the fast path the trainer uses: each batch is one sorted fancy index into the
  memory-map, no per-item Python. It also shards every batch across DDP ranks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from qdkit.data.store import SplitArrays, open_store


class QuickDrawDataset(torch.utils.data.Dataset):
    """Items are (uint8 tensor (1, 28, 28) with 0 = background / 255 = ink, int64 label)."""

    def __init__(self, store_path: str | os.PathLike, split: str = "train") -> None:
        self.store_path = Path(store_path)
        self.split = split
        store = open_store(self.store_path)  # validate now, in the parent, for a clear error
        self.class_names = store.class_names
        if split not in store.counts:
            store.split(split)  # raises the "no split" error
        self._len = store.counts[split]
        self._arrays: SplitArrays | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None  # each worker maps the file itself
        return state

    @property
    def arrays(self) -> SplitArrays:
        if self._arrays is None:
            self._arrays = open_store(self.store_path, warn=False).split(self.split)
        return self._arrays

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        a = self.arrays
        a.check_unchanged()
        return torch.from_numpy(np.array(a.images[index])).unsqueeze(0), int(a.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        # DataLoader's batched fetch: one fancy index for the whole batch.
        images, labels = fetch(self.arrays, np.asarray(indices))
        return list(zip(images, labels.tolist(), strict=True))


def fetch(arrays: SplitArrays, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `indices` as (uint8 (B, 1, 28, 28), int64 (B,)) tensors, in the order asked.

    Reads in ascending file order (one sorted fancy index: sequential page access), then restores
    the requested order in memory. Checks first that the store was not rewritten in place (reading a
    mapping whose file shrank would kill the process with a bare "Bus error").
    """
    arrays.check_unchanged()
    order = np.argsort(indices, kind="stable")
    sorted_idx = indices[order]
    images = np.empty((len(indices), 28, 28), np.uint8)
    images[order] = arrays.images[sorted_idx]
    labels = arrays.labels[indices]
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


class BatchLoader:
    """Shuffled (or ordered) batches of one split, sharded across `world_size` ranks.

    The permutation depends only on (seed, epoch), so every rank computes the same global order;
    each global batch of `batch_size` is split into contiguous per-rank slices. Single-process
    training is the world_size=1 case of the same code.
    """

    def __init__(
        self,
        arrays: SplitArrays,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < world_size:
            raise ValueError(f"batch size {batch_size} is smaller than the {world_size} ranks")
        self.arrays, self.batch_size, self.shuffle, self.seed = arrays, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.arrays)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def global_order(self) -> np.ndarray:
        n = len(self.arrays)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of one global batch."""
        bounds = np.linspace(0, len(batch), self.world_size + 1).astype(int)
        return batch[bounds[self.rank] : bounds[self.rank + 1]]

    def __iter__(self):
        order = self.global_order()
        for b in range(len(self)):
            idx = self.shard(order[b * self.batch_size : (b + 1) * self.batch_size])
            yield fetch(self.arrays, idx)
