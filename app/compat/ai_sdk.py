"""The Vercel AI SDK UI message stream (v1) as a view of a run: what ``useChat`` reads.

Request → run (``plan``), the body ``DefaultChatTransport`` posts:
``{id, messages, trigger, messageId, ...transport body}``.

- The agent is in the path (``/v1/ai-sdk/{agent}/chat``); the chat ``id`` is the
  conversation id, so every message of one chat lands in one conversation and the resume
  GET finds its active run.
- The agent's input: the body's ``input`` (set it with the transport's ``body``) if given;
  else ``{"messages": [{role, content}]}`` for an agent that takes messages; else the text
  parts of the last user message. ``trigger: "regenerate-message"`` starts a new run the
  same way (the client already dropped the old answer).
- A last *assistant* message whose ``require_user_input`` tool part is
  ``output-available`` answers that question with its ``output`` (``addToolOutput``);
  ``output-error`` / ``output-denied`` dismisses it (the run is cancelled).

Events → chunks (``UiView``): ``start`` (messageId ``msg_<run_id>``) and ``start-step``
(``finish-step`` before the end: one step per response); reasoning →
``reasoning-start/delta/end``; message chunks → ``text-start/delta/end`` (one text part per
message item); the agent's tool calls → ``tool-input-start`` + ``tool-input-available`` and
``tool-output-available`` / ``tool-output-error``, as ``dynamic`` and ``providerExecuted``
(they ran on the server: the client must not run them); ``notify`` →
``data-notify``, ``component_generator`` → ``data-component``; ``require_user_input`` → a
``require_user_input`` tool call the *client* answers (not provider-executed), then
``finish {finishReason: "tool-calls"}``; ``done`` → ``finish`` (``stop``), or ``abort``
(cancelled), or ``error`` + ``finish {error}`` (failed, interrupted); then ``[DONE]``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from app.compat.common import (
    ASK_TOOL,
    DONE_SENTINEL,
    Answer,
    AskRef,
    Dismiss,
    MappingError,
    NewRun,
    Plan,
    parse_ask_ref,
    start_request,
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
    ToolCallCompleted,
    ToolCallStarted,
)

HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
FINISH_STEP = {"type": "finish-step"}


class ChatBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    id: str
    messages: list[dict[str, Any]]
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = None
    # agentstream extensions (the transport's ``body`` option)
    input: Any = msgspec.UNSET
    on_disconnect: Literal["continue", "cancel"] | None = None
    metadata: dict[str, Any] | None = None


def _text(message: dict[str, Any]) -> str:
    parts = message.get("parts")
    if not isinstance(parts, list):
        return ""
    return "".join(p["text"] for p in parts if isinstance(p, dict)
                   and p.get("type") == "text" and isinstance(p.get("text"), str))


def _is_tool_part(part: Any) -> bool:
    kind = part.get("type") if isinstance(part, dict) else None
    return isinstance(kind, str) and (kind == "dynamic-tool" or kind.startswith("tool-"))


def _answered(message: dict[str, Any]) -> Plan | None:
    """The answer to our question carried by an assistant message's tool part, if any."""
    for part in reversed(message.get("parts") or []):
        if not _is_tool_part(part):
            continue
        ref = parse_ask_ref(str(part.get("toolCallId", "")))
        if ref is None:
            continue
        state = part.get("state")
        if state == "output-available":
            return Answer(ref, part.get("output"))
        if state in ("output-error", "output-denied"):
            return Dismiss(ref)
    return None


def plan(body: ChatBody, agent: str, takes_messages: bool) -> Plan:
    if not body.messages:
        raise MappingError("no_messages", "messages is empty")
    last = body.messages[-1]
    if last.get("role") == "assistant":
        answered = _answered(last)
        if answered is None:
            raise MappingError("nothing_to_answer", "the last message is the assistant's and "
                               "answers no require_user_input tool call")
        return answered
    if body.input is not msgspec.UNSET:
        agent_input: Any = body.input
    elif takes_messages:
        agent_input = {"messages": [{"role": m.get("role"), "content": _text(m)}
                                    for m in body.messages]}
    else:
        agent_input = _text(last)
    return NewRun(start_request(agent, agent_input, body.id, body.on_disconnect,
                                body.metadata))


class UiView:
    """Our events → UI message chunks, then ``[DONE]``."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.message_id = f"msg_{run_id}"
        self.finished = False
        self._open_text: list[str] = []
        self._open_reasoning: list[str] = []
        self._chunked: set[str] = set()
        self._tools: set[str] = set()

    def opening(self) -> list[Any]:
        # Each response is one step: a follow-up after an answer starts a new step, so
        # ``lastAssistantMessageIsCompleteWithToolCalls`` does not see the answered
        # question again and send it a second time.
        return [{"type": "start", "messageId": self.message_id}, {"type": "start-step"}]

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
        if isinstance(event, Notify):
            return [{"type": "data-notify", "id": key,
                     "data": msgspec.to_builtins(event.data)}]
        if isinstance(event, ComponentGenerator):
            return [{"type": "data-component", "id": key,
                     "data": msgspec.to_builtins(event.data)}]
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
                out.append({"type": "text-start", "id": key})
            self._chunked.add(key)
            if event.data.delta:
                out.append({"type": "text-delta", "id": key, "delta": event.data.delta})
            return out
        if key in self._open_text:
            self._open_text.remove(key)
            return [{"type": "text-end", "id": key}]
        if key in self._chunked:
            return []
        return [{"type": "text-start", "id": key},
                {"type": "text-delta", "id": key, "delta": event.data.text},
                {"type": "text-end", "id": key}]

    def _reasoning(
        self, key: str, event: ReasoningStarted | Reasoning | ReasoningCompleted
    ) -> list[Any]:
        out: list[Any] = []
        opened = key in self._open_reasoning
        if not opened:
            if isinstance(event, ReasoningCompleted) and not event.data.text:
                return []
            self._open_reasoning.append(key)
            out.append({"type": "reasoning-start", "id": key})
        if isinstance(event, Reasoning) and event.data.delta:
            out.append({"type": "reasoning-delta", "id": key, "delta": event.data.delta})
        elif isinstance(event, ReasoningCompleted):
            if not opened and event.data.text:
                out.append({"type": "reasoning-delta", "id": key, "delta": event.data.text})
            self._open_reasoning.remove(key)
            out.append({"type": "reasoning-end", "id": key})
        return out

    def _tool(self, key: str, event: ToolCallStarted | ToolCallCompleted) -> list[Any]:
        out: list[Any] = []
        common = {"toolCallId": key, "dynamic": True, "providerExecuted": True}
        if key not in self._tools:
            self._tools.add(key)
            out.append({"type": "tool-input-start", **common, "toolName": event.data.name})
            out.append({"type": "tool-input-available", **common, "toolName": event.data.name,
                        "input": event.data.arguments})
        if isinstance(event, ToolCallCompleted):
            if event.data.error is not None:
                out.append({"type": "tool-output-error", **common,
                            "errorText": f"{event.data.error.code}: {event.data.error.message}"})
            else:
                out.append({"type": "tool-output-available", **common,
                            "output": event.data.result})
        return out

    def _close_parts(self) -> list[Any]:
        out: list[Any] = [{"type": "text-end", "id": k} for k in self._open_text]
        out += [{"type": "reasoning-end", "id": k} for k in self._open_reasoning]
        self._open_text.clear()
        self._open_reasoning.clear()
        return out

    def _ask(self, event: RequireUserInput) -> list[Any]:
        d = event.data
        ref = str(AskRef(self.run_id, event.seq, d.request_id))
        args: dict[str, Any] = {"prompt": d.prompt}
        for name in ("choices", "schema", "expires_at"):
            if getattr(d, name) is not None:
                args[name] = getattr(d, name)
        self.finished = True
        return [*self._close_parts(),
                {"type": "tool-input-available", "toolCallId": ref, "toolName": ASK_TOOL,
                 "input": args, "dynamic": True},
                FINISH_STEP, {"type": "finish", "finishReason": "tool-calls"}, DONE_SENTINEL]

    def _done(self, event: Done) -> list[Any]:
        self.finished = True
        d = event.data
        out = [*self._close_parts(), FINISH_STEP]
        if d.status == "completed":
            return [*out, {"type": "finish", "finishReason": "stop"}, DONE_SENTINEL]
        if d.status == "cancelled":
            return [*out, {"type": "abort", "reason": "cancelled"}, DONE_SENTINEL]
        error = f"{d.error.code}: {d.error.message}" if d.error else f"run {d.status}"
        return [*out, {"type": "error", "errorText": error},
                {"type": "finish", "finishReason": "error"}, DONE_SENTINEL]

    def goodbye(self, reason: str) -> list[Any]:
        """Closed by the server before the run ended: an error, and the resume GET continues
        it (``useChat({resume: true})``)."""
        if self.finished:
            return []
        self.finished = True
        return [*self._close_parts(),
                {"type": "error", "errorText": f"{reason}: stream closed, resume to continue"},
                DONE_SENTINEL]
