"""An exported fp32 ONNX model -> an int8 one (`qdkit export --int8`), accepted only if it agrees
with the fp32 model on held-out drawings.

Static post-training quantization with onnxruntime.quantization, QDQ format: per-channel int8
weights, uint8 activations whose ranges come from calibration drawings (a seeded sample of the
store's train split). The contract does not change: uint8 `pixels` in, float32 `logits` and
`probabilities` out, the fp32 model's metadata_props plus `quantization` (JSON: how it was made and
the gate's figures). PyTorch parity at |Δprobability| <= 1e-4 holds only for the fp32 model; the
int8 model's own gate is top-1 agreement with the fp32 model (default >= 98%) on drawings it was not
calibrated on — the store's validation split where it has one.

Why these choices (calibration method, per-channel weights, pre-processing, float output
nodes): docs/int8.md, with the measurements behind each.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdkit.constants import DEFAULT_STORE, SIDE
from qdkit.deploy.compare import Parity
from qdkit.errors import QdkitError, first_line
from qdkit.files import atomic_path, sha256_file
from qdkit.inference.onnxmodel import (
    INPUT_NAME,
    INT8_MIN_AGREEMENT,
    OUTPUT_NAMES,
    check_classes,
    check_graph,
    is_qdkit_model,
    is_quantized,
    make_session,
    parse_metadata,
)
from qdkit.outputs import output_file

QUANTIZATION_TYPE = "int8-static-qdq"
MIN_AGREEMENT = INT8_MIN_AGREEMENT  # top-1 agreement int8 vs fp32 on held-out drawings; read at call time
CALIBRATION_DRAWINGS = 1024
GATE_DRAWINGS = 2048  # held-out drawings for the gate, at most: ±0.2% standard error at 99%
CALIBRATION_BATCH = 128
METHODS = ("minmax", "percentile", "entropy")
# The weights: int8 per channel with 7-bit range (reduce_range). Full 8-bit int8 weights agree on a
# CPU with VNNI but saturate the u8 x s8 int16 pair sums of AVX2's vpmaddubsw on one without (87.1%
# agreement measured there); 7-bit weights cannot (255 * 64 * 2 < 2^15), so the same file holds the
# gate on every x86-64 CPU onnxruntime runs on. docs/int8.md has the numbers.
SETTINGS: dict[str, Any] = {"weight_type": "int8", "reduce_range": True, "per_channel": True}


@dataclass
class QuantizeReport:
    path: Path
    source: Path
    metadata: dict[str, str]
    agreement: float
    gate_drawings: int
    gate_split: str
    min_agreement: float
    calibration_drawings: int
    fp32_accuracy: float | None
    int8_accuracy: float | None
    max_abs_prob_delta: float
    fp32_bytes: int
    int8_bytes: int
    seconds: float

    def summary(self) -> str:
        """One line: where, how big, how well it agrees."""
        acc = (
            f", accuracy {self.int8_accuracy:.2%} vs {self.fp32_accuracy:.2%} fp32"
            if self.int8_accuracy is not None and self.fp32_accuracy is not None
            else ""
        )
        return (
            f"int8 -> {self.path} ({self.int8_bytes / 2**20:.2f} MiB vs {self.fp32_bytes / 2**20:.2f} MiB fp32): "
            f"top-1 agreement with fp32 {self.agreement:.2%} on {self.gate_drawings} {self.gate_split} drawings "
            f"(need >= {self.min_agreement:.2%}){acc}; calibrated on {self.calibration_drawings} train drawings; "
            f"{self.seconds:.1f} s"
        )


def int8_path(fp32_path: str | os.PathLike) -> Path:
    """model.onnx -> model.int8.onnx (any other name: NAME.int8.onnx) in the same folder."""
    p = Path(fp32_path)
    return p.with_name((p.stem if p.suffix == ".onnx" else p.name) + ".int8.onnx")


def default_store(checkpoint: str | os.PathLike) -> Path:
    """The store the checkpoint's run was trained on (metrics.json "data" beside it), else
    data/quickdraw.h5: calibration drawings should come from the training distribution."""
    side = Path(checkpoint).parent / "metrics.json"
    try:
        data = json.loads(side.read_text()).get("data") if side.is_file() else None
    except (OSError, ValueError, AttributeError):
        data = None
    return Path(data) if isinstance(data, str) and data else DEFAULT_STORE


def open_calibration_store(data: str | os.PathLike, class_names: list[str] | None = None, owner: str = "the model"):
    """Open the store for calibration and check it fits `owner` (a model or checkpoint path): a
    non-empty train split and, when given, the same classes in the same order. Cheap: run it
    before writing anything."""
    from qdkit.data.store import open_store

    store = open_store(data)
    if store.counts.get("train", 0) == 0:
        raise QdkitError(f"{data}: no train drawings to calibrate the int8 model on")
    if class_names is not None:
        check_classes(owner, class_names, store.class_names, data)
    return store


def _sample(n_total: int, n: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Sorted row indices (sorted: one fancy index over the memory-map reads in order)."""
    rows = np.arange(n_total) if exclude is None else np.setdiff1d(np.arange(n_total), exclude)
    if len(rows) <= n:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def store_drawings(
    store, calibration: int = CALIBRATION_DRAWINGS, gate: int = GATE_DRAWINGS, seed: int = 0
) -> tuple[np.ndarray, str, np.ndarray, np.ndarray]:
    """(calibration drawings, gate split name, gate drawings, gate labels), all seeded: calibration
    from the train split; the gate from validation, else test, else train rows not calibrated on."""
    train = store.split("train")
    cal_rows = _sample(len(train), calibration, seed)
    cal = np.asarray(train.images[cal_rows])
    for name in ("validation", "test"):
        if store.counts.get(name, 0) > 0:
            split = store.split(name)
            rows = _sample(len(split), gate, seed + 1)
            return cal, name, np.asarray(split.images[rows]), np.asarray(split.labels[rows])
    rows = _sample(len(train), gate, seed + 1, exclude=cal_rows)
    if len(rows) == 0:
        raise QdkitError(
            f"{store.path}: no drawings left for the int8 gate (no validation or test split, "
            "and every train drawing calibrates)"
        )
    return cal, "train (not calibrated on)", np.asarray(train.images[rows]), np.asarray(train.labels[rows])


def _run(session: Any, x: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    outs = [session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[s : s + batch, None]}) for s in range(0, len(x), batch)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _check_drawings(what: str, a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[1:] != (SIDE, SIDE) or len(a) == 0:
        raise QdkitError(f"{what} drawings: expected a non-empty (N, 28, 28) uint8 array, got {a.shape} {a.dtype}")
    return a


def _load_fp32(src: Path) -> tuple[Any, dict[str, str]]:
    """The fp32 qdkit model and its metadata props; refuses foreign and already quantized models."""
    import onnx

    if not src.is_file():
        raise QdkitError(f"{src}: no such model file")
    try:
        fp32 = onnx.load(os.fspath(src))
    except Exception as e:
        raise QdkitError(f"{src}: not an ONNX model ({first_line(e)})") from e
    props = {p.key: p.value for p in fp32.metadata_props}
    meta = parse_metadata(props)
    if not meta:
        raise QdkitError(f"{src}: no qdkit metadata; only models from `qdkit export` are quantized")
    if is_quantized(meta):
        raise QdkitError(f"{src}: already quantized")
    return fp32, props


def _quantize_graph(
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


def _contract(model: Any) -> tuple[list, list]:
    return (
        [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input],
        [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output],
    )


def _finish_graph(proto: Any, fp32: Any, src: Path, metadata: dict[str, str]) -> None:
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


def _gate(
    src: Path,
    proto: Any,
    out: Path,
    held: np.ndarray,
    gate_labels: np.ndarray | None,
    gate_split: str,
    min_agreement: float,
    threads: int | None,
) -> dict[str, Any]:
    """The same held-out drawings through both models: the gate's figures, or a QdkitError when
    the int8 outputs are not sane or agree with fp32 on too few drawings."""
    cpu = ["CPUExecutionProvider"]
    f_logits, f_probs = _run(make_session(src, threads=threads, providers=cpu), held)
    q_logits, q_probs = _run(
        make_session(proto.SerializeToString(), threads=threads, providers=cpu, name=str(out)), held
    )
    parity = Parity()
    parity.add(f_logits, f_probs, q_logits, q_probs)
    agreement = parity.agreement
    if not parity.sane:
        raise QdkitError(
            f"{src}: the int8 model's outputs are not sane on {len(held)} {gate_split} drawings "
            f"(non-finite, or probabilities that do not sum to 1); nothing written"
        )
    if not agreement >= min_agreement:
        raise QdkitError(
            f"{src}: the int8 model agrees with fp32 on only {agreement:.2%} of {len(held)} "
            f"{gate_split} drawings (need >= {min_agreement:.2%}) on this CPU ({cpu_summary()}); nothing "
            "written: deploy the fp32 model, calibrate on a larger or more representative store (--data), "
            "or accept the loss with --int8-min-agreement"
        )

    def accuracy(logits: np.ndarray) -> float | None:
        return None if gate_labels is None else float((logits.argmax(1) == np.asarray(gate_labels)).mean())

    return {
        "gate_split": gate_split,
        "gate_drawings": int(len(held)),
        "agreement": agreement,
        "min_agreement": min_agreement,
        "max_abs_prob_delta": parity.max_abs_prob_delta,
        "fp32_accuracy": accuracy(f_logits),
        "int8_accuracy": accuracy(q_logits),
    }


def quantize_model(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike | None,
    calibration: np.ndarray,
    *,
    gate: np.ndarray,
    gate_labels: np.ndarray | None = None,
    gate_split: str = "held-out",
    min_agreement: float | None = None,
    method: str = "minmax",
    threads: int | None = None,
    extra_metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> QuantizeReport:
    """Quantize the qdkit model `fp32_onnx` to `out` (default: model.int8.onnx beside it),
    calibrated on `calibration` (N, 28, 28) uint8 drawings; raise QdkitError, writing nothing, if
    top-1 agreement with the fp32 model on `gate` drawings is below `min_agreement` (default
    MIN_AGREEMENT, read at call time) or the outputs are not sane."""
    import onnx
    import onnxruntime

    t0 = time.perf_counter()
    src = Path(fp32_onnx)
    out = output_file(
        out if out is not None else int8_path(src), "int8 .onnx model", overwrite=overwrite, ours=is_qdkit_model
    )
    min_agreement = MIN_AGREEMENT if min_agreement is None else float(min_agreement)
    if method not in METHODS:
        raise QdkitError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    if out.resolve() == src.resolve():
        raise QdkitError(f"{out}: the int8 model would replace the fp32 model it is made from")
    cal, held = _check_drawings("calibration", calibration), _check_drawings("gate", gate)
    fp32, props = _load_fp32(src)
    proto = _quantize_graph(src, cal, method, {o.name for o in fp32.graph.output})
    bits = 7 if SETTINGS["reduce_range"] else 8
    quant: dict[str, Any] = {
        "type": QUANTIZATION_TYPE,
        "weights": f"{SETTINGS['weight_type']}, {'per channel' if SETTINGS['per_channel'] else 'per tensor'}, "
        f"symmetric, {bits}-bit range",
        "settings": dict(SETTINGS),
        "activations": "uint8, per tensor",
        "calibrate_method": method,
        "calibration_drawings": int(len(cal)),
        **(extra_metadata or {}),
        "source_model": src.name,
        "source_sha256": sha256_file(src),
        "onnxruntime_version": onnxruntime.__version__,
        # what the gate ran on: int8 results depend on the CPU's kernels (VNNI or not)
        "gated_on": {"machine": cpu_summary(), "cpu_flags": cpu_flags(), "onnxruntime": onnxruntime.__version__},
        "quantized_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # Every metadata prop of the fp32 model (class names, input convention, checkpoint, its PyTorch
    # parity), so predict/evaluate read the int8 model the same way.
    _finish_graph(proto, fp32, src, {**props, "quantization": json.dumps(quant)})
    quant.update(_gate(src, proto, out, held, gate_labels, gate_split, min_agreement, threads))
    new_meta = {**props, "quantization": json.dumps(quant)}
    onnx.helper.set_model_props(proto, new_meta)
    with atomic_path(out) as tmp_out:
        onnx.save(proto, os.fspath(tmp_out))
    return QuantizeReport(
        out,
        src,
        new_meta,
        quant["agreement"],
        int(len(held)),
        gate_split,
        min_agreement,
        int(len(cal)),
        quant["fp32_accuracy"],
        quant["int8_accuracy"],
        quant["max_abs_prob_delta"],
        src.stat().st_size,
        out.stat().st_size,
        time.perf_counter() - t0,
    )


def quantize_from_store(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike | None,
    data: str | os.PathLike,
    *,
    calibration: int = CALIBRATION_DRAWINGS,
    gate: int = GATE_DRAWINGS,
    seed: int = 0,
    min_agreement: float | None = None,
    threads: int | None = None,
    warn: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> QuantizeReport:
    """`quantize_model` with calibration and gate drawings from the store `data` (see store_drawings)."""
    import onnx

    src = Path(fp32_onnx)
    try:
        props = {p.key: p.value for p in onnx.load(os.fspath(src), load_external_data=False).metadata_props}
    except FileNotFoundError as e:
        raise QdkitError(f"{src}: no such model file") from e
    except Exception as e:
        raise QdkitError(f"{src}: not an ONNX model ({first_line(e)})") from e
    names = parse_metadata(props).get("class_names")
    store = open_calibration_store(data, names if isinstance(names, list) else None, str(src))
    cal, split, held, labels = store_drawings(store, calibration, gate, seed)
    if warn and len(cal) < min(calibration, 256):
        warn(f"{data}: only {len(cal)} train drawings to calibrate on")
    return quantize_model(
        src,
        out,
        cal,
        gate=held,
        gate_labels=labels,
        gate_split=split,
        min_agreement=min_agreement,
        threads=threads,
        extra_metadata={"calibration_split": "train", "seed": seed, "store": str(data)},
        overwrite=overwrite,
    )
