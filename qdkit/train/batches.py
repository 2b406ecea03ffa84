"""The training batch stream: the rows each rank reads in an epoch, and background prefetching."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from qdkit.data.loader import BatchLoader


def epoch_indices(loader: BatchLoader, epoch: int, start_step: int = 0) -> Iterator[np.ndarray]:
    """The loader's rank's rows of its split for each step of `epoch` from `start_step` on: its slice
    of each global batch of the epoch's shuffle (the same shuffle for any number of ranks)."""
    loader.set_epoch(epoch)
    order, bs = loader.global_order(), loader.batch_size
    for b in range(start_step, len(loader)):
        yield loader.shard(order[b * bs : (b + 1) * bs])


def prefetch(batches: Iterable, depth: int, pin: bool) -> Iterator:
    """Iterate `batches`; with depth > 0 read them in one background thread, `depth` ahead."""
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x, y in batches:
                if pin:
                    x, y = x.pin_memory(), y.pin_memory()
                if not put((x, y)):
                    return
            put(done)
        except BaseException as e:  # re-raised in the consumer
            put(e)

    thread = threading.Thread(target=work, name="qdkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
