"""Training, the library entry point: `train(TrainConfig(...))` trains (or resumes) one run and
returns its metrics; `qdkit train` only builds the config. Every setting left as None takes the
model's recipe (qdkit.models), so `qdkit train` is the best default measured and
`qdkit train --model seed-cnn` is the original project's best setting.

The rooms of training (qdkit.train), each with one job:
  plan        TrainConfig, resume rules, the store checks: `plan_run` and `check_run`
  devices     device and precision (`choose_device`), the GPU of each DDP process
  parts       the model, optimiser, scheduler and loader a plan is built into
  state       the run's progress (RunState), saved into last.pt and restored as a unit
  reporter    what rank 0 writes: run folders, checkpoints, results.csv, TensorBoard, console
  loop        Trainer: model and optimisation, `fit()`, the epoch loop
  batches     each rank's rows of an epoch, prefetching; evaluation: one pass over a split
  interrupt   Ctrl-C: stop and save, or abort
  run         this module: the process group around a run, and the summary

Outputs of a run named NAME:
  runs/NAME/                TensorBoard: per-epoch loss/accuracy (train, validation), learning rate,
                            images per second; at the end test accuracy and hparams.
  artifacts/NAME/best.pt    best validation accuracy (self-contained, see qdkit.checkpoint)
  artifacts/NAME/last.pt    end of the last epoch (or the Ctrl-C point) + optimizer, scheduler,
                            scaler and RNG state: `--resume` continues exactly from it
  artifacts/NAME/results.csv, metrics.json

Data comes from the memory-mapped store through `qdkit.data.loader.BatchLoader`; augmentation is one
batched random affine (`augment_batch`) on the device.

Distributed (torchrun, DistributedDataParallel; the plumbing is in qdkit.train.distributed): `train()`
joins the process group around the run. Every rank computes the same global shuffle for (seed,
epoch) as a single process would and trains on its contiguous slice of each GLOBAL batch
(`--batch-size`); the last partial global batch of an epoch is dropped, as in a single process, so
every rank takes the same number of steps and none gets an empty shard. The loss of an uneven slice
is weighted so that DDP's gradient average equals the gradient of the global batch. Batch norm keeps
per-process statistics on CPU (running statistics are rank 0's, broadcast before each evaluation);
on CUDA it becomes SyncBatchNorm. Validation and test are sharded over the ranks and all-reduced;
training metrics are all-reduced; NaN and Ctrl-C are agreed at sync points; only rank 0 writes
files, TensorBoard or the console.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qdkit.errors import QdkitError
from qdkit.progress import plural
from qdkit.train.devices import rank_device
from qdkit.train.distributed import dist_info, process_group
from qdkit.train.loop import Trainer, TrainingInterrupted
from qdkit.train.plan import TrainConfig, format_lr

# How a `qdkit train` process ends: the protocol between each training process, `qdkit train` and
# the --nproc launcher (qdkit.train.launcher), defined here only.
EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected exception: Python has printed the traceback
EXIT_ERROR = 2  # a QdkitError: rank 0 printed the one-line error (every rank raised it together)
EXIT_INTERRUPTED = 130  # Ctrl-C: rank 0 saved last.pt and printed the command that resumes the run

__all__ = ["EXIT_CRASH", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "exit_code", "summary", "train"]


def train(config: TrainConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or resume) one run and return its metrics (also in artifacts/<run>/metrics.json).

    Started by torchrun (RANK/WORLD_SIZE set), it joins the process group for the run and leaves it
    at the end, whatever happens; every rank returns the same metrics.

    Raises QdkitError for bad input or divergence, TrainingInterrupted (a QdkitError) after Ctrl-C
    once last.pt is saved. Under DDP every rank raises the same error at the same point.
    """
    info = dist_info()
    device = rank_device(config.device, config.amp, info)  # before the group: NCCL or gloo
    with process_group(info, device[0]):
        trainer = Trainer(config, log=log, info=info, device=device)
        try:
            return trainer.fit()
        finally:
            # The DDP wrapper's reducer holds the process group and gloo's threads: free it now, while
            # the group is alive, not at interpreter exit (where its destructor aborts the process).
            del trainer
            gc.collect()


def exit_code(error: BaseException | None) -> int:
    """The exit code of a training process that ended with `error` (None: it finished)."""
    if error is None:
        return EXIT_OK
    if isinstance(error, (TrainingInterrupted, KeyboardInterrupt)):
        return EXIT_INTERRUPTED
    return EXIT_ERROR if isinstance(error, QdkitError) else EXIT_CRASH


def summary(metrics: dict[str, Any]) -> str:
    """A few human lines about a finished run."""
    test = "n/a" if metrics["test_accuracy"] is None else f"{metrics['test_accuracy']:.2%}"
    world = metrics.get("world_size", 1)
    where = metrics["device"] if world == 1 else f"{world} processes ({metrics['device'].split(':')[0]}, DDP)"
    return "\n".join(
        [
            f"run        {metrics['run_name']}",
            f"model      {metrics['model']}  lr {format_lr(metrics['lr'])}  batch {metrics['batch_size']}  "
            f"{metrics['optimizer']}  {metrics['epochs']}/{plural(metrics['epochs_planned'], 'epoch')}",
            f"accuracy   test {test}  (best validation {metrics['best_val_accuracy']:.2%} "
            f"at epoch {metrics['best_epoch']})",
            f"time       {metrics['train_seconds']:.0f}s training on {where} ({metrics['precision']})",
            f"saved      {Path(metrics['best_checkpoint']).parent}/ "
            "(best.pt, last.pt, results.csv, metrics.json, curves.png); "
            f"TensorBoard: {metrics['tensorboard']}",
        ]
    )
