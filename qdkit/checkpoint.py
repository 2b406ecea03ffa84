"""Self-contained checkpoints: saved atomically, loaded safely (weights_only), and enough to
rebuild the model alone — registry name, constructor arguments, class names, input contract."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdkit import __version__
from qdkit.files import atomic_path
from qdkit.errors import QdkitError, first_line
from qdkit.models import INPUT_SPEC, build_model

FORMAT = "qdkit-checkpoint/1"


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
        "qdkit_version": __version__,
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "class_names": list(class_names),
        "input": dict(INPUT_SPEC),
        "model_state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **extra,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load with weights_only=True (never unpickles code) and check it is a qdkit checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise QdkitError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise QdkitError(f"{path}: not a PyTorch checkpoint (not a torch.save archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise QdkitError(f"{path}: not a loadable PyTorch checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise QdkitError(f"{path}: not a qdkit checkpoint (no '{FORMAT}' format tag)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with the checkpoint's weights, checkpoint dict)."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(ckpt["model_name"], num_classes=len(ckpt["class_names"]), **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    return model.eval(), ckpt
