"""OpenAI Chat Completions stream chunks → agentstream content events.

Kept apart from the HTTP side so the mapping is one small state machine: reasoning deltas
open a reasoning block that the first content or tool call closes; content deltas are
message chunks completed by one ``message``; tool-call argument fragments stream as
``tool_call_arguments`` deltas once the call started, are joined per ``index``, and each
call is completed at the end with its arguments parsed as JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.agents.base import AgentError, RunContext, new_item_id
from protocol.events import (
    MessageChunkData,
    MessageData,
    NotifyData,
    ReasoningCompletedData,
    ReasoningData,
    ReasoningStartedData,
    ToolCallArgumentsData,
    ToolCallCompletedData,
    ToolCallStartedData,
)


class FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    content: str | None = None
    # DeepSeek and most OpenAI-compatible servers say reasoning_content; some say reasoning.
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class Choice(msgspec.Struct):
    index: int = 0
    delta: Delta | None = None
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct):
    choices: list[Choice] = msgspec.field(default_factory=list)
    error: Any = None


_chunk_decoder = msgspec.json.Decoder(ChatChunk)
STOP_NOTICES = {
    "length": "the upstream stopped at its token limit",
    "content_filter": "the upstream withheld content (content filter)",
}


# What servers put in a stream to keep it open: ``: comment`` lines (never reach us), and
# events whose data is empty or one bare word (JD Genie's relay and Spring's SseEmitter send
# ``data:heartbeat``; others ``data: ping``, ``data: keep-alive``), or that are named so.
KEEPALIVE_EVENTS = frozenset({"ping", "heartbeat", "keepalive", "keep-alive"})
_BARE_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")


def is_keepalive(event: str, data: str) -> bool:
    """True for an event carrying nothing (``data`` already stripped). A bare word is not
    JSON, so it cannot be a chunk; anything longer (an HTML error page) still fails."""
    return (not data or event.lower() in KEEPALIVE_EVENTS
            or _BARE_WORD.fullmatch(data) is not None)


def error_text(data: str) -> str:
    """The message of an ``event: error`` whose data is JSON (``{"error": {...}}`` or the
    error object itself) or plain text."""
    try:
        body = json.loads(data)
    except ValueError:
        return data[:500]
    if isinstance(body, dict) and "error" in body:
        body = body["error"]
    return error_message(body)


def decode_chunk(data: str) -> ChatChunk:
    try:
        return _chunk_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AgentError(
            "upstream_bad_response", f"unreadable stream chunk ({exc}): {data[:200]!r}"
        ) from None


def error_message(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        return str(message) if message else json.dumps(error)[:500]
    return str(error)[:500]


@dataclass
class _ToolCall:
    item_id: str
    name: str | None = None
    parts: list[str] = field(default_factory=list)
    started: bool = False
    sent: int = 0  # parts already emitted as ``tool_call_arguments``


class StreamMapper:
    """Feeds one run's chunks to ``ctx.emit``; ``finished`` once the upstream said it ended."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.finished = False
        self.finish_reason: str | None = None
        self._reasoning_id: str | None = None
        self._reasoning: list[str] = []
        self._message_id: str | None = None
        self._text: list[str] = []
        self._tools: dict[int, _ToolCall] = {}

    async def feed(self, chunk: ChatChunk) -> None:
        if chunk.error is not None:
            raise AgentError("upstream_error", error_message(chunk.error))
        for choice in chunk.choices:
            if choice.index != 0 or self.finished:
                continue
            delta = choice.delta
            if delta is not None:
                thought = delta.reasoning_content or delta.reasoning
                if thought:
                    await self._on_reasoning(thought)
                if delta.content:
                    await self._on_content(delta.content)
                if delta.tool_calls:
                    await self._on_tool_calls(delta.tool_calls)
            if choice.finish_reason:
                await self.finish(choice.finish_reason)

    async def finish(self, reason: str | None) -> None:
        """Close every open item; called on ``finish_reason`` or ``[DONE]``."""
        if self.finished:
            return
        self.finished = True
        self.finish_reason = reason
        await self._close_reasoning()
        if self._message_id is not None:
            await self.ctx.emit(
                "message", MessageData(text="".join(self._text)), item_id=self._message_id
            )
        for index in sorted(self._tools):
            call = self._tools[index]
            name = call.name or "unknown"
            if not call.started:
                call.started = True
                await self.ctx.emit(
                    "tool_call_started", ToolCallStartedData(name=name), item_id=call.item_id
                )
            await self._send_arguments(call)
            await self.ctx.emit(
                "tool_call_completed",
                ToolCallCompletedData(name=name, arguments=_parse_arguments("".join(call.parts))),
                item_id=call.item_id,
            )
        notice = STOP_NOTICES.get(reason or "")
        if notice:
            await self.ctx.emit("notify", NotifyData(message=notice, level="warning"))

    async def _on_reasoning(self, delta: str) -> None:
        if self._reasoning_id is None:
            self._reasoning_id = new_item_id("rs")
            await self.ctx.emit(
                "reasoning_started", ReasoningStartedData(), item_id=self._reasoning_id
            )
        self._reasoning.append(delta)
        await self.ctx.emit("reasoning", ReasoningData(delta=delta), item_id=self._reasoning_id)

    async def _close_reasoning(self) -> None:
        if self._reasoning_id is None:
            return
        rid, self._reasoning_id = self._reasoning_id, None
        text = "".join(self._reasoning)
        self._reasoning = []
        await self.ctx.emit("reasoning_completed", ReasoningCompletedData(text=text), item_id=rid)

    async def _on_content(self, delta: str) -> None:
        await self._close_reasoning()
        if self._message_id is None:
            self._message_id = new_item_id("m")
        self._text.append(delta)
        await self.ctx.emit("message_chunk", MessageChunkData(delta=delta),
                            item_id=self._message_id)

    async def _on_tool_calls(self, deltas: list[ToolCallDelta]) -> None:
        await self._close_reasoning()
        for delta in deltas:
            call = self._tools.get(delta.index)
            if call is None:
                call = self._tools[delta.index] = _ToolCall(new_item_id("tc"))
            fn = delta.function
            if fn is not None:
                if fn.name and call.name is None:
                    call.name = fn.name
                if fn.arguments:
                    call.parts.append(fn.arguments)
            if call.name is not None and not call.started:
                call.started = True
                await self.ctx.emit(
                    "tool_call_started", ToolCallStartedData(name=call.name), item_id=call.item_id
                )
            if call.started:
                await self._send_arguments(call)

    async def _send_arguments(self, call: _ToolCall) -> None:
        """Argument fragments not yet sent, as one ``tool_call_arguments`` (fragments that
        came before the name, i.e. before ``tool_call_started``, go out together)."""
        if call.sent == len(call.parts):
            return
        delta = "".join(call.parts[call.sent:])
        call.sent = len(call.parts)
        await self.ctx.emit("tool_call_arguments", ToolCallArgumentsData(delta=delta),
                            item_id=call.item_id)


def _parse_arguments(raw: str) -> Any:
    """Arguments as JSON when they parse (they should), else the raw string, never lost."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return raw
