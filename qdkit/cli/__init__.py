"""The `qdkit` command: each subcommand parses its options and calls one library function.

Heavy imports (torch, onnxruntime, h5py) happen inside the commands, so `qdkit --help` is instant.
The commands live by area (data, training, deploy, serve); importing them registers them on `main`.
"""

from __future__ import annotations

from qdkit.cli import data, deploy, serve, training  # noqa: F401  (registers the commands)
from qdkit.cli.base import main

__all__ = ["main"]
