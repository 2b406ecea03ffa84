"""The int8 graph itself: onnxruntime's static QDQ quantization of an fp32 qdkit model, and the
fix-ups and checks that make the result a qdkit model again (qdkit.deploy.quantize runs both and
gates the result)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from qdkit.errors import QdkitError, first_line
from qdkit.inference.onnxmodel import INPUT_NAME, check_graph

CALIBRATION_BATCH = 128


def quantize_graph(src: Path, cal: np.ndarray, method: str, graph_outputs: set[str]) -> Any:
    """Pre-process and statically quantize `src` (QDQ, per-channel int8 weights, uint8
    activations calibrated on `cal`), leaving the nodes that write graph outputs float."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(cal), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            s = next(self.batches, None)
            return None if s is None else {INPUT_NAME: cal[s : s + CALIBRATION_BATCH, None]}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    # No logging or stdout switches around this call: onnxruntime 1.32's quantizer is silent on
    # pre-processed qdkit models (checked: `qdkit export --int8` prints only qdkit's lines).
    with tempfile.TemporaryDirectory(prefix="qdkit-int8-") as tmp:
        pre, quantized = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(os.fspath(src), os.fspath(pre))
            # Node names after pre-processing: keep whatever writes `logits` / `probabilities` float.
            keep_float = [n.name for n in onnx.load(os.fspath(pre)).graph.node if set(n.output) & graph_outputs]
            quantize_static(
                os.fspath(pre),
                os.fspath(quantized),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=keep_float,
            )
            return onnx.load(os.fspath(quantized))
        except Exception as e:
            raise QdkitError(f"{src}: int8 quantization failed ({first_line(e)}); nothing written") from e


def _contract(model: Any) -> tuple[list, list]:
    return (
        [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input],
        [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output],
    )


def finish_graph(proto: Any, fp32: Any, src: Path, metadata: dict[str, str]) -> None:
    """Give the int8 graph the fp32 model's identity and `metadata`, and check it: onnx.checker and
    the same inputs and outputs as the fp32 model."""
    import onnx

    # quant_pre_process saves every domain onnxruntime knows (com.microsoft.nchwc, ...) as an opset
    # import; keep the ones a node uses, so other runtimes see the fp32 model's imports.
    used = {n.domain for n in proto.graph.node} | {""}
    kept = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    proto.producer_name, proto.producer_version = fp32.producer_name, fp32.producer_version
    proto.doc_string = fp32.doc_string + " (int8, static QDQ quantization)"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    check_graph(proto, src, "int8 graph")
    if _contract(proto) != _contract(fp32):
        raise QdkitError(
            f"{src}: the int8 graph changed the inputs/outputs {_contract(fp32)} -> {_contract(proto)}; nothing written"
        )
