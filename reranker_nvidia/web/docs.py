"""``/docs`` (Swagger UI) and ``/redoc`` served with their assets from this process, so the
API documentation renders on a machine with no internet (air-gapped self-hosted NIM)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

# The fastapi-offline package ships the Swagger UI and ReDoc bundles; only its files are used.
ASSETS_PACKAGE = "fastapi_offline"
ASSETS_PATH = "/docs-assets"


def add_offline_docs(app: FastAPI) -> None:
    """Add ``/docs`` and ``/redoc`` to an app created with ``docs_url=None, redoc_url=None``."""
    assets = files(ASSETS_PACKAGE) / "static"
    app.mount(ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    title = f"{app.title} - API"
    favicon = f"{ASSETS_PATH}/favicon.png"
    pages: dict[str, Callable[[], HTMLResponse]] = {
        "/docs": lambda: get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=favicon,
        ),
        "/redoc": lambda: get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        ),
    }
    for path, page in pages.items():
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
