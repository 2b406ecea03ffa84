"""The ONNX side of a qdkit model, shared by export, predict and evaluate: the contract's names,
the metadata parser, finding the newest exported model, and one well-configured onnxruntime session.

The contract (written by qdkit.export):
  input  `pixels`         uint8 (N, 1, 28, 28), 0 = background, 255 = ink (the model normalises)
  output `logits`         float32 (N, classes)
  output `probabilities`  float32 (N, classes), softmax of the logits
  metadata_props          format (METADATA_FORMAT), class_names (JSON list), input (JSON), ...;
                          an int8 model (qdkit.quantize) adds quantization (JSON)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import onnxruntime as ort

from qdkit.errors import QdkitError, first_line
from qdkit.files import newest_file

METADATA_FORMAT = "qdkit-onnx/1"
INPUT_NAME = "pixels"
# Least top-1 agreement of an int8 model: with its fp32 model at export (qdkit.quantize's gate),
# with PyTorch in evaluate. Parity to 1e-4 holds only for fp32 models.
INT8_MIN_AGREEMENT = 0.98


class QdkitWarning(UserWarning):
    """Something the user should know that does not stop the work (printed as one line by the CLI)."""


# ----------------------------------------------------------------------------- model discovery

def default_model_path() -> Path:
    """The newest exported model; an int8 one (model.int8.onnx, written after model.onnx by
    `qdkit export --int8`) only where there is no other: int8 is opt-in, via --model."""
    patterns, hint = ["artifacts/*/model.onnx", "artifacts/*/*.onnx"], "run `qdkit export` or pass --model"
    try:
        return newest_file(patterns, "exported model", hint, exclude=".int8.onnx")
    except QdkitError:
        return newest_file(patterns, "exported model", hint)


# ----------------------------------------------------------------------------- the session

def available_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU."""
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have] or have


def make_session(model: str | os.PathLike | bytes, threads: int | None = None,
                 providers: Sequence[str] | None = None, name: str | None = None,
                 spin: bool = True) -> ort.InferenceSession:
    """An onnxruntime session with full graph optimisation (conv/batch-norm/activation fusion and
    the blocked NCHWc conv layout, ~1.8x faster than the extended level on CPU) and `threads`
    intra-op threads (None: onnxruntime's default, one per physical core). `spin=False` stops idle
    worker threads from busy-waiting: right when other processes (the decoding pool) share the
    cores, where spinning threads steal the time the decoders need."""
    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3  # onnxruntime's own warnings would bypass our one-line messages
    label = name or (os.fspath(model) if not isinstance(model, bytes) else "model")
    if not isinstance(model, bytes):
        path = Path(model)
        if not path.is_file():
            raise QdkitError(f"{path}: no such model file")
        if path.stat().st_size == 0:
            raise QdkitError(f"{path}: empty file, not an ONNX model")
        model = os.fspath(path)
    try:
        return ort.InferenceSession(model, so, providers=list(providers or available_providers()))
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        reason = first_line(e, limit=1000)
        if "[ONNXRuntimeError]" in reason:
            reason = reason.split(":", 3)[-1].strip()
        raise QdkitError(f"{label}: not a usable ONNX model ({reason[:160]})") from None


def parse_metadata(props: dict[str, str]) -> dict[str, Any]:
    """qdkit's metadata_props (all strings in ONNX) -> typed values; {} for a foreign model."""
    if props.get("format") != METADATA_FORMAT:
        return {}
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key in ("class_names", "input", "outputs", "model_kwargs", "parity", "quantization"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        elif key in ("val_accuracy", "test_accuracy"):
            out[key] = float(value) if value not in ("", "null", "None") else None
        elif key in ("epoch", "opset"):
            out[key] = int(value) if value.lstrip("-").isdigit() else None
        else:
            out[key] = value
    return out


def is_quantized(metadata: dict[str, Any]) -> bool:
    """Whether parsed qdkit metadata describes a quantized (int8) model."""
    return isinstance(metadata.get("quantization"), dict)


def check_classes(owner: str | os.PathLike, class_names: Sequence[str], store_names: Sequence[str],
                  data: str | os.PathLike, same_names: bool = True) -> None:
    """Raise unless `owner` (a model or checkpoint) has as many classes as the store `data` and,
    with `same_names`, the same ones in the same order."""
    class_names, store_names = list(class_names), list(store_names)
    if len(class_names) != len(store_names):
        raise QdkitError(f"{owner}: the model has {len(class_names)} classes, the store {data} has {len(store_names)}")
    if same_names and class_names != store_names:
        raise QdkitError(f"{owner}: its classes ({', '.join(class_names[:5])}, ...) are not "
                         f"the store's ({', '.join(store_names[:5])}, ...) in the same order")


def check_graph(proto: Any, owner: str | os.PathLike, what: str) -> None:
    """onnx.checker's full check, as a one-line QdkitError naming `owner` and the graph (`what`)."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # the checker raises several types
        raise QdkitError(f"{owner}: the {what} fails onnx.checker ({first_line(e)})") from None
