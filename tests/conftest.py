"""Shared fixtures: small synthetic Quick Draw data, converted once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

CLASSES = 4
PER_CLASS = {"train": 200, "validation": 50, "test": 50}


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory) -> Path:
    """Synthetic official-format files: 4 classes x 320 drawings."""
    from qdkit.data.synth import write_synth

    out = tmp_path_factory.mktemp("raw")
    write_synth(out, num_classes=CLASSES, per_class=320, seed=0)
    return out


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory, raw_dir) -> Path:
    from qdkit.data.convert import convert

    out = tmp_path_factory.mktemp("converted")
    convert(raw_dir, out, h5=True, png=True, per_class=PER_CLASS, seed=0, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def store_path(converted_dir) -> Path:
    """An HDF5 store: 4 classes, 200 / 50 / 50 drawings per class."""
    return converted_dir / "quickdraw.h5"


@pytest.fixture(scope="session")
def png_dir(converted_dir) -> Path:
    """The PNG tree png/{train,validation,test}/<class>/<source row>.png of the same split."""
    return converted_dir / "png"


@pytest.fixture(scope="session")
def model_path(tmp_path_factory, store_path) -> Path:
    """A small trained qdnet exported to ONNX (the serve tests' model)."""
    from _helpers import exported

    return exported(tmp_path_factory, store_path)[1]


@pytest.fixture(scope="session")
def predictor(model_path):
    from qdkit.inference.predictor import Predictor

    return Predictor(model_path, threads=1)
