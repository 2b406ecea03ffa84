"""Inference on ONNX models: the ONNX contract (input and output names, metadata), one tuned
onnxruntime session (`OnnxModel`), `Predictor` for any drawing-like input, the Open Inference
Protocol's facts (`v2spec`) and the batch path over files (`predict_files`).

May import: the foundations, qdkit.strokes and qdkit.data (to read stroke files). Never train,
deploy, serve or the CLI.
"""

from __future__ import annotations

from qdkit._lazy import lazy_exports

__all__ = ["FileResults", "OnnxModel", "Prediction", "Predictor", "predict_files"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "OnnxModel": ".onnxmodel",
        "Prediction": ".predictor",
        "Predictor": ".predictor",
        "FileResults": ".batch",
        "predict_files": ".batch",
    },
)
