"""`qdkit serve --grpc-port P`: the Open Inference Protocol over gRPC (`inference.GRPCInferenceService`,
the service tritonclient.grpc and KServe's InferenceGRPCClient call), on grpcio's asyncio server in
the same event loop, model, batcher and limits as the HTTP app.

    ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig (Triton's),
    ModelStatistics, RepositoryIndex, ModelInfer (raw_input_contents or contents.uint_contents in,
    raw_output_contents out; the classification extension), ModelStreamInfer

A bad request gets the HTTP API's message with the matching status code: 400 -> INVALID_ARGUMENT,
404 -> NOT_FOUND, 413 -> RESOURCE_EXHAUSTED (a message over --max-body-mb is refused by grpcio
itself with RESOURCE_EXHAUSTED). The rest of the service (shared memory, model loading, trace and
log settings) answers UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from qdkit.inference.v2spec import VERSION
from qdkit.serve import oip
from qdkit.serve._proto import grpc_service_pb2 as pb
from qdkit.serve._proto import grpc_service_pb2_grpc as pb_grpc
from qdkit.serve.errors import ApiError

if TYPE_CHECKING:
    from qdkit.serve.service import Service

log = logging.getLogger("qdkit.serve")
GRACE_S = 5
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED}
_CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


def _parameter(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def parse_request(service: Service, request: pb.ModelInferRequest) -> tuple[Any, list[oip.OutputRequest]]:
    """(pixels (N, 28, 28) uint8, requested outputs) of a ModelInferRequest, else an ApiError."""
    oip.check_model(service, request.model_name, request.model_version)
    if len(request.inputs) != 1:
        raise ApiError(400, f"inputs: a list of one tensor ('{oip.INPUT_NAME}') expected, got {len(request.inputs)}")
    tensor = request.inputs[0]
    shape = oip.check_input(tensor.name, tensor.datatype, list(tensor.shape))
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise ApiError(400, f"raw_input_contents: {len(raw)} tensors for the one input")
        if tensor.HasField("contents"):
            raise ApiError(400, "inputs[0].contents: give contents or raw_input_contents, not both")
        pixels = oip.pixels_from_raw(raw[0], shape)
    else:
        contents = tensor.contents
        for other in _CONTENTS:
            if len(getattr(contents, other)):
                raise ApiError(
                    400, f"inputs[0].contents.{other}: UINT8 data goes in uint_contents (or raw_input_contents)"
                )
        pixels = oip.pixels_from_values(list(contents.uint_contents), shape, "inputs[0].contents.uint_contents")
    wanted = []
    for i, out in enumerate(request.outputs):
        count = _parameter(out.parameters["classification"]) if "classification" in out.parameters else oip.NOT_GIVEN
        wanted.append(oip.check_output(out.name, count, f"outputs[{i}]"))
    return pixels, wanted


def infer_response(service: Service, request: pb.ModelInferRequest, outputs: list[oip.Output]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=service.name, model_version=VERSION, id=request.id)
    for out in outputs:
        response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        response.raw_output_contents.append(oip.tensor_bytes(out))
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: Service) -> None:
        self.service = service

    async def _fail(self, context: grpc.aio.ServicerContext, e: ApiError) -> None:
        await context.abort(CODES.get(e.status, grpc.StatusCode.INVALID_ARGUMENT), e.message)

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready() is None)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            oip.check_model(self.service, request.name, request.version)
        except ApiError as e:
            await self._fail(context, e)
        return pb.ModelReadyResponse(ready=self.service.ready() is None)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return json_format.ParseDict(oip.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        try:
            oip.check_model(self.service, request.name, request.version)
        except ApiError as e:
            await self._fail(context, e)
        meta = oip.model_metadata(self.service)
        meta.pop("parameters")  # not a field of the gRPC message; the class names are in ModelConfig's labels
        return json_format.ParseDict(meta, pb.ModelMetadataResponse())

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        try:
            oip.check_model(self.service, request.name, request.version)
        except ApiError as e:
            await self._fail(context, e)
        response = pb.ModelConfigResponse()
        json_format.ParseDict(oip.model_config(self.service), response.config)
        return response

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        try:
            if request.name:
                oip.check_model(self.service, request.name, request.version)
        except ApiError as e:
            await self._fail(context, e)
        return json_format.ParseDict(oip.model_statistics(self.service), pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        return json_format.ParseDict({"models": oip.repository_index(self.service)}, pb.RepositoryIndexResponse())

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        started = time.perf_counter_ns()
        ok = False
        counted = request.model_name == self.service.name
        try:
            pixels, wanted = parse_request(self.service, request)
            outputs = await oip.infer(self.service, pixels, wanted)
            response = infer_response(self.service, request, outputs)
            ok = True
            return response
        finally:
            if counted:
                self.service.stats.request(started, ok)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        try:
            return await self._infer(request)
        except ApiError as e:
            await self._fail(context, e)
            raise  # not reached: abort raises

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in order; a bad request's error goes in its response's
        error_message and the stream goes on (as Triton does)."""
        async for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except ApiError as e:
                yield pb.ModelStreamInferResponse(
                    error_message=e.message, infer_response=pb.ModelInferResponse(id=request.id)
                )


async def start_grpc(service: Service, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on the running event loop; (server, the port it listens on)."""
    from qdkit.errors import QdkitError

    limit = service.max_body
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise QdkitError(f"{address}: cannot listen for gRPC (port taken?); pick another --grpc-port or --host")
    await server.start()
    return server, bound
