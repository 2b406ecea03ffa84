"""/docs without the internet: Swagger UI's script and style served from the installed
`swagger-ui-bundle-v2` package (Apache-2.0; its license ships in the package's dist-info) instead of
FastAPI's default CDN, so the API page works on an offline machine like the drawing page does.

Without the package (an install that skipped it), FastAPI's own /docs (CDN) stays as it is.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"


def swagger_assets() -> Path | None:
    """The folder holding swagger-ui-bundle.js and swagger-ui.css, or None when not installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    folder = Path(str(swagger_ui_path))
    if not (folder / "swagger-ui-bundle.js").is_file() or not (folder / "swagger-ui.css").is_file():
        return None
    return folder


def install_offline_docs(app: FastAPI) -> bool:
    """Serve /docs with local Swagger UI assets; False (and FastAPI's CDN page kept) without them."""
    folder = swagger_assets()
    if folder is None or app.docs_url is None:
        return False
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.routing import Route

    url = app.docs_url  # FastAPI's own /docs route (CDN assets) gives way to the local one
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, Route) and r.path == url)]

    app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")
    title = f"{app.title} - API"

    @app.get(url, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        )

    return True
