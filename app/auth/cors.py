"""CORS with aiohttp-cors (a maintained implementation of the preflight rules) and an
explicit origin allow-list; a wildcard with credentials is refused at start."""

from __future__ import annotations

import aiohttp_cors
from aiohttp import web


def check_cors(origins: list[str], credentials: bool) -> None:
    if credentials and "*" in origins:
        raise ValueError("cors_origins '*' cannot be combined with cors_credentials")


def setup_cors(app: web.Application, origins: list[str], credentials: bool) -> None:
    if not origins:
        return
    check_cors(origins, credentials)
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=credentials,
        # the run and conversation of a compat response (resume natively), the AI SDK's
        # stream marker, and the idempotent-start replay marker
        expose_headers=("Content-Type", "Retry-After", "X-Agentstream-Run-Id",
                        "X-Agentstream-Conversation-Id", "x-vercel-ai-ui-message-stream"),
        allow_headers=("Authorization", "Content-Type", "Last-Event-ID", "Accept",
                       "X-Request-ID", "Idempotency-Key"),
        allow_methods=("GET", "POST", "DELETE"),
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        cors.add(route)
