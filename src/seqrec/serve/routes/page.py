"""The browser page at ``/`` and the API docs at ``/docs`` (Swagger UI), every file served by this server: the
page ships in ``seqrec/serve/page/``, Swagger UI's script and stylesheet come from the ``fastapi-offline``
package. Nothing is loaded from another origin, so both work offline, and each HTML answer carries a
Content-Security-Policy that allows this origin only.

There is no ``/redoc``: ReDoc's bundle always loads its logo from its vendor's CDN, which the policy would
block (an error in every console), so Swagger UI is the one docs page."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

PAGE_DIR = Path(__file__).resolve().parent.parent / "page"
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
PAGE_ASSETS, DOCS_ASSETS = "/page", "/docs-assets"  # where the two folders are mounted

# The page: its own script and stylesheet, requests to this origin, nothing else (no inline code, no frames).
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# Headers of every answer here: no MIME sniffing, no referrer (a user id in a path stays on this origin).
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


class _Assets(StaticFiles):
    """Static files with the common headers."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(COMMON_HEADERS)
        return response


def _html(body: str | bytes, policy: str) -> HTMLResponse:
    return HTMLResponse(body, headers={"Content-Security-Policy": policy, "Cache-Control": "no-cache",
                                       **COMMON_HEADERS})


def _script_hashes(html: str) -> list[str]:
    """CSP sources for the page's inline scripts: each one allowed by its sha256, nothing else inline."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()}'"
            for code in _INLINE_SCRIPT.findall(html)]


def docs_policy(html: str) -> str:
    """Swagger UI: scripts from this origin plus the page's own inline start-up script (by its hash), and
    data: images (its icons); styles from this origin only (its components set theirs through the DOM)."""
    scripts = " ".join(["'self'", *_script_hashes(html)])
    return (f"default-src 'none'; script-src {scripts}; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def mount_pages(app: FastAPI) -> None:
    """Add ``/`` and ``/docs`` and their static files to ``app`` (none in the OpenAPI document). The app must be
    created with ``docs_url=None, redoc_url=None``, so that FastAPI's pages, which load from a CDN, are not there."""
    page = (PAGE_DIR / "index.html").read_text(encoding="utf-8")
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return _html(page, PAGE_POLICY)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        html = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            # no badge fetched from the public validator: that would send this server's address elsewhere
            swagger_ui_parameters={"validatorUrl": None}).body
        text = bytes(html).decode()
        return _html(text, docs_policy(text))

    app.mount(PAGE_ASSETS, _Assets(directory=PAGE_DIR), name="page-assets")
    app.mount(DOCS_ASSETS, _Assets(directory=DOCS_ASSETS_DIR), name="docs-assets")
