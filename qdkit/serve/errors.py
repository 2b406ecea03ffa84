"""Every bad request becomes a 4xx with one JSON line `{"error": "<field>: <what is wrong>"}`: never a
500 with a traceback, and the server keeps serving."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("qdkit.serve")


class ApiError(Exception):
    """A request the service refuses: HTTP `status` and a message that names the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def json_response(obj: Any, status: int = 200) -> Response:
    """A compact JSON response (faster than FastAPI's encoder for the plain dicts and lists here)."""
    return Response(json.dumps(obj, separators=(",", ":")), status_code=status, media_type="application/json")


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _field(loc: tuple[Any, ...]) -> str:
    where = [str(p) for p in loc]
    if where and where[0] in ("query", "path", "body", "header"):
        return f"{'.'.join(where[1:]) or where[0]} ({where[0]})"
    return ".".join(where) or "request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        return error_response(400, f"{_field(tuple(first.get('loc', ())))}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404 and message == "Not Found":
            message = f"{request.url.path}: no such route (see /docs)"
        elif e.status_code == 405:
            message = f"{request.url.path}: method {request.method} not allowed"
        return JSONResponse({"error": message}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, e: ClientDisconnect) -> Response:  # nobody to answer: one line, no traceback
        log.warning("client went away while sending %s %s (request dropped)", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:  # a bug, not the caller's fault
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(e).__name__}); the server logged it")


class _BodyTooLarge(ApiError):
    pass


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413: by Content-Length before reading a byte,
    or while reading a body that came without one (chunked)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, int(limit)

    def _error(self) -> _BodyTooLarge:
        return _BodyTooLarge(413, f"body: larger than the limit of {self.limit:,} bytes (--max-body-mb)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await error_response(400, "Content-Length: not a number")(scope, receive, send)
                    return
                if length > self.limit:
                    await error_response(413, self._error().message)(scope, receive, send)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._error()
            return message

        await self.app(scope, limited, send)
