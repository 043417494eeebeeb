"""HTTP request bodies, WebSocket commands and replies, and the error body.

Validation that msgspec can express (types, patterns, bounds) lives here, so a client and
the server reject the same input with the same message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from protocol.events import ErrorDetail as ErrorDetail  # one error shape everywhere

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
AGENT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
AgentName = Annotated[str, msgspec.Meta(pattern=AGENT_PATTERN)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
OnDisconnect = Literal["continue", "cancel"]
# What a start does while another run of its conversation is active (engine/starts.py).
Multitask = Literal["reject", "enqueue", "interrupt", "parallel", "answer"]
# ``Idempotency-Key``: printable ASCII, as Stripe's and the IETF draft's keys are.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
IdempotencyKey = Annotated[str, msgspec.Meta(pattern=IDEMPOTENCY_KEY_PATTERN)]


class _Body(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Request bodies refuse unknown fields: a typo is a 422, not a silently ignored option."""


# ---- HTTP -------------------------------------------------------------------------------


class StartRunRequest(_Body):
    agent: AgentName
    input: Any = None
    conversation_id: Id | None = None
    on_disconnect: OnDisconnect = "continue"
    metadata: dict[str, Any] | None = None
    # None: the server's default (``reject``).
    multitask: Multitask | None = None
    # POSTed on this run's ``done`` and ``require_user_input`` (PROTOCOL-NOTES "Webhooks").
    webhook_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


class InputRequest(_Body):
    request_id: Id
    value: Any = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class StartRunResponse(msgspec.Struct, omit_defaults=True):
    run_id: str
    conversation_id: str
    status: str
    events_url: str
    replayed: bool = False


class PendingInput(msgspec.Struct, omit_defaults=True):
    request_id: str
    prompt: str
    choices: list[Any] | None = None
    schema: dict[str, Any] | None = None
    expires_at: int | None = None


class RunInfo(msgspec.Struct, omit_defaults=True):
    run_id: str
    conversation_id: str
    agent: str
    status: str
    created_at: int
    started_at: int | None = None
    ended_at: int | None = None
    events: int = 0
    done_seq: int | None = None
    error: ErrorDetail | None = None
    pending_input: PendingInput | None = None
    metadata: dict[str, Any] | None = None


class AgentCard(msgspec.Struct):
    name: str
    description: str
    can_request_input: bool = False
    input_schema: dict[str, Any] | None = None


class AgentList(msgspec.Struct):
    agents: list[AgentCard]


class HealthStatus(msgspec.Struct):
    """``/healthz`` and ``/readyz``: ok, ready, shutting_down, store_unavailable or
    bus_unavailable (cluster mode)."""

    status: str


# ---- WebSocket: client to server --------------------------------------------------------


class _Command(_Body, tag_field="type", kw_only=True):
    ref: Annotated[str, msgspec.Meta(max_length=128)] | None = None


class StartCommand(_Command, tag="start"):
    agent: AgentName
    input: Any = None
    conversation_id: Id | None = None
    on_disconnect: OnDisconnect = "continue"
    metadata: dict[str, Any] | None = None
    multitask: Multitask | None = None
    webhook_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    idempotency_key: IdempotencyKey | None = None
    # With ``idempotency_key``: a retried start resumes its run's events after this seq.
    after: Seq | None = None


class SubscribeCommand(_Command, tag="subscribe"):
    conversation_id: Id | None = None
    run_id: Id | None = None
    after: Seq | None = None
    # Only these event types (``done`` is always delivered); a re-subscribe names them again.
    types: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]],
                     msgspec.Meta(max_length=64)] | None = None
    # Start with the stored events folded one per item (PROTOCOL-NOTES "Snapshot on join").
    snapshot: bool = False


class UnsubscribeCommand(_Command, tag="unsubscribe"):
    conversation_id: Id | None = None
    run_id: Id | None = None


class InputCommand(_Command, tag="input"):
    run_id: Id
    request_id: Id
    value: Any = None


class CancelCommand(_Command, tag="cancel"):
    run_id: Id | None = None
    # The ref of a start whose ack has not arrived yet.
    start_ref: Annotated[str, msgspec.Meta(max_length=128)] | None = None


class PingCommand(_Command, tag="ping"):
    pass


class RefreshCommand(_Command, tag="refresh"):
    token: str


Command = (
    StartCommand
    | SubscribeCommand
    | UnsubscribeCommand
    | InputCommand
    | CancelCommand
    | PingCommand
    | RefreshCommand
)

# ---- WebSocket: server to client (events use codec.ws_event_payload) -------------------


class _Reply(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    ref: str | None = None


class Ack(_Reply, tag="ack"):
    run_id: str | None = None
    conversation_id: str | None = None
    status: str | None = None
    # A start that found an existing run (idempotent replay, or ``multitask: answer``).
    replayed: bool = False


class Pong(_Reply, tag="pong"):
    pass


class ErrorReply(_Reply, tag="error"):
    code: str = "error"
    message: str = ""
    run_id: str | None = None
    conversation_id: str | None = None


_command_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)

# ---- decoding untrusted JSON ------------------------------------------------------------

# Arrays and objects nested deeper than this are refused: msgspec (like every recursive
# codec) would raise RecursionError a few hundred levels down, and a value that only just
# decodes could not be encoded again from a deeper stack (the store, an agent relay).
MAX_JSON_DEPTH = 64


class JsonTooDeep(msgspec.DecodeError):
    """Nesting over ``MAX_JSON_DEPTH``: a ``msgspec.DecodeError``, so a caller that handles
    malformed JSON handles this too."""


def _too_deep() -> JsonTooDeep:
    return JsonTooDeep(f"JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels)")


def _may_be_too_deep(raw: bytes | str) -> bool:
    """Cheap (two C-speed scans): fewer brackets than the limit cannot nest past it."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{") > MAX_JSON_DEPTH
    return raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise ``JsonTooDeep`` if decoded ``value`` nests lists/dicts deeper than ``limit``.
    Iterative, so it cannot itself run out of stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            raise _too_deep()
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def decode_json(raw: bytes | str) -> Any:
    """Untrusted JSON to Python values. Every failure is a ``msgspec.DecodeError``:
    malformed text, invalid UTF-8, or nesting over ``MAX_JSON_DEPTH`` (``JsonTooDeep``)."""
    try:
        value = msgspec.json.decode(raw)
    except RecursionError:
        raise _too_deep() from None
    except UnicodeError as exc:  # msgspec reports invalid UTF-8 as UnicodeDecodeError
        raise msgspec.DecodeError(f"JSON is not valid UTF-8: {exc}") from None
    if isinstance(value, dict | list) and _may_be_too_deep(raw):
        check_depth(value)
    return value


def decode_command(raw: bytes | str) -> Command:
    """Parse one WebSocket command. Raises ``msgspec.ValidationError`` for a well-formed
    command that breaks a rule, and ``msgspec.DecodeError`` (never RecursionError or
    UnicodeError) for anything that is not acceptable JSON: malformed, invalid UTF-8, or
    nested deeper than ``MAX_JSON_DEPTH`` (``JsonTooDeep``)."""
    if _may_be_too_deep(raw):
        decode_json(raw)  # refuses deep nesting before the typed decoder recurses into it
    try:
        return _command_decoder.decode(raw)
    except RecursionError:  # unreachable after the check above; kept as a backstop
        raise _too_deep() from None
    except UnicodeError as exc:
        raise msgspec.DecodeError(f"JSON is not valid UTF-8: {exc}") from None
