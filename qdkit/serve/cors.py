"""--cors-origin: which web pages on other origins may call the service (Starlette's CORS middleware).

Off by default (a browser then lets only pages served by qdkit serve itself read its answers). A
refused preflight is a 400 with the one-line JSON error every bad request gets.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

EXPOSED = ["Inference-Header-Content-Length", "Content-Encoding"]


class JsonCORSMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.origins = origins
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=EXPOSED,
            max_age=600,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        origin = request_headers.get("origin", "")
        if not self.is_allowed_origin(origin):
            message = f"Origin: {origin!r} is not allowed (qdkit serve --cors-origin allows {', '.join(self.origins)})"
        else:
            message = (
                f"Access-Control-Request-Method: {request_headers.get('access-control-request-method')!r} "
                "is not allowed (GET, POST, OPTIONS)"
            )
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return JSONResponse({"error": message}, status_code=400, headers=headers)


def add_cors(app: FastAPI, origins: list[str]) -> None:
    app.add_middleware(JsonCORSMiddleware, origins=origins)
