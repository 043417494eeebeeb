"""The browser client module and the demo page, served from ``app/static``.

A fixed table of files (no path from the request reaches the filesystem), read once at
start-up. Outside ``/v1/`` so the auth middleware leaves them open: they hold no data, and
the page authenticates its own API calls. Headers keep a strict CSP possible: the page has
no inline script or style, and its own CSP allows only this origin.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

STATIC_PREFIX = "/client"
# name -> content type
FILES = {
    "agentstream.js": "text/javascript; charset=utf-8",
    "agentstream.d.ts": "text/plain; charset=utf-8",
    "react.js": "text/javascript; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}
PAGE = "index.html"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _load(name: str) -> bytes:
    return resources.files("app").joinpath("static", name).read_bytes()


def _handler(body: bytes, content_type: str, extra: dict[str, str]) -> Handler:
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    headers = {"Content-Type": content_type, "ETag": etag, "Cache-Control": "no-cache",
               "X-Content-Type-Options": "nosniff", **extra}

    async def serve(request: web.Request) -> web.StreamResponse:
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers=headers)

    return serve


def add_static_routes(app: web.Application, demo_page: bool) -> None:
    """``/client/<file>`` always; the demo page at ``/`` unless ``--demo-page false``."""
    for name, content_type in FILES.items():
        app.router.add_get(f"{STATIC_PREFIX}/{name}", _handler(_load(name), content_type, {}))
    if demo_page:
        app.router.add_get("/", _handler(_load(PAGE), "text/html; charset=utf-8", {
            "Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin"}))
