"""A run's output assembled from its events: the one way to read "what did the run say".

Pure (no I/O): ``OutputBuilder`` is fed the run's stored events in seq order (page by page,
so a long run never sits in memory as events) and ``output()`` returns the assembled text,
reasoning, tool calls with their results, components and questions. It is not a second
source of truth: nothing is stored, ``GET /v1/runs/{id}`` rebuilds it from the log, and a
client can rebuild it the same way from the stream.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.events import (
    ComponentGenerator,
    ErrorDetail,
    Event,
    Message,
    MessageChunk,
    Reasoning,
    ReasoningCompleted,
    ReasoningStarted,
    RequireUserInput,
    ToolCallArguments,
    ToolCallCompleted,
    ToolCallStarted,
    UserInputReceived,
)

# Messages are joined with this in ``RunOutput.text`` (each message is a paragraph).
MESSAGE_SEPARATOR = "\n\n"


class MessageOut(msgspec.Struct, omit_defaults=True):
    text: str
    complete: bool
    item_id: str | None = None


class ReasoningOut(msgspec.Struct, omit_defaults=True):
    text: str
    complete: bool
    item_id: str | None = None


class ToolCallOut(msgspec.Struct, omit_defaults=True):
    name: str
    complete: bool
    item_id: str | None = None
    arguments: Any = None
    # The streamed argument text (``tool_call_arguments`` deltas joined), when there was any.
    arguments_text: str | None = None
    result: Any = None
    error: ErrorDetail | None = None


class ComponentOut(msgspec.Struct, omit_defaults=True):
    component_type: str
    payload: Any = None
    item_id: str | None = None


class QuestionOut(msgspec.Struct, omit_defaults=True):
    request_id: str
    prompt: str
    answered: bool
    value: Any = None


class RunOutput(msgspec.Struct, omit_defaults=True):
    text: str = ""
    messages: list[MessageOut] = msgspec.field(default_factory=list)
    reasoning: list[ReasoningOut] = msgspec.field(default_factory=list)
    tool_calls: list[ToolCallOut] = msgspec.field(default_factory=list)
    components: list[ComponentOut] = msgspec.field(default_factory=list)
    questions: list[QuestionOut] = msgspec.field(default_factory=list)
    # The run had more events than the server assembles for one read.
    truncated: bool = False


class OutputBuilder:
    """Feed events in seq order; items are keyed by ``item_id`` (an event without one is
    an item of its own)."""

    def __init__(self) -> None:
        self._messages: dict[object, MessageOut] = {}
        self._reasoning: dict[object, ReasoningOut] = {}
        self._tools: dict[object, ToolCallOut] = {}
        self._components: list[ComponentOut] = []
        self._questions: dict[str, QuestionOut] = {}
        self._parts: dict[int, list[str]] = {}  # id(item) -> pieces not yet joined
        self.truncated = False

    def feed(self, event: Event) -> None:
        key: object = event.item_id if event.item_id is not None else ("seq", event.seq)
        match event:
            case MessageChunk():
                self._piece(self._messages, key, MessageOut("", False, event.item_id),
                            event.data.delta)
            case Message():
                msg = self._messages.setdefault(key, MessageOut("", True, event.item_id))
                self._parts.pop(id(msg), None)
                msg.text, msg.complete = event.data.text, True
            case ReasoningStarted():
                self._reasoning.setdefault(key, ReasoningOut("", False, event.item_id))
            case Reasoning():
                self._piece(self._reasoning, key, ReasoningOut("", False, event.item_id),
                            event.data.delta)
            case ReasoningCompleted():
                self._complete_reasoning(key, event)
            case ToolCallStarted():
                self._tools[key] = ToolCallOut(event.data.name, False, event.item_id,
                                               event.data.arguments)
            case ToolCallArguments():
                self._piece(self._tools, key, ToolCallOut("", False, event.item_id),
                            event.data.delta)
            case ToolCallCompleted():
                self._complete_tool(key, event)
            case ComponentGenerator():
                self._components.append(ComponentOut(
                    event.data.component_type, event.data.payload, event.item_id))
            case RequireUserInput():
                self._questions[event.data.request_id] = QuestionOut(
                    event.data.request_id, event.data.prompt, False)
            case UserInputReceived():
                q = self._questions.get(event.data.request_id)
                if q is not None:
                    q.answered, q.value = True, event.data.value
            case _:
                pass

    def _piece(self, items: dict[object, Any], key: object, new: Any, delta: str) -> None:
        """Keep a delta; pieces are joined once, in ``output`` (no quadratic +=)."""
        item = items.setdefault(key, new)
        self._parts.setdefault(id(item), []).append(delta)

    def _joined(self, item: object, head: str = "") -> str:
        return head + "".join(self._parts.get(id(item), ()))

    def _complete_reasoning(self, key: object, event: ReasoningCompleted) -> None:
        block = self._reasoning.setdefault(key, ReasoningOut("", False, event.item_id))
        if event.data.text is not None:
            self._parts.pop(id(block), None)
            block.text = event.data.text
        block.complete = True

    def _complete_tool(self, key: object, event: ToolCallCompleted) -> None:
        data = event.data
        tool = self._tools.setdefault(key, ToolCallOut(data.name, False, event.item_id))
        tool.name, tool.complete = data.name, True
        tool.result, tool.error = data.result, data.error
        if data.arguments is not None:
            tool.arguments = data.arguments

    def output(self) -> RunOutput:
        messages = [msgspec.structs.replace(m, text=self._joined(m, m.text))
                    for m in self._messages.values()]
        reasoning = [msgspec.structs.replace(r, text=self._joined(r, r.text))
                     for r in self._reasoning.values()]
        tools = []
        for tool in self._tools.values():
            streamed = self._parts.get(id(tool))
            tools.append(msgspec.structs.replace(
                tool, arguments_text="".join(streamed) if streamed else None))
        return RunOutput(
            text=MESSAGE_SEPARATOR.join(m.text for m in messages),
            messages=messages, reasoning=reasoning, tool_calls=tools,
            components=list(self._components), questions=list(self._questions.values()),
            truncated=self.truncated,
        )


def assemble_output(events: list[Event]) -> RunOutput:
    builder = OutputBuilder()
    for event in events:
        builder.feed(event)
    return builder.output()
