"""OpenAI-compatible endpoints: ``POST /v1/chat/completions``, ``GET /v1/models[/{id}]``, and
a clear refusal of ``POST /v1/responses``. Mapping: ``app/compat/openai_chat.py``.

Errors use OpenAI's shape ``{"error": {message, type, param, code}}`` with our status and
code. A non-streaming completion whose run failed carries ``x-should-retry: false``: the
SDK retries 5xx by default, and a retried POST would start a second run.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import wraps

from aiohttp import web

from app.api.common import read_json
from app.api.compat_stream import begin, collect_view, state_of, stream_slot, stream_view
from app.api.errors import http_status
from app.auth.access import principal_of
from app.compat.common import MappingError, takes_messages
from app.compat.openai_chat import (
    ChatRequest,
    ChatView,
    completion,
    error_body,
    model_list,
    plan,
)
from app.errors import AgentstreamError, InvalidInput

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NO_RETRY = {"x-should-retry": "false"}


# Where errors take OpenAI's shape (app.server's error middleware uses this too).
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models", "/v1/responses")


def openai_error(status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(status, code, message, param), status=status,
                             headers=headers)


def openai_errors(handler: Handler) -> Handler:
    """Our coded errors in OpenAI's shape; an unknown agent is OpenAI's ``model_not_found``."""

    @wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except MappingError as exc:
            return openai_error(422, exc.code, exc.message, exc.param)
        except AgentstreamError as exc:
            if isinstance(exc, InvalidInput) and exc.code == "unknown_agent":
                return openai_error(404, "model_not_found", exc.message, "model")
            return openai_error(http_status(exc), exc.code, exc.message)

    return wrapped


@routes.post("/v1/chat/completions")
@openai_errors
async def chat_completions(request: web.Request) -> web.StreamResponse:
    st = state_of(request)
    body = await read_json(request, ChatRequest, st.settings.max_body)
    agent = st.agents.get(body.model)
    mapped = plan(body, takes_messages(agent.card.input_schema))
    if body.stream:
        with stream_slot(st, principal_of(request)):
            target = await begin(request, mapped)
            view = _view(target.run_id, target.after, body.model)
            return await stream_view(request, target, view)
    target = await begin(request, mapped)
    view = _view(target.run_id, target.after, body.model)
    frames = view.opening() + await collect_view(request, target, view)
    headers = target.headers()
    if view.error is not None:
        status, error = view.error
        return web.json_response(error, status=status, headers={**headers, **NO_RETRY})
    return web.json_response(completion(view, frames), headers=headers)


def _view(run_id: str, after: int, model: str) -> ChatView:
    # One id per completion: a follow-up that answers a question is a new completion of
    # the same run, so it gets the position it starts from.
    return ChatView(f"chatcmpl-{run_id}-{after}", model, int(time.time()), run_id)


@routes.get("/v1/models")
@openai_errors
async def list_models(request: web.Request) -> web.Response:
    st = state_of(request)
    return web.json_response(model_list([c.name for c in st.agents.cards()], 0))


@routes.get("/v1/models/{model}")
@openai_errors
async def get_model(request: web.Request) -> web.Response:
    st = state_of(request)
    name = request.match_info["model"]
    st.agents.get(name)
    return web.json_response(model_list([name], 0)["data"][0])


@routes.post("/v1/responses")
async def responses(request: web.Request) -> web.Response:
    """Not offered (README says why): a coded refusal the SDK does not retry."""
    return openai_error(
        404, "unsupported_endpoint",
        "the Responses API is not offered; use POST /v1/chat/completions (same agents, "
        "streaming, tool calls, questions)", headers=NO_RETRY)
