"""The run plan: what a training run will do, decided and checked before anything trains.

`TrainConfig` is the user's request; `plan_run` turns it into a `RunPlan` — complete settings (the
model's recipe fills every None; a resumed run keeps its saved settings), the device and precision
of this process, the store's splits, and the checkpoint being resumed — or raises one QdkitError.
`check_run` makes the same checks for `qdkit train --nproc N` before any process starts, so bad
input is one line from one process. Nothing here creates a file.

Everything read from a checkpoint is checked as strictly as a command-line option: its settings,
its run name (a folder name), and that the store is the one the run was trained on.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from qdkit.checkpoint import load_checkpoint
from qdkit.constants import DEFAULT_STORE
from qdkit.errors import QdkitError
from qdkit.models import DEFAULT_MODEL, MODELS, model_class, recipe, uses_batch_norm
from qdkit.train.devices import check_devices
from qdkit.train.distributed import DistInfo
from qdkit.train.recipes import OPTIMIZERS, SCHEDULES
from qdkit.train.rundata import RunData, check_same_store, open_run_data, store_identity

DEFAULT_DATA = str(DEFAULT_STORE)
# Settings that define a run: a resumed run keeps them (passing a different value is an error).
RUN_SETTINGS = (
    "model",
    "lr",
    "batch_size",
    "epochs",
    "optimizer",
    "dropout",
    "weight_decay",
    "schedule",
    "label_smoothing",
    "augment",
    "seed",
)


@dataclass
class TrainConfig:
    """One training run. None = the model's recipe default (qdkit.models) or, on resume, the saved value."""

    data: str | None = None  # the HDF5 store [data/quickdraw.h5]
    model: str | None = None  # registry name in qdkit.models [qdnet]
    lr: float | None = None  # peak learning rate
    batch_size: int | None = None  # GLOBAL batch size (split across DDP ranks)
    epochs: int | None = None
    optimizer: str | None = None  # adamw | adam | sgd (momentum 0.9, nesterov)
    dropout: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None  # onecycle | cosine | constant (per step)
    label_smoothing: float | None = None
    augment: bool | None = None  # batched random affine (AUGMENT) on training batches
    seed: int | None = None  # model init, shuffling, augmentation [0]
    run_name: str | None = None  # default: YYYYmmdd-HHMMSS-<model>-lr<lr>-bs<batch>
    patience: int | None = None  # stop after N epochs without a better val accuracy; 0/None = off
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision where it pays (see choose_device)
    workers: int = 0  # 0 = batches read in-process; N = background thread, N batches ahead
    resume: str | None = None  # a last.pt to continue
    runs_dir: str | None = None  # TensorBoard logs: runs_dir/<run_name>/ [runs; on resume: the run's]
    artifacts_dir: str = "artifacts"  # checkpoints and reports: artifacts_dir/<run_name>/
    progress: bool = True  # tqdm bar per epoch on stderr

    def resolved(self) -> RunSettings:
        """A copy with every None filled from the model's recipe and the global defaults."""
        model = self.model or DEFAULT_MODEL
        if model not in MODELS:
            raise QdkitError(f"--model {model!r}: unknown model (choose from {', '.join(MODELS)})")
        defaults = recipe(model)
        values = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in defaults.items()}
        filled = replace(
            self,
            model=model,
            data=self.data or DEFAULT_DATA,
            runs_dir=self.runs_dir or "runs",
            seed=self.seed if self.seed is not None else 0,
            **values,
        )
        return RunSettings(**asdict(filled))


@dataclass
class RunSettings(TrainConfig):
    """A TrainConfig with every setting decided (`TrainConfig.resolved()`, or a resumed run's saved
    settings): what the trainer runs with. The placeholders below are never used."""

    data: str = ""
    model: str = ""
    lr: float = 0.0
    batch_size: int = 0
    epochs: int = 0
    optimizer: str = ""
    dropout: float = 0.0
    weight_decay: float = 0.0
    schedule: str = ""
    label_smoothing: float = 0.0
    augment: bool = False
    seed: int = 0
    runs_dir: str = "runs"

    def model_kwargs(self) -> dict[str, Any]:
        """Every constructor argument of the model (defaults spelled out), so a checkpoint rebuilds
        the same network even if a default changes later."""
        params = inspect.signature(model_class(self.model)).parameters
        kwargs = {
            k: p.default for k, p in params.items() if k != "num_classes" and p.default is not inspect.Parameter.empty
        }
        kwargs["dropout"] = float(self.dropout)
        return kwargs

    def validate(self) -> None:
        """Every setting of a resolved config, types included (a checkpoint's settings come here too)."""
        _check_types(self)
        checks = [
            (self.model in MODELS, f"--model {self.model!r}: unknown model (choose from {', '.join(MODELS)})"),
            (self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule {self.schedule!r}: choose from {', '.join(SCHEDULES)}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr {self.lr}: must be a positive number"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1"),
            (self.epochs >= 1, f"--epochs {self.epochs}: must be at least 1"),
            (0.0 <= self.dropout < 1.0, f"--dropout {self.dropout}: must be in [0, 1)"),
            (0.0 <= self.weight_decay < math.inf, f"--weight-decay {self.weight_decay}: must be >= 0"),
            (0.0 <= self.label_smoothing < 1.0, f"--label-smoothing {self.label_smoothing}: must be in [0, 1)"),
            (self.workers >= 0, f"--workers {self.workers}: must be >= 0"),
            ((self.patience or 0) >= 0, f"--patience {self.patience}: must be >= 0"),
            (0 <= self.seed < 2**63, f"--seed {self.seed}: must be in [0, 2**63)"),
        ]
        for ok, message in checks:
            if not ok:
                raise QdkitError(message)
        if self.run_name is not None:
            check_run_name(self.run_name)


_NUMBER, _INT, _TEXT = (int, float), (int,), (str,)
_TYPES: dict[str, tuple[type, ...]] = {
    "data": _TEXT,
    "model": _TEXT,
    "lr": _NUMBER,
    "batch_size": _INT,
    "epochs": _INT,
    "optimizer": _TEXT,
    "dropout": _NUMBER,
    "weight_decay": _NUMBER,
    "schedule": _TEXT,
    "label_smoothing": _NUMBER,
    "augment": (bool,),
    "seed": _INT,
    "device": _TEXT,
    "amp": (bool,),
    "workers": _INT,
    "runs_dir": _TEXT,
    "artifacts_dir": _TEXT,
    "progress": (bool,),
}
_OPTIONAL = {"run_name": _TEXT, "patience": _INT, "resume": _TEXT}


def _check_types(cfg: TrainConfig) -> None:
    for name, kinds in [*_TYPES.items(), *_OPTIONAL.items()]:
        value = getattr(cfg, name)
        if value is None and name in _OPTIONAL:
            continue
        is_bool = isinstance(value, bool)
        if not isinstance(value, kinds) or (is_bool and bool not in kinds):
            raise QdkitError(f"--{name.replace('_', '-')} {value!r}: expected {kinds[-1].__name__}")


# --------------------------------------------------------------------------- names

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def check_run_name(name: str) -> str:
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name) or len(name) > 200:
        raise QdkitError(f"--run-name {name!r}: use letters, digits and . _ - + = only (one folder name)")
    return name


def format_lr(lr: float) -> str:
    short = f"{lr:.0e}"
    return short if float(short) == lr else f"{lr:.2e}"


def default_run_name(cfg: RunSettings, now: datetime | None = None) -> str:
    """Unique enough and sortable: 20261124-142501-qdnet-lr1e-03-bs128."""
    now = now or datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{cfg.model}-lr{format_lr(cfg.lr)}-bs{cfg.batch_size}"


# --------------------------------------------------------------------------- run folders


def run_folders(cfg: RunSettings, name: str) -> tuple[Path, Path]:
    """(artifacts_dir/NAME, runs_dir/NAME): checkpoints and reports, TensorBoard."""
    return Path(cfg.artifacts_dir) / name, Path(cfg.runs_dir or "runs") / name


def check_run_folder_free(cfg: RunSettings, name: str) -> None:
    """A new run never reuses a folder; the message says how to go on from what is there."""
    art, log = run_folders(cfg, name)
    if art.exists() or log.exists():
        where = art if art.exists() else log
        last = art / "last.pt"
        hint = f"continue it with --resume {last}" if last.is_file() else "remove it (it holds no checkpoint)"
        raise QdkitError(f"{where}: run folder already exists; pick another --run-name or {hint}")


def check_batch(cfg: RunSettings, world_size: int, data: RunData) -> None:
    """A global batch must fit in the train split, and each process's slice of it must be trainable:
    at least one drawing, two with batch norm (it cannot normalise one value per channel)."""
    if cfg.batch_size > len(data.train):
        raise QdkitError(
            f"--batch-size {cfg.batch_size}: larger than the {len(data.train)} training drawings in {cfg.data}"
        )
    need = 2 if uses_batch_norm(cfg.model) else 1
    if cfg.batch_size // world_size >= need:
        return
    if world_size == 1:
        raise QdkitError(
            f"--batch-size {cfg.batch_size}: {cfg.model} uses batch norm, which needs at least 2 drawings per step"
        )
    raise QdkitError(
        f"--batch-size {cfg.batch_size}: too small for {world_size} processes (the batch size is "
        f"global, split across them; {cfg.model} needs at least {need} drawings per process, "
        f"so at least {need * world_size})"
    )


# --------------------------------------------------------------------------- resume


def load_resume(config: TrainConfig) -> tuple[dict[str, Any], RunSettings]:
    """(the checkpoint, the run's settings): the saved ones, with what may change on resume."""
    path = Path(config.resume or "")
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "config" not in ckpt:
        raise QdkitError(f"{path}: holds no training state (resume from the run's last.pt)")
    if not isinstance(ckpt["config"], dict):
        raise QdkitError(f"{path}: malformed saved settings ('config' is not a mapping)")
    known = {f.name for f in fields(TrainConfig)}
    try:
        raw = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
        _check_types(raw)  # every setting present, of its type
        saved = RunSettings(**asdict(raw))
        saved.validate()
        check_run_name(ckpt.get("run_name"))  # type: ignore[arg-type]
    except QdkitError as err:
        raise QdkitError(f"{path}: invalid saved setting: {err}") from err
    if saved.model != ckpt["model_name"]:
        raise QdkitError(f"{path}: saved settings name model {saved.model!r}, the weights are {ckpt['model_name']!r}")
    for key in RUN_SETTINGS:
        new, old = getattr(config, key), getattr(saved, key)
        if new is not None and new != old:
            raise QdkitError(
                f"--{key.replace('_', '-')} {new}: the run being resumed ({path}) used {old}; "
                "a resumed run keeps its settings"
            )
    if config.run_name is not None and config.run_name != ckpt["run_name"]:
        raise QdkitError(f"--run-name {config.run_name}: a resumed run keeps its name ({ckpt['run_name']})")
    cfg = replace(
        saved,
        data=config.data or saved.data,
        device=config.device,
        amp=config.amp,
        workers=config.workers,
        progress=config.progress,
        run_name=ckpt["run_name"],
        runs_dir=config.runs_dir or saved.runs_dir,
        artifacts_dir=str(path.parent.parent),
        resume=str(path),
        patience=config.patience if config.patience is not None else saved.patience,
    )
    return ckpt, cfg


# --------------------------------------------------------------------------- the plan


@dataclass
class RunPlan:
    """A checked run, ready to build: settings, this process's device, data, and resume point."""

    cfg: RunSettings
    device: torch.device
    amp_dtype: torch.dtype | None
    data: RunData
    model_kwargs: dict[str, Any]
    store_identity: dict[str, Any] | None  # recorded in checkpoints (rank 0), checked on resume
    resume: dict[str, Any] | None  # the checkpoint being continued
    info: DistInfo


def _checked(
    config: TrainConfig, world_size: int, identify: bool
) -> tuple[RunSettings, dict[str, Any] | None, RunData, dict[str, Any] | None]:
    """The checks every run makes, in the launcher and in each process alike. With `identify` (or on
    resume) also the store's identity (store_identity), else None."""
    ckpt = None
    if config.resume:
        ckpt, cfg = load_resume(config)
    else:
        cfg = config.resolved()
    cfg.validate()
    data = open_run_data(cfg)
    identity = store_identity(data) if identify or ckpt is not None else None
    if ckpt is not None and identity is not None:
        check_same_store(ckpt, identity, Path(cfg.resume or ""), str(cfg.data))
    check_batch(cfg, world_size, data)
    if ckpt is None and cfg.run_name is not None:
        check_run_folder_free(cfg, cfg.run_name)
    return cfg, ckpt, data, identity


def plan_run(config: TrainConfig, info: DistInfo, device: torch.device, amp_dtype: torch.dtype | None) -> RunPlan:
    """This process's plan for the run on `device` (from rank_device; raises QdkitError for anything wrong)."""
    cfg, ckpt, data, identity = _checked(config, info.world_size, identify=info.is_main)
    # A resumed run rebuilds exactly the saved network, whatever the defaults are today.
    kwargs = dict(ckpt["model_kwargs"]) if ckpt is not None else cfg.model_kwargs()
    return RunPlan(cfg, device, amp_dtype, data, kwargs, identity, ckpt, info)


def check_run(config: TrainConfig, world_size: int = 1) -> RunSettings:
    """Every check a run makes before it trains — settings, resume checkpoint, device, store, batch
    size, run folder — without training or creating anything. `qdkit train --nproc N` runs it once
    before starting N processes, so bad input is one line from one process. Returns the settings."""
    cfg = _checked(config, world_size, identify=False)[0]
    check_devices(cfg.device, cfg.amp, world_size)
    return cfg
