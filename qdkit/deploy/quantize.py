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
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdkit.constants import DEFAULT_STORE, SIDE
from qdkit.deploy.compare import Parity
from qdkit.deploy.int8graph import (  # noqa: F401  (CALIBRATION_BATCH: its old home)
    CALIBRATION_BATCH,
    SETTINGS,
    cpu_flags,
    cpu_summary,
    finish_graph,
    quantize_graph,
)
from qdkit.errors import QdkitError, first_line
from qdkit.files import atomic_path
from qdkit.inference.onnxmodel import (
    INPUT_NAME,
    INT8_MIN_AGREEMENT,
    OUTPUT_NAMES,
    check_classes,
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
METHODS = ("minmax", "percentile", "entropy")


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


def _load_fp32(src: Path) -> tuple[Any, dict[str, str], bytes]:
    """The fp32 qdkit model, its metadata props and its bytes (read once: they are also hashed, run
    and measured); refuses foreign and already quantized models."""
    import onnx

    if not src.is_file():
        raise QdkitError(f"{src}: no such model file")
    try:
        data = src.read_bytes()
        fp32 = onnx.load_from_string(data)
    except Exception as e:
        raise QdkitError(f"{src}: not an ONNX model ({first_line(e)})") from e
    props = {p.key: p.value for p in fp32.metadata_props}
    meta = parse_metadata(props)
    if not meta:
        raise QdkitError(f"{src}: no qdkit metadata; only models from `qdkit export` are quantized")
    if is_quantized(meta):
        raise QdkitError(f"{src}: already quantized")
    return fp32, props, data


def _gate(
    src: Path,
    fp32_bytes: bytes,
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
    f_logits, f_probs = _run(make_session(fp32_bytes, threads=threads, providers=cpu, name=str(src)), held)
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
    fp32, props, fp32_bytes = _load_fp32(src)
    proto = quantize_graph(src, cal, method, {o.name for o in fp32.graph.output})
    quant = _quantization_facts(src, fp32_bytes, method, len(cal), extra_metadata)
    # Every metadata prop of the fp32 model (class names, input convention, checkpoint, its PyTorch
    # parity), so predict/evaluate read the int8 model the same way.
    finish_graph(proto, fp32, src, {**props, "quantization": json.dumps(quant)})
    quant.update(_gate(src, fp32_bytes, proto, out, held, gate_labels, gate_split, min_agreement, threads))
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
        len(fp32_bytes),
        out.stat().st_size,
        time.perf_counter() - t0,
    )


def _quantization_facts(
    src: Path, fp32_bytes: bytes, method: str, calibration_drawings: int, extra: dict[str, Any] | None
) -> dict[str, Any]:
    """The `quantization` metadata prop before the gate adds its figures: how the model was made."""
    import onnxruntime

    return {
        "type": QUANTIZATION_TYPE,
        "weights": f"{SETTINGS['weight_type']}, {'per channel' if SETTINGS['per_channel'] else 'per tensor'}, "
        f"symmetric, {7 if SETTINGS['reduce_range'] else 8}-bit range",
        "settings": dict(SETTINGS),
        "activations": "uint8, per tensor",
        "calibrate_method": method,
        "calibration_drawings": int(calibration_drawings),
        **(extra or {}),
        "source_model": src.name,
        "source_sha256": hashlib.sha256(fp32_bytes).hexdigest(),
        "onnxruntime_version": onnxruntime.__version__,
        # what the gate ran on: int8 results depend on the CPU's kernels (VNNI or not)
        "gated_on": {"machine": cpu_summary(), "cpu_flags": cpu_flags(), "onnxruntime": onnxruntime.__version__},
        "quantized_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


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
