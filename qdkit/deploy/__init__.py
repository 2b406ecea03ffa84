"""From a checkpoint to what runs elsewhere: ONNX export behind a parity gate, int8 quantization,
a Triton model repository, evaluation (ONNX vs PyTorch) and the classification picture.

`compare` is the one parity check all gates share; `outputs` of qdkit.outputs decides what may be
replaced. May import: the foundations, qdkit.strokes, qdkit.data and qdkit.inference. Never train,
serve or the CLI.
"""

from __future__ import annotations

from qdkit._lazy import lazy_exports

__all__ = ["evaluate_model", "export_model", "export_models", "quantize_model", "visualize", "write_repository"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "evaluate_model": ".evaluate",
        "export_model": ".export",
        "export_models": ".export",
        "quantize_model": ".quantize",
        "visualize": ".visualize",
        "write_repository": ".triton",
    },
)
