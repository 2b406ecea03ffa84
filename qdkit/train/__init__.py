"""Training: a run planned from a `TrainConfig` and the model's recipe, the loop, checkpoints,
reports, DDP, the --nproc launcher and the learning-rate × batch-size sweep.

`plan` (settings, resume rules; `rundata`: the store's splits and identity) → `parts` (model,
optimiser, schedule) → `loop` (`Trainer.fit`) with `batches`, `evaluation`, `interrupt` and `state`
beside it; `reporter` writes what rank 0 shows; `run.train()` wraps one run in its process group.

May import: the foundations, qdkit.strokes and qdkit.data. Never inference, deploy, serve or the CLI.
"""

from __future__ import annotations

from qdkit._lazy import lazy_exports

__all__ = [
    "EXIT_CRASH",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "SweepResult",
    "TrainConfig",
    "TrainingInterrupted",
    "check_run",
    "exit_code",
    "summary",
    "sweep",
    "train",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EXIT_CRASH": ".run",
        "EXIT_ERROR": ".run",
        "EXIT_INTERRUPTED": ".run",
        "EXIT_OK": ".run",
        "exit_code": ".run",
        "summary": ".run",
        "train": ".run",
        "TrainConfig": ".plan",
        "check_run": ".plan",
        "TrainingInterrupted": ".loop",
        "SweepResult": ".sweep",
        "sweep": ".sweep",
    },
)
