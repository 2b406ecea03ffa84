"""How each model is trained: the per-model recipes (what an unset option becomes), the optimizers,
the learning-rate schedules, the batched augmentation and the default sweep grid. Plain functions,
so the trainer, the benchmark and a user's own loop share them.

These values are also what `qdkit train --help` shows, so importing this module stays cheap: torch
is imported by the functions that use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from qdkit.errors import QdkitError
from qdkit.models import MODELS

if TYPE_CHECKING:
    import torch
    from torch import nn

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")

# Random affine augmentation, drawn per image: rotation (degrees), scale, translation (pixels),
# probability of a horizontal flip. Small enough to keep every class recognisable.
AUGMENT = {"rotate_deg": 10.0, "scale": (0.9, 1.1), "translate_px": 2.0, "hflip": 0.5}
# The original project's manual grid, what `qdkit sweep` trains by default.
SWEEP_LRS = (1e-2, 1e-3, 1e-4)
SWEEP_BATCH_SIZES = (32, 64, 128, 256, 512)


def recipe_values(key: str) -> str:
    """Every model's recipe value of `key`, for --help: "qdnet 0.003, seed-cnn 0.0001"."""

    def shown(value: Any) -> str:
        return (
            ("on" if value else "off")
            if isinstance(value, bool)
            else f"{value:g}"
            if isinstance(value, (int, float))
            else str(value)
        )

    return ", ".join(f"{model} {shown(getattr(spec.recipe, key))}" for model, spec in MODELS.items())


def augment_batch(
    x: torch.Tensor, generator: torch.Generator | None = None, spec: dict[str, Any] = AUGMENT
) -> torch.Tensor:
    """Random affine per image of a float batch (B, 1, 28, 28) in raw pixel units (0 = background),
    as one affine_grid + grid_sample: rotation, scale, translation and a horizontal flip."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    u = torch.rand(b, 5, generator=generator, device=x.device, dtype=torch.float32)
    angle = (u[:, 0] * 2 - 1) * math.radians(spec["rotate_deg"])
    lo, hi = spec["scale"]
    inv_scale = 1.0 / (lo + (hi - lo) * u[:, 1])  # theta maps output -> input coordinates
    flip = torch.where(u[:, 4] < spec["hflip"], -1.0, 1.0)
    tx = (u[:, 2] * 2 - 1) * (2.0 * spec["translate_px"] / w)  # normalised coords span 2 per side
    ty = (u[:, 3] * 2 - 1) * (2.0 * spec["translate_px"] / h)
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.stack([torch.stack([cos * flip, -sin * flip, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def lr_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at each optimizer step (used through LambdaLR)."""
    total = max(1, total_steps)
    if schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":  # short linear warm-up (5%), cosine to zero
        warm = max(1, round(0.05 * total))
    else:  # onecycle: 25% warm-up from lr/25, then cosine to zero
        warm = max(1, round(0.25 * total))
    start = 0.04 if schedule == "onecycle" else 0.0

    def factor(step: int) -> float:
        if step < warm:
            return start + (1.0 - start) * (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * p))

    return factor


def make_optimizer(
    name: str, params: Iterable[nn.Parameter] | list[dict[str, Any]], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    import torch

    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise QdkitError(f"--optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
