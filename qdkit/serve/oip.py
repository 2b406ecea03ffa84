"""The Open Inference Protocol's model side, shared by its HTTP (qdkit.serve.v2) and gRPC
(qdkit.serve.grpc) transports: one check of the input tensor, one inference through the batcher,
the outputs (FP32 tensors, or BYTES "score:index[:label]" strings of the classification
extension), the model's configuration in Triton's form, and Triton's statistics.

Each transport turns its own wire format into these calls, so an error has the same words on
both (an ApiError: HTTP status here, a gRPC status code there).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qdkit.constants import QDKIT_VERSION, SIDE
from qdkit.inference.v2spec import (
    INPUT_DATATYPE,
    INPUT_DIMS,
    INPUT_NAME,
    MAX_DRAWINGS,
    OUTPUT_DATATYPE,
    OUTPUTS,
    QUEUE_DELAY_US,
    VERSION,
)
from qdkit.serve.batcher import JobItemError
from qdkit.serve.errors import ApiError

if TYPE_CHECKING:
    from qdkit.serve.service import Service

PIXELS = SIDE * SIDE
LABELLED = ("probabilities",)  # the outputs whose config names labels.txt (qdkit export --triton)
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
SERVER_NAME = "qdkit"


@dataclass(frozen=True)
class OutputRequest:
    name: str
    class_count: int = 0  # > 0: the classification extension (top class_count as BYTES)
    binary: bool | None = None  # HTTP only: binary_data (None: the request's binary_data_output)


@dataclass(frozen=True)
class Output:
    name: str
    datatype: str  # FP32 or BYTES
    shape: list[int]
    array: np.ndarray  # float32, or an object array of bytes


# ----------------------------------------------------------------------------- checks


def check_model(service: Service, name: str, version: str | None = None) -> None:
    if name != service.name:
        raise ApiError(404, f"model {name!r}: not found (this server has {service.name!r})")
    if version not in (None, "", VERSION):
        raise ApiError(404, f"model {name!r} version {version!r}: not found (this server has version {VERSION})")


def whole(value: Any) -> int | None:
    """`value` as an int if it is a JSON integer (5, or 5.0: JSON has one number type), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_input(name: Any, datatype: Any, shape: Any, where: str = "inputs[0]") -> list[int]:
    """The shape of a valid `pixels` tensor header (name, datatype, shape), else an ApiError."""
    if isinstance(shape, list) and all(whole(d) is not None for d in shape):
        shape = [whole(d) for d in shape]
    if name != INPUT_NAME:
        raise ApiError(400, f"{where}.name: {name!r} is not an input of this model (it takes '{INPUT_NAME}')")
    if datatype != INPUT_DATATYPE:
        raise ApiError(400, f"{where}.datatype: {datatype!r}; '{INPUT_NAME}' is {INPUT_DATATYPE}")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(type(d) is int for d in shape)
        or shape[1:] != INPUT_DIMS
        or not 1 <= shape[0] <= MAX_DRAWINGS
    ):
        raise ApiError(
            400,
            f"{where}.shape: {shape!r}; '{INPUT_NAME}' takes [N, {', '.join(map(str, INPUT_DIMS))}] "
            f"with 1 <= N <= {MAX_DRAWINGS}",
        )
    return shape


def pixels_from_raw(raw: bytes, shape: list[int], where: str = "inputs[0]") -> np.ndarray:
    """UINT8 tensor bytes (the binary extension, gRPC raw_input_contents) -> (N, 28, 28) uint8."""
    expected = shape[0] * PIXELS
    if len(raw) != expected:
        raise ApiError(400, f"{where}: {len(raw)} bytes of data; shape {shape} needs {expected} (one byte per pixel)")
    return np.frombuffer(raw, np.uint8).reshape(-1, SIDE, SIDE)


def pixels_from_values(data: Any, shape: list[int], where: str = "inputs[0].data") -> np.ndarray:
    """A list of integers (flat or nested, row-major) -> (N, 28, 28) uint8."""
    if not isinstance(data, (list, tuple)):
        raise ApiError(400, f"{where}: a list of numbers expected (flat or nested, row-major)")
    try:
        values = np.asarray(data)
    except (ValueError, RecursionError):
        raise ApiError(400, f"{where}: nested lists of unequal length, or deeper than the shape") from None
    expected = int(np.prod(shape))
    integral = values.dtype.kind == "f" and values.size and (np.abs(values) <= 2**53).all()
    if integral and (values == np.rint(values)).all():
        values = values.astype(np.int64)  # 7.0 is a JSON integer too
    if values.dtype.kind not in "iu" or values.size != expected or values.ndim not in (1, 4):
        what = f"{values.size} values" if values.dtype.kind in "iu" else "values that are not all integers"
        raise ApiError(400, f"{where}: {what}; shape {shape} needs {expected} integers")
    if values.ndim == 4 and list(values.shape) != shape:
        raise ApiError(400, f"{where}: nested as {list(values.shape)}, not as the shape {shape}")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ApiError(400, f"{where}: UINT8 values must lie in 0..255")
    return values.astype(np.uint8).reshape(-1, SIDE, SIDE)


NOT_GIVEN: Any = object()


def check_output(name: Any, class_count: Any, where: str) -> OutputRequest:
    """class_count: the output's `classification` parameter, NOT_GIVEN when absent."""
    if name not in OUTPUTS:
        raise ApiError(400, f"{where}.name: {name!r} is not an output of this model ({', '.join(OUTPUTS)})")
    if class_count is NOT_GIVEN:
        return OutputRequest(name, 0)
    count = whole(class_count)
    if count is None or count < 0:
        raise ApiError(400, f"{where}.parameters.classification: {class_count!r} is not a whole number >= 0")
    return OutputRequest(name, count)


# ----------------------------------------------------------------------------- inference


async def infer(service: Service, pixels: np.ndarray, wanted: list[OutputRequest]) -> list[Output]:
    """Run `pixels` through the batcher; the requested outputs (every output when `wanted` is empty)."""
    try:
        _, logits, probs = await service.batcher.submit(list(pixels))
    except JobItemError as e:  # not expected for pixels; never another request's error
        raise ApiError(400, f"inputs[0]: image {e.index}: {e.error}") from None
    arrays = {"logits": logits, "probabilities": probs}
    labels = service.predictor.class_names
    out = []
    for w in wanted or [OutputRequest(n) for n in OUTPUTS]:
        a = arrays[w.name]
        if w.class_count:
            out.append(classify(a, w.class_count, labels if w.name in LABELLED else None, w.name))
        else:
            out.append(Output(w.name, OUTPUT_DATATYPE, list(a.shape), np.ascontiguousarray(a, np.float32)))
    return out


def classify(values: np.ndarray, k: int, labels: list[str] | None, name: str) -> Output:
    """Triton's classification extension: the top k of each row as b"value:index[:label]", best first
    (k at most the number of classes)."""
    k = min(k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    rows = []
    for row, idx in zip(values, order, strict=True):
        for i in idx.tolist():
            text = f"{float(row[i]):f}:{i}" + (f":{labels[i]}" if labels else "")
            rows.append(text.encode())
    array = np.empty(len(rows), dtype=object)
    array[:] = rows
    return Output(name, "BYTES", [values.shape[0], k], array)


def tensor_bytes(out: Output) -> bytes:
    """The binary form of an output: little-endian FP32, or BYTES as (4-byte length, bytes) per element."""
    if out.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in out.array.ravel())
    return out.array.astype("<f4", copy=False).tobytes()


def tensor_json(out: Output) -> list[Any]:
    if out.datatype == "BYTES":
        return [b.decode() for b in out.array.ravel()]
    return out.array.ravel().tolist()


# ----------------------------------------------------------------------------- metadata, config, stats


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": QDKIT_VERSION, "extensions": EXTENSIONS}


def model_metadata(service: Service) -> dict[str, Any]:
    classes = len(service.predictor.class_names)
    return {
        "name": service.name,
        "versions": [VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": INPUT_DATATYPE, "shape": [-1, *INPUT_DIMS]}],
        "outputs": [{"name": n, "datatype": OUTPUT_DATATYPE, "shape": [-1, classes]} for n in OUTPUTS],
        "parameters": {"class_names": service.predictor.class_names},
    }


def model_config(service: Service) -> dict[str, Any]:
    """The model's configuration as Triton's GET /v2/models/NAME/config shows it (its ModelConfig in
    JSON): the facts `qdkit export --triton` writes to config.pbtxt, with this server's --max-batch."""
    classes = len(service.predictor.class_names)
    return {
        "name": service.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": MAX_DRAWINGS,  # what one request may carry (the batcher splits it into --max-batch calls)
        "input": [
            {
                "name": INPUT_NAME,
                "data_type": f"TYPE_{INPUT_DATATYPE}",
                "format": "FORMAT_NONE",
                "dims": list(INPUT_DIMS),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
        ],
        "output": [
            {
                "name": n,
                "data_type": f"TYPE_{OUTPUT_DATATYPE}",
                "dims": [classes],
                "label_filename": "labels.txt" if n in LABELLED else "",
                "is_shape_tensor": False,
            }
            for n in OUTPUTS
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": QUEUE_DELAY_US},
        "instance_group": [{"name": f"{service.name}_0", "kind": "KIND_CPU", "count": 1}],
        "default_model_filename": "model.onnx",
    }


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """Triton's per-model statistics: request outcomes counted by the transports, queue and compute
    times by the batcher (qdkit.serve.batcher) and the service's compute step."""

    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    batch: dict[int, list[_Duration]] = field(default_factory=dict)  # size -> input, infer, output
    last_split: tuple[int, int] = (0, 0)  # the last batch's (input, infer) ns, set by the compute thread

    def batch_ran(self, jobs: int, items: int, took_ns: int) -> None:
        """DynamicBatcher's on_batch: split the batch's time as the compute step measured it."""
        input_ns, infer_ns = self.last_split
        output_ns = max(0, took_ns - input_ns - infer_ns)
        self.compute_input.add(input_ns * jobs, jobs)
        self.compute_infer.add(infer_ns * jobs, jobs)
        self.compute_output.add(output_ns * jobs, jobs)
        size = self.batch.setdefault(items, [_Duration(), _Duration(), _Duration()])
        for d, ns in zip(size, (input_ns, infer_ns, output_ns), strict=True):
            d.add(ns)

    def request(self, started_ns: int, ok: bool) -> None:
        (self.success if ok else self.fail).add(time.perf_counter_ns() - started_ns)


def model_statistics(service: Service) -> dict[str, Any]:
    """GET /v2/models/NAME/stats in Triton's form."""
    s, b = service.stats, service.batcher.stats
    return {
        "model_stats": [
            {
                "name": service.name,
                "version": VERSION,
                "last_inference": b.last_batch_ms,
                "inference_count": b.items,
                "execution_count": b.batches,
                "inference_stats": {
                    "success": s.success.json(),
                    "fail": s.fail.json(),
                    "queue": {"count": b.jobs, "ns": b.queue_ns},
                    "compute_input": s.compute_input.json(),
                    "compute_infer": s.compute_infer.json(),
                    "compute_output": s.compute_output.json(),
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": d[0].json(),
                        "compute_infer": d[1].json(),
                        "compute_output": d[2].json(),
                    }
                    for size, d in sorted(s.batch.items())
                ],
                "memory_usage": [],
            }
        ]
    }


def repository_index(service: Service) -> list[dict[str, str]]:
    return [{"name": service.name, "version": VERSION, "state": "READY", "reason": ""}]
