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
import time
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from qdkit.constants import QDKIT_VERSION, SIDE
from qdkit.errors import QdkitError
from qdkit.inference.onnxmodel import is_quantized
from qdkit.inference.predictor import Predictor
from qdkit.inference.v2spec import DEFAULT_NAME, MAX_BATCH, QUEUE_DELAY_US, check_name
from qdkit.serve import schemas
from qdkit.serve.batcher import DynamicBatcher, ItemErrors, JobItemError
from qdkit.serve.binary import read_body
from qdkit.serve.docs import install_offline_docs
from qdkit.serve.errors import ApiError, BodyLimit, install_error_handlers, json_response
from qdkit.serve.protocol import MAX_HEAD_BYTES
from qdkit.serve.requests import (
    MAX_DRAWINGS,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    field_of,
    image_to_bitmap,
    needs_simplifying,
    parse_json,
    predict_drawings,
    predict_query,
    simplify_all,
    stroke_error,
)
from qdkit.strokes import MAX_POINTS, MAX_STROKES, Drawing, StrokeError, rasterize_many

DEFAULT_MAX_BODY = 4 * 1024 * 1024  # bytes of one request body (--max-body-mb)
DEFAULT_MAX_WAIT = QUEUE_DELAY_US / 1e6  # seconds a batch may wait for more requests
STATIC = Path(str(resources.files("qdkit.serve") / "static"))
JSON_TYPES = ("", "application/json", "text/plain", "application/x-www-form-urlencoded")  # curl -d sends the last


class Service:
    """The model and its batcher, shared by the routes."""

    def __init__(self, predictor: Predictor, name: str, max_batch: int, max_wait: float, max_body: int) -> None:
        from qdkit.serve.oip import ModelStats

        self.predictor, self.name, self.max_body = predictor, check_name(name), int(max_body)
        self.stats = ModelStats()
        self.batcher = DynamicBatcher(
            self.compute, max_batch=max_batch, max_wait=max_wait, on_batch=self.stats.batch_ran
        )

    def compute(self, items: Sequence[Drawing | np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs in the batcher's thread: (bitmaps, logits, probabilities) of drawings and ready bitmaps."""
        started = time.perf_counter_ns()
        bitmaps = np.empty((len(items), SIDE, SIDE), np.uint8)
        strokes = [i for i, item in enumerate(items) if isinstance(item, Drawing)]
        errors: list[tuple[int, StrokeError]] = []
        if strokes:  # simplified when their request was read; errors= keeps one bad drawing to itself
            drawn = rasterize_many([item for item in items if isinstance(item, Drawing)], errors=errors)
            bitmaps[strokes] = drawn
        for i, item in enumerate(items):
            if not isinstance(item, Drawing):
                bitmaps[i] = item
        ready = time.perf_counter_ns()
        logits, probs = self.predictor.logits_and_proba(bitmaps)
        self.stats.last_split = (ready - started, time.perf_counter_ns() - ready)
        if errors:
            raise ItemErrors((bitmaps, logits, probs), {strokes[i]: e for i, e in errors})
        return bitmaps, logits, probs

    def ready(self) -> str | None:
        """None when the service takes traffic; else why not (the batcher is saturated)."""
        return self.batcher.saturated()

    def facts(self) -> dict[str, Any]:
        meta = self.predictor.metadata
        return {
            "name": self.name,
            "classes": self.predictor.class_names,
            "model_name": meta.get("model_name"),
            "run_name": meta.get("run_name"),
            "epoch": meta.get("epoch"),
            "val_accuracy": meta.get("val_accuracy"),
            "test_accuracy": meta.get("test_accuracy"),
            "exported_at": meta.get("exported_at"),
            "quantized": is_quantized(meta),
            "file": self.predictor.path.name,
            "qdkit_version": QDKIT_VERSION,
            "limits": {
                "max_strokes": MAX_STROKES,
                "max_points": MAX_POINTS,
                "max_drawings": MAX_DRAWINGS,
                "max_image_pixels": MAX_IMAGE_PIXELS,
                "max_image_side": MAX_IMAGE_SIDE,
                "max_head_bytes": MAX_HEAD_BYTES,
                "max_body_bytes": self.max_body,
                "max_batch": self.batcher.max_batch,
            },
        }

    def predictions(self, bitmaps: np.ndarray, probs: np.ndarray, top_k: int, bitmap: bool) -> list[dict[str, Any]]:
        out = []
        for i, p in enumerate(self.predictor.top_k(probs, top_k)):
            one: dict[str, Any] = {
                "top": [
                    {"class": c, "probability": round(q, 6)} for c, q in zip(p.labels, p.probabilities, strict=True)
                ]
            }
            if bitmap:
                one["bitmap"] = bitmaps[i].tolist()
            out.append(one)
        return out


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
    batcher = service.batcher

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

    from qdkit.serve.v2 import fast_routes, v2_router

    app.include_router(v2_router(service))
    app.router.routes[0:0] = fast_routes(service)
    schemas.truthful_openapi(app)
    return app


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
