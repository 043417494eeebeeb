"""Event envelope and every event type of PROTOCOL.md as one tagged msgspec union.

Each event is its own Struct, tagged on ``type``; the payload of that type is ``data``.
The envelope fields (seq, ids, ts) are shared through ``EventBase``. This module is pure:
no I/O, importable by any client.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

RunStatus = Literal[
    "queued", "running", "waiting_input", "completed", "failed", "cancelled", "interrupted"
]
FinalStatus = Literal["completed", "failed", "cancelled", "interrupted"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "interrupted"})


class _Data(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """Base of every payload: unknown fields from newer servers are ignored."""


class ErrorDetail(_Data):
    """A coded error: in ``done.data.error``, task failures, and HTTP error bodies alike."""

    code: str
    message: str


# ---- payloads ---------------------------------------------------------------------------


class ConversationStartedData(_Data):
    metadata: dict[str, Any] | None = None


class RunStartedData(_Data):
    input: Any = None
    on_disconnect: Literal["continue", "cancel"] = "continue"
    metadata: dict[str, Any] | None = None


class RequireUserInputData(_Data):
    request_id: str
    prompt: str
    choices: list[Any] | None = None
    schema: dict[str, Any] | None = None
    expires_at: int | None = None
    # The answer the run takes if the deadline passes; absent means the run fails.
    default: Any = None
    has_default: bool = False


class UserInputReceivedData(_Data):
    request_id: str
    value: Any = None
    # "user" for a real answer, "default" when the deadline passed and the default was taken.
    source: Literal["user", "default"] = "user"


class RunCancellingData(_Data):
    reason: str | None = None


class DoneData(_Data):
    status: FinalStatus
    events: int
    error: ErrorDetail | None = None


class MessageChunkData(_Data):
    delta: str
    # How many stored chunks this frame folds together (a catching-up sink may merge
    # consecutive chunks of one item; the frame carries the last one's seq).
    merged: int = 1


class MessageData(_Data):
    text: str


class ReasoningStartedData(_Data):
    pass


class ReasoningData(_Data):
    delta: str
    merged: int = 1


class ReasoningCompletedData(_Data):
    text: str | None = None


class ToolCallStartedData(_Data):
    name: str
    arguments: Any = None


class ToolCallArgumentsData(_Data):
    """A piece of a tool call's arguments as the model streams them (JSON text, possibly
    cut anywhere); between ``tool_call_started`` and ``tool_call_completed`` of one item."""

    delta: str
    merged: int = 1


class ToolCallCompletedData(_Data):
    name: str
    arguments: Any = None
    result: Any = None
    error: ErrorDetail | None = None


class ComponentGeneratorData(_Data):
    component_type: str
    payload: Any = None


class NotifyData(_Data):
    message: str
    level: Literal["info", "warning", "error"] = "info"


class TaskData(_Data):
    title: str | None = None
    result: Any = None
    error: ErrorDetail | None = None


# ---- envelope ---------------------------------------------------------------------------


class EventBase(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Fields every event carries; ``type`` is the tag of the concrete Struct."""

    seq: int
    conversation_id: str
    # Always present (null for conversation-level events), so clients can rely on the key.
    run_id: str | None
    agent: str | None
    ts: int
    item_id: str | None = None
    thread_id: str | None = None
    task_id: str | None = None


class ConversationStarted(EventBase, tag="conversation_started"):
    data: ConversationStartedData = msgspec.field(default_factory=ConversationStartedData)


class RunStarted(EventBase, tag="run_started"):
    data: RunStartedData = msgspec.field(default_factory=RunStartedData)


class RequireUserInput(EventBase, tag="require_user_input"):
    data: RequireUserInputData


class UserInputReceived(EventBase, tag="user_input_received"):
    data: UserInputReceivedData


class RunCancelling(EventBase, tag="run_cancelling"):
    data: RunCancellingData = msgspec.field(default_factory=RunCancellingData)


class Done(EventBase, tag="done"):
    data: DoneData


class MessageChunk(EventBase, tag="message_chunk"):
    data: MessageChunkData


class Message(EventBase, tag="message"):
    data: MessageData


class ReasoningStarted(EventBase, tag="reasoning_started"):
    data: ReasoningStartedData = msgspec.field(default_factory=ReasoningStartedData)


class Reasoning(EventBase, tag="reasoning"):
    data: ReasoningData


class ReasoningCompleted(EventBase, tag="reasoning_completed"):
    data: ReasoningCompletedData = msgspec.field(default_factory=ReasoningCompletedData)


class ToolCallStarted(EventBase, tag="tool_call_started"):
    data: ToolCallStartedData


class ToolCallArguments(EventBase, tag="tool_call_arguments"):
    data: ToolCallArgumentsData


class ToolCallCompleted(EventBase, tag="tool_call_completed"):
    data: ToolCallCompletedData


class ComponentGenerator(EventBase, tag="component_generator"):
    data: ComponentGeneratorData


class Notify(EventBase, tag="notify"):
    data: NotifyData


class TaskStarted(EventBase, tag="task_started"):
    data: TaskData = msgspec.field(default_factory=TaskData)


class TaskCompleted(EventBase, tag="task_completed"):
    data: TaskData = msgspec.field(default_factory=TaskData)


class TaskFailed(EventBase, tag="task_failed"):
    data: TaskData = msgspec.field(default_factory=TaskData)


class TaskCancelled(EventBase, tag="task_cancelled"):
    data: TaskData = msgspec.field(default_factory=TaskData)


Event = (
    ConversationStarted
    | RunStarted
    | RequireUserInput
    | UserInputReceived
    | RunCancelling
    | Done
    | MessageChunk
    | Message
    | ReasoningStarted
    | Reasoning
    | ReasoningCompleted
    | ToolCallStarted
    | ToolCallArguments
    | ToolCallCompleted
    | ComponentGenerator
    | Notify
    | TaskStarted
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
)

EVENT_CLASSES: dict[str, type[EventBase]] = {
    cls.__struct_config__.tag: cls for cls in get_args(Event)
}
EVENT_TYPES: frozenset[str] = frozenset(EVENT_CLASSES)

# Control events are never merged or dropped by a catching-up sink; only chunks merge.
MERGEABLE_TYPES: frozenset[str] = frozenset({"message_chunk", "reasoning",
                                             "tool_call_arguments"})

# Lifecycle events: written by the engine only (PROTOCOL.md's "run lifecycle" group plus
# ``conversation_started``); an agent may not emit them.
LIFECYCLE_TYPES: frozenset[str] = frozenset(
    {"conversation_started", "run_started", "require_user_input", "user_input_received",
     "run_cancelling", "done"}
)
