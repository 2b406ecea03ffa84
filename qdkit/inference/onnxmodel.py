"""The ONNX side of a qdkit model, shared by export, predict, evaluate and visualize: the contract's
names, the metadata parser, finding the newest exported model, one well-configured onnxruntime
session, and `OnnxModel` — a session checked against the contract that runs (N, 28, 28) uint8
drawings in batches.

The contract (written by qdkit.deploy.export):
  input  `pixels`         uint8 (N, 1, 28, 28), 0 = background, 255 = ink (the model normalises)
  output `logits`         float32 (N, classes)
  output `probabilities`  float32 (N, classes), softmax of the logits
  metadata_props          format (METADATA_FORMAT), class_names (JSON list), input (JSON), ...;
                          an int8 model (qdkit.deploy.quantize) adds quantization (JSON)
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from qdkit.constants import SIDE
from qdkit.errors import QdkitError, first_line
from qdkit.files import newest_file

METADATA_FORMAT = "qdkit-onnx/1"
INPUT_NAME = "pixels"
LOGITS, PROBABILITIES = "logits", "probabilities"
OUTPUT_NAMES = (LOGITS, PROBABILITIES)  # float32 (N, classes) each, in this order
_OUTPUT_DOCS = {
    LOGITS: "float32 (N, classes), unnormalised scores",
    PROBABILITIES: "float32 (N, classes), softmax of logits",
}
# Least top-1 agreement of an int8 model: with its fp32 model at export (qdkit.deploy.quantize's gate),
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


def check_model_file(model: str | os.PathLike) -> Path:
    """`model` as a path to a regular file, or a one-line QdkitError (never opens a FIFO)."""
    path = Path(model)
    if path.is_file():
        return path
    if path.is_dir():
        raise QdkitError(f"{path}: is a folder, not an ONNX model file")
    if path.exists():
        raise QdkitError(f"{path}: not a regular file (a FIFO, socket or device), not an ONNX model")
    raise QdkitError(f"{path}: no such model file")


def available_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU."""
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have] or have


def make_session(
    model: str | os.PathLike | bytes,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    name: str | None = None,
    spin: bool = True,
) -> ort.InferenceSession:
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
        path = check_model_file(model)
        if path.stat().st_size == 0:
            raise QdkitError(f"{path}: empty file, not an ONNX model")
        model = os.fspath(path)
    try:
        return ort.InferenceSession(model, so, providers=list(providers or available_providers()))
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        reason = first_line(e, limit=1000)
        if "[ONNXRuntimeError]" in reason:
            reason = reason.split(":", 3)[-1].strip()
        raise QdkitError(f"{label}: not a usable ONNX model ({reason[:160]})") from e


def contract_metadata(class_names: Sequence[str], input_facts: dict[str, Any]) -> dict[str, str]:
    """The metadata_props every qdkit model carries (the part `parse_metadata` and every reader
    rely on): the format, the class names, the input (its convention: `input_facts`) and outputs."""
    pixels = {"name": INPUT_NAME, **input_facts, "shape": ["N", 1, SIDE, SIDE], "layout": "NCHW", "dtype": "uint8"}
    return {
        "format": METADATA_FORMAT,
        "class_names": json.dumps([str(c) for c in class_names]),
        "input": json.dumps(pixels),
        "outputs": json.dumps(_OUTPUT_DOCS),
    }


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


def model_class_names(model: str | os.PathLike) -> list[str]:
    """The class names in an exported qdkit model's metadata."""
    import onnx

    model = Path(model)
    if not model.is_file():
        raise QdkitError(f"{model}: no such model file")
    try:
        proto = onnx.load(os.fspath(model), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for a file that is not a model
        raise QdkitError(f"{model}: not an ONNX model ({first_line(e)})") from None
    names = parse_metadata({p.key: p.value for p in proto.metadata_props}).get("class_names")
    if not isinstance(names, list) or not names:
        raise QdkitError(f"{model}: no qdkit metadata (class names); export it with `qdkit export`")
    return [str(c) for c in names]


def is_qdkit_model(path: str | os.PathLike) -> bool:
    """Whether the file is an ONNX model with qdkit metadata (one `qdkit export` wrote)."""
    import onnx

    try:
        if Path(path).stat().st_size > 1 << 30:  # qdkit's models are a few MB; never read a huge file
            return False
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # not ONNX at all (onnx raises protobuf's DecodeError and others)
        return False
    return any(p.key == "format" and p.value == METADATA_FORMAT for p in proto.metadata_props)


def is_quantized(metadata: dict[str, Any]) -> bool:
    """Whether parsed qdkit metadata describes a quantized (int8) model."""
    return isinstance(metadata.get("quantization"), dict)


def check_classes(
    owner: str | os.PathLike,
    class_names: Sequence[str],
    store_names: Sequence[str],
    data: str | os.PathLike,
    same_names: bool = True,
) -> None:
    """Raise unless `owner` (a model or checkpoint) has as many classes as the store `data` and,
    with `same_names`, the same ones in the same order."""
    class_names, store_names = list(class_names), list(store_names)
    if len(class_names) != len(store_names):
        raise QdkitError(f"{owner}: the model has {len(class_names)} classes, the store {data} has {len(store_names)}")
    if same_names and class_names != store_names:
        raise QdkitError(
            f"{owner}: its classes ({', '.join(class_names[:5])}, ...) are not "
            f"the store's ({', '.join(store_names[:5])}, ...) in the same order"
        )


def check_graph(proto: Any, owner: str | os.PathLike, what: str) -> None:
    """onnx.checker's full check, as a one-line QdkitError naming `owner` and the graph (`what`)."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # the checker raises several types
        raise QdkitError(f"{owner}: the {what} fails onnx.checker ({first_line(e)})") from e


# ----------------------------------------------------------------------------- the model contract

_INPUT_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(double)": np.float64}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, in place on `logits` (pass a copy to keep it)."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _fits(dim: Any, want: int) -> bool:
    """A symbolic (named or unknown) dimension fits anything."""
    return not isinstance(dim, int) or dim == want


class OnnxModel:
    """An onnxruntime session over a model that takes 28x28 drawings, checked once at load.

    A qdkit model (from `qdkit export`) names its classes in its metadata. A model without qdkit
    metadata is supported deliberately, as long as its graph fits the contract's shapes — one
    input (N, 1, 28, 28) or (N, 28, 28) of uint8 or float pixels, one (N, classes) output: its
    class names are the output indices, its pixels are fed raw (0..255, 0 = background), and a
    warning says so. Anything else is refused in one line at load.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        batch_size: int = 256,
        warn: Callable[[str], None] | None = None,
        spin: bool = True,
    ) -> None:
        self.path = Path(model) if model is not None else default_model_path()
        self.batch_size = max(1, int(batch_size))
        self.session = make_session(self.path, threads=threads, providers=providers, spin=spin)
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map)
        self._warn = warn or (lambda msg: warnings.warn(msg, QdkitWarning, stacklevel=3))
        self._check_input()
        self._check_outputs()

    @property
    def classes(self) -> list[str]:
        """The class names, index = output column (the same list as `class_names`)."""
        return self.class_names

    def _check_input(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise QdkitError(f"{self.path}: the model takes {len(inputs)} inputs; qdkit feeds one (pixels)")
        spec = inputs[0]
        shape = list(spec.shape)
        if len(shape) == 4 and _fits(shape[1], 1) and _fits(shape[2], SIDE) and _fits(shape[3], SIDE):
            self._rank = 4
        elif len(shape) == 3 and _fits(shape[1], SIDE) and _fits(shape[2], SIDE):
            self._rank = 3
        else:
            raise QdkitError(
                f"{self.path}: input {spec.name!r} has shape {shape}; qdkit feeds 28x28 "
                f"drawings as (N, 1, 28, 28) or (N, 28, 28)"
            )
        if isinstance(shape[0], int) and shape[0] != 1:
            raise QdkitError(
                f"{self.path}: input {spec.name!r} has a fixed batch of {shape[0]}; "
                "qdkit needs a dynamic batch axis (re-export with `qdkit export`)"
            )
        self._fixed_batch = shape[0] == 1
        if spec.type not in _INPUT_TYPES:
            raise QdkitError(f"{self.path}: input {spec.name!r} is {spec.type}; qdkit feeds uint8 or float pixels")
        self.input_name, self._dtype = spec.name, _INPUT_TYPES[spec.type]

    def _check_outputs(self) -> None:
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._logits_name = LOGITS if LOGITS in outputs else next(iter(outputs))
        self._probs_name = PROBABILITIES if PROBABILITIES in outputs else None
        out_shape = outputs[self._logits_name].shape
        if out_shape and len(out_shape) != 2:
            raise QdkitError(
                f"{self.path}: output {self._logits_name!r} has shape {out_shape}; qdkit expects (N, classes)"
            )
        n_out = out_shape[-1] if out_shape else None
        names = self.metadata.get("class_names")
        self.is_qdkit = bool(self.metadata) and isinstance(names, list)
        if isinstance(names, list) and self.is_qdkit:
            self.class_names = [str(c) for c in names]
            if isinstance(n_out, int) and n_out != len(self.class_names):
                raise QdkitError(
                    f"{self.path}: the model has {n_out} outputs but its metadata names {len(self.class_names)} classes"
                )
            return
        if not isinstance(n_out, int):  # learn the class count from one blank drawing
            probe = self._session_run([self._logits_name], np.zeros((1, SIDE, SIDE), np.uint8))[0]
            if probe.ndim != 2:
                raise QdkitError(
                    f"{self.path}: output {self._logits_name!r} has shape {list(probe.shape)}; "
                    "qdkit expects (N, classes)"
                )
            n_out = int(probe.shape[-1])
        self.class_names = [str(i) for i in range(n_out)]
        self._warn(
            f"{self.path}: no qdkit metadata (not made by `qdkit export`); class indices "
            f"stand in for names and raw 0..255 pixels (0 = background) are fed as they are"
        )

    def _session_run(self, names: list[str], drawings: np.ndarray) -> list[np.ndarray]:
        x = drawings.reshape(len(drawings), 1, SIDE, SIDE) if self._rank == 4 else drawings.reshape(-1, SIDE, SIDE)
        x = x if x.dtype == self._dtype else x.astype(self._dtype)
        try:
            return self.session.run(names, {self.input_name: x})
        except Exception as e:  # a foreign graph whose dimensions only looked right
            raise QdkitError(
                f"{self.path}: onnxruntime failed on a batch of {len(drawings)} drawings ({first_line(e)})"
            ) from e

    def run(self, drawings: np.ndarray, want_probs: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, probabilities or None) for uint8 (N, 28, 28) drawings, in batches of `batch_size`."""
        names = [self._logits_name] + ([self._probs_name] if want_probs and self._probs_name else [])
        step = 1 if self._fixed_batch else self.batch_size
        outs = [self._session_run(names, drawings[s : s + step]) for s in range(0, len(drawings), step)]
        if not outs:
            empty = np.zeros((0, len(self.class_names)), np.float32)
            return empty, (empty.copy() if want_probs else None)
        logits = np.concatenate([o[0] for o in outs]).astype(np.float32, copy=False)
        if not want_probs:
            return logits, None
        if len(outs[0]) > 1:
            return logits, np.concatenate([o[1] for o in outs]).astype(np.float32, copy=False)
        if not self.is_qdkit and logits.min() >= 0 and np.allclose(logits.sum(axis=1), 1, atol=1e-3):
            return logits, logits  # a foreign model whose only output already is probabilities
        return logits, softmax(logits.astype(np.float32, copy=True))
