"""Everything a run writes, and only on rank 0: the run folders, checkpoints, results.csv,
TensorBoard, the console and metrics.json. Other ranks get a Reporter that writes nothing.

Nothing is created until `open()`. A run that fails before its first checkpoint releases the
folders it reserved (`close(failed=True)`), so rerunning it never meets a folder that points to a
last.pt that does not exist.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qdkit.checkpoint import save_checkpoint, write_atomic
from qdkit.errors import QdkitError
from qdkit.files import disk_full_is_error
from qdkit.progress import format_seconds, plural, write_line
from qdkit.train.devices import precision_name
from qdkit.train.distributed import DistInfo, broadcast_object
from qdkit.train.plan import RunPlan, RunSettings, check_run_folder_free, default_run_name, format_lr, run_folders
from qdkit.train.state import RunState


def console(message: str) -> None:
    """A line on stderr that does not break a tqdm progress bar."""
    write_line(message, sys.stderr)


def reserve_run(cfg: RunSettings) -> str:
    """Create artifacts/<run> and runs/<run> and return the run's name; never reuse a folder. Without
    --run-name, runs started in the same second with the same settings get -2, -3, ... suffixes."""
    explicit = cfg.run_name is not None
    base = cfg.run_name or default_run_name(cfg)
    for attempt in range(1, 1000):
        name = base if attempt == 1 else f"{base}-{attempt}"
        art, log = run_folders(cfg, name)
        if art.exists() or log.exists():
            if explicit:
                check_run_folder_free(cfg, name)
            continue
        try:
            art.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue  # lost a race with another run: try the next suffix
        except OSError as err:
            raise QdkitError(f"{art}: cannot create run folder ({err.strerror})") from err
        try:
            log.mkdir(parents=True, exist_ok=False)
        except OSError as err:
            art.rmdir()
            raise QdkitError(f"{log}: cannot create TensorBoard folder ({err.strerror})") from err
        return name
    raise QdkitError(f"{Path(cfg.artifacts_dir) / base}: too many runs with this name")


def run_eta(history: list[dict[str, float]], epochs: int) -> str:
    """'  ETA 3 min 10 s' for the epochs still to come (the mean epoch of this run so far), or ''."""
    left = epochs - int(history[-1]["epoch"])
    seconds = [float(r["epoch_seconds"]) for r in history if float(r.get("epoch_seconds", 0)) > 0]
    if left <= 0 or not seconds:
        return ""
    return f"  ETA {format_seconds(left * sum(seconds) / len(seconds))}"


class Reporter:
    """Rank 0's writer of one run; `active=False` makes every method a no-op (other ranks)."""

    def __init__(self, cfg: RunSettings, active: bool, log: Callable[[str], None] | None = None) -> None:
        self.cfg, self.active = cfg, active
        self._log = log or console
        self.run_name = cfg.run_name or ""
        self.art_dir, self.log_dir = run_folders(cfg, self.run_name)
        self._writer: Any = None
        self._thread_hook: Any = None
        self._reserved = False  # this process created the folders (and may release them)

    def say(self, message: str) -> None:
        if self.active:
            self._log(message)

    def open_run(self, info: DistInfo, resumed_epoch: int | None) -> str:
        """The run's name on every rank: a new run's folders are reserved by rank 0 (reserve_run),
        which tells the other ranks the name, or its error; a resumed run has its own."""
        if resumed_epoch is not None:
            self.open(self.run_name, resumed_epoch)
            return self.run_name
        outcome: tuple[str, str | None] = ("", None)
        error = None
        if self.active:
            try:
                outcome = (reserve_run(self.cfg), None)
            except QdkitError as e:
                error, outcome = e, ("", str(e))
        name, message = broadcast_object(outcome, info)
        if message is not None:
            raise error or QdkitError(message)
        self.open(name, None)
        return name

    def open(self, run_name: str, resumed_epoch: int | None) -> None:
        """Point at the run's folders (created by reserve_run, or the resumed run's) and start
        TensorBoard; on resume, events logged after the checkpoint (an epoch never saved) are dropped."""
        self.run_name = run_name
        self.art_dir, self.log_dir = run_folders(self.cfg, run_name)
        if resumed_epoch is not None and self.cfg.resume:  # the run's folder is where its last.pt is
            self.art_dir = Path(self.cfg.resume).parent
        self._reserved = resumed_epoch is None
        if self.active:
            from torch.utils.tensorboard import SummaryWriter

            purge = resumed_epoch + 1 if resumed_epoch is not None else None
            # TensorBoard writes from a thread of its own; a write error there (a full disk) would be
            # printed as that thread's traceback. It is re-raised in this thread at the next call
            # into the writer, where `_tensorboard()` makes it one line; until close(), only that
            # thread's OSError is kept quiet.
            self._thread_hook = threading.excepthook
            threading.excepthook = self._quiet_writer_thread
            with self._tensorboard():
                self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def _quiet_writer_thread(self, args: Any) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            self._thread_hook(args)

    @contextlib.contextmanager
    def _tensorboard(self) -> Iterator[Any]:
        try:
            with disk_full_is_error(self.log_dir):
                yield self._writer
        except OSError as err:
            raise QdkitError(f"{self.log_dir}: cannot write TensorBoard events ({err.strerror or err})") from err

    def close(self, failed: bool = False) -> None:
        """Flush TensorBoard; after a failure before the first checkpoint, remove the folders this
        run reserved (nothing in them can be resumed)."""
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                with self._tensorboard():
                    writer.close()
        except QdkitError:
            if not failed:  # a run that failed already reports its own error
                raise
        finally:
            if self._thread_hook is not None:
                threading.excepthook, self._thread_hook = self._thread_hook, None
        if failed and self.active and self._reserved and not (self.art_dir / "last.pt").exists():
            for folder in (self.art_dir, self.log_dir):
                shutil.rmtree(folder, ignore_errors=True)

    @property
    def last_path(self) -> Path:
        return self.art_dir / "last.pt"

    def save_checkpoint(self, name: str, **fields: Any) -> Path:
        path = self.art_dir / name
        if self.active:
            save_checkpoint(path, **fields)
        return path

    def epoch_done(self, row: dict[str, float], history: list[dict[str, float]], improved: bool) -> None:
        """results.csv rewritten, TensorBoard scalars, the console line of the epoch."""
        if not self.active:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        write_atomic(self.art_dir / "results.csv", buf.getvalue())
        e = int(row["epoch"])
        with self._tensorboard() as w:
            for tag, key in (
                ("loss/train", "train_loss"),
                ("loss/validation", "val_loss"),
                ("accuracy/train", "train_accuracy"),
                ("accuracy/validation", "val_accuracy"),
                ("learning_rate", "lr"),
                ("throughput/img_per_s", "img_per_s"),
            ):
                w.add_scalar(tag, row[key], e)
            w.flush()
        self.say(
            f"epoch {e:>3}/{self.cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}"
            f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.2%}{' *' if improved else '  '}"
            f"  lr {row['lr']:.2e}  {row['img_per_s']:.0f} img/s  {row['epoch_seconds']:.1f}s"
            f"{run_eta(history, self.cfg.epochs)}"
        )

    def write_curves(self, history: list[dict[str, float]], test_acc: float | None) -> None:
        """curves.png beside metrics.json: accuracy and loss per epoch (qdkit.train.curves)."""
        from qdkit.train.curves import write_run_curves

        title = f"{self.run_name}: {self.cfg.model}, lr {format_lr(self.cfg.lr)}, batch {self.cfg.batch_size}"
        if test_acc is not None:
            title += f"; test accuracy {test_acc:.2%}"
        with disk_full_is_error(self.art_dir / "curves.png"):
            write_run_curves(history, self.art_dir / "curves.png", title)

    def header(self, plan: RunPlan, state: RunState) -> str:
        """The console line that starts (or resumes) the run."""
        cfg, data, device, info = plan.cfg, plan.data, plan.device, plan.info
        where = f"{info.world_size} processes ({device.type}, DDP)" if info.world_size > 1 else str(device)
        if not state.fresh:
            return (
                f"resuming {self.run_name} after epoch {state.epoch}"
                + (f", step {state.step_in_epoch}" if state.step_in_epoch else "")
                + (f" on {where}" if info.world_size > 1 else "")
            )
        return (
            f"run {self.run_name}: {cfg.model} on {len(data.class_names)} classes, "
            f"{len(data.train)} train / {len(data.validation)} validation drawings; "
            f"{precision_name(plan.amp_dtype)} on {where}; lr {format_lr(cfg.lr)}, batch {cfg.batch_size}, "
            f"{plural(cfg.epochs, 'epoch')}, {cfg.optimizer}, {cfg.schedule}"
        )

    def run_done(self, plan: RunPlan, state: RunState, test: tuple[float, float] | None) -> dict[str, Any]:
        """The run's metrics (returned on every rank); rank 0 writes metrics.json, the test scalars
        and the HParams entry."""
        cfg = plan.cfg
        test_loss, test_acc = test if test is not None else (None, None)
        metrics = {
            "run_name": self.run_name,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "best_val_accuracy": state.best_val,
            "best_epoch": state.best_epoch,
            "epochs": state.epoch,
            "epochs_planned": cfg.epochs,
            "train_seconds": round(state.train_seconds, 2),
            "model": cfg.model,
            "model_kwargs": plan.model_kwargs,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "optimizer": cfg.optimizer,
            "weight_decay": cfg.weight_decay,
            "schedule": cfg.schedule,
            "label_smoothing": cfg.label_smoothing,
            "augment": cfg.augment,
            "seed": cfg.seed,
            "data": str(cfg.data),
            "classes": list(plan.data.class_names),
            "device": str(plan.device),
            "precision": precision_name(plan.amp_dtype),
            "world_size": plan.info.world_size,
            "best_checkpoint": str(self.art_dir / "best.pt"),
            "tensorboard": str(self.log_dir),
        }
        if not self.active:
            return metrics
        write_atomic(self.art_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        self.write_curves(state.history, test_acc)
        hparams = {
            "model": cfg.model,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "epochs": cfg.epochs,
            "optimizer": cfg.optimizer,
            "schedule": cfg.schedule,
            "dropout": cfg.dropout,
            "weight_decay": cfg.weight_decay,
            "label_smoothing": cfg.label_smoothing,
            "augment": bool(cfg.augment),
            "seed": cfg.seed,
        }
        hmetrics = {"hparam/best_val_accuracy": state.best_val}
        if test_acc is not None:
            hmetrics["hparam/test_accuracy"] = test_acc
        with self._tensorboard() as w:
            if test_acc is not None:
                w.add_scalar("accuracy/test", test_acc, state.epoch)
                w.add_scalar("loss/test", test_loss, state.epoch)
            w.add_hparams(hparams, hmetrics, run_name=".")
            w.flush()
        return metrics
