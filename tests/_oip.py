"""Shared by the Open Inference Protocol tests: a real `qdkit serve --grpc-port 0` process, the
third-party clients (a missing one the dev extra declares fails the run under CI=true, and is
skipped loudly elsewhere), and pixels with the Predictor's answers on them."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from _serving import Server, running_server

GRPC_PART = re.compile(r", gRPC at (\S+?):(\d+),")
ALLOWED_ORIGIN = "https://draw.example.org"


def need(module: str, extra: str = "dev", load: bool = True) -> ModuleType | None:
    """Import `module`, a test dependency of the `extra` extra of setup.cfg (load=False: only check
    that it is installed)."""
    try:
        if not load:
            if importlib.util.find_spec(module) is None:
                raise ImportError(f"no module named {module!r}")
            return None
        return importlib.import_module(module)
    except ImportError as e:
        message = f"{module} is not installed ({e}): pip install -e '.[{extra}]'"
        if os.environ.get("CI", "").lower() == "true":  # scripts/test.sh installs dev and kserve
            pytest.fail(f"{message} (scripts/test.sh installs it; CI must have it)")
        pytest.skip(f"THIRD-PARTY CLIENT TESTS NOT RUN: {message}")


def grpc_address(server: Server) -> str:
    match = GRPC_PART.search(server.first_line)
    assert match, server.first_line
    return f"{match.group(1)}:{match.group(2)}"


def http_address(server: Server) -> str:
    return server.url.removeprefix("http://").rstrip("/")


@contextlib.contextmanager
def oip_server(model: Path, *args: str) -> Iterator[Server]:
    with running_server(model, "--grpc-port", "0", "--cors-origin", ALLOWED_ORIGIN, *args) as server:
        yield server


def pixels(n: int, seed: int = 5) -> np.ndarray:
    """(n, 1, 28, 28) uint8: random bitmaps, an empty one and a full one."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, 1, 28, 28)).astype(np.uint8)
    out[0] = 0
    if n > 1:
        out[1] = 255
    return out


def classification(predictor, probs: np.ndarray, k: int) -> list[list[str]]:
    """Triton's classification strings for the top k of each row of probabilities."""
    names = predictor.class_names
    rows = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        rows.append([f"{float(row[i]):f}:{i}:{names[i]}" for i in order])
    return rows
