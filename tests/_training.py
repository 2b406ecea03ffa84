"""Shared by the training tests: a hook into the training loop through torch's public global
forward pre-hook (no qdkit internals patched)."""

from __future__ import annotations

import contextlib

import torch

from qdkit.models import MODELS


@contextlib.contextmanager
def on_training_forward(action):
    """Call action(n, inputs) before the n-th training-mode forward of a qdkit model (1-based); what it
    returns (if not None) replaces the inputs."""
    count = {"n": 0}

    def hook(module, args):
        if isinstance(module, tuple(MODELS.values())) and module.training:
            count["n"] += 1
            return action(count["n"], args)
        return None

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
