"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

It is generated, not written: request and response bodies are the very msgspec types the
handlers decode and encode (``msgspec.json.schema_components`` turns them into JSON Schema
2020-12, which is what OpenAPI 3.1 speaks), so a field added to a Struct is in the document
at once. What msgspec cannot know (which path takes which type, the statuses, the SSE
endpoints) is the table below; ``tests/api/test_openapi.py`` fails when a route of the app
is missing from it, so a new endpoint cannot go undocumented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from app.api.http import StreamToken
from app.compat.ag_ui import RunAgentInput
from app.compat.ai_sdk import ChatBody
from app.compat.openai_chat import ChatRequest
from app.state import STATE
from protocol.events import EVENT_TYPES
from protocol.history import (
    ConversationDetail,
    ConversationList,
    Deleted,
    RunDetail,
    RunList,
)
from protocol.messages import (
    ID_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    AgentCard,
    AgentList,
    ErrorBody,
    HealthStatus,
    InputRequest,
    RunInfo,
    StartRunRequest,
    StartRunResponse,
)
from protocol.schedules import CreateScheduleRequest, Schedule, ScheduleList
from protocol.webhooks import AnswerRequest

SSE = "text/event-stream"
REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"{(\w+)}")
# Every /v1 path may answer these (auth, limits, shutdown); listed once per operation.
COMMON_ERRORS = (400, 401, 403, 429, 503)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    responses: dict[int, type | str | None]  # a Struct, SSE, "text" or None (no body)
    body: type | None = None
    query: tuple[tuple[str, str], ...] = ()  # (name, description); all optional strings
    headers: tuple[tuple[str, str], ...] = ()
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = field(default=("runs",))
    # OpenAPI links from the first 2xx response: (operationId, parameter, response field),
    # so a client (and schemathesis' stateful phase) can follow a created resource.
    links: tuple[tuple[str, str, str], ...] = ()
    # The body of an error: ours, or "json" where a foreign protocol dictates its own shape.
    error_shape: type | str = ErrorBody


# ASCII digits, or empty (no position), as browsers send it
_POSITION = {"type": "string", "pattern": "^([0-9]{1,18})?$"}
_AGENT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_PATH_PATTERNS = {"agent": _AGENT_PATTERN, "model": _AGENT_PATTERN,
                  "token": r"^[A-Za-z0-9_-]{20,100}$"}
_TYPE_NAMES = "|".join(sorted(EVENT_TYPES))
_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "last_event_id": _POSITION,
    "after": _POSITION,
    "limit": {"type": "string", "pattern": "^[0-9]{1,4}$"},
    "types": {"type": "string", "pattern": f"^(({_TYPE_NAMES})(,({_TYPE_NAMES}))*)?$"},
    "snapshot": {"enum": ["", "0", "1", "true", "false"]},
    "agent": {"type": "string", "pattern": _AGENT_PATTERN},
    "conversation_id": {"type": "string", "pattern": ID_PATTERN},
}
_HEADER_SCHEMAS = {"Last-Event-ID": _POSITION,
                   "Idempotency-Key": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN}}
RESUME = (("Last-Event-ID", "resume after this seq (ASCII digits)"),)
STREAM_QUERY = (("types", "comma-separated event types (done always comes)"),
                ("snapshot", "1: merged items first, then live"))
RESUME_QUERY = (("last_event_id", "resume after this seq, for a first EventSource connect"),
                ("access_token", "a stream token (EventSource cannot send headers)"))

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/v1/runs", "Start a run (SSE of the run with Accept: text/event-stream)",
              {202: StartRunResponse, 200: SSE}, body=StartRunRequest,
              errors=(404, 409, 410, 413, 415, 422),
              headers=(("Idempotency-Key", "the same key and body return the same run"),
                       *RESUME),
              links=(("get_v1_runs_by_run_id", "run_id", "run_id"),
                     ("get_v1_runs_by_run_id_events", "run_id", "run_id"),
                     ("post_v1_runs_by_run_id_input", "run_id", "run_id"),
                     ("post_v1_runs_by_run_id_cancel", "run_id", "run_id"),
                     ("get_v1_conversations_by_conversation_id_events", "conversation_id",
                      "conversation_id"),
                     ("post_v1_conversations_by_conversation_id_stream_token",
                      "conversation_id", "conversation_id"))),
    Operation("get", "/v1/runs/{run_id}", "A run's committed status and its output",
              {200: RunDetail}, query=(("output", "0 leaves out the assembled output"),),
              errors=(404, 410, 422)),
    Operation("get", "/v1/runs", "A conversation's runs, oldest first", {200: RunList},
              query=(("conversation_id", "required"), ("after", "runs whose first seq is after"),
                     ("limit", "page size")), errors=(404, 410, 422)),
    Operation("get", "/v1/runs/{run_id}/events", "SSE of one run: replay, then live, to done",
              {200: SSE, 204: None}, headers=RESUME, query=(*RESUME_QUERY, *STREAM_QUERY),
              errors=(404, 410, 422)),
    Operation("post", "/v1/runs/{run_id}/input", "Answer a require_user_input (first wins)",
              {200: RunInfo}, body=InputRequest, errors=(404, 409, 410, 413, 415, 422)),
    Operation("post", "/v1/runs/{run_id}/cancel", "Cancel a run (idempotent)",
              {202: RunInfo, 200: RunInfo}, errors=(404, 410, 422)),
    Operation("get", "/v1/conversations/{conversation_id}/events",
              "SSE of a whole conversation (stays open); a JSON page with Accept: "
              "application/json", {200: SSE}, headers=RESUME,
              query=(*RESUME_QUERY, *STREAM_QUERY, ("after", "JSON page: after this seq"),
                     ("limit", "JSON page size")),
              errors=(404, 410, 422), tags=("conversations",)),
    Operation("get", "/v1/conversations", "The caller's conversations, newest first",
              {200: ConversationList},
              query=(("cursor", "from the previous page"), ("limit", "page size"),
                     ("agent", "only this agent's"), ("status", "of the latest run")),
              errors=(422,), tags=("conversations",)),
    Operation("get", "/v1/conversations/{conversation_id}", "A conversation with its runs",
              {200: ConversationDetail}, errors=(404, 410, 422), tags=("conversations",)),
    Operation("delete", "/v1/conversations/{conversation_id}",
              "End its open runs, then delete it", {200: Deleted}, errors=(404, 409, 410, 422),
              tags=("conversations",)),
    Operation("post", "/webhooks/answers/{token}", "A one-time answer link from a webhook",
              {200: RunInfo}, body=AnswerRequest, errors=(404, 409, 410, 413, 415, 422),
              tags=("webhooks",)),
    Operation("post", "/v1/conversations/{conversation_id}/stream-token",
              "A short-lived read token for ?access_token=", {201: StreamToken},
              errors=(404, 410, 422), tags=("conversations",)),
    Operation("get", "/v1/agents", "Agent cards", {200: AgentList}, tags=("agents",)),
    Operation("post", "/v1/schedules", "Create a recurring run", {201: Schedule},
              body=CreateScheduleRequest, errors=(404, 413, 415, 422), tags=("schedules",),
              links=(("get_v1_schedules_by_schedule_id", "schedule_id", "schedule_id"),
                     ("delete_v1_schedules_by_schedule_id", "schedule_id", "schedule_id"))),
    Operation("get", "/v1/schedules", "The caller's schedules", {200: ScheduleList},
              tags=("schedules",)),
    Operation("get", "/v1/schedules/{schedule_id}", "One schedule", {200: Schedule},
              errors=(404, 422), tags=("schedules",)),
    Operation("delete", "/v1/schedules/{schedule_id}", "Delete a schedule", {204: None},
              errors=(404, 422), tags=("schedules",)),
    Operation("get", "/v1/ws", "WebSocket upgrade (see PROTOCOL.md)", {101: None},
              errors=(426,), tags=("websocket",)),
    Operation("post", "/v1/chat/completions",
              "OpenAI Chat Completions: model = agent (SSE chunks with stream: true)",
              {200: "json"}, body=ChatRequest, errors=(404, 413, 415, 422),
              error_shape="json", tags=("compat",)),
    Operation("get", "/v1/models", "OpenAI model list: the agents", {200: "json"},
              error_shape="json", tags=("compat",)),
    Operation("get", "/v1/models/{model}", "One OpenAI model (an agent)", {200: "json"},
              errors=(404,), error_shape="json", tags=("compat",)),
    Operation("post", "/v1/responses", "Not offered: 404 unsupported_endpoint (see README)",
              {}, errors=(404,), error_shape="json", tags=("compat",)),
    Operation("post", "/v1/ai-sdk/{agent}/chat", "Vercel AI SDK UI message stream (SSE)",
              {200: SSE}, body=ChatBody, errors=(404, 409, 413, 415, 422), tags=("compat",)),
    Operation("get", "/v1/ai-sdk/{agent}/chat/{chat_id}/stream",
              "AI SDK resume: the chat's active run, else 204", {200: SSE, 204: None},
              errors=(404, 422), tags=("compat",)),
    Operation("post", "/v1/ag-ui/{agent}", "AG-UI HttpAgent run (SSE)", {200: SSE},
              body=RunAgentInput, errors=(404, 409, 413, 415, 422), tags=("compat",)),
    Operation("get", "/healthz", "Liveness", {200: HealthStatus}, tags=("operations",)),
    Operation("get", "/readyz", "Readiness (503 while the store fails or at shutdown)",
              {200: HealthStatus, 503: HealthStatus}, tags=("operations",)),
    Operation("get", "/metrics", "Prometheus text", {200: "text"}, tags=("operations",)),
    Operation("get", "/openapi.json", "This document", {200: "json"}, tags=("operations",)),
)


def _content(kind: type | str | None, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    if kind is None:
        return {}
    if kind == SSE:  # one frame per event: id = seq, event = type, data = the envelope
        frame = {"type": "object", "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$"}, "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "retry": {"type": "integer"}}}
        return {"content": {SSE: {"schema": frame}}}
    if kind == "text":
        return {"content": {"text/plain": {"schema": {"type": "string"}}}}
    if kind == "json":
        return {"content": {"application/json": {"schema": {"type": "object"}}}}
    assert isinstance(kind, type)
    return {"content": {"application/json": {"schema": refs[kind]}}}


def _parameters(op: Operation, agents: list[str] | None) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": (
            {"enum": agents} if agents is not None and name in _PATH_PATTERNS
            else {"type": "string", "pattern": _PATH_PATTERNS.get(name, ID_PATTERN)})}
        for name in _PATH_PARAM.findall(op.path)
    ]
    params += [{"name": n, "in": "query", "required": d == "required", "description": d,
                "schema": _QUERY_SCHEMAS.get(n, {"type": "string"})} for n, d in op.query]
    params += [{"name": n, "in": "header", "required": False, "description": d,
                "schema": _HEADER_SCHEMAS.get(n, {"type": "string"})} for n, d in op.headers]
    return params


def build(
    operations: tuple[Operation, ...] = OPERATIONS, agents: list[AgentCard] | None = None,
    min_interval: float | None = None, webhooks: bool = True,
) -> dict[str, Any]:
    """The document; ``agents`` and ``min_interval`` make it this deployment's (the agent
    names it knows, their input schemas, its shortest schedule interval)."""
    types = sorted({t for op in operations
                    for t in (op.body, *op.responses.values()) if isinstance(t, type)}
                   | {ErrorBody}, key=lambda t: t.__name__)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        names = None if agents is None else sorted(card.name for card in agents)
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs, names)
    _specialize(components, agents, min_interval)
    if not webhooks:  # a run may name a webhook only where deliveries are signed
        for name in ("StartRunRequest", "StartCommand"):
            components.get(name, {}).get("properties", {}).pop("webhook_url", None)
    return {
        "openapi": "3.1.0",
        "info": {"title": "agentstream", "version": "1",
                 "description": "Stream AI-agent runs over SSE and WebSocket. The wire "
                                "contract is PROTOCOL.md; SSE and WebSocket frames are "
                                "described there, not here."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "agentstream_token"},
            },
        },
    }


def _operation(op: Operation, refs: dict[type, dict[str, Any]],
               agents: list[str] | None) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": _describe(status), **_content(kind, refs)}
        for status, kind in op.responses.items()
    }
    if op.links:
        first = str(min(s for s, kind in op.responses.items() if isinstance(kind, type)))
        responses[first]["links"] = {
            target: {"operationId": target, "parameters": {param: f"$response.body#/{source}"}}
            for target, param, source in op.links
        }
    errors = set(op.errors) | (set(COMMON_ERRORS) if op.path.startswith("/v1/") else set())
    for status in sorted(errors):
        responses[str(status)] = {"description": "a coded error",
                                  **_content(op.error_shape, refs)}
    entry: dict[str, Any] = {
        "summary": op.summary,
        "operationId": _operation_id(op),
        "tags": list(op.tags),
        "parameters": _parameters(op, agents),
        "responses": responses,
    }
    if op.body is not None:
        entry["requestBody"] = {"required": True, **_content(op.body, refs)}
    if op.path.startswith("/v1/"):
        entry["security"] = [{}, {"bearer": []}, {"cookie": []}]
    return entry


def _specialize(components: dict[str, Any], agents: list[AgentCard] | None,
                min_interval: float | None) -> None:
    """What the Structs cannot know: which agents exist here and what input each takes."""
    for name in ("StartRunRequest", "CreateScheduleRequest"):
        props = components.get(name, {}).get("properties", {})
        if agents is not None and "agent" in props:
            props["agent"] = {"enum": sorted(card.name for card in agents)}
            schemas = [_hoist(card.name, card.input_schema, components)
                       for card in agents if card.input_schema]
            if schemas and len(schemas) == len(agents):
                props["input"] = {"anyOf": schemas}
        if min_interval is not None and "interval_seconds" in props:
            props["interval_seconds"].pop("exclusiveMinimum", None)
            props["interval_seconds"]["minimum"] = min_interval


def _hoist(agent: str, schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """An agent's input schema with its ``$defs`` moved into the components (a ``#/$defs``
    reference means nothing once the schema is embedded in this document)."""
    prefix = re.sub(r"[^A-Za-z0-9._-]", "_", agent) + "."
    raw = msgspec.json.encode(schema)
    defs = schema.get("$defs", {})
    for name in defs:
        target = REF.format(name=prefix + name)
        raw = raw.replace(f'"#/$defs/{name}"'.encode(), f'"{target}"'.encode())
    moved: dict[str, Any] = msgspec.json.decode(raw)
    for name, definition in moved.pop("$defs", {}).items():
        components[prefix + name] = definition
    return moved


def _describe(status: int) -> str:
    return {101: "switching protocols", 200: "ok", 201: "created", 202: "accepted",
            204: "no content (nothing more to stream)", 503: "not ready"}.get(status, "ok")


def _operation_id(op: Operation) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", op.path.replace("{", "by_")).strip("_")
    return f"{op.method}_{words}"


_DOCUMENT = web.AppKey("openapi_document", list[bytes])
routes = web.RouteTableDef()


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    cache = request.app[_DOCUMENT]
    if not cache:  # built on first use: the agents are registered by then
        st = request.app[STATE]
        cache.append(msgspec.json.encode(build(
            agents=st.agents.cards(), min_interval=st.settings.schedule_min_interval,
            webhooks=bool(st.settings.webhook_secret))))
    return web.Response(body=cache[0], content_type="application/json")


def setup(app: web.Application) -> None:
    app[_DOCUMENT] = []
    app.add_routes(routes)
