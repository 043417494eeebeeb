"""The Vercel AI SDK UI message stream: ``POST /v1/ai-sdk/{agent}/chat`` (what
``DefaultChatTransport`` posts) and ``GET /v1/ai-sdk/{agent}/chat/{id}/stream`` (its resume
convention: the active run of chat ``id`` from its start, or ``204`` when none is active).
Mapping: ``app/compat/ai_sdk.py``. Errors are our native coded JSON (the transport throws
an Error with the body text).
"""

from __future__ import annotations

from aiohttp import web

from app.api.common import path_id, read_json
from app.api.compat_stream import Target, begin, state_of, stream_slot, stream_view
from app.auth.access import conversation_for, principal_of
from app.compat.ai_sdk import HEADERS, ChatBody, UiView, plan
from app.compat.common import MappingError, takes_messages
from app.errors import Expired, InvalidInput, NotFound

routes = web.RouteTableDef()


@routes.post("/v1/ai-sdk/{agent}/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    st = state_of(request)
    agent = st.agents.get(request.match_info["agent"])
    body = await read_json(request, ChatBody, st.settings.max_body)
    try:
        mapped = plan(body, agent.name, takes_messages(agent.card.input_schema))
    except MappingError as exc:
        raise InvalidInput(exc.code, exc.message) from None
    with stream_slot(st, principal_of(request)):
        target = await begin(request, mapped)
        return await stream_view(request, target, UiView(target.run_id), HEADERS)


@routes.get("/v1/ai-sdk/{agent}/chat/{chat_id}/stream")
async def resume(request: web.Request) -> web.StreamResponse:
    """``useChat({resume: true})`` calls this on every mount: a chat that has no active run
    (or no conversation yet, or one the caller may not see) is ``204``, which it ignores."""
    st = state_of(request)
    principal = principal_of(request)
    st.agents.get(request.match_info["agent"])
    cid = path_id(request, "chat_id")
    try:
        key = (await conversation_for(st.engine, principal, cid)).record.conversation_id
    except (NotFound, Expired):
        return web.Response(status=204)
    runs = [r.visible for r in list(st.engine.active.values())
            if r.visible.conversation_id == key and r.visible.status != "queued"]
    if not runs:
        return web.Response(status=204)
    record = max(runs, key=lambda r: r.first_seq)
    with stream_slot(st, principal):
        target = Target(key, record.run_id, record.first_seq - 1)
        return await stream_view(request, target, UiView(record.run_id), HEADERS)
