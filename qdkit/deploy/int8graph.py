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
# The weights: int8 per channel with 7-bit range (reduce_range). Full 8-bit int8 weights agree on a
# CPU with VNNI but saturate the u8 x s8 int16 pair sums of AVX2's vpmaddubsw on one without (87.1%
# agreement measured there); 7-bit weights cannot (255 * 64 * 2 < 2^15), so the same file holds the
# gate on every x86-64 CPU onnxruntime runs on. docs/int8.md has the numbers.
SETTINGS: dict[str, Any] = {"weight_type": "int8", "reduce_range": True, "per_channel": True}
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimddp", "i8mm")


def cpu_flags() -> list[str]:
    """The CPU features onnxruntime's int8 kernels choose between (x86 VNNI/AMX, Arm dot product), as
    /proc/cpuinfo names them; empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in _CPU_FLAGS if flag in have]
    except OSError:
        pass
    return []


def cpu_summary() -> str:
    import platform

    flags = cpu_flags()
    return f"{platform.machine()}, {' '.join(flags) if flags else 'no int8 dot-product flags known'}"


def quantize_graph(
    src: Path, cal: np.ndarray, method: str, graph_outputs: set[str], settings: dict[str, Any] | None = None
) -> Any:
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

    settings = SETTINGS if settings is None else settings
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
                per_channel=bool(settings["per_channel"]),
                reduce_range=bool(settings["reduce_range"]),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8 if settings["weight_type"] == "int8" else QuantType.QUInt8,
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
