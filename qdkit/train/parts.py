"""What one process trains with — loader, model, optimizer, schedule, scaler, loss, augmentation
generator and the run's progress — built from a run plan, restored as a whole from a last.pt
(every part checked: a malformed checkpoint is one line naming it, never a KeyError), and saved
back as the training-state fields of last.pt."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdkit.data.loader import BatchLoader
from qdkit.errors import QdkitError, first_line
from qdkit.models import build_model
from qdkit.train.distributed import DistInfo, all_gather_object, cpu_cores
from qdkit.train.plan import RunPlan
from qdkit.train.recipes import lr_factor, make_optimizer, param_groups
from qdkit.train.state import RunState, rng_state, seed_for, set_rng_state

_BAD_STATE = (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError)


@dataclass
class TrainParts:
    loader: BatchLoader  # this rank's slices of each global batch
    steps_per_epoch: int  # global steps: the same for any number of ranks
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    aug_gen: torch.Generator
    state: RunState

    def training_state(self, device: torch.device, info: DistInfo) -> dict[str, Any]:
        """The fields of last.pt beside the model: optimisation state, progress and every rank's RNG."""
        rng = rng_state(self.aug_gen, device)
        if info.active:  # every rank's RNG, so that a resumed DDP run draws the same numbers
            rng = {**rng, "by_rank": all_gather_object({k: v.cpu() for k, v in rng.items()}, info)}
        return {
            **self.state.to_checkpoint(),
            "metrics": self.state.history[-1] if self.state.history else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
        }


def build_parts(plan: RunPlan) -> TrainParts:
    """This process's parts for the run; the saved ones when the plan resumes a checkpoint."""
    cfg, info, device = plan.cfg, plan.info, plan.device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.world_size > 1 and device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores between the ranks of one machine instead of oversubscribing them.
        torch.set_num_threads(max(1, cpu_cores() // max(1, info.local_world_size)))
    # drop_last: every step sees a full global batch (batch norm needs > 1 drawing; DDP ranks stay
    # in step). The permutation changes every epoch, so no drawing is left out for good.
    loader = BatchLoader(
        plan.data.train,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
        rank=info.rank,
        world_size=info.world_size,
    )
    # Fresh runs seed everything from cfg.seed; ranks share the initial weights (DDP also
    # broadcasts them) but draw their own dropout and augmentation.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(plan.data.class_names), **plan.model_kwargs)
    if info.world_size > 1 and device.type == "cuda":
        # Batch-norm statistics over the global batch; the state dict keeps BatchNorm's keys.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # channels_last: oneDNN (CPU) and cuDNN (tensor cores) both run these convolutions faster.
    model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    torch.manual_seed(seed_for(cfg.seed, info.rank, 1))
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(seed_for(cfg.seed, info.rank, 2))
    optimizer = make_optimizer(cfg.optimizer, param_groups(model, cfg.weight_decay), cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.schedule, len(loader) * cfg.epochs))
    parts = TrainParts(
        loader,
        len(loader),
        model,
        optimizer,
        scheduler,
        torch.amp.GradScaler(device.type, enabled=plan.amp_dtype == torch.float16),
        nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        aug_gen,
        RunState(),
    )
    if plan.resume is not None:
        _restore(parts, plan.resume, Path(cfg.resume or ""), plan)
    return parts


def _restore(parts: TrainParts, ckpt: dict[str, Any], path: Path, plan: RunPlan) -> None:
    info, cfg = plan.info, plan.cfg
    parts.state = state = RunState.from_checkpoint(ckpt, path, parts.steps_per_epoch, cfg.epochs)
    if not info.is_main:  # the partial sums are global: rank 0 carries them on
        state.partial_loss = state.partial_correct = state.partial_count = 0.0
    parts.model.load_state_dict(ckpt["model_state"])
    steps_done = state.epoch * parts.steps_per_epoch + state.step_in_epoch
    _check_scheduler(ckpt.get("scheduler"), steps_done, len(parts.optimizer.param_groups), path)
    for name, part in (("optimizer", parts.optimizer), ("scheduler", parts.scheduler), ("scaler", parts.scaler)):
        try:
            part.load_state_dict(ckpt[name])
        except _BAD_STATE as err:
            raise QdkitError(f"{path}: malformed {name} state ({first_line(err)})") from err
    _check_optimizer(parts.optimizer, path)
    rng = ckpt.get("rng")
    by_rank = rng.get("by_rank") if isinstance(rng, dict) else None
    if isinstance(by_rank, list) and len(by_rank) == info.world_size:
        rng = by_rank[info.rank]
    elif not info.is_main:
        # Resumed with another number of processes: the global batches continue exactly, a new
        # rank draws its dropout and augmentation from its own seed.
        torch.manual_seed(seed_for(cfg.seed, info.rank, 1, state.epoch, state.step_in_epoch))
        parts.aug_gen.manual_seed(seed_for(cfg.seed, info.rank, 2, state.epoch, state.step_in_epoch))
        return
    set_rng_state(rng, parts.aug_gen, plan.device, path)


def _check_scheduler(saved: Any, steps_done: int, groups: int, path: Path) -> None:
    """LambdaLR loads any mapping into its attributes: check the fields it steps with."""
    ok = (
        isinstance(saved, dict)
        and saved.get("last_epoch") == steps_done
        and isinstance(saved.get("base_lrs"), list)
        and len(saved["base_lrs"]) == groups
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in saved["base_lrs"])
    )
    if not ok:
        raise QdkitError(
            f"{path}: malformed scheduler state (expected {steps_done} steps done over {groups} parameter groups)"
        )


def _check_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Optimizer.load_state_dict checks the parameter groups, not the per-parameter buffers."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise QdkitError(
                        f"{path}: malformed optimizer state ({key} is {tuple(value.shape)} "
                        f"for a parameter of {tuple(p.shape)})"
                    )
