"""Self-contained checkpoints: saved atomically, loaded safely (weights_only), and enough to
rebuild the model alone — registry name, constructor arguments, class names, input contract.

A checkpoint is trusted no more than user input. Before torch reads it, every member of the zip
archive is checked against its CRC-32 (torch's reader does not: a flipped byte inside a weight
record would load silently); torch then loads it with weights_only=True (no code is unpickled); and
the model fields are checked against the model they name — registry name, constructor arguments,
class names, and every weight's name and shape — so a bad file is one line naming it, never a
traceback from deep inside torch.
"""

from __future__ import annotations

import inspect
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdkit.constants import QDKIT_VERSION
from qdkit.errors import QdkitError, first_line
from qdkit.files import atomic_path, disk_full_is_error
from qdkit.models import INPUT_SPEC, MODELS, build_model, model_class

FORMAT = "qdkit-checkpoint/1"


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary sibling (removed if anything fails); the file
    appears complete or not at all. A full disk, or any other write error, is one line."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, disk_full_is_error(path):
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    except OSError as err:
        raise QdkitError(f"{path}: cannot write ({err.strerror or first_line(err)})") from err
    return path


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    model_name: str,
    model_kwargs: dict[str, Any],
    class_names: list[str],
    **extra: Any,
) -> Path:
    """Write a checkpoint atomically. `extra` (epoch, metrics, optimizer state, RNG state, ...) must
    hold only tensors, containers and primitives so that weights_only loading accepts it."""
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {
        "format": FORMAT,
        "qdkit_version": QDKIT_VERSION,
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "class_names": list(class_names),
        "input": dict(INPUT_SPEC),
        "model_state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **extra,
    }
    # Serialised in memory, written by Python: a full disk is an OSError with its errno (torch's own
    # file writer reports it as a RuntimeError with no errno).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_atomic(path, buffer.getvalue())


def verify_archive(path: Path) -> None:
    """Every member of the zip archive torch.save wrote matches its CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise QdkitError(f"{path}: damaged checkpoint archive ({first_line(err)})") from err
    if bad is not None:
        raise QdkitError(
            f"{path}: damaged checkpoint: {bad.split('/', 1)[-1]} fails its CRC-32 check "
            "(the file was corrupted on disk or in transfer)"
        )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Verify, load with weights_only=True (never unpickles code) and check it is a qdkit checkpoint
    whose model fields rebuild the model they name."""
    path = Path(path)
    if not path.is_file():
        raise QdkitError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise QdkitError(f"{path}: not a PyTorch checkpoint (not a torch.save archive)")
    verify_archive(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            raise QdkitError(
                f"{path}: holds Python code or objects, not only weights and plain values; "
                "qdkit will not load it (loading would run code from the file)"
            ) from err
        raise QdkitError(f"{path}: not a loadable PyTorch checkpoint ({first_line(err)})") from err
    except Exception as err:  # torch raises many types for a bad file
        raise QdkitError(f"{path}: not a loadable PyTorch checkpoint ({first_line(err)})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise QdkitError(f"{path}: not a qdkit checkpoint (no '{FORMAT}' format tag)")
    _check_model_fields(ckpt, path)
    return ckpt


def _check_model_fields(ckpt: dict[str, Any], path: Path) -> None:
    name, kwargs, classes, state = (ckpt.get(k) for k in ("model_name", "model_kwargs", "class_names", "model_state"))
    if not isinstance(name, str) or name not in MODELS:
        raise QdkitError(f"{path}: unknown model {name!r} (qdkit knows {', '.join(MODELS)})")
    params = {k for k in inspect.signature(model_class(name)).parameters if k != "num_classes"}
    if not isinstance(kwargs, dict) or not all(
        k in params and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in kwargs.items()
    ):
        raise QdkitError(
            f"{path}: malformed model_kwargs for {name} (expected numbers for {', '.join(sorted(params))})"
        )
    if (
        not isinstance(classes, list)
        or len(classes) < 1
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise QdkitError(f"{path}: malformed class_names (expected a list of distinct names)")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise QdkitError(f"{path}: malformed model_state (expected named tensors)")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            expected = build_model(name, num_classes=len(classes), **kwargs).state_dict()
    except (TypeError, ValueError, RuntimeError) as err:
        raise QdkitError(f"{path}: model_kwargs do not build {name} ({first_line(err)})") from err
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise QdkitError(f"{path}: weights do not match {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in expected.items():
        if state[key].shape != value.shape or state[key].dtype.is_floating_point != value.dtype.is_floating_point:
            raise QdkitError(
                f"{path}: weight {key} is {tuple(state[key].shape)} {state[key].dtype}, "
                f"{name} with {len(classes)} classes needs {tuple(value.shape)}"
            )


def model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with the checkpoint's weights, checkpoint dict from load_checkpoint)."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(ckpt["model_name"], num_classes=len(ckpt["class_names"]), **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    return model.eval(), ckpt
