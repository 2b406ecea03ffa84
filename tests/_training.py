"""Shared by the training tests: a small CPU run's config, and a hook into the training loop through
torch's public global forward pre-hook (no qdkit internals patched)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from qdkit.models.nets import QDNet, SeedCNN
from qdkit.train import TrainConfig


def train_config(store: Path, root: Path, **settings: Any) -> TrainConfig:
    """A quiet float32 CPU run on `store` writing under `root`; `settings` add to or override it."""
    base: dict[str, Any] = dict(
        data=str(store),
        runs_dir=str(root / "runs"),
        artifacts_dir=str(root / "artifacts"),
        progress=False,
        device="cpu",
        amp=False,
    )
    return TrainConfig(**{**base, **settings})


@contextlib.contextmanager
def on_training_forward(action):
    """Call action(n, inputs) before the n-th training-mode forward of a qdkit model (1-based); what it
    returns (if not None) replaces the inputs."""
    count = {"n": 0}

    def hook(module, args):
        if isinstance(module, (QDNet, SeedCNN)) and module.training:
            count["n"] += 1
            return action(count["n"], args)
        return None

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
