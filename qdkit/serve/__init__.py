"""`qdkit serve`: the live drawing page and the inference service (see docs/serve.md).

`create_app(model)` is the ASGI app (FastAPI) for any ASGI server; `serve(model, ...)` runs it
under uvicorn. Imported lazily, so `import qdkit.serve` costs nothing until one is used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from qdkit.serve.app import create_app

        return create_app
    if name == "serve":
        from qdkit.serve.server import serve

        return serve
    raise AttributeError(f"module 'qdkit.serve' has no attribute {name!r}")
