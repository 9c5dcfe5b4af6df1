"""The web app's files: ``GET /`` (``index.html``) and ``GET /app/<path>`` (``web/``).

Only regular files under ``web/`` are served: no directory listing, nothing outside it
(``..``, encoded or not, symbolic links out of it), and no dot files. Content types come
from one table rather than the host's MIME database, which differs between systems
(``.js`` is ``application/javascript`` on some). The security headers and
``Cache-Control: no-cache`` are added by ``headers.SecurityHeadersMiddleware``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
"""The web app, shipped inside the package (pyproject.toml package-data)."""

CONTENT_TYPES: Final[dict[str, str]] = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".txt": "text/plain",
    ".wasm": "application/wasm",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
}
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


def content_type(path: str | os.PathLike[str]) -> str:
    return CONTENT_TYPES.get(Path(path).suffix.lower(), DEFAULT_CONTENT_TYPE)


class WebFiles(StaticFiles):
    """``StaticFiles`` (html=False) with our content types, and without dot files."""

    def __init__(self, directory: Path = WEB_DIR) -> None:
        # The directory may not exist (a build without the web app): every path is 404.
        super().__init__(directory=directory, html=False, check_dir=False)

    async def check_config(self) -> None:
        return None  # a missing directory answers 404 instead of failing

    def get_path(self, scope: Scope) -> str:
        path = super().get_path(scope)
        if any(part.startswith(".") for part in Path(path).parts):
            raise HTTPException(status_code=404)
        return path

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if isinstance(response, FileResponse):
            del response.headers["content-type"]
            response.media_type = content_type(full_path)
            response.headers["content-type"] = _with_charset(response.media_type)
        return response


def _with_charset(media_type: str) -> str:
    text = media_type.startswith("text/") or media_type in (
        "application/json", "application/manifest+json", "image/svg+xml")
    return f"{media_type}; charset=utf-8" if text else media_type


def index_page(web_dir: Path = WEB_DIR) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint of ``GET /``: ``index.html`` of ``web_dir`` (404 while there is none)."""
    page = web_dir / "index.html"

    async def index(request: Request) -> Response:
        if not page.is_file():
            raise HTTPException(status_code=404)
        return FileResponse(page, media_type="text/html")

    return index
