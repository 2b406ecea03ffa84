"""The Open Inference Protocol (KServe/Triton "v2" REST API) over the model's raw tensor interface.

    GET  /v2                                  server metadata
    GET  /v2/health/live, /v2/health/ready    liveness, readiness
    GET  /v2/models/<name>[/versions/1]       inputs, outputs and the class names
    GET  /v2/models/<name>[/versions/1]/ready
    POST /v2/models/<name>[/versions/1]/infer uint8 `pixels` (N, 1, 28, 28) -> `logits`, `probabilities`

The same names, shapes and datatypes as the Triton repository `qdkit export --triton` writes, so a
client of one talks to the other. JSON tensors only (not the binary tensor extension).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from qdkit.constants import QDKIT_VERSION, SIDE
from qdkit.inference.v2spec import INPUT_DATATYPE, INPUT_DIMS, INPUT_NAME, OUTPUT_DATATYPE, OUTPUTS, VERSION
from qdkit.serve import schemas
from qdkit.serve.errors import ApiError, json_response
from qdkit.serve.requests import MAX_DRAWINGS, parse_json

if TYPE_CHECKING:
    from qdkit.serve.app import Service


def parse_infer(body: Any) -> tuple[np.ndarray, list[str], str | None]:
    """(pixels (N, 28, 28) uint8, requested output names, request id) of a v2 infer request."""
    if not isinstance(body, dict):
        raise ApiError(400, "body: a JSON object with 'inputs' expected")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, "id: a string expected")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f"inputs: a list of one tensor ('{INPUT_NAME}') expected")
    tensor = inputs[0]
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise ApiError(400, f"inputs[0].name: {name!r} is not an input of this model (it takes '{INPUT_NAME}')")
    if tensor.get("datatype") != INPUT_DATATYPE:
        raise ApiError(400, f"inputs[0].datatype: {tensor.get('datatype')!r}; '{INPUT_NAME}' is {INPUT_DATATYPE}")
    if isinstance(tensor.get("parameters"), dict) and "binary_data_size" in tensor["parameters"]:
        raise ApiError(
            400,
            "inputs[0].parameters.binary_data_size: the binary tensor extension is not "
            "supported; send 'data' as a JSON list",
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(type(d) is int for d in shape)
        or shape[1:] != INPUT_DIMS
        or not 1 <= shape[0] <= MAX_DRAWINGS
    ):
        raise ApiError(
            400,
            f"inputs[0].shape: {shape!r}; '{INPUT_NAME}' takes [N, {', '.join(map(str, INPUT_DIMS))}] "
            f"with 1 <= N <= {MAX_DRAWINGS}",
        )
    data = tensor.get("data")
    if not isinstance(data, list):
        raise ApiError(400, "inputs[0].data: a list of numbers expected (flat or nested, row-major)")
    try:
        values = np.asarray(data)
    except ValueError:
        raise ApiError(400, "inputs[0].data: nested lists of unequal length") from None
    expected = int(np.prod(shape))
    if values.dtype.kind not in "iu" or values.size != expected or values.ndim not in (1, 4):
        what = f"{values.size} values" if values.dtype.kind in "iu" else "values that are not all integers"
        raise ApiError(400, f"inputs[0].data: {what}; shape {shape} needs {expected} integers")
    if values.ndim == 4 and list(values.shape) != shape:
        raise ApiError(400, f"inputs[0].data: nested as {list(values.shape)}, not as the shape {shape}")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ApiError(400, "inputs[0].data: UINT8 values must lie in 0..255")
    outputs = body.get("outputs")
    if outputs is None:
        names = list(OUTPUTS)
    else:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise ApiError(400, 'outputs: a list of {"name": ...} objects expected')
        names = [o.get("name") for o in outputs]
        for i, n in enumerate(names):
            if n not in OUTPUTS:
                raise ApiError(400, f"outputs[{i}].name: {n!r} is not an output of this model ({', '.join(OUTPUTS)})")
    return values.astype(np.uint8).reshape(-1, SIDE, SIDE), names, request_id


def v2_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])
    classes = len(service.predictor.class_names)

    def check_model(name: str, version: str | None = None) -> None:
        if name != service.name:
            raise ApiError(404, f"model {name!r}: not found (this server has {service.name!r})")
        if version is not None and version != VERSION:
            raise ApiError(404, f"model {name!r} version {version!r}: not found (this server has version {VERSION})")

    def model_metadata() -> dict[str, Any]:
        return {
            "name": service.name,
            "versions": [VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": INPUT_NAME, "datatype": INPUT_DATATYPE, "shape": [-1, *INPUT_DIMS]}],
            "outputs": [{"name": n, "datatype": OUTPUT_DATATYPE, "shape": [-1, classes]} for n in OUTPUTS],
            "parameters": {"class_names": service.predictor.class_names},
        }

    @router.get("", summary="Server metadata")
    async def server_metadata() -> Response:
        return json_response({"name": "qdkit", "version": QDKIT_VERSION, "extensions": []})

    @router.get("/health/live", summary="Liveness")
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/health/ready", summary="Readiness")
    async def ready() -> Response:
        return json_response({"ready": True})

    @router.get("/models/{name}", summary="Model metadata: inputs, outputs, class names")
    @router.get("/models/{name}/versions/{version}", summary="Model metadata of one version")
    async def metadata(name: str, version: str | None = None) -> Response:
        check_model(name, version)
        return json_response(model_metadata())

    @router.get("/models/{name}/ready", summary="Model readiness")
    @router.get("/models/{name}/versions/{version}/ready", summary="Model readiness of one version")
    async def model_ready(name: str, version: str | None = None) -> Response:
        check_model(name, version)
        return json_response({"name": service.name, "ready": True})

    @router.post("/models/{name}/infer", summary="Inference on uint8 pixels", openapi_extra=schemas.INFER_BODY)
    @router.post(
        "/models/{name}/versions/{version}/infer", summary="Inference on one version", openapi_extra=schemas.INFER_BODY
    )
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        check_model(name, version)
        if request.headers.get("inference-header-content-length") is not None:
            raise ApiError(
                400, "Inference-Header-Content-Length: the binary tensor extension is not supported; send JSON tensors"
            )
        pixels, names, request_id = parse_infer(parse_json(await request.body()))
        _, logits, probs = await service.batcher.submit(list(pixels))
        arrays = {"logits": logits, "probabilities": probs}
        out: dict[str, Any] = {"model_name": service.name, "model_version": VERSION}
        if request_id is not None:
            out["id"] = request_id
        out["outputs"] = [
            {"name": n, "datatype": OUTPUT_DATATYPE, "shape": list(arrays[n].shape), "data": arrays[n].ravel().tolist()}
            for n in names
        ]
        return json_response(out)

    return router
