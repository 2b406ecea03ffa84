"""The Triton Python-backend models of a repository that `qdkit export --triton` writes: each
`DIR/<model>/1/model.py` there is two lines that import one of these, so the code Triton runs is
this tested module of the qdkit installed in the server's Python (docs/serve.md, "Triton").

- `ClassifierModel` (`--triton-backend python`): the exported model.onnx through onnxruntime,
  with the session qdkit itself uses (qdkit.inference.onnxmodel.make_session: CUDA when this onnxruntime
  has it, then CPU, as `qdkit serve` chooses), one run per batch Triton's dynamic batcher forms.
- `RasterizeModel` (the first step of the strokes ensemble): Quick Draw drawings, one JSON
  drawing per BYTES element — a stroke list `[[xs, ys], ...]` (raw, any coordinate range) or
  `{"drawing": [...], "simplified": true|false}`, the format of POST /predict — through
  qdkit.strokes (the published simplification, then the dataset's rendering): uint8 pixels
  (N, 1, 28, 28), byte for byte what `qdkit serve` feeds the model. A bad drawing fails its own
  request with a one-line message naming it (`drawings[2]: stroke 0 has 2 xs but 1 ys`); the other
  requests of the batch are answered.

`triton_python_backend_utils` exists only inside Triton's Python-backend stub, so it is imported
when a model is initialised, never when this module is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from qdkit.constants import SIDE
from qdkit.errors import first_line

PIXELS = "pixels"  # the classifier's input, the rasterizer's output (qdkit.inference.v2spec.INPUT_NAME)
DRAWINGS = "drawings"  # the ensemble's input: BYTES, one JSON drawing per element
BITMAPS = "bitmaps"  # the same pixels, as the ensemble's output (qdkit.deploy.tritonensemble)
DRAWING_KEYS = ("drawing", "simplified")


def _utils() -> Any:
    import triton_python_backend_utils as pb_utils  # only inside Triton's Python-backend stub

    return pb_utils


def _output_names(model_config: dict) -> list[str]:
    return [o["name"] for o in model_config.get("output", [])]


class ClassifierModel:
    """Triton's Python backend running `1/model.onnx` with onnxruntime."""

    def initialize(self, args: dict[str, str]) -> None:
        from qdkit.inference.onnxmodel import available_providers, make_session

        self.pb = _utils()
        config = json.loads(args["model_config"])
        self.outputs = _output_names(config)
        model = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        # As qdkit serve: CUDA whenever this onnxruntime has it (onnxruntime-gpu), else CPU.
        # spin=False, as qdkit serve: other processes (the rasterize step, the server) share the cores.
        self.session = make_session(model, providers=available_providers(), spin=False)

    def execute(self, requests: list) -> list:
        pb = self.pb
        inputs = [pb.get_input_tensor_by_name(r, PIXELS).as_numpy() for r in requests]
        sizes = [len(x) for x in inputs]
        pixels = np.ascontiguousarray(np.concatenate(inputs) if len(inputs) > 1 else inputs[0], np.uint8)
        try:
            results = self.session.run(self.outputs, {PIXELS: pixels})
        except Exception as e:  # onnxruntime's own error types; every request of this batch gets it
            error = pb.TritonError(f"onnxruntime failed on a batch of {len(pixels)} drawings ({first_line(e)})")
            return [pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensors = [
                pb.Tensor(name, np.ascontiguousarray(r[start : start + n]))
                for name, r in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
            start += n
        return responses


def parse_element(element: Any, field: str) -> Any:
    """One BYTES element -> a simplified qdkit.strokes.Drawing, or a one-line message naming `field`.
    Raw strokes are simplified here, per element (as qdkit serve does when it reads a request), so
    a drawing simplification refuses fails only its own request, never the batch."""
    from qdkit.strokes import StrokeError, parse_drawing, simplified

    if isinstance(element, np.ndarray):  # a 0-d element of an object array
        element = element.item()
    if isinstance(element, str):
        element = element.encode()
    try:
        obj = orjson.loads(element)
    except orjson.JSONDecodeError as e:
        return f"{field}: not JSON ({str(e).split(':')[0]})"
    except TypeError:
        return f"{field}: not a string of JSON"
    is_simplified = False
    if isinstance(obj, dict):
        unknown = sorted(set(obj) - set(DRAWING_KEYS))
        if unknown:
            return f"{field}: {unknown[0]}: unknown field (expected {', '.join(DRAWING_KEYS)})"
        if "drawing" not in obj:
            return f"{field}: an object without 'drawing'"
        is_simplified = obj.get("simplified", False)
        if not isinstance(is_simplified, bool):
            return f"{field}: simplified: true or false expected"
        obj = obj["drawing"]
    if not isinstance(obj, list):
        return f'{field}: a list of strokes [[xs, ys], ...] or {{"drawing": ...}} expected'
    try:
        return simplified(parse_drawing(obj, simplified=is_simplified))
    except StrokeError as e:
        return f"{field}: {str(e).removeprefix('drawing ')}"


class RasterizeModel:
    """Triton's Python backend turning Quick Draw strokes into the model's pixels (qdkit.strokes)."""

    def initialize(self, args: dict[str, str]) -> None:
        self.pb = _utils()

    def execute(self, requests: list) -> list:
        from qdkit.strokes import Drawing, rasterize_many

        pb = self.pb
        parsed: list[list | str] = []
        for r in requests:
            elements = pb.get_input_tensor_by_name(r, DRAWINGS).as_numpy().reshape(-1)
            drawings: list = []
            for i, element in enumerate(elements):
                d = parse_element(element, f"{DRAWINGS}[{i}]")
                if not isinstance(d, Drawing):
                    drawings = d  # the request's error: its first bad drawing
                    break
                drawings.append(d)
            parsed.append(drawings)
        good = [d for ds in parsed if isinstance(ds, list) for d in ds]
        try:
            bitmaps = rasterize_many(good)
        except Exception as e:  # not expected: every drawing was parsed and simplified already
            error = pb.TritonError(f"rasterizing a batch of {len(good)} drawings failed ({first_line(e)})")
            return [pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for r, ds in zip(requests, parsed, strict=True):
            if isinstance(ds, str):
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(ds)))
                continue
            pixels = np.ascontiguousarray(bitmaps[start : start + len(ds)].reshape(len(ds), 1, SIDE, SIDE))
            tensors = [pb.Tensor(PIXELS, pixels)]
            if BITMAPS in r.requested_output_names():
                tensors.append(pb.Tensor(BITMAPS, pixels))
            responses.append(pb.InferenceResponse(output_tensors=tensors))
            start += len(ds)
        return responses
