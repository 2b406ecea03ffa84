"""The serving commands: `qdkit serve` (the page, the HTTP API, the Open Inference Protocol over
HTTP and gRPC) and `qdkit triton` (a local Triton server on an exported repository)."""

from __future__ import annotations

import click

from qdkit.cli.base import main


@main.command()
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 opens the service to other machines.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes sharing the port (each with its own model session and batcher).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Most drawings per onnxruntime call when concurrent requests are batched.",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(0.01, 1024),
    default=4.0,
    show_default=True,
    help="Largest request body in MiB (larger ones get 413).",
)
@click.option("--name", default="qdkit", show_default=True, help="The model's name in the v2 API URLs.")
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="onnxruntime intra-op threads per worker [default: CPU count / workers].",
)
@click.option("--open", "open_page", is_flag=True, help="Open the drawing page in the default web browser.")
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve the Open Inference Protocol over gRPC on this port (on --host; 0: a free one) [default: off].",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="A web origin (https://example.com) whose pages may call the API; repeatable; '*' allows any [default: none].",
)
def serve(
    model: str | None,
    host: str,
    port: int,
    workers: int,
    max_batch: int,
    max_body_mb: float,
    name: str,
    threads: int | None,
    open_page: bool,
    grpc_port: int | None,
    cors_origins: tuple[str, ...],
) -> None:
    """Serve MODEL [default: newest artifacts/*/model.onnx]: the drawing page at /, POST /predict,
    the Open Inference Protocol under /v2, the API docs at /docs. Ctrl-C stops it."""
    from qdkit.serve.server import serve as run_server

    run_server(
        model,
        host=host,
        port=port,
        workers=workers,
        max_batch=max_batch,
        max_body=int(max_body_mb * 1024 * 1024),
        name=name,
        threads=threads,
        open_page=open_page,
        grpc_port=grpc_port,
        cors_origins=cors_origins,
        echo=lambda line: click.echo(line, err=True),
    )


@main.command()
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option(
    "--python",
    "python",
    type=click.Path(dir_okay=False),
    default=None,
    help="The Python whose environment runs the Python-backend models (qdkit, onnxruntime, numpy<2) "
    "[default: $QDKIT_TRITON_PYTHON, else this Python].",
)
@click.option("--verbose", is_flag=True, help="Pass all of tritonserver's log through (default: its errors only).")
def triton(repo: str, http_port: int, grpc_port: int, python: str | None, verbose: bool) -> None:
    """Run a local Triton Inference Server on REPO (from `qdkit export --triton REPO`), on 127.0.0.1.

    Uses `tritonserver` on PATH, else the one inside the nvidia-pytriton package (Triton 2.51 with
    its Python backend: export with --triton-backend python); its Python-backend models run in the
    environment of --python, which needs qdkit, onnxruntime and numpy<2 (docs/serve.md, Triton).
    Logs one line when every model is ready; Ctrl-C or SIGTERM stops it.
    """
    from qdkit.deploy.tritonserver import run_triton

    run_triton(
        repo,
        http_port=http_port,
        grpc_port=grpc_port,
        verbose=verbose,
        echo=lambda line: click.echo(line, err=True),
        python=python,
    )
