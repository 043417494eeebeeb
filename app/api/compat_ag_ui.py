"""AG-UI: ``POST /v1/ag-ui/{agent}`` takes a ``RunAgentInput`` and streams AG-UI events, as
``HttpAgent`` from ``@ag-ui/client`` expects. Mapping: ``app/compat/ag_ui.py``. Errors are
our native coded JSON (the client raises with status and payload).
"""

from __future__ import annotations

from aiohttp import web

from app.api.common import read_json
from app.api.compat_stream import begin, state_of, stream_slot, stream_view
from app.auth.access import principal_of
from app.compat.ag_ui import AgUiView, RunAgentInput, plan
from app.compat.common import MappingError, takes_messages
from app.errors import InvalidInput

routes = web.RouteTableDef()


@routes.post("/v1/ag-ui/{agent}")
async def run_agent(request: web.Request) -> web.StreamResponse:
    st = state_of(request)
    agent = st.agents.get(request.match_info["agent"])
    body = await read_json(request, RunAgentInput, st.settings.max_body)
    try:
        mapped = plan(body, agent.name, takes_messages(agent.card.input_schema))
    except MappingError as exc:
        raise InvalidInput(exc.code, exc.message) from None
    with stream_slot(st, principal_of(request)):
        target = await begin(request, mapped)
        view = AgUiView(body.threadId, body.runId, target.run_id)
        return await stream_view(request, target, view)
