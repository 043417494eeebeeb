"""What the three protocol mappings share: the question handle, the start plan, SSE framing,
reading our own SSE frames back into events, and the "text a run carried" rule.

Pure: no asyncio, no aiohttp, no engine. The endpoints (``app/api/compat_*.py``) do the I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from protocol.codec import decode_event, encode_json
from protocol.events import Event, Message, MessageChunk
from protocol.messages import StartRunRequest

# A question a run asked, as the id of the tool call / interrupt the client answers:
# ``ask.<run_id>.<seq of require_user_input>.<request_id>``. It carries everything the
# follow-up request needs (which run to answer, and where its stream picks up), so no
# server-side table maps client ids to runs; ownership is checked on the run as for
# ``POST /v1/runs/{id}/input``.
_ASK = re.compile(r"^ask\.([A-Za-z0-9_-]{1,64})\.([0-9]{1,18})\.([A-Za-z0-9_-]{1,64})$")
ASK_TOOL = "require_user_input"
DONE_SENTINEL = "[DONE]"


@dataclass(frozen=True, slots=True)
class AskRef:
    run_id: str
    seq: int
    request_id: str

    def __str__(self) -> str:
        return f"ask.{self.run_id}.{self.seq}.{self.request_id}"


def parse_ask_ref(raw: str) -> AskRef | None:
    m = _ASK.match(raw)
    if m is None:
        return None
    return AskRef(m.group(1), int(m.group(2)), m.group(3))


# ---- what a request asks for -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRun:
    """Start a run (``Engine.start_run``) and stream it from its first event."""

    request: StartRunRequest


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer the question ``ref`` with ``value`` and stream the same run after it."""

    ref: AskRef
    value: Any


@dataclass(frozen=True, slots=True)
class Dismiss:
    """The client abandoned the question ``ref``: cancel its run and stream its end."""

    ref: AskRef


Plan = NewRun | Answer | Dismiss


class MappingError(ValueError):
    """The request cannot be mapped to a run (the endpoint answers 422 in its own shape)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def takes_messages(input_schema: dict[str, Any] | None) -> bool:
    """An agent whose input schema has a ``messages`` property (the OpenAI relay) gets the
    whole chat history; every other agent gets the last user message's text."""
    if not input_schema:
        return False
    props = input_schema.get("properties")
    if props is None:
        # msgspec.json.schema puts the struct under $defs and refers to it
        ref = input_schema.get("$ref", "")
        name = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else ""
        props = input_schema.get("$defs", {}).get(name, {}).get("properties")
    return isinstance(props, dict) and "messages" in props


def text_of(content: Any) -> str:
    """The text of a chat message's content: a string, or the ``text`` of its text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def answer_value(text: str) -> Any:
    """A tool message's content as the answer: JSON when it is JSON (so ``42`` or ``true``
    can match non-string ``choices``), else the text itself."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def start_request(
    agent: str, input: Any, conversation_id: str | None, on_disconnect: str | None,
    metadata: dict[str, Any] | None,
) -> StartRunRequest:
    """Our start request, validated exactly as ``POST /v1/runs`` validates its body."""
    raw: dict[str, Any] = {"agent": agent, "input": input}
    if conversation_id is not None:
        raw["conversation_id"] = conversation_id
    if on_disconnect is not None:
        raw["on_disconnect"] = on_disconnect
    if metadata:
        raw["metadata"] = metadata
    try:
        return msgspec.convert(raw, StartRunRequest)
    except msgspec.ValidationError as exc:
        raise MappingError("invalid_field", str(exc)) from None


# ---- frames ------------------------------------------------------------------------------


def sse_frames(frames: list[Any]) -> bytes:
    """``data: <json>`` frames (no ``id:``: these clients keep a sticky last id and would
    read a heartbeat's blank line as an empty event); the sentinel goes out verbatim."""
    out = []
    for frame in frames:
        body = frame.encode() if isinstance(frame, str) else encode_json(frame)
        out.append(b"data: " + body + b"\n\n")
    return b"".join(out)


def native_events(data: bytes) -> list[Event]:
    """Our own SSE frames (``protocol.codec.sse_frame``, as a sink writes them) back into
    events. Only lines starting ``data: `` carry an envelope; the envelope is one line."""
    events: list[Event] = []
    for frame in data.split(b"\n\n"):
        at = frame.find(b"data: ")
        if at < 0:
            continue
        end = frame.find(b"\n", at)
        events.append(decode_event(frame[at + 6:] if end < 0 else frame[at + 6:end]))
    return events


class TextTracker:
    """Which message items streamed chunks: a ``message`` after chunks of its item repeats
    them (skip it); one without chunks is the whole text (send it)."""

    def __init__(self) -> None:
        self.chunked: set[str | None] = set()

    def text(self, event: Event) -> str | None:
        """The text this event adds to the answer, or None."""
        if isinstance(event, MessageChunk):
            self.chunked.add(event.item_id)
            return event.data.delta
        if isinstance(event, Message):
            if event.item_id in self.chunked and event.item_id is not None:
                return None
            return event.data.text
        return None


def message_texts(events: list[Event]) -> list[str]:
    """The run's answer as message items, in order (the test oracle and the non-streaming
    views agree on it): chunks joined per item; a ``message`` only where no chunks came."""
    order: list[str | None] = []
    texts: dict[str | None, str] = {}
    tracker = TextTracker()
    for event in events:
        piece = tracker.text(event)
        if piece is None:
            continue
        if event.item_id not in texts:
            order.append(event.item_id)
            texts[event.item_id] = ""
        texts[event.item_id] += piece
    return [texts[k] for k in order]


class View(Protocol):
    """One protocol's view of a run: frames to open with, frames per event, frames when the
    server closes the stream early; ``finished`` once the view has ended its response."""

    finished: bool

    def opening(self) -> list[Any]: ...

    def feed(self, event: Event) -> list[Any]: ...

    def goodbye(self, reason: str) -> list[Any]: ...


def translate(view: View, data: bytes) -> list[Any]:
    """The view's frames for a burst of our SSE frames."""
    out: list[Any] = []
    for event in native_events(data):
        out += view.feed(event)
    return out
