"""OpenAI Chat Completions as a view of a run (``POST /v1/chat/completions``).

Request → run (``plan``):

- ``model`` is the agent's name.
- The agent's input: the body's ``input`` (an extension; ``extra_body={"input": ...}`` in the
  SDK) if given; else ``{"messages": [...]}`` for an agent whose input takes ``messages``
  (the OpenAI relay); else the text of the last ``user`` message.
- A last message with role ``tool`` whose ``tool_call_id`` is an ask handle (see below)
  answers that question instead of starting a run: its content is the answer (JSON when
  it parses, else the text), and the response streams the same run from after the question.
- Extensions: ``conversation_id`` (continue a conversation), ``on_disconnect``; ``metadata``
  goes to the run's metadata. ``n`` other than 1 is refused; sampling options are ignored
  (the agent decides).

Events → chunks (``ChatView``):

- ``message_chunk``/``message`` → ``delta.content`` (a ``message`` that repeats its item's
  chunks is skipped; two message items are separated by a blank line).
- ``reasoning`` → ``delta.reasoning_content``: the field DeepSeek, vLLM and most
  OpenAI-compatible servers (and so the chat UIs built on them) read; OpenAI itself sends
  no reasoning text, so there is no official field to prefer. The SDK keeps it as an extra
  attribute of the delta.
- ``tool_call_started`` (or a ``tool_call_completed`` with no start) → a ``tool_calls``
  delta with the whole arguments. These tools already ran on the server, so the completion
  still ends ``finish_reason: "stop"``; their results have no place in this format.
- ``require_user_input`` → a ``tool_calls`` delta for the function ``require_user_input``
  (arguments ``{prompt, choices?, schema?, expires_at?}``) whose id is the ask handle, then
  ``finish_reason: "tool_calls"`` and ``[DONE]``. The run waits; the client answers with the
  usual tool-result follow-up message. A tool call, not text, because that is the one
  OpenAI shape in which a client is expected to reply to a specific request.
- ``done``: ``completed`` → ``finish_reason: "stop"``; ``failed``/``interrupted``/
  ``cancelled`` → an ``{"error": {...}}`` frame (the SDK raises ``APIError``). Then ``[DONE]``.
- ``usage`` is omitted: no agent reports token counts today, and counting chunks would be
  a made-up number.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec

from app.compat.common import (
    ASK_TOOL,
    DONE_SENTINEL,
    Answer,
    AskRef,
    MappingError,
    NewRun,
    Plan,
    TextTracker,
    answer_value,
    parse_ask_ref,
    start_request,
    text_of,
)
from protocol.events import (
    Done,
    Event,
    Reasoning,
    ReasoningCompleted,
    RequireUserInput,
    ToolCallCompleted,
    ToolCallStarted,
)


class ChatRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    messages: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]
    stream: bool = False
    n: int = 1
    metadata: dict[str, str] | None = None
    # agentstream extensions
    input: Any = msgspec.UNSET
    conversation_id: str | None = None
    on_disconnect: Literal["continue", "cancel"] | None = None


# Status of a non-streaming completion whose run did not complete (x-should-retry: false).
DONE_STATUS = {"failed": 500, "interrupted": 503, "cancelled": 409}


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param,
                      "code": code}}


def plan(req: ChatRequest, takes_messages: bool) -> Plan:
    if req.n != 1:
        raise MappingError("unsupported_n", "only n=1 is supported", "n")
    for i, m in enumerate(req.messages):
        if not isinstance(m.get("role"), str):
            raise MappingError("invalid_field", f"messages[{i}].role must be a string",
                               f"messages[{i}].role")
    last = req.messages[-1]
    if last["role"] == "tool":
        ref = parse_ask_ref(str(last.get("tool_call_id", "")))
        if ref is None:
            raise MappingError(
                "unknown_tool_call",
                "a tool message can only answer a require_user_input tool call of this server",
                "messages")
        return Answer(ref, answer_value(text_of(last.get("content"))))
    if req.input is not msgspec.UNSET:
        agent_input: Any = req.input
    elif takes_messages:
        agent_input = {"messages": req.messages}
    else:
        users = [m for m in req.messages if m["role"] == "user"]
        if not users:
            raise MappingError("no_user_message", "messages has no user message", "messages")
        agent_input = text_of(users[-1].get("content"))
    return NewRun(start_request(req.model, agent_input, req.conversation_id,
                                req.on_disconnect, dict(req.metadata or {}) or None))


class ChatView:
    """Our events → ``chat.completion.chunk`` frames, then ``[DONE]``; ``finished`` once the
    completion ended (the run's ``done``, or a question)."""

    def __init__(self, completion_id: str, model: str, created: int, run_id: str) -> None:
        self.id = completion_id
        self.model = model
        self.created = created
        self.run_id = run_id
        self.finished = False
        # (status, body) when the run did not complete: the non-streaming response.
        self.error: tuple[int, dict[str, Any]] | None = None
        self._text = TextTracker()
        self._text_item: str | None = None
        self._wrote_text = False
        self._reasoned: set[str | None] = set()
        self._tools: dict[str | None, int] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def opening(self) -> list[Any]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, event: Event) -> list[Any]:
        if self.finished:
            return []
        piece = self._text.text(event)
        if piece is not None:
            return self._content(event.item_id, piece)
        if isinstance(event, Reasoning):
            self._reasoned.add(event.item_id)
            return [self._chunk({"reasoning_content": event.data.delta})]
        if isinstance(event, ReasoningCompleted):
            if event.item_id in self._reasoned or not event.data.text:
                return []
            return [self._chunk({"reasoning_content": event.data.text})]
        if isinstance(event, ToolCallStarted | ToolCallCompleted):
            if event.item_id in self._tools:
                return []
            return [self._tool_call(event.item_id or f"call_{event.seq}", event.data.name,
                                    event.data.arguments, event.item_id)]
        if isinstance(event, RequireUserInput):
            return self._ask(event)
        if isinstance(event, Done):
            return self._done(event)
        return []

    def _content(self, item_id: str | None, piece: str) -> list[Any]:
        if not piece:
            return []
        if self._wrote_text and item_id != self._text_item:
            piece = "\n\n" + piece
        self._text_item = item_id
        self._wrote_text = True
        return [self._chunk({"content": piece})]

    def _tool_call(self, call_id: str, name: str, arguments: Any, key: str | None) -> Any:
        index = self._tools[key] = len(self._tools)
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        return self._chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                            "function": {"name": name, "arguments": args}}]})

    def _ask(self, event: RequireUserInput) -> list[Any]:
        d = event.data
        ref = AskRef(self.run_id, event.seq, d.request_id)
        args: dict[str, Any] = {"prompt": d.prompt}
        for key in ("choices", "schema", "expires_at"):
            if getattr(d, key) is not None:
                args[key] = getattr(d, key)
        self.finished = True
        return [self._tool_call(str(ref), ASK_TOOL, args, f"ask:{ref}"),
                self._chunk({}, "tool_calls"), DONE_SENTINEL]

    def _done(self, event: Done) -> list[Any]:
        self.finished = True
        d = event.data
        if d.status == "completed":
            return [self._chunk({}, "stop"), DONE_SENTINEL]
        code = d.error.code if d.error else f"run_{d.status}"
        message = d.error.message if d.error else f"the run ended {d.status}"
        status = DONE_STATUS.get(d.status, 500)
        body = error_body(status, code, message)
        self.error = (status, body)
        return [body, DONE_SENTINEL]

    def goodbye(self, reason: str) -> list[Any]:
        """The server is closing this stream (shutdown, lifetime) before the run ended: an
        error the SDK raises, naming the run so the client can resume it natively."""
        if self.finished:
            return []
        self.finished = True
        body = error_body(503, reason, f"stream closed ({reason}); the run goes on: resume "
                          f"with GET /v1/runs/{self.run_id}/events")
        self.error = (503, body)
        return [body, DONE_SENTINEL]


def completion(view: ChatView, frames: list[Any]) -> dict[str, Any]:
    """Fold a view's chunks into one ``chat.completion`` (the non-streaming response)."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    finish: str | None = None
    for frame in frames:
        if not isinstance(frame, dict) or "choices" not in frame:
            continue
        choice = frame["choices"][0]
        delta = choice["delta"]
        content.append(delta.get("content") or "")
        reasoning.append(delta.get("reasoning_content") or "")
        for call in delta.get("tool_calls", ()):
            calls.append({k: v for k, v in call.items() if k != "index"})
        finish = choice["finish_reason"] or finish
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {"id": view.id, "object": "chat.completion", "created": view.created,
            "model": view.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish or "stop",
                         "logprobs": None}]}


def model_list(names: list[str], created: int) -> dict[str, Any]:
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "agentstream"}
                     for n in names]}
