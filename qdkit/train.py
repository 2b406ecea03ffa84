"""Training: device and precision choice, the loop, TensorBoard, checkpoints, early stopping,
resume and the DDP hooks — all of it here, nowhere else.

Library first: `train(TrainConfig(...))` returns the run's metrics; `qdkit train` only builds the
config. Every setting left as None takes the model's recipe (`RECIPES`), so `qdkit train` is the
best default measured and `qdkit train --model seed-cnn` is the original project's best setting.

Outputs of a run named NAME:
  runs/NAME/                TensorBoard: per-epoch loss/accuracy (train, validation), learning rate,
                            images per second; at the end test accuracy and hparams.
  artifacts/NAME/best.pt    best validation accuracy (self-contained, see qdkit.checkpoint)
  artifacts/NAME/last.pt    end of the last epoch (or the Ctrl-C point) + optimizer, scheduler,
                            scaler and RNG state: `--resume` continues exactly from it
  artifacts/NAME/results.csv, metrics.json

Data comes from the memory-mapped store through `qdkit.data.BatchLoader`; augmentation is one
batched random affine (`augment_batch`) on the device.

Distributed (torchrun, DistributedDataParallel; the plumbing is in qdkit.distributed): `train()`
joins the process group around the run. Every rank computes the same global shuffle for (seed,
epoch) as a single process would and trains on its contiguous slice of each GLOBAL batch
(`--batch-size`); the last partial global batch of an epoch is dropped, as in a single process, so
every rank takes the same number of steps and none gets an empty shard. The loss of an uneven slice
is weighted so that DDP's gradient average equals the gradient of the global batch. Batch norm keeps
per-process statistics on CPU (running statistics are rank 0's, broadcast before each evaluation);
on CUDA it becomes SyncBatchNorm. Validation and test are sharded over the ranks and all-reduced;
training metrics are all-reduced; NaN and Ctrl-C are agreed at sync points; only rank 0 writes
files, TensorBoard or the console.

Debug hook: with QDKIT_RECORD_SHARDS=DIR each rank writes DIR/epoch<E>-rank<R>.npy, the train-split
rows it read in epoch E (the tests check the shards are disjoint and cover the split).
"""
from __future__ import annotations

import csv
import gc
import io
import json
import math
import os
import queue
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qdkit.files import atomic_path
from qdkit.checkpoint import load_checkpoint, save_checkpoint
from qdkit.data import BatchLoader, fetch
from qdkit.distributed import (DistInfo, agree, all_gather_object, all_reduce_, any_flags, broadcast_buffers,
                               broadcast_object, cpu_cores, dist_info, process_group)
from qdkit.errors import QdkitError
from qdkit.models import DEFAULT_MODEL, MODELS, build_model
from qdkit.recipes import (AUGMENT, OPTIMIZERS, RECIPES, SCHEDULES, augment_batch, lr_factor, make_optimizer,
                           param_groups)
from qdkit.store import SplitArrays, Store, open_store

DEFAULT_DATA = "data/quickdraw.h5"
# Settings that define a run: a resumed run keeps them (passing a different value is an error).
RUN_SETTINGS = ("model", "lr", "batch_size", "epochs", "optimizer", "dropout", "weight_decay", "schedule",
                "label_smoothing", "augment", "seed")

SYNC_EVERY = 20  # steps between host syncs (progress-bar loss, NaN check, DDP stop flag)


@dataclass
class TrainConfig:
    """One training run. None = the model's recipe default (RECIPES) or, on resume, the saved value."""

    data: str | None = None               # the HDF5 store [data/quickdraw.h5]
    model: str | None = None              # registry name in qdkit.models [qdnet]
    lr: float | None = None               # peak learning rate
    batch_size: int | None = None         # GLOBAL batch size (split across DDP ranks)
    epochs: int | None = None
    optimizer: str | None = None          # adamw | adam | sgd (momentum 0.9, nesterov)
    dropout: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None           # onecycle | cosine | constant (per step)
    label_smoothing: float | None = None
    augment: bool | None = None           # batched random affine (AUGMENT) on training batches
    seed: int | None = None               # model init, shuffling, augmentation [0]
    run_name: str | None = None           # default: YYYYmmdd-HHMMSS-<model>-lr<lr>-bs<batch>
    patience: int | None = None           # stop after N epochs without a better val accuracy; 0/None = off
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    amp: bool = True                      # mixed precision where it pays (see choose_device)
    workers: int = 0                      # 0 = batches read in-process; N = background thread, N batches ahead
    resume: str | None = None             # a last.pt to continue
    runs_dir: str | None = None           # TensorBoard logs: runs_dir/<run_name>/ [runs; on resume: the run's]
    artifacts_dir: str = "artifacts"      # checkpoints and reports: artifacts_dir/<run_name>/
    progress: bool = True                 # tqdm bar per epoch on stderr

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled from the model's recipe and the global defaults."""
        model = self.model or DEFAULT_MODEL
        if model not in MODELS:
            raise QdkitError(f"--model {model!r}: unknown model (choose from {', '.join(MODELS)})")
        recipe = RECIPES.get(model, RECIPES[DEFAULT_MODEL])
        values = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in recipe.items()}
        return replace(self, model=model, data=self.data or DEFAULT_DATA, runs_dir=self.runs_dir or "runs",
                       seed=self.seed if self.seed is not None else 0, **values)

    def validate(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule {self.schedule!r}: choose from {', '.join(SCHEDULES)}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr {self.lr}: must be a positive number"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1"),
            (self.epochs >= 1, f"--epochs {self.epochs}: must be at least 1"),
            (0.0 <= self.dropout < 1.0, f"--dropout {self.dropout}: must be in [0, 1)"),
            (self.weight_decay >= 0.0, f"--weight-decay {self.weight_decay}: must be >= 0"),
            (0.0 <= self.label_smoothing < 1.0, f"--label-smoothing {self.label_smoothing}: must be in [0, 1)"),
            (self.workers >= 0, f"--workers {self.workers}: must be >= 0"),
            ((self.patience or 0) >= 0, f"--patience {self.patience}: must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise QdkitError(message)
        if self.run_name is not None:
            check_run_name(self.run_name)

    def model_kwargs(self) -> dict[str, Any]:
        """Every constructor argument of the model (defaults spelled out), so a checkpoint rebuilds
        the same network even if a default changes later."""
        import inspect

        params = inspect.signature(MODELS[self.model]).parameters
        kwargs = {k: p.default for k, p in params.items()
                  if k != "num_classes" and p.default is not inspect.Parameter.empty}
        kwargs["dropout"] = float(self.dropout)
        return kwargs


class TrainingInterrupted(QdkitError):
    """Ctrl-C: the state was saved to `checkpoint`; the message says how to resume."""

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------- device and precision

def choose_device(device: str = "auto", amp: bool = True) -> tuple[torch.device, torch.dtype | None]:
    """(device, autocast dtype or None for plain float32).

    auto = CUDA when available, else CPU. On CUDA with amp: bfloat16 where the GPU supports it
    natively (Ampere and later; no GradScaler needed), else float16 (the trainer adds a GradScaler).
    On CPU with amp: bfloat16 only where the CPU computes it natively (AVX512-BF16 or AMX). There it
    was measured 1.45x faster end to end at equal accuracy (qdnet, animals10: 150 s vs 218 s of
    training, validation 79.7% vs 79.0%); elsewhere bfloat16 is emulated and slower, so float32.
    """
    name = (device or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise QdkitError(f"--device {device!r}: choose auto, cpu, cuda or cuda:N")
    dev = torch.device(name)
    if dev.type == "cpu":
        return dev, torch.bfloat16 if amp and cpu_has_fast_bf16() else None
    if not torch.cuda.is_available():
        raise QdkitError(f"--device {device}: CUDA is not available (torch {torch.__version__}); use --device cpu")
    if not amp:
        return dev, None
    try:
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch has no `including_emulation`
        bf16 = torch.cuda.is_bf16_supported()
    return dev, torch.bfloat16 if bf16 else torch.float16


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bfloat16 natively (AVX512-BF16 or AMX): there bfloat16 autocast
    trains about twice as fast as float32; elsewhere it is emulated and slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


# --------------------------------------------------------------------------- pieces of the loop

@torch.no_grad()
def evaluate(model: nn.Module, arrays: SplitArrays, device: torch.device, amp_dtype: torch.dtype | None = None,
             batch_size: int = 512, info: DistInfo = DistInfo()) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on a split; sharded and all-reduced under DDP."""
    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    # Every global batch is sliced over the ranks (a slice may be empty at the end); the sums are
    # all-reduced, so each drawing of the split counts exactly once.
    loader = BatchLoader(arrays, max(batch_size, info.world_size), shuffle=False,
                         rank=info.rank, world_size=info.world_size)
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


def _prefetch(batches: Iterable, depth: int, pin: bool) -> Iterator:
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


class _StopRequest:
    """First Ctrl-C asks the loop to stop after the current step and save; a second one aborts."""

    def __init__(self, say: Callable[[str], None], when: str = "after this step") -> None:
        self.requested = False
        self._say, self._when = say, when
        self._old: Any = None

    def __enter__(self) -> "_StopRequest":
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


class _ShardRecord:
    """The debug hook behind QDKIT_RECORD_SHARDS=DIR: the train-split rows this rank read in one
    epoch, saved to DIR/epoch<E>-rank<R>.npy."""

    def __init__(self, path: Path) -> None:
        self.path, self.parts = path, []

    @classmethod
    def from_env(cls, epoch: int, rank: int) -> "_ShardRecord | None":
        folder = os.environ.get("QDKIT_RECORD_SHARDS")
        return cls(Path(folder) / f"epoch{epoch}-rank{rank}.npy") if folder else None

    def add(self, idx: np.ndarray) -> np.ndarray:
        self.parts.append(np.array(idx))
        return idx

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        np.save(self.path, np.concatenate(self.parts) if self.parts else np.zeros(0, np.int64))


# --------------------------------------------------------------------------- run naming

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def check_run_name(name: str) -> str:
    if not _RUN_NAME.fullmatch(name) or len(name) > 200:
        raise QdkitError(f"--run-name {name!r}: use letters, digits and . _ - + = only (one folder name)")
    return name


def format_lr(lr: float) -> str:
    short = f"{lr:.0e}"
    return short if float(short) == lr else f"{lr:.2e}"


def default_run_name(cfg: TrainConfig, now: datetime | None = None) -> str:
    """Unique enough and sortable: 20261124-142501-qdnet-lr1e-03-bs128."""
    now = now or datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{cfg.model}-lr{format_lr(cfg.lr)}-bs{cfg.batch_size}"


def _existing_run_folder(cfg: TrainConfig, name: str) -> None:
    art, log = Path(cfg.artifacts_dir) / name, Path(cfg.runs_dir) / name
    if art.exists() or log.exists():
        where = art if art.exists() else log
        raise QdkitError(f"{where}: run folder already exists; pick another --run-name "
                         f"or continue it with --resume {art / 'last.pt'}")


def _reserve_run(cfg: TrainConfig) -> tuple[str, Path, Path]:
    """Create artifacts/<run> and runs/<run>; never reuse an existing folder."""
    runs, arts = Path(cfg.runs_dir), Path(cfg.artifacts_dir)
    explicit = cfg.run_name is not None
    base = cfg.run_name or default_run_name(cfg)
    for attempt in range(1, 1000):
        name = base if attempt == 1 else f"{base}-{attempt}"
        art, log = arts / name, runs / name
        if art.exists() or log.exists():
            if explicit:
                _existing_run_folder(cfg, name)
            continue
        try:
            art.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue  # lost a race with another run: try the next suffix
        except OSError as e:
            raise QdkitError(f"{art}: cannot create run folder ({e.strerror})") from None
        try:
            log.mkdir(parents=True, exist_ok=False)
        except OSError as e:
            art.rmdir()
            raise QdkitError(f"{log}: cannot create TensorBoard folder ({e.strerror})") from None
        return name, art, log
    raise QdkitError(f"{arts / base}: too many runs with this name")


# --------------------------------------------------------------------------- what a run checks first

def _load_resume(config: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
    path = Path(config.resume)
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "config" not in ckpt:
        raise QdkitError(f"{path}: holds no training state (resume from the run's last.pt)")
    saved = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in {f.name for f in fields(TrainConfig)}})
    for key in RUN_SETTINGS:
        new, old = getattr(config, key), getattr(saved, key)
        if new is not None and new != old:
            raise QdkitError(f"--{key.replace('_', '-')} {new}: the run being resumed ({path}) used {old}; "
                             "a resumed run keeps its settings")
    if config.run_name is not None and config.run_name != ckpt.get("run_name"):
        raise QdkitError(f"--run-name {config.run_name}: a resumed run keeps its name ({ckpt.get('run_name')})")
    cfg = replace(saved, data=config.data or saved.data, device=config.device, amp=config.amp,
                  workers=config.workers, progress=config.progress,
                  runs_dir=config.runs_dir or saved.runs_dir, artifacts_dir=str(path.parent.parent),
                  resume=str(path),
                  patience=config.patience if config.patience is not None else saved.patience)
    return ckpt, cfg


def _resolve(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """(the run's complete, validated settings; the checkpoint being resumed, or None)."""
    ckpt = None
    if config.resume:
        ckpt, cfg = _load_resume(config)
    else:
        cfg = config.resolved()
    cfg.validate()
    return cfg, ckpt


def _pick_device(device: str, amp: bool, info: DistInfo) -> tuple[torch.device, torch.dtype | None]:
    """choose_device, then the GPU of this process: under DDP the one of its local rank."""
    dev, amp_dtype = choose_device(device, amp)
    if dev.type != "cuda":
        return dev, amp_dtype
    if info.world_size > 1:
        if dev.index is not None:
            raise QdkitError(f"--device {device}: with several processes each one uses the GPU of its local "
                             "rank; use --device cuda (or CUDA_VISIBLE_DEVICES to choose the GPUs)")
        count = torch.cuda.device_count()
        if info.local_rank >= count:
            raise QdkitError(f"local rank {info.local_rank}: this machine has {count} CUDA device(s); "
                             f"start at most {count} processes per machine (one per GPU)")
        return torch.device("cuda", info.local_rank), amp_dtype
    return (dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())), amp_dtype


def _open_splits(cfg: TrainConfig, world_size: int) -> tuple[Store, SplitArrays, SplitArrays, SplitArrays | None]:
    """The store's train, validation and test (or None) splits, checked for training."""
    path = Path(cfg.data)
    store = open_store(path)
    if len(store.class_names) < 2:
        raise QdkitError(f"{path}: has {len(store.class_names)} class; training needs at least two")
    for split in ("train", "validation"):
        if store.counts.get(split, 0) == 0:
            what = "no" if split not in store.counts else "an empty"
            raise QdkitError(f"{path}: {what} {split!r} split; training needs drawings in train and validation "
                             f"(convert with --{split} N)")
    train_arrays = store.split("train")
    n_train = len(train_arrays)
    if cfg.batch_size > n_train:
        raise QdkitError(f"--batch-size {cfg.batch_size}: larger than the {n_train} training drawings in {path}")
    test = store.split("test") if store.counts.get("test", 0) > 0 else None
    return store, train_arrays, store.split("validation"), test


def _uses_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _check_batch(cfg: TrainConfig, world_size: int, batch_norm: bool) -> None:
    """Each process's slice of a global batch must be trainable: at least one drawing, two with batch
    norm (it cannot normalise one value per channel)."""
    need = 2 if batch_norm else 1
    if cfg.batch_size // world_size >= need:
        return
    if world_size == 1:
        raise QdkitError(f"--batch-size {cfg.batch_size}: {cfg.model} uses batch norm, which needs at least 2 "
                         "drawings per step")
    raise QdkitError(f"--batch-size {cfg.batch_size}: too small for {world_size} processes (the batch size is "
                     f"global, split across them; {cfg.model} needs at least {need} drawings per process, "
                     f"so at least {need * world_size})")


def check_run(config: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Every check a run makes before it trains — settings, resume checkpoint, device, store, batch
    size, run folder — without training or creating anything. `qdkit train --nproc N` runs it once
    before starting N processes, so bad input is one line from one process. Returns the settings."""
    cfg, _ = _resolve(config)
    dev, _ = choose_device(cfg.device, cfg.amp)
    if dev.type == "cuda" and world_size > 1:
        if dev.index is not None:
            _pick_device(cfg.device, cfg.amp, DistInfo(0, world_size, 0, world_size))  # raises
        count = torch.cuda.device_count()
        if world_size > count:
            raise QdkitError(f"--nproc {world_size}: this machine has {count} CUDA device(s), one per process "
                             "(or train on --device cpu)")
    store, _, _, _ = _open_splits(cfg, world_size)
    _check_batch(cfg, world_size, _uses_batch_norm(build_model(cfg.model, len(store.class_names),
                                                               **cfg.model_kwargs())))
    if not cfg.resume and cfg.run_name is not None:
        _existing_run_folder(cfg, cfg.run_name)
    return cfg


# --------------------------------------------------------------------------- the trainer

def _stderr(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _rng_state(aug_gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "augment": aug_gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], aug_gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    aug_gen.set_state(state["augment"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class Trainer:
    """One run: setup in __init__ (data, model, optimizer, folders, resume state); `fit()` trains,
    checkpoints, evaluates best.pt on the test split and returns the metrics.

    Under torchrun construct it inside `qdkit.distributed.process_group` (as `train()` does): a setup
    error on any rank is raised on every rank (`agree`), so no rank is left waiting for the others.
    """

    def __init__(self, config: TrainConfig, log: Callable[[str], None] | None = None,
                 info: DistInfo | None = None) -> None:
        self.info = info or dist_info()
        self._log = log or _stderr
        if self.info.world_size > 1 and not self.info.active:
            raise QdkitError(f"WORLD_SIZE={self.info.world_size} but no process group: under torchrun, "
                             "train through qdkit.train.train() (or `qdkit train`)")
        error = None
        try:
            self._setup(config)
        except QdkitError as e:
            error = e
        agree(error, self.info)
        self._setup_run()

    def _setup(self, config: TrainConfig) -> None:
        """Everything each process prepares on its own: settings, device, data, model, optimisation
        state (restored on --resume)."""
        info = self.info
        cfg, resume_ckpt = _resolve(config)
        self.cfg, self._resume_ckpt = cfg, resume_ckpt
        self.device, self.amp_dtype = _pick_device(cfg.device, cfg.amp, info)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if info.world_size > 1 and self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # Share the cores between the ranks of one machine instead of oversubscribing them.
            torch.set_num_threads(max(1, cpu_cores() // max(1, info.local_world_size)))

        self.store, self.train_arrays, self.val_arrays, self.test_arrays = _open_splits(cfg, info.world_size)
        self.class_names: list[str] = self.store.class_names
        # drop_last: every step sees a full global batch (batch norm needs > 1 drawing; DDP ranks stay
        # in step). The permutation changes every epoch, so no drawing is left out for good.
        self.train_loader = BatchLoader(self.train_arrays, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                        drop_last=True, rank=info.rank, world_size=info.world_size)
        self.eval_batch = max(cfg.batch_size, 512)

        # Model and optimisation state. Fresh runs seed everything from cfg.seed; ranks share the
        # initial weights (DDP also broadcasts them) but draw their own dropout and augmentation.
        torch.manual_seed(cfg.seed)
        # A resumed run rebuilds exactly the saved network, whatever the defaults are today.
        self.model_kwargs = dict(resume_ckpt["model_kwargs"]) if resume_ckpt is not None else cfg.model_kwargs()
        model = build_model(cfg.model, len(self.class_names), **self.model_kwargs)
        _check_batch(cfg, info.world_size, _uses_batch_norm(model))
        if info.world_size > 1 and self.device.type == "cuda" and _uses_batch_norm(model):
            # Statistics over the global batch (one all-gather per layer, cheap over NVLink/NCCL); the
            # state dict keeps BatchNorm's keys, so checkpoints load into the plain model.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # channels_last: oneDNN (CPU) and cuDNN (tensor cores) both run these convolutions faster.
        self.model = model.to(self.device, memory_format=torch.channels_last)
        torch.manual_seed(_seed_for(cfg.seed, info.rank, 1))
        self.aug_gen = torch.Generator(device=self.device)
        self.aug_gen.manual_seed(_seed_for(cfg.seed, info.rank, 2))
        self.optimizer = make_optimizer(cfg.optimizer, param_groups(self.model, cfg.weight_decay),
                                        cfg.lr, cfg.weight_decay)
        self.steps_per_epoch = len(self.train_loader)  # global steps: the same for any number of ranks
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg.schedule, self.steps_per_epoch * cfg.epochs))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

        # Progress of the run (all of it saved in last.pt).
        self.epoch = 0            # completed epochs
        self.step_in_epoch = 0    # > 0 only when resuming from a Ctrl-C inside an epoch
        self.partial: list[float] = [0.0, 0.0, 0.0, 0.0]  # loss sum, correct, count, seconds so far
        self.best_val = -1.0
        self.best_epoch = 0
        self.since_best = 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.finished = False
        if resume_ckpt is not None:
            self._restore(resume_ckpt)

    def _setup_run(self) -> None:
        """What the ranks settle together: the run's folders (rank 0 creates them) and the DDP wrapper."""
        info = self.info
        if self._resume_ckpt is not None:
            self.run_name = self._resume_ckpt["run_name"]
            self.art_dir = Path(self.cfg.resume).parent
        else:
            outcome: tuple[str, str | None] = ("", None)
            error = None
            if info.is_main:
                try:
                    outcome = (_reserve_run(self.cfg)[0], None)
                except QdkitError as e:
                    error, outcome = e, ("", str(e))
            self.run_name, message = broadcast_object(outcome, info)
            if message is not None:
                raise error or QdkitError(message)
            self.art_dir = Path(self.cfg.artifacts_dir) / self.run_name
        self._resume_ckpt = None  # not needed any more; it can be large
        self.log_dir = Path(self.cfg.runs_dir) / self.run_name
        self.cfg = replace(self.cfg, run_name=self.run_name)

        self.train_model: nn.Module = self.model
        if info.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.writer = None

    # ----------------------------------------------------------------- setup helpers

    def say(self, message: str) -> None:
        if self.info.is_main:
            self._log(message)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        progress = ckpt["progress"]
        self.epoch = int(ckpt["epoch"])
        self.step_in_epoch = int(progress["step_in_epoch"])
        # The partial sums of an interrupted epoch are global (all-reduced when saved): rank 0 carries
        # them on and the epoch's all-reduce adds the other ranks' new steps.
        loss_sum, correct, count, seconds = (float(v) for v in progress["partial"])
        self.partial = [loss_sum, correct, count, seconds] if self.info.is_main else [0.0, 0.0, 0.0, seconds]
        self.best_val = float(progress["best_val_accuracy"])
        self.best_epoch = int(progress["best_epoch"])
        self.since_best = int(progress["since_best"])
        self.history = [dict(h) for h in ckpt.get("history", [])]
        self.train_seconds = float(progress["train_seconds"])
        self.finished = bool(progress["finished"])
        rng, by_rank = ckpt["rng"], ckpt["rng"].get("by_rank")
        if by_rank is not None and len(by_rank) == self.info.world_size:
            rng = by_rank[self.info.rank]
        elif not self.info.is_main:
            # Resumed with another number of processes: the global batches continue exactly, a new
            # rank draws its dropout and augmentation from its own seed.
            torch.manual_seed(_seed_for(self.cfg.seed, self.info.rank, 1, self.epoch, self.step_in_epoch))
            self.aug_gen.manual_seed(_seed_for(self.cfg.seed, self.info.rank, 2, self.epoch, self.step_in_epoch))
            return
        _set_rng_state(rng, self.aug_gen, self.device)

    # ----------------------------------------------------------------- checkpoints and reports

    def _common(self) -> dict[str, Any]:
        cfg = asdict(self.cfg)
        return dict(model=self.model, model_name=self.cfg.model, model_kwargs=self.model_kwargs,
                    class_names=self.class_names, run_name=self.run_name, config=cfg,
                    augment=dict(AUGMENT) if self.cfg.augment else None, history=self.history)

    def _save_last(self) -> Path:
        rng = _rng_state(self.aug_gen, self.device)
        if self.info.active:  # every rank's RNG, so that a resumed DDP run draws the same numbers
            rng = {**rng, "by_rank": all_gather_object({k: v.cpu() for k, v in rng.items()}, self.info)}
        path = self.art_dir / "last.pt"
        if self.info.is_main:
            metrics = self.history[-1] if self.history else {}
            save_checkpoint(
                path, **self._common(), epoch=self.epoch, metrics=metrics,
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(), rng=rng,
                progress={"step_in_epoch": self.step_in_epoch, "partial": list(self.partial),
                          "best_val_accuracy": self.best_val, "best_epoch": self.best_epoch,
                          "since_best": self.since_best, "train_seconds": self.train_seconds,
                          "finished": self.finished},
            )
        return path

    def _save_best(self, metrics: dict[str, float]) -> None:
        if self.info.is_main:
            save_checkpoint(self.art_dir / "best.pt", **self._common(), epoch=self.epoch, metrics=metrics)

    def _write_csv(self) -> None:
        if not self.info.is_main or not self.history:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        with atomic_path(self.art_dir / "results.csv") as tmp:
            tmp.write_text(buf.getvalue())

    def _tb(self):
        if self.writer is None and self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # On resume, drop events logged after the checkpoint (an epoch that never got saved).
            purge = self.epoch + 1 if self.cfg.resume else None
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        return self.writer

    # ----------------------------------------------------------------- the loop

    def train_step(self, x: torch.Tensor, y: torch.Tensor, totals: torch.Tensor) -> None:
        """One optimizer step on a uint8 batch; adds (loss sum, correct, count) to `totals` on-device."""
        x = x.to(self.device, non_blocking=True).float()
        y = y.to(self.device, non_blocking=True)
        if self.cfg.augment:
            x = augment_batch(x, self.aug_gen)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.train_model(x)
            loss = self.criterion(logits.float(), y)
        objective = loss
        if self.info.active:
            # DDP averages the ranks' gradients with equal weight; weighting each rank's mean loss by
            # its share of the global batch makes that average the gradient of the global batch's mean
            # loss even when the batch does not split evenly (33 over 2 ranks: 16 and 17).
            objective = loss * (len(y) * self.info.world_size / self.cfg.batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        with torch.no_grad():
            totals[0] += loss.detach().double() * len(y)
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)

    def epoch_indices(self, epoch: int, start_step: int = 0) -> Iterator[np.ndarray]:
        """This rank's rows of the train split for each step of `epoch` from `start_step` on: its
        slice of each global batch of the epoch's shuffle (the same shuffle for any number of ranks)."""
        loader, bs = self.train_loader, self.cfg.batch_size
        loader.set_epoch(epoch)
        order = loader.global_order()
        for b in range(start_step, len(loader)):
            yield loader.shard(order[b * bs:(b + 1) * bs])

    def train_epoch(self, epoch: int, stop: _StopRequest | None = None) -> dict[str, float] | None:
        """Train one epoch (1-based `epoch`); the epoch's training metrics, or None if stopped."""
        cfg, info = self.cfg, self.info
        self.train_model.train()
        start_step = self.step_in_epoch
        totals = torch.tensor(self.partial[:3], dtype=torch.float64, device=self.device)
        seconds_before = self.partial[3]
        record = _ShardRecord.from_env(epoch, info.rank)
        indices = self.epoch_indices(epoch, start_step)  # a resumed epoch skips without reading
        batches = (fetch(self.train_arrays, idx if record is None else record.add(idx)) for idx in indices)
        pin = self.device.type == "cuda"
        global_batch = cfg.batch_size
        bar = None
        if cfg.progress and info.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch * global_batch, initial=start_step * global_batch,
                       desc=f"epoch {epoch}/{cfg.epochs}", unit="img", unit_scale=True, file=sys.stderr,
                       leave=False, dynamic_ncols=True, mininterval=0.5)
        t0 = time.perf_counter()
        step = start_step
        stopped = False
        try:
            for x, y in _prefetch(batches, cfg.workers, pin):
                self.train_step(x, y, totals)
                step += 1
                if bar is not None:
                    bar.update(global_batch)
                last = step == self.steps_per_epoch
                if step % SYNC_EVERY == 0 or last:
                    # A sync point, at the same step on every rank: one all-reduce agrees on the NaN
                    # check and on Ctrl-C, so all ranks stop together (or none waits forever).
                    diverged, stopping = any_flags(
                        [not bool(torch.isfinite(totals[0])), stop is not None and stop.requested],
                        info, self.device)
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
            if record is not None:
                record.save()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = seconds_before + time.perf_counter() - t0
        all_reduce_(totals, info)  # the whole (global) epoch so far
        if stopped:
            self.step_in_epoch = step
            self.partial = totals.tolist() + [seconds]
            return None
        loss_sum, correct, count = totals.tolist()
        self.step_in_epoch, self.partial = 0, [0.0, 0.0, 0.0, 0.0]
        return {"train_loss": loss_sum / count, "train_accuracy": correct / count,
                "img_per_s": count / seconds if seconds > 0 else float("nan"), "seconds": seconds}

    def _should_stop(self, stop: _StopRequest) -> bool:
        """At the end of an epoch: did Ctrl-C reach any rank? (All ranks ask together.)"""
        return any_flags([stop.requested], self.info, self.device)[0]

    def _diverged(self, epoch: int, step: int) -> None:
        kept = self.art_dir / "last.pt"
        keep = (f"the last good checkpoint is {kept} (epoch {self.epoch})" if kept.exists()
                else "no checkpoint was written")
        raise QdkitError(f"training diverged: the loss became NaN or infinite in epoch {epoch} (step {step}) "
                         f"with --lr {format_lr(self.cfg.lr)} --optimizer {self.cfg.optimizer}; "
                         f"try a lower --lr; {keep}")

    def fit(self) -> dict[str, Any]:
        try:
            if not self.finished:
                self._loop()
            return self._finish()
        finally:
            if self.writer is not None:
                self.writer.close()

    def _loop(self) -> None:
        cfg = self.cfg
        when = f"at the next sync point (within {SYNC_EVERY} steps)" if self.info.world_size > 1 else "after this step"
        with _StopRequest(self.say, when) as stop:  # from here on, Ctrl-C saves last.pt
            self._tb()
            where = str(self.device)
            if self.info.world_size > 1:
                where = f"{self.info.world_size} processes ({self.device.type}, DDP)"
            if self.epoch == 0 and self.step_in_epoch == 0:
                self.say(f"run {self.run_name}: {cfg.model} on {len(self.class_names)} classes, "
                         f"{len(self.train_arrays)} train / {len(self.val_arrays)} validation drawings; "
                         f"{self._precision_name()} on {where}; lr {format_lr(cfg.lr)}, batch {cfg.batch_size}, "
                         f"{cfg.epochs} epochs, {cfg.optimizer}, {cfg.schedule}")
            else:
                self.say(f"resuming {self.run_name} after epoch {self.epoch}"
                         + (f", step {self.step_in_epoch}" if self.step_in_epoch else "")
                         + (f" on {where}" if self.info.world_size > 1 else ""))
            while self.epoch < cfg.epochs:
                epoch = self.epoch + 1
                tm = self.train_epoch(epoch, stop)
                if tm is None:
                    self._interrupted(epoch)
                # Evaluation runs in float32 (cheap next to training): the numbers are those of the
                # exported model, whatever precision the training used. Under DDP every rank first
                # takes rank 0's batch-norm statistics: the model evaluated is the one saved.
                broadcast_buffers(self.model, self.info)
                val_loss, val_acc = evaluate(self.model, self.val_arrays, self.device, None, self.eval_batch,
                                             self.info)
                if not math.isfinite(val_loss):
                    self._diverged(epoch, self.steps_per_epoch)
                self.epoch = epoch
                self.train_seconds += tm["seconds"]
                row = {"epoch": epoch, "train_loss": tm["train_loss"], "train_accuracy": tm["train_accuracy"],
                       "val_loss": val_loss, "val_accuracy": val_acc,
                       "lr": self._epoch_lr(),
                       "img_per_s": tm["img_per_s"], "epoch_seconds": tm["seconds"]}
                self.history.append(row)
                improved = val_acc > self.best_val
                if improved:
                    self.best_val, self.best_epoch, self.since_best = val_acc, epoch, 0
                    self._save_best(row)
                else:
                    self.since_best += 1
                patience_hit = bool(cfg.patience) and self.since_best >= cfg.patience
                self.finished = epoch >= cfg.epochs or patience_hit
                self._save_last()
                self._write_csv()
                self._log_epoch(row, improved)
                if patience_hit and epoch < cfg.epochs:
                    self.say(f"early stop: no better validation accuracy for {cfg.patience} epochs "
                             f"(best {self.best_val:.2%} at epoch {self.best_epoch})")
                    break
                if self.epoch < cfg.epochs and self._should_stop(stop):
                    self._interrupted(epoch + 1, at_epoch_end=True)

    def _epoch_lr(self) -> float:
        """The learning rate at the end of the epoch (what the next step would use)."""
        return float(self.scheduler.get_last_lr()[0])

    def _precision_name(self) -> str:
        return {None: "float32", torch.bfloat16: "bfloat16 autocast",
                torch.float16: "float16 autocast + GradScaler"}[self.amp_dtype]

    def _log_epoch(self, row: dict[str, float], improved: bool) -> None:
        w = self._tb()
        e = int(row["epoch"])
        if w is not None:
            w.add_scalar("loss/train", row["train_loss"], e)
            w.add_scalar("loss/validation", row["val_loss"], e)
            w.add_scalar("accuracy/train", row["train_accuracy"], e)
            w.add_scalar("accuracy/validation", row["val_accuracy"], e)
            w.add_scalar("learning_rate", row["lr"], e)
            w.add_scalar("throughput/img_per_s", row["img_per_s"], e)
            w.flush()
        self.say(f"epoch {e:>3}/{self.cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}"
                 f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.2%}{' *' if improved else '  '}"
                 f"  lr {row['lr']:.2e}  {row['img_per_s']:.0f} img/s  {row['epoch_seconds']:.1f}s")

    def _interrupted(self, epoch: int, at_epoch_end: bool = False) -> None:
        path = self._save_last()
        if self.writer is not None:
            self.writer.flush()
        where = f"after epoch {self.epoch}" if at_epoch_end or self.step_in_epoch == 0 else \
            f"in epoch {epoch} at step {self.step_in_epoch}/{self.steps_per_epoch}"
        again = f"qdkit train --resume {path}"
        if self.info.world_size > 1:  # the same processes again (any number works; see _restore)
            again = (f"{again} --nproc {self.info.world_size}" if self.info.world_size == self.info.local_world_size
                     else f"{again} (under the same torchrun command)")
        raise TrainingInterrupted(f"interrupted {where}; saved {path}; resume with: {again}", path)

    def _finish(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        best_path = self.art_dir / "best.pt"
        test_loss = test_acc = None
        if self.test_arrays is not None:
            # Rank 0 reads best.pt (only it writes files; other machines may not see them) and hands
            # the weights to the others, which share the test split with it.
            state = load_checkpoint(best_path)["model_state"] if info.is_main else None
            best = build_model(cfg.model, len(self.class_names), **self.model_kwargs)
            best.load_state_dict(broadcast_object(state, info))
            test_loss, test_acc = evaluate(best.to(self.device).eval(), self.test_arrays, self.device, None,
                                           self.eval_batch, info)
        else:
            self.say(f"{cfg.data}: no test split; test_accuracy is null")
        metrics = {
            "run_name": self.run_name,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "best_val_accuracy": self.best_val,
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "epochs_planned": cfg.epochs,
            "train_seconds": round(self.train_seconds, 2),
            "model": cfg.model,
            "model_kwargs": self.model_kwargs,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "optimizer": cfg.optimizer,
            "weight_decay": cfg.weight_decay,
            "schedule": cfg.schedule,
            "label_smoothing": cfg.label_smoothing,
            "augment": cfg.augment,
            "seed": cfg.seed,
            "data": str(cfg.data),
            "classes": list(self.class_names),
            "device": str(self.device),
            "precision": self._precision_name(),
            "world_size": info.world_size,
            "best_checkpoint": str(best_path),
            "tensorboard": str(self.log_dir),
        }
        if info.is_main:
            with atomic_path(self.art_dir / "metrics.json") as tmp:
                tmp.write_text(json.dumps(metrics, indent=2) + "\n")
            w = self._tb()
            if test_acc is not None:
                w.add_scalar("accuracy/test", test_acc, self.epoch)
                w.add_scalar("loss/test", test_loss, self.epoch)
            hparams = {"model": cfg.model, "lr": cfg.lr, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                       "optimizer": cfg.optimizer, "schedule": cfg.schedule, "dropout": cfg.dropout,
                       "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing,
                       "augment": bool(cfg.augment), "seed": cfg.seed}
            hmetrics = {"hparam/best_val_accuracy": self.best_val}
            if test_acc is not None:
                hmetrics["hparam/test_accuracy"] = test_acc
            w.add_hparams(hparams, hmetrics, run_name=".")
            w.flush()
        return metrics


def train(config: TrainConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or resume) one run and return its metrics (also in artifacts/<run>/metrics.json).

    Started by torchrun (RANK/WORLD_SIZE set), it joins the process group for the run and leaves it
    at the end, whatever happens; every rank returns the same metrics.

    Raises QdkitError for bad input or divergence, TrainingInterrupted (a QdkitError) after Ctrl-C
    once last.pt is saved. Under DDP every rank raises the same error at the same point.
    """
    info = dist_info()
    device, _ = _pick_device(config.device, config.amp, info)  # NCCL or gloo
    with process_group(info, device):
        trainer = Trainer(config, log=log, info=info)
        try:
            return trainer.fit()
        finally:
            # The DDP wrapper's reducer holds the process group and gloo's threads: free it now, while
            # the group is alive, not at interpreter exit (where its destructor aborts the process).
            del trainer
            gc.collect()


def summary(metrics: dict[str, Any]) -> str:
    """A few human lines about a finished run."""
    test = "n/a" if metrics["test_accuracy"] is None else f"{metrics['test_accuracy']:.2%}"
    world = metrics.get("world_size", 1)
    where = metrics["device"] if world == 1 else f"{world} processes ({metrics['device'].split(':')[0]}, DDP)"
    return "\n".join([
        f"run        {metrics['run_name']}",
        f"model      {metrics['model']}  lr {format_lr(metrics['lr'])}  batch {metrics['batch_size']}  "
        f"{metrics['optimizer']}  {metrics['epochs']}/{metrics['epochs_planned']} epochs",
        f"accuracy   test {test}  (best validation {metrics['best_val_accuracy']:.2%} "
        f"at epoch {metrics['best_epoch']})",
        f"time       {metrics['train_seconds']:.0f}s training on {where} ({metrics['precision']})",
        f"saved      {Path(metrics['best_checkpoint']).parent}/ (best.pt, last.pt, results.csv, metrics.json); "
        f"TensorBoard: {metrics['tensorboard']}",
    ])
