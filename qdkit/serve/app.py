"""The ASGI app of `qdkit serve`: the drawing page, POST /predict, the Open Inference Protocol (v2).

`create_app(model)` returns a FastAPI app that runs under any ASGI server. Every drawing goes
through qdkit.strokes (simplified, then rendered as the dataset's bitmaps were), so the model sees
what it was trained on; concurrent requests are batched into one onnxruntime call
(qdkit.serve.batcher), computed in a worker thread while the event loop serves.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from qdkit.constants import QDKIT_VERSION
from qdkit.errors import QdkitError
from qdkit.inference.predictor import Predictor
from qdkit.inference.v2spec import DEFAULT_NAME, MAX_BATCH, QUEUE_DELAY_US
from qdkit.serve import schemas
from qdkit.serve.batcher import JobItemError
from qdkit.serve.binary import read_body
from qdkit.serve.docs import install_offline_docs
from qdkit.serve.errors import ApiError, BodyLimit, install_error_handlers, json_response
from qdkit.serve.requests import (
    field_of,
    image_to_bitmap,
    needs_simplifying,
    parse_json,
    predict_drawings,
    predict_query,
    simplify_all,
    stroke_error,
)
from qdkit.serve.service import Service
from qdkit.strokes import Drawing

DEFAULT_MAX_BODY = 4 * 1024 * 1024  # bytes of one request body (--max-body-mb)
DEFAULT_MAX_WAIT = QUEUE_DELAY_US / 1e6  # seconds a batch may wait for more requests
STATIC = Path(str(resources.files("qdkit.serve") / "static"))
JSON_TYPES = ("", "application/json", "text/plain", "application/x-www-form-urlencoded")  # curl -d sends the last


def create_app(
    model: str | os.PathLike | Predictor | None = None,
    *,
    name: str = DEFAULT_NAME,
    max_batch: int = MAX_BATCH,
    max_wait: float = DEFAULT_MAX_WAIT,
    max_body: int = DEFAULT_MAX_BODY,
    threads: int | None = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """The service over `model` (a qdkit ONNX file [default: the newest exported one] or a Predictor).

    name: the model's name in the v2 URLs; max_batch: most drawings per onnxruntime call; max_wait:
    seconds a batch may wait for concurrent requests; max_body: largest request body in bytes;
    threads: onnxruntime intra-op threads; cors_origins: the web origins whose pages may call the API
    (Starlette's CORS middleware; "*" any; none: same-origin only).
    """
    if isinstance(model, Predictor):
        predictor = model
    else:
        predictor = Predictor(model, threads=threads, spin=False, warn=lambda message: None)
    if not predictor.is_qdkit:
        raise QdkitError(
            f"{predictor.path}: no qdkit metadata (not made by `qdkit export`); qdkit serve "
            "needs a model that knows its classes and pixel convention"
        )
    service = Service(predictor, name, max_batch, max_wait, max_body)
    batcher = service.batcher  # started and closed with the app

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.close()

    app = FastAPI(
        title="qdkit serve",
        version=QDKIT_VERSION,
        lifespan=lifespan,
        description="Quick, Draw! doodles -> the classes a qdkit model sees in them. "
        "POST /predict takes strokes or an image; /v2 is the Open Inference Protocol.",
    )
    install_offline_docs(app)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=service.max_body)
    if cors_origins:
        from qdkit.serve.cors import add_cors

        add_cors(app, list(cors_origins))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    _page_and_predict_routes(app, service)
    from qdkit.serve.v2 import fast_routes, v2_router

    app.include_router(v2_router(service))
    app.router.routes[0:0] = fast_routes(service)
    schemas.truthful_openapi(app)
    return app


def _page_and_predict_routes(app: FastAPI, service: Service) -> None:
    """The drawing page, the model's facts and POST /predict."""
    batcher = service.batcher

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get(
        "/model",
        summary="Model facts: classes, accuracy, run, limits",
        response_model=schemas.ModelFacts,
        responses=schemas.error_responses(),
    )
    async def model_facts() -> Response:
        return json_response(service.facts())

    # The query is read by hand (documented in schemas.PREDICT_QUERY): FastAPI's per-request parameter
    # machinery cost ~10% of a small request's time here.
    @app.post(
        "/predict",
        summary="Top classes of drawings (strokes) or of an uploaded image",
        openapi_extra=schemas.PREDICT_BODY | schemas.PREDICT_QUERY,
        responses={
            200: {
                "model": schemas.PredictResponse,
                "description": "one drawing or image: `top` (and `bitmap`); a batch: `predictions`, one per drawing",
            },
            **schemas.error_responses(413, 415),
        },
    )
    async def predict(request: Request) -> Response:
        top_k, bitmap, invert = predict_query(request.query_params)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        items: Sequence[Drawing | np.ndarray]
        if ctype in JSON_TYPES:
            drawings, single = predict_drawings(parse_json(await read_body(request, service.max_body)))
            if needs_simplifying(drawings):
                drawings = await run_in_threadpool(simplify_all, drawings, single)
            items = drawings
        elif ctype == "multipart/form-data":
            items, single = [await run_in_threadpool(image_to_bitmap, await _upload(request), invert)], True
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            body = await read_body(request, service.max_body)
            items, single = [await run_in_threadpool(image_to_bitmap, body, invert)], True
        else:
            raise ApiError(
                415,
                f"Content-Type: {ctype} is not accepted (send application/json strokes, "
                "or an image as image/png, image/jpeg or multipart/form-data field 'image')",
            )
        try:
            bitmaps, _, probs = await batcher.submit(list(items))
        except JobItemError as e:  # one drawing that the batch could not draw: this request's own error
            raise stroke_error(field_of(e.index, single), e.error) from None
        out = service.predictions(bitmaps, probs, top_k, bitmap)
        return json_response(out[0] if single else {"predictions": out})


async def _upload(request: Request) -> bytes:
    form = await request.form(max_files=1, max_fields=4)
    unknown = sorted(set(form) - {"image"})
    if unknown:
        raise ApiError(400, f"{unknown[0]}: unknown multipart field (send the image as the field 'image')")
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "image: multipart/form-data needs a file field named 'image'")
    return await upload.read()


def app_from_environment() -> FastAPI:
    """The factory `qdkit serve --workers N` hands to uvicorn's worker processes (settings in the environment)."""
    settings = json.loads(os.environ["QDKIT_SERVE"])
    return create_app(settings.pop("model"), **settings)
