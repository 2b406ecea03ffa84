"""The public face of each package: its `__all__` is pinned here, every name in it imports, and the
import paths users had before the packages keep working."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PUBLIC = {
    "qdkit": ["Predictor", "QdkitError", "__version__"],
    "qdkit.strokes": [
        "EPSILON", "MAX_POINTS", "MAX_RAW_COORD", "MAX_STROKES", "SIDE", "Drawing", "StrokeError",
        "binary_record_end", "pack_binary", "parse_drawing", "parse_ndjson_line", "parse_strokes", "rasterize",
        "rasterize_many", "read_binary", "simplified", "simplify", "to_bitmap",
    ],
    "qdkit.data": [
        "BatchLoader", "QuickDrawDataset", "Store", "StoreWriter", "convert", "download_classes", "find_class_files",
        "open_store", "render_files", "write_synth",
    ],
    "qdkit.train": [
        "EXIT_CRASH", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "SweepResult", "TrainConfig",
        "TrainingInterrupted", "check_run", "exit_code", "summary", "sweep", "train",
    ],
    "qdkit.inference": ["FileResults", "OnnxModel", "Prediction", "Predictor", "predict_files"],
    "qdkit.deploy": [
        "evaluate_model", "export_model", "export_models", "quantize_model", "visualize", "write_repository",
    ],
    "qdkit.serve": ["create_app", "serve"],
    "qdkit.models": [
        "DEFAULT_MODEL", "INPUT_SPEC", "MODELS", "ModelSpec", "Recipe", "build_model", "model_class", "recipe",
        "uses_batch_norm",
    ],
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_all_is_pinned_and_every_name_imports(package):
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(PUBLIC[package])
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_old_import_paths_keep_working():
    from qdkit import Predictor
    from qdkit.inference.predictor import Predictor as Inner
    from qdkit.predict import Predictor as Old
    from qdkit.serve import create_app  # noqa: F401

    assert Predictor is Inner is Old


def test_importing_qdkit_and_its_packages_loads_no_heavy_library():
    code = (
        "import sys, qdkit, qdkit.data, qdkit.train, qdkit.inference, qdkit.deploy, qdkit.serve, qdkit.models;"
        "import qdkit.cli;"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'h5py', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
