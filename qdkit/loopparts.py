"""The pieces the training loop is made of: one pass over a split (`evaluate`), the rows each rank
reads in an epoch, background prefetching of batches, and the Ctrl-C request."""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qdkit.data import BatchLoader
from qdkit.distributed import DistInfo, all_reduce_
from qdkit.store import SplitArrays


@torch.no_grad()
def evaluate(
    model: nn.Module,
    arrays: SplitArrays,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 512,
    info: DistInfo | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on a split; sharded and all-reduced under DDP."""
    info = info or DistInfo()
    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    # Every global batch is sliced over the ranks (a slice may be empty at the end); the sums are
    # all-reduced, so each drawing of the split counts exactly once.
    loader = BatchLoader(
        arrays, max(batch_size, info.world_size), shuffle=False, rank=info.rank, world_size=info.world_size
    )
    for x, y in loader:
        if len(y) == 0:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = module(x)
        logits = logits.float()
        totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += len(y)
    all_reduce_(totals, info)
    module.train(was_training)
    loss, correct, count = totals.tolist()
    return (loss / count, correct / count) if count else (float("nan"), float("nan"))


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


class StopRequest:
    """First Ctrl-C asks the loop to stop after the current step and save; a second one aborts."""

    def __init__(self, say: Callable[[str], None], when: str = "after this step") -> None:
        self.requested = False
        self._say, self._when = say, when
        self._old: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._say(f"\ninterrupt: saving last.pt {self._when} (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
