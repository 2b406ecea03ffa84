"""The training loop: `Trainer` builds the model and its optimisation from a run plan, and `fit()`
trains epoch by epoch, checkpoints through the Reporter, and tests best.pt at the end.

Every rank runs this code; only rank 0's Reporter writes. What ends a loop early — a NaN, Ctrl-C —
is agreed at sync points (`any_flags`), so all ranks stop at the same step.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NoReturn

import torch

from qdkit.checkpoint import load_checkpoint
from qdkit.data.loader import fetch
from qdkit.errors import QdkitError
from qdkit.models import build_model
from qdkit.train.batches import epoch_indices, prefetch
from qdkit.train.devices import rank_device
from qdkit.train.distributed import (
    DistInfo,
    agree,
    all_reduce_,
    any_flags,
    broadcast_buffers,
    broadcast_object,
    dist_info,
)
from qdkit.train.evaluation import evaluate
from qdkit.train.interrupt import StopRequest
from qdkit.train.parts import build_parts
from qdkit.train.plan import RunSettings, TrainConfig, format_lr, plan_run
from qdkit.train.recipes import AUGMENT, augment_batch
from qdkit.train.reporter import Reporter
from qdkit.train.state import RunState

SYNC_EVERY = 20  # steps between host syncs (progress-bar loss, NaN check, DDP stop flag)


class TrainingInterrupted(QdkitError):
    """Ctrl-C: the state was saved to `checkpoint`; the message says how to resume."""

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class Trainer:
    """One run: the constructor plans it and builds its parts (restored on --resume), creating no
    file; `fit()` opens the run folder, trains, checkpoints, tests best.pt, returns the metrics.
    Under torchrun, construct it inside `process_group` (as `train()` does): a setup error on any
    rank is raised on every rank (`agree`)."""

    def __init__(
        self,
        config: TrainConfig,
        log: Callable[[str], None] | None = None,
        info: DistInfo | None = None,
        device: tuple[torch.device, torch.dtype | None] | None = None,
    ) -> None:
        self.info = info = info or dist_info()
        if info.world_size > 1 and not info.active:
            raise QdkitError(
                f"WORLD_SIZE={info.world_size} but no process group: under torchrun, "
                "train through qdkit.train.run.train() (or `qdkit train`)"
            )
        error, built = None, None
        try:
            plan = plan_run(config, info, *(device or rank_device(config.device, config.amp, info)))
            built = plan, build_parts(plan)
        except QdkitError as e:
            error = e
        agree(error, info)
        assert built is not None
        plan, self.parts = built
        self.plan = replace(plan, resume=None)  # the checkpoint is restored and can be large: let it go
        self.device, self.amp_dtype, self.data = plan.device, plan.amp_dtype, plan.data
        self.model = self.train_model = self.parts.model  # train_model: the DDP wrapper once the run opens
        self.eval_batch = max(self.cfg.batch_size, 512)
        self.reporter = Reporter(self.cfg, info.is_main, log)

    @property
    def state(self) -> RunState:
        return self.parts.state

    @property
    def cfg(self) -> RunSettings:
        # One source of truth: the plan's settings (the run name is fixed there when the run opens).
        return self.plan.cfg

    def fit(self) -> dict[str, Any]:
        cfg, state, say, steps = self.cfg, self.state, self.reporter.say, self.parts.steps_per_epoch
        self._open_run()
        failed = True
        try:
            sync = f"at the next sync point (within {SYNC_EVERY} steps)" if self.info.world_size > 1 else None
            with StopRequest(say, sync or "after this step") as stop:  # from here on, Ctrl-C saves last.pt
                if not state.finished:
                    say(self.reporter.header(self.plan, state))
                while not state.finished and state.epoch < cfg.epochs:
                    epoch = state.epoch + 1
                    tm = self.train_epoch(epoch, stop)
                    if tm is None:
                        self._interrupted(epoch)
                    # Evaluation runs in float32 (cheap next to training): the numbers are those of the
                    # exported model, whatever precision the training used. Under DDP every rank first
                    # takes rank 0's batch-norm statistics: the model evaluated is the one saved.
                    broadcast_buffers(self.model, self.info)
                    val_loss, val_acc = evaluate(
                        self.model, self.data.validation, self.device, None, self.eval_batch, self.info
                    )
                    if not math.isfinite(val_loss):
                        self._diverged(epoch, steps)
                    row = {
                        "epoch": epoch,
                        "train_loss": tm["train_loss"],
                        "train_accuracy": tm["train_accuracy"],
                        "val_loss": val_loss,
                        "val_accuracy": val_acc,
                        "lr": float(self.parts.scheduler.get_last_lr()[0]),  # what the next step would use
                        "img_per_s": tm["img_per_s"],
                        "epoch_seconds": tm["seconds"],
                    }
                    improved, patience_hit = state.record(row, cfg.patience, cfg.epochs)
                    self._save(row if improved else None, report=row)
                    if patience_hit and epoch < cfg.epochs:
                        say(
                            f"early stop: no better validation accuracy for {cfg.patience} epochs "
                            f"(best {state.best_val:.2%} at epoch {state.best_epoch})"
                        )
                    elif epoch < cfg.epochs and any_flags([stop.requested], self.info, self.device)[0]:
                        self._interrupted(epoch + 1, at_epoch_end=True)
            metrics = self._test_best()
            failed = False
            return metrics
        finally:
            self.reporter.close(failed=failed)

    def _open_run(self) -> None:
        resumed = self.state.epoch if self.cfg.resume else None
        named = replace(self.cfg, run_name=self.reporter.open_run(self.info, resumed))
        self.plan = replace(self.plan, cfg=named)
        if self.info.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, totals: torch.Tensor) -> None:
        """One optimizer step on a uint8 batch; adds (loss sum, correct, count) to `totals` on-device."""
        p = self.parts
        x = x.to(self.device, non_blocking=True).float()
        y = y.to(self.device, non_blocking=True)
        if self.cfg.augment:
            x = augment_batch(x, p.aug_gen)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.train_model(x)
            loss = p.criterion(logits.float(), y)
        objective = loss
        if self.info.active:
            # DDP averages the ranks' gradients with equal weight; weighting each rank's mean loss by
            # its share of the global batch makes that average the gradient of the global batch's mean
            # loss even when the batch does not split evenly (33 over 2 ranks: 16 and 17).
            objective = loss * (len(y) * self.info.world_size / self.cfg.batch_size)
        p.optimizer.zero_grad(set_to_none=True)
        p.scaler.scale(objective).backward()
        p.scaler.step(p.optimizer)
        p.scaler.update()
        p.scheduler.step()
        with torch.no_grad():
            totals[0] += loss.detach().double() * len(y)
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)

    def train_epoch(self, epoch: int, stop: StopRequest | None = None) -> dict[str, float] | None:
        """Train one epoch (1-based `epoch`); the epoch's training metrics, or None if stopped."""
        cfg, info, state, steps = self.cfg, self.info, self.state, self.parts.steps_per_epoch
        self.train_model.train()
        start_step = state.step_in_epoch
        totals = torch.tensor(state.partial_sums(), dtype=torch.float64, device=self.device)
        rows = epoch_indices(self.parts.loader, epoch, start_step)  # a resumed epoch skips without reading
        batches = (fetch(self.data.train, idx) for idx in rows)
        first, self._epoch_trained = not getattr(self, "_epoch_trained", False), True
        bar = _progress_bar(cfg, epoch, steps, start_step, first) if cfg.progress and info.is_main else None
        t0 = time.perf_counter()
        step, stopped = start_step, False
        try:
            for x, y in prefetch(batches, cfg.workers, self.device.type == "cuda"):
                self.train_step(x, y, totals)
                step += 1
                if bar is not None:
                    bar.update(cfg.batch_size)
                last = step == steps
                if step % SYNC_EVERY == 0 or last:
                    # A sync point, at the same step on every rank: one all-reduce agrees on the NaN
                    # check and on Ctrl-C, so all ranks stop together (or none waits forever).
                    diverged, stopping = any_flags(
                        [not bool(torch.isfinite(totals[0])), stop is not None and stop.requested], info, self.device
                    )
                    if diverged:
                        self._diverged(epoch, step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{totals[0].item() / max(1.0, totals[2].item()):.3f}", refresh=False)
                else:  # a single process stops at once; DDP ranks wait for the next sync point
                    stopping = stop is not None and stop.requested and not info.active
                if stopping and not last:  # at the last step the epoch completes, then stops
                    stopped = True
                    break
        finally:
            if bar is not None:
                bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = state.partial_seconds + time.perf_counter() - t0
        all_reduce_(totals, info)  # the whole (global) epoch so far
        if stopped:
            state.cut(step, totals.tolist(), seconds)
            return None
        loss_sum, correct, count = totals.tolist()
        state.end_epoch()
        return {
            "train_loss": loss_sum / count,
            "train_accuracy": correct / count,
            "img_per_s": count / seconds if seconds > 0 else float("nan"),
            "seconds": seconds,
        }

    # ----------------------------------------------------------------- checkpoints and endings

    def _model_fields(self) -> dict[str, Any]:
        cfg = self.cfg
        return dict(
            model=self.model,
            model_name=cfg.model,
            model_kwargs=self.plan.model_kwargs,
            class_names=self.data.class_names,
            run_name=cfg.run_name,
            config=asdict(cfg),
            augment=dict(AUGMENT) if cfg.augment else None,
            store=self.plan.store_identity,
        )

    def _save(self, best: dict[str, float] | None = None, report: dict[str, float] | None = None) -> Path:
        """last.pt (and best.pt with its metrics `best`, and the epoch's reports for `report`). Rank 0
        writes; a write error (a full disk) is raised on every rank together."""
        last = self.parts.training_state(self.device, self.info)  # on every rank: all ranks' RNG
        path, error = self.reporter.last_path, None
        try:
            if best is not None:
                self.reporter.save_checkpoint(
                    "best.pt", **self._model_fields(), epoch=self.state.epoch, metrics=best, history=self.state.history
                )
            self.reporter.save_checkpoint("last.pt", **self._model_fields(), **last)
            if report is not None:
                self.reporter.epoch_done(report, self.state.history, improved=best is not None)
        except QdkitError as e:
            error = e
        agree(error, self.info)
        return path

    def _diverged(self, epoch: int, step: int) -> NoReturn:
        kept = self.reporter.last_path
        keep = (
            f"the last good checkpoint is {kept} (epoch {self.state.epoch})"
            if kept.exists()
            else "no checkpoint was written"
        )
        raise QdkitError(
            f"training diverged: the loss became NaN or infinite in epoch {epoch} (step {step}) "
            f"with --lr {format_lr(self.cfg.lr)} --optimizer {self.cfg.optimizer}; "
            f"try a lower --lr; {keep}"
        )

    def _interrupted(self, epoch: int, at_epoch_end: bool = False) -> NoReturn:
        path, state, info = self._save(), self.state, self.info
        where = (
            f"after epoch {state.epoch}"
            if at_epoch_end or state.step_in_epoch == 0
            else f"in epoch {epoch} at step {state.step_in_epoch}/{self.parts.steps_per_epoch}"
        )
        again = f"qdkit train --resume {path}"
        if info.world_size > 1:  # the same processes again (any number works; see qdkit.train.parts)
            again = (
                f"{again} --nproc {info.world_size}"
                if info.world_size == info.local_world_size
                else f"{again} (under the same torchrun command)"
            )
        raise TrainingInterrupted(f"interrupted {where}; saved {path}; resume with: {again}", path)

    def _test_best(self) -> dict[str, Any]:
        """best.pt on the test split; the run's metrics (metrics.json)."""
        test: tuple[float, float] | None = None
        if self.data.test is not None:
            # Rank 0 reads best.pt (only it writes files; other machines may not see them) and hands
            # the weights to the others, which share the test split with it.
            weights = load_checkpoint(self.reporter.art_dir / "best.pt")["model_state"] if self.info.is_main else None
            best = build_model(self.cfg.model, len(self.data.class_names), **self.plan.model_kwargs)
            best.load_state_dict(broadcast_object(weights, self.info))
            test = evaluate(best.to(self.device).eval(), self.data.test, self.device, None, self.eval_batch, self.info)
        else:
            self.reporter.say(f"{self.cfg.data}: no test split; test_accuracy is null")
        return self.reporter.run_done(self.plan, self.state, test)


def _progress_bar(cfg: RunSettings, epoch: int, steps: int, start_step: int, first: bool) -> Any:
    from qdkit.progress import progress

    # A bar on a terminal. Elsewhere one line halfway through the first epoch (an early ETA); after
    # that the epoch's own line says it all.
    return progress(
        lines=2 if first else 0,
        final=False,
        total=steps * cfg.batch_size,
        initial=start_step * cfg.batch_size,
        desc=f"epoch {epoch}/{cfg.epochs}",
        unit="img",
        unit_scale=True,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
    )
