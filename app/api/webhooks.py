"""Webhooks at the edge: the answer link a question's webhook carries, the check of a URL a
run names, and the delivery task's place in the app's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

from aiohttp import web

from app.api.common import json_response, read_json
from app.config import Settings
from app.engine.engine import Engine
from app.errors import InvalidInput, NotFound
from app.state import STATE
from app.webhooks.deliverer import Deliverer
from app.webhooks.guard import WebhookPolicy, check_url, parse_hosts
from app.webhooks.outbox import WebhookPlanner, token_hash
from protocol.webhooks import AnswerRequest

routes = web.RouteTableDef()
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,100}$")
DELIVERER = web.AppKey("webhook_deliverer", Deliverer)


def webhook_policy(settings: Settings) -> WebhookPolicy:
    return WebhookPolicy(parse_hosts(settings.webhook_allow_hosts),
                         settings.webhook_allow_private)


def check_webhook(settings: Settings, url: str | None) -> None:
    """A run's own ``webhook_url``: webhooks must be on, the URL allowed (422 otherwise)."""
    if url is None:
        return
    if not settings.webhook_secret:
        raise InvalidInput("webhooks_not_configured",
                           "this server has no webhook secret: webhook_url is not accepted")
    check_url(url, webhook_policy(settings))


@routes.post("/webhooks/answers/{token}")
async def answer_link(request: web.Request) -> web.Response:
    """The one-time answer link: the token is the credential (no API key needed)."""
    st = request.app[STATE]
    token = request.match_info["token"]
    if not _TOKEN.match(token):
        raise NotFound("answer_token_not_found", "no such answer link (used or expired)")
    body = await read_json(request, AnswerRequest, st.settings.max_body)
    record = await st.engine.answer_with_token(token_hash(token), body.value)
    return json_response(Engine.run_info(record))


def setup_webhooks(app: web.Application, settings: Settings, engine: Engine) -> None:
    """Webhooks are on when a secret is set: plan outbox rows with the lifecycle's events,
    run the delivery loop while the app runs."""
    app.add_routes(routes)
    if not settings.webhook_secret:
        return
    engine.runs.side_ops = WebhookPlanner(settings.webhook_url)
    may_deliver = None
    if engine.clustered:
        async def may_deliver(conversation_id: str) -> bool:
            return await engine.peers.acquire(conversation_id) is None

    app[DELIVERER] = Deliverer(engine.store, settings.webhook_secret, webhook_policy(settings),
                               max_attempts=settings.webhook_max_attempts,
                               may_deliver=may_deliver)
    app.cleanup_ctx.append(_delivery_ctx)


async def _delivery_ctx(app: web.Application) -> AsyncIterator[None]:
    """Starts after the store opened (an earlier cleanup_ctx step), stops before it closes."""
    task = asyncio.create_task(app[DELIVERER].run(), name="webhook-deliverer")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
