"""`qdkit serve`: the app under uvicorn, in one process or `workers` processes sharing one socket.

The socket is bound here first, so a taken port or a bad host is one line (QdkitError) and the
printed URL carries the real port (port 0 picks a free one). Ctrl-C / SIGTERM: uvicorn finishes the
requests in flight and stops. With --grpc-port, the gRPC server (qdkit.serve.grpc) runs in the same
event loop on the same app's model and batcher, and stops with it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qdkit.errors import QdkitError
from qdkit.inference.onnxmodel import default_model_path
from qdkit.workers import sigterm_as_interrupt

GRACEFUL_SHUTDOWN_S = 5


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise QdkitError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise QdkitError(f"{host}:{port}: cannot listen ({e.strerror}); pick another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return f"http://{shown}:{port}/"


def _default_model() -> Path:
    try:
        return default_model_path()
    except QdkitError:
        raise QdkitError(
            "no exported model found in artifacts/; run `qdkit export`, or name one: qdkit serve path/to/model.onnx"
        ) from None


def open_browser(url: str, echo: Callable[[str], None]) -> bool:
    """Open `url` in the default browser; when none can be opened (a server without a display), say so."""
    import webbrowser

    try:
        opened = webbrowser.open(url)
    except Exception:  # a broken browser entry is the same as none
        opened = False
    if not opened:
        echo(f"qdkit serve: no web browser could be opened here; open {url} yourself")
    return opened


def serve(
    model: str | os.PathLike | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_batch: int = 64,
    max_body: int | None = None,
    name: str | None = None,
    threads: int | None = None,
    open_page: bool = False,
    grpc_port: int | None = None,
    cors_origins: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> None:
    """Serve `model` [default: the newest exported one] until Ctrl-C / SIGTERM; `open_page` opens the
    page in the default browser (the socket already listens, so the browser's request waits for the server)."""

    from qdkit.inference.onnxmodel import model_class_names
    from qdkit.inference.predictor import Predictor
    from qdkit.inference.v2spec import DEFAULT_NAME
    from qdkit.serve.app import DEFAULT_MAX_BODY, create_app

    path = Path(model) if model is not None else _default_model()
    if grpc_port is not None and workers > 1:
        raise QdkitError("--grpc-port: gRPC runs in one server process; use it with --workers 1")
    if "*" in cors_origins:
        echo = _warning_after_start(echo, "--cors-origin '*' lets a page on any web site call this service")

    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    settings: dict[str, Any] = {
        "name": name or DEFAULT_NAME,
        "max_batch": max_batch,
        "max_body": max_body or DEFAULT_MAX_BODY,
        "threads": threads,
        "cors_origins": list(cors_origins),
    }
    # One process serves this app; with --workers each worker builds its own, so this one only reads
    # the class names for the start line (no session, no app).
    app = (
        create_app(Predictor(path, threads=threads, spin=False, warn=lambda m: None), **settings)
        if workers == 1
        else None
    )
    classes = len(app.state.service.predictor.class_names) if app is not None else len(model_class_names(path))
    sock = bind(host, port)
    url = url_of(sock, host)
    if open_page:
        threading.Thread(target=open_browser, args=(url, echo), daemon=True).start()
    line = (
        f"qdkit serve: {url} (model {path}, {classes} classes, "
        f"{workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}, "
        f"max batch {max_batch}; API at /docs{{grpc}}, Ctrl-C stops)"
    )
    _run(app, sock, path, settings, workers, host, grpc_port, line, echo)


def _run(
    app: Any,
    sock: socket.socket,
    path: Path,
    settings: dict[str, Any],
    workers: int,
    host: str,
    grpc_port: int | None,
    line: str,
    echo: Callable[[str], None],
) -> None:
    """uvicorn on the bound socket (with the gRPC server beside it), or its worker processes."""
    import uvicorn

    try:
        with sigterm_as_interrupt():  # uvicorn re-raises the signal it stopped on: exit like Ctrl-C
            if app is not None:
                server = uvicorn.Server(uvicorn.Config(app, **_uvicorn_options()))
                if grpc_port is None:
                    echo(line.format(grpc=""))
                    server.run(sockets=[sock])
                else:
                    _run_with_grpc(server, sock, app.state.service, host, grpc_port, line, echo)
            else:
                from uvicorn.supervisors import Multiprocess

                os.environ["QDKIT_SERVE"] = json.dumps({"model": os.fspath(path.resolve()), **settings})
                config = uvicorn.Config(
                    "qdkit.serve.app:app_from_environment", factory=True, workers=workers, **_uvicorn_options()
                )
                echo(line.format(grpc=""))
                Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def _warning_after_start(echo: Callable[[str], None], warning: str) -> Callable[[str], None]:
    """`echo` that says `warning` right after the start line (the line that names the URL comes first)."""

    def say(text: str) -> None:
        echo(text)
        if text.startswith("qdkit serve: http"):
            echo(f"qdkit serve: warning: {warning}")

    return say


def _uvicorn_options() -> dict[str, Any]:
    from qdkit.serve.protocol import MAX_HEAD_BYTES, http_protocol

    return {
        "http": http_protocol(),  # a request line + headers over MAX_HEAD_BYTES: 431
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }


def _run_with_grpc(
    server: Any, sock: socket.socket, service: Any, host: str, port: int, line: str, echo: Callable[[str], None]
) -> None:
    """uvicorn and the gRPC server in one event loop; when uvicorn stops (Ctrl-C, SIGTERM), gRPC
    finishes its calls in flight (up to GRACEFUL_SHUTDOWN_S) and stops too."""
    import asyncio

    from qdkit.serve.grpc import start_grpc

    async def main() -> None:
        grpc_server, bound = await start_grpc(service, host, port)
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        echo(line.format(grpc=f", gRPC at {shown}:{bound}"))
        try:
            await server.serve(sockets=[sock])
        finally:
            await grpc_server.stop(GRACEFUL_SHUTDOWN_S)

    try:  # the event loop uvicorn would use (uvloop where installed)
        from uvicorn._compat import asyncio_run

        asyncio_run(main(), loop_factory=server.config.get_loop_factory())
    except ImportError:  # an older uvicorn
        asyncio.run(main())
