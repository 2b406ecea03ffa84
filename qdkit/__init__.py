"""qdkit: Quick, Draw! doodles from the raw data to a trained CNN, an ONNX model, batch inference
and a live service.

The stages are packages: qdkit.strokes (drawing → bitmap), qdkit.data, qdkit.train,
qdkit.inference, qdkit.deploy, qdkit.serve; qdkit.cli is the command line over them. This module
keeps the few names most users want, imported lazily (`import qdkit` never pays for onnxruntime).
"""

from __future__ import annotations

from qdkit._lazy import lazy_exports
from qdkit.constants import QDKIT_VERSION as __version__
from qdkit.errors import QdkitError

__all__ = ["Predictor", "QdkitError", "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, {"Predictor": ".inference.predictor"})
