"""The Open Inference Protocol (KServe/Triton "v2" REST API) over the model's raw tensor interface.

    GET  /v2                                  server metadata
    GET  /v2/health/live, /v2/health/ready    liveness, readiness
    GET  /v2/models/<name>[/versions/1]       inputs, outputs and the class names
    GET  /v2/models/<name>[/versions/1]/ready
    GET  /v2/models/<name>[/versions/1]/config  Triton's ModelConfig (JSON)
    GET  /v2/models[/<name>[/versions/1]]/stats  Triton's statistics
    POST /v2/repository/index                 the one model, READY
    POST /v2/models/<name>[/versions/1]/infer uint8 `pixels` (N, 1, 28, 28) -> `logits`, `probabilities`

The same names, shapes and datatypes as the Triton repository `qdkit export --triton` writes, so a
client of one talks to the other. JSON or binary tensors (qdkit.serve.binary), compressed or not;
the classification extension (qdkit.serve.oip).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Route

from qdkit.inference.v2spec import INPUT_NAME, VERSION
from qdkit.serve import binary, oip, schemas
from qdkit.serve.errors import ApiError, json_response
from qdkit.serve.requests import parse_json

if TYPE_CHECKING:
    from qdkit.serve.service import Service


@dataclass
class InferRequest:
    pixels: np.ndarray  # (N, 28, 28) uint8
    outputs: list[oip.OutputRequest]  # empty: all
    id: str | None
    binary_output: bool  # parameters.binary_data_output: the default of each output's binary_data


def parse_infer(body: Any, blobs: bytes = b"") -> InferRequest:
    """A v2 infer request's JSON (its header, with the binary extension) and the binary bytes after it."""
    if not isinstance(body, dict):
        raise ApiError(400, "body: a JSON object with 'inputs' expected")
    request_id = body.get("id")
    if "id" in body and not isinstance(request_id, str):
        raise ApiError(400, "id: a string expected")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ApiError(400, "parameters: an object expected")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ApiError(400, "parameters.binary_data_output: true or false expected")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f"inputs: a list of one tensor ('{INPUT_NAME}') expected")
    tensor = inputs[0]
    shape = oip.check_input(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"))
    size = binary.binary_size(tensor.get("parameters"), "inputs[0]")
    if size is None:
        if blobs:
            raise ApiError(400, f"body: {len(blobs):,} bytes after the JSON header that no input claims")
        pixels = oip.pixels_from_values(tensor.get("data"), shape)
    else:
        if "data" in tensor:
            raise ApiError(400, "inputs[0].data: give 'data' or parameters.binary_data_size, not both")
        if size != len(blobs):
            where = "no Inference-Header-Content-Length header" if not blobs else f"{len(blobs):,} bytes"
            raise ApiError(
                400, f"inputs[0].parameters.binary_data_size: {size:,} bytes of binary data, but the body has {where}"
            )
        pixels = oip.pixels_from_raw(blobs, shape)
    outputs = body.get("outputs")
    wanted: list[oip.OutputRequest] = []
    if "outputs" in body:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise ApiError(400, 'outputs: a list of {"name": ...} objects expected')
        for i, o in enumerate(outputs):
            params = o.get("parameters", {})
            if not isinstance(params, dict):
                raise ApiError(400, f"outputs[{i}].parameters: an object expected")
            out = oip.check_output(o.get("name"), params.get("classification", oip.NOT_GIVEN), f"outputs[{i}]")
            as_binary = params.get("binary_data")
            if "binary_data" in params and not isinstance(as_binary, bool):
                raise ApiError(400, f"outputs[{i}].parameters.binary_data: true or false expected")
            wanted.append(oip.OutputRequest(out.name, out.class_count, as_binary))
    return InferRequest(pixels, wanted, request_id, binary_output)


def parse_json_fast(body: bytes) -> Any:
    """parse_json with orjson (a fifth of the time on 784 numbers); the same error words."""
    if not body:
        raise ApiError(400, "body: empty (send JSON)")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if "UTF-8" in str(e):
            raise ApiError(400, "body: not UTF-8 text (send JSON)") from None
        return parse_json(body)  # json's message for the same mistake (or its reading of NaN, big numbers)


def encode_outputs(service: Service, request: InferRequest, outputs: list[oip.Output]) -> tuple[bytes, list[bytes]]:
    """(JSON header, binary tensors) of an infer response."""
    flags = {w.name: w.binary for w in request.outputs}
    blobs = []
    tensors = []
    for out in outputs:
        tensor: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        as_binary = flags.get(out.name)
        if as_binary if as_binary is not None else request.binary_output:
            blob = oip.tensor_bytes(out)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = oip.tensor_json(out)
        tensors.append(tensor)
    answer: dict[str, Any] = {"model_name": service.name, "model_version": VERSION}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = tensors
    try:
        return orjson.dumps(answer), blobs
    except TypeError:  # an id with a lone surrogate (json reads "\\ud800"; orjson writes only valid UTF-8)
        return json.dumps(answer, separators=(",", ":")).encode(), blobs


async def infer_request(service: Service, request: Request, name: str, version: str | None) -> Response:
    """POST /v2/models/NAME[/versions/V]/infer."""
    oip.check_model(service, name, version)
    started = time.perf_counter_ns()
    ok = False
    try:
        raw = await binary.read_body(request, service.max_body)
        header, blobs = binary.split_binary(raw, request.headers.get("inference-header-content-length"))
        parsed = parse_infer(parse_json_fast(header), blobs)
        outputs = await oip.infer(service, parsed.pixels, parsed.outputs)
        head, tensors = encode_outputs(service, parsed, outputs)
        ok = True
    finally:
        service.stats.request(started, ok)
    return binary.infer_response(head, tensors, request.headers.get("accept-encoding"))


def fast_routes(service: Service) -> list[Route]:
    """The infer routes as plain Starlette routes, for the front of the app's route list: matched
    first and without FastAPI's per-request machinery (the APIRouter's routes document them)."""

    async def plain(request: Request) -> Response:
        return await infer_request(service, request, request.path_params["name"], None)

    async def versioned(request: Request) -> Response:
        params = request.path_params
        return await infer_request(service, request, params["name"], params["version"])

    return [
        Route("/v2/models/{name}/infer", plain, methods=["POST"], include_in_schema=False),
        Route("/v2/models/{name}/versions/{version}/infer", versioned, methods=["POST"], include_in_schema=False),
    ]


def v2_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])
    _server_routes(router, service)
    _model_routes(service, _per_version(router, service))
    return router


def _server_routes(router: APIRouter, service: Service) -> None:
    """Server metadata, health, the repository index and every model's statistics."""
    errors = schemas.error_responses

    @router.get("", summary="Server metadata", responses=errors())
    async def server_metadata() -> Response:
        return json_response(oip.server_metadata())

    @router.get("/health/live", summary="Liveness", responses=errors())
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/health/ready", summary="Readiness (503 while the server is saturated)", responses=errors(503))
    async def ready() -> Response:
        busy = service.ready()
        if busy is not None:
            return json_response({"error": f"server: not ready ({busy})", "ready": False}, 503)
        return json_response({"ready": True})

    @router.post(
        "/repository/index",
        summary="The model repository's index (the one model, READY)",
        openapi_extra=schemas.INDEX_BODY,
        responses=errors(400, 413, 415),
    )
    async def index(request: Request) -> Response:
        raw = await binary.read_body(request, service.max_body)
        if raw.strip():
            body = parse_json(raw)
            if not isinstance(body, dict):
                raise ApiError(400, "body: a JSON object expected (optionally with 'ready')")
            if "ready" in body and not isinstance(body["ready"], bool):
                raise ApiError(400, "ready: true or false expected")
        return json_response(oip.repository_index(service))

    @router.get("/models/stats", summary="Statistics of every model (Triton's form)", responses=errors())
    async def all_stats() -> Response:
        return json_response(oip.model_statistics(service))


def _per_version(router: APIRouter, service: Service) -> Any:
    """The decorator that registers a model route at both of its URLs (with and without a version)."""
    errors = schemas.error_responses
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The model's name (qdkit serve --name)",
        "schema": {"type": "string", "examples": [service.name]},
    }
    version_param = {
        "name": "version",
        "in": "path",
        "required": True,
        "description": "The model's version: there is one",
        "schema": {"type": "string", "examples": [VERSION]},
    }

    def per_version(method: str, suffix: str, summary: str, statuses: tuple[int, ...], **extra: Any) -> Any:
        """Register `handler(request, name, version)` at /models/{name}SUFFIX and
        /models/{name}/versions/{version}SUFFIX. The handlers take only the request (path parameters
        documented by hand): FastAPI's per-request parameter machinery is a large share of a small
        request's time."""

        def register(handler: Any) -> Any:
            route = router.get if method == "GET" else router.post
            responses = {**extra.pop("responses", {}), **errors(404, *statuses)}
            body = extra.pop("openapi_extra", {})

            @route(
                f"/models/{{name}}{suffix}",
                summary=summary,
                name=handler.__name__,
                responses=responses,
                openapi_extra={**body, "parameters": [name_param]},
            )
            async def plain(request: Request) -> Response:
                return await handler(request, request.path_params["name"], None)

            @route(
                f"/models/{{name}}/versions/{{version}}{suffix}",
                summary=f"{summary} (one version)",
                name=f"{handler.__name__}_version",
                responses=responses,
                openapi_extra={**body, "parameters": [name_param, version_param]},
            )
            async def versioned(request: Request) -> Response:
                params = request.path_params
                return await handler(request, params["name"], params["version"])

            return handler

        return register

    return per_version


def _model_routes(service: Service, per_version: Any) -> None:
    """A model's metadata, readiness, configuration, statistics and inference."""

    @per_version("GET", "", "Model metadata: inputs, outputs, class names", ())
    async def metadata(request: Request, name: str, version: str | None) -> Response:
        oip.check_model(service, name, version)
        return json_response(oip.model_metadata(service))

    @per_version("GET", "/ready", "Model readiness (503 while the server is saturated)", (503,))
    async def model_ready(request: Request, name: str, version: str | None) -> Response:
        oip.check_model(service, name, version)
        busy = service.ready()
        if busy is not None:
            return json_response({"error": f"model {name!r}: not ready ({busy})", "ready": False}, 503)
        return json_response({"name": service.name, "ready": True})

    @per_version("GET", "/config", "Model configuration (Triton's ModelConfig as JSON)", ())
    async def config(request: Request, name: str, version: str | None) -> Response:
        oip.check_model(service, name, version)
        return json_response(oip.model_config(service))

    @per_version("GET", "/stats", "Model statistics (Triton's form)", ())
    async def stats(request: Request, name: str, version: str | None) -> Response:
        oip.check_model(service, name, version)
        return json_response(oip.model_statistics(service))

    @per_version(
        "POST",
        "/infer",
        "Inference on uint8 pixels",
        (413, 415),
        openapi_extra=schemas.INFER_BODY,
        responses={200: schemas.INFER_OK},
    )
    async def infer(request: Request, name: str, version: str | None) -> Response:
        return await infer_request(service, request, name, version)
