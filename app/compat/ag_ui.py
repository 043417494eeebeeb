"""AG-UI (protocol 1.0) as a view of a run: what ``@ag-ui/client``'s ``HttpAgent`` runs.

Request → run (``plan``): ``RunAgentInput`` ``{threadId, runId, messages, tools, context,
state, forwardedProps, resume?}``.

- The agent is in the path (``/v1/ag-ui/{agent}``); ``threadId`` is the conversation id.
  ``runId`` is the client's: every event we send names it, and our own run id travels in
  the ``X-Agentstream-Run-Id`` header and ``RUN_STARTED.metadata``.
- The agent's input: ``forwardedProps.input`` if given; else ``{"messages": [...]}`` (role
  and text) for an agent that takes messages; else the last user message's text.
- ``resume: [{interruptId, status, payload}]`` answers the interrupt a previous run ended
  with: ``resolved`` answers our question with ``payload``, ``cancelled`` cancels the run.

``require_user_input`` is an AG-UI **interrupt** (``RUN_FINISHED`` with ``outcome: {type:
"interrupt", interrupts: [...]}``), not a custom event: the 1.0 client tracks interrupts
itself (``agent.pendingInterrupts``) and refuses the next run unless its ``resume`` answers
them, while a ``CUSTOM`` event would be ignored by every client not written for us.

Events → AG-UI events (``AgUiView``): ``RUN_STARTED``; reasoning → ``REASONING_START`` +
``REASONING_MESSAGE_START/CONTENT/END`` + ``REASONING_END``; message chunks →
``TEXT_MESSAGE_START/CONTENT/END`` (one message per item); tool calls →
``TOOL_CALL_START/ARGS/END`` + ``TOOL_CALL_RESULT``; ``notify``/``component_generator``/tasks
→ ``CUSTOM`` (``agentstream.<type>``); ``done`` → ``RUN_FINISHED`` (completed; ``outcome
cancelled`` when cancelled) or ``RUN_ERROR`` (failed, interrupted). No ``[DONE]``: AG-UI
parses every ``data:`` line as JSON; the response simply ends.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec

from app.compat.common import (
    Answer,
    AskRef,
    Dismiss,
    MappingError,
    NewRun,
    Plan,
    parse_ask_ref,
    start_request,
    text_of,
)
from protocol.events import (
    ComponentGenerator,
    Done,
    Event,
    Message,
    MessageChunk,
    Notify,
    Reasoning,
    ReasoningCompleted,
    ReasoningStarted,
    RequireUserInput,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    ToolCallCompleted,
    ToolCallStarted,
)

PROTOCOL_VERSION = "1.0"


class ResumeEntry(msgspec.Struct, forbid_unknown_fields=False):
    interruptId: str
    status: str = "resolved"
    payload: Any = None


class RunAgentInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    threadId: str
    runId: str
    messages: list[dict[str, Any]] = msgspec.field(default_factory=list)
    forwardedProps: Any = None
    resume: list[ResumeEntry] | None = None


def plan(body: RunAgentInput, agent: str, takes_messages: bool) -> Plan:
    if body.resume:
        entry = body.resume[0]
        ref = parse_ask_ref(entry.interruptId)
        if ref is None:
            raise MappingError("unknown_interrupt", "resume names an interrupt this server did "
                               "not raise", "resume")
        if entry.status == "cancelled":
            return Dismiss(ref)
        return Answer(ref, entry.payload)
    props = body.forwardedProps if isinstance(body.forwardedProps, dict) else {}
    if "input" in props:
        agent_input: Any = props["input"]
    elif takes_messages:
        agent_input = {"messages": [{"role": m.get("role"), "content": text_of(m.get("content"))}
                                    for m in body.messages]}
    else:
        users = [m for m in body.messages if m.get("role") == "user"]
        if not users:
            raise MappingError("no_user_message", "messages has no user message", "messages")
        agent_input = text_of(users[-1].get("content"))
    return NewRun(start_request(agent, agent_input, body.threadId,
                                props.get("on_disconnect"), None))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


class AgUiView:
    """Our events → AG-UI events; ``finished`` after RUN_FINISHED or RUN_ERROR."""

    def __init__(self, thread_id: str, run_id: str, our_run_id: str) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.our_run_id = our_run_id
        self.finished = False
        self._open_text: list[str] = []
        self._open_reasoning: list[str] = []
        self._chunked: set[str] = set()
        self._tools: set[str] = set()

    def _ids(self) -> dict[str, str]:
        return {"threadId": self.thread_id, "runId": self.run_id}

    def opening(self) -> list[Any]:
        return [{"type": "RUN_STARTED", **self._ids(), "protocolVersion": PROTOCOL_VERSION,
                 "metadata": {"agentstream_run_id": self.our_run_id}}]

    def feed(self, event: Event) -> list[Any]:
        if self.finished:
            return []
        key = event.item_id or f"i{event.seq}"
        if isinstance(event, MessageChunk | Message):
            return self._text(key, event)
        if isinstance(event, ReasoningStarted | Reasoning | ReasoningCompleted):
            return self._reasoning(key, event)
        if isinstance(event, ToolCallStarted | ToolCallCompleted):
            return self._tool(key, event)
        if isinstance(event, Notify | ComponentGenerator | TaskStarted | TaskCompleted
                      | TaskFailed | TaskCancelled):
            tag = event.__struct_config__.tag
            return [{"type": "CUSTOM", "name": f"agentstream.{tag}",
                     "value": msgspec.to_builtins(event.data)}]
        if isinstance(event, RequireUserInput):
            return self._ask(event)
        if isinstance(event, Done):
            return self._done(event)
        return []

    def _text(self, key: str, event: MessageChunk | Message) -> list[Any]:
        out: list[Any] = []
        if isinstance(event, MessageChunk):
            if key not in self._open_text:
                self._open_text.append(key)
                out.append({"type": "TEXT_MESSAGE_START", "messageId": key, "role": "assistant"})
            self._chunked.add(key)
            if event.data.delta:
                out.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": key,
                            "delta": event.data.delta})
            return out
        if key in self._open_text:
            self._open_text.remove(key)
            return [{"type": "TEXT_MESSAGE_END", "messageId": key}]
        if key in self._chunked or not event.data.text:
            return []
        return [{"type": "TEXT_MESSAGE_START", "messageId": key, "role": "assistant"},
                {"type": "TEXT_MESSAGE_CONTENT", "messageId": key, "delta": event.data.text},
                {"type": "TEXT_MESSAGE_END", "messageId": key}]

    def _reasoning(
        self, key: str, event: ReasoningStarted | Reasoning | ReasoningCompleted
    ) -> list[Any]:
        out: list[Any] = []
        opened = key in self._open_reasoning
        if not opened:
            if isinstance(event, ReasoningCompleted) and not event.data.text:
                return []
            self._open_reasoning.append(key)
            out += [{"type": "REASONING_START", "messageId": key},
                    {"type": "REASONING_MESSAGE_START", "messageId": key, "role": "reasoning"}]
        if isinstance(event, Reasoning) and event.data.delta:
            out.append({"type": "REASONING_MESSAGE_CONTENT", "messageId": key,
                        "delta": event.data.delta})
        elif isinstance(event, ReasoningCompleted):
            if not opened and event.data.text:
                out.append({"type": "REASONING_MESSAGE_CONTENT", "messageId": key,
                            "delta": event.data.text})
            self._open_reasoning.remove(key)
            out += self._end_reasoning(key)
        return out

    @staticmethod
    def _end_reasoning(key: str) -> list[Any]:
        return [{"type": "REASONING_MESSAGE_END", "messageId": key},
                {"type": "REASONING_END", "messageId": key}]

    def _tool(self, key: str, event: ToolCallStarted | ToolCallCompleted) -> list[Any]:
        out: list[Any] = []
        if key not in self._tools:
            self._tools.add(key)
            args = event.data.arguments
            out += [{"type": "TOOL_CALL_START", "toolCallId": key,
                     "toolCallName": event.data.name},
                    {"type": "TOOL_CALL_ARGS", "toolCallId": key,
                     "delta": args if isinstance(args, str) else json.dumps(args)},
                    {"type": "TOOL_CALL_END", "toolCallId": key}]
        if isinstance(event, ToolCallCompleted):
            d = event.data
            result = ({"error": msgspec.to_builtins(d.error)} if d.error is not None
                      else d.result)
            out.append({"type": "TOOL_CALL_RESULT", "messageId": f"{key}-result",
                        "toolCallId": key, "role": "tool",
                        "content": result if isinstance(result, str) else json.dumps(result)})
        return out

    def _close_parts(self) -> list[Any]:
        out: list[Any] = [{"type": "TEXT_MESSAGE_END", "messageId": k} for k in self._open_text]
        for k in self._open_reasoning:
            out += self._end_reasoning(k)
        self._open_text.clear()
        self._open_reasoning.clear()
        return out

    def _ask(self, event: RequireUserInput) -> list[Any]:
        d = event.data
        interrupt: dict[str, Any] = {
            "id": str(AskRef(self.our_run_id, event.seq, d.request_id)),
            "reason": "input_required", "message": d.prompt}
        if d.schema is not None:
            interrupt["responseSchema"] = d.schema
        if d.expires_at is not None:
            interrupt["expiresAt"] = _iso(d.expires_at)
        if d.choices is not None:
            interrupt["metadata"] = {"choices": d.choices}
        self.finished = True
        return [*self._close_parts(),
                {"type": "RUN_FINISHED", **self._ids(),
                 "outcome": {"type": "interrupt", "interrupts": [interrupt]}}]

    def _done(self, event: Done) -> list[Any]:
        self.finished = True
        d = event.data
        out = self._close_parts()
        if d.status == "completed":
            return [*out, {"type": "RUN_FINISHED", **self._ids()}]
        if d.status == "cancelled":
            return [*out, {"type": "RUN_FINISHED", **self._ids(),
                           "outcome": {"type": "cancelled"}}]
        code = d.error.code if d.error else f"run_{d.status}"
        message = d.error.message if d.error else f"the run ended {d.status}"
        return [*out, {"type": "RUN_ERROR", "message": message, "code": code}]

    def goodbye(self, reason: str) -> list[Any]:
        if self.finished:
            return []
        self.finished = True
        return [{"type": "RUN_ERROR", "code": reason,
                 "message": f"stream closed ({reason}); the run goes on: resume with "
                            f"GET /v1/runs/{self.our_run_id}/events"}]
