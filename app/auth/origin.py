"""Cross-site request forgery and cross-site WebSocket hijacking: where a cookie-borne request
may come from.

A browser attaches the ``agentstream_token`` cookie to every request to this service, also
those that a page on another site makes (a form post, a ``fetch`` with ``no-cors``, a
``new WebSocket``). So a request whose credential is that cookie, and that changes state or
opens a WebSocket, must come from an allowed origin: this service's own (same-origin) or one
on the CORS allow-list (``--cors-origins``; ``*`` never counts here). Browsers send
``Origin`` on every such request (``Referer`` is the fallback when a privacy setting dropped
it); a cookie request with neither is refused. Requests with ``Authorization: Bearer`` or a
``?access_token=`` stream token carry no ambient credential and are not checked: a page
cannot make a browser add either by itself.

Without authentication (``--auth none``) there is no credential to steal, but a page on
another site could still act through the user's browser on a service it can reach (a
``no-cors`` POST to ``…/cancel`` needs no preflight; a ``new WebSocket`` needs no CORS at
all). So there, a browser request (one that carries ``Origin``) that changes state or opens
a WebSocket must come from an allowed origin too; clients that send no ``Origin`` (curl,
SDKs, servers) are not browsers and pass.
"""

from __future__ import annotations

import functools

from aiohttp import web
from yarl import URL

from app.errors import Forbidden

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_of(raw: str) -> str | None:
    """``scheme://host[:port]`` of an Origin or Referer value, lowercased; None if opaque
    (``null``, ``file:``, garbage)."""
    try:
        parsed = URL(raw.strip())
    except (ValueError, TypeError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    host = parsed.host.lower()
    authority = f"[{host}]" if ":" in host else host  # IPv6, as in a Host header
    port = parsed.explicit_port
    if port is not None and port != _DEFAULT_PORTS[parsed.scheme]:
        authority += f":{port}"
    return f"{parsed.scheme}://{authority}"


@functools.lru_cache(maxsize=8)
def allowed_origins(cors_origins: str) -> frozenset[str]:
    """The comma-separated allow-list (``--cors-origins``) as comparable origins; ``*``
    (any origin, for credential-less CORS) is dropped: it never vouches for a cookie."""
    entries = (e.strip() for e in cors_origins.split(","))
    return frozenset(o for o in (_origin_of(e) for e in entries if e and e != "*") if o)


def needs_origin_check(request: web.Request) -> bool:
    """State-changing methods and WebSocket upgrades (a GET, but it opens a two-way channel
    that runs as the user)."""
    if request.method not in SAFE_METHODS:
        return True
    return "websocket" in request.headers.get("Upgrade", "").lower()


def request_origin(request: web.Request) -> str | None:
    """Where the request says it comes from: ``Origin``, else ``Referer``'s origin."""
    raw = request.headers.get("Origin")
    if raw is None:
        raw = request.headers.get("Referer")
    return None if raw is None else _origin_of(raw)


def is_same_origin(request: web.Request, origin: str) -> bool:
    """The origin names the host (and port) this request was sent to.

    The scheme is not compared: behind a TLS-terminating proxy the service sees ``http``
    while the page is ``https``. The host a browser sends in ``Host`` is the one it
    connected to, which a page cannot choose for another site's request.
    """
    host = request.headers.get("Host", "").strip().lower()
    return bool(host) and origin.split("://", 1)[1] == host


def check_cookie_origin(request: web.Request, allowed: frozenset[str]) -> None:
    """Refuse (403 ``origin_not_allowed``) a cookie-authenticated request that changes state
    or upgrades to a WebSocket unless it comes from this origin or an allowed one."""
    if not needs_origin_check(request):
        return
    origin = request_origin(request)
    if origin is None:
        raise Forbidden(
            "origin_not_allowed",
            "a request authenticated by cookie must carry an Origin header; "
            "non-browser clients send 'Authorization: Bearer <token>'")
    if origin in allowed or is_same_origin(request, origin):
        return
    raise Forbidden("origin_not_allowed",
                    f"requests from origin {origin[:100]!r} may not use the session cookie")


def check_browser_origin(request: web.Request, allowed: frozenset[str]) -> None:
    """Without authentication: refuse a state-changing or upgrading request whose ``Origin``
    names another site (403 ``origin_not_allowed``); no ``Origin``, no browser, no check."""
    if "Origin" not in request.headers or not needs_origin_check(request):
        return
    origin = request_origin(request)
    if origin is not None and (origin in allowed or is_same_origin(request, origin)):
        return
    raise Forbidden("origin_not_allowed",
                    f"requests from origin {(origin or 'null')[:100]!r} may not act here; "
                    "add it to --cors-origins")
