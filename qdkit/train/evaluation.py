"""One pass over a split of the store: mean cross-entropy and accuracy, sharded over DDP ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qdkit.data.loader import BatchLoader
from qdkit.data.store import SplitArrays
from qdkit.train.distributed import DistInfo, all_reduce_


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
