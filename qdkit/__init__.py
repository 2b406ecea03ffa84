"""qdkit: Quick, Draw! doodles from numpy bitmaps to a trained CNN, an ONNX model and batch inference."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Predictor", "QdkitError", "__version__"]

from qdkit.errors import QdkitError


def __getattr__(name: str):
    # Lazy so `import qdkit` (and `qdkit --help`) never pays for onnxruntime.
    if name == "Predictor":
        from qdkit.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'qdkit' has no attribute {name!r}")
