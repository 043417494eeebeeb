"""Commands forwarded to a conversation's owning node, and their answers, as JSON.

A domain error raised on the owner travels back as (kind, code, message) and is raised
again here as the same class, so the client sees exactly what the owner decided.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app import errors
from app.engine.engine import Engine
from protocol.messages import StartRunRequest

_ERRORS: dict[str, type[errors.AgentstreamError]] = {
    cls.__name__: cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.AgentstreamError)
}


class Command(msgspec.Struct):
    op: str
    args: dict[str, Any]


class Failure(msgspec.Struct):
    kind: str
    code: str
    message: str


class Answer(msgspec.Struct, omit_defaults=True):
    result: Any = None
    error: Failure | None = None


_command = msgspec.json.Decoder(Command)
_answer = msgspec.json.Decoder(Answer)


def encode_command(op: str, args: dict[str, Any]) -> bytes:
    return msgspec.json.encode(Command(op, args))


def decode_answer(raw: bytes) -> Any:
    """The result, or the owner's domain error raised again."""
    answer = _answer.decode(raw)
    if answer.error is not None:
        cls = _ERRORS.get(answer.error.kind, errors.Unavailable)
        raise cls(answer.error.code, answer.error.message)
    return answer.result


async def execute(engine: Engine, raw: bytes) -> bytes:
    """Run one forwarded command on this (owning) node; never raises."""
    try:
        cmd = _command.decode(raw)
        result = await _run(engine, cmd)
        return msgspec.json.encode(Answer(result=result))
    except errors.AgentstreamError as exc:
        return msgspec.json.encode(Answer(error=Failure(type(exc).__name__, exc.code,
                                                        exc.message)))
    except Exception as exc:
        return msgspec.json.encode(Answer(error=Failure(
            "Unavailable", "node_error", f"the owning node failed: {type(exc).__name__}")))


async def _run(engine: Engine, cmd: Command) -> Any:
    args = cmd.args
    if cmd.op == "start" and args.get("policy"):
        # Engine.start: the idempotency key and the multitask policy are decided here.
        req = msgspec.convert(args["req"], StartRunRequest)
        key = args.get("idempotency_key")
        started = await engine.start(req, owner=args.get("owner"), admin=bool(args.get("admin")),
                                     idempotency_key=None if key is None else str(key),
                                     forwarded=True)
        return {"record": msgspec.to_builtins(started.record), "after": started.after,
                "replayed": started.replayed}
    if cmd.op == "delete":
        return await engine.delete_conversation(str(args["conversation_id"]), forwarded=True)
    if cmd.op == "start":
        req = msgspec.convert(args["req"], StartRunRequest)
        run = await engine.start_run(req, owner=args.get("owner"),
                                     admin=bool(args.get("admin")), forwarded=True)
        return msgspec.to_builtins(run.record)
    if cmd.op == "answer":
        await engine.answer(str(args["run_id"]), str(args["request_id"]), args.get("value"))
        return None
    if cmd.op == "cancel":
        running, record = await engine.cancel(str(args["run_id"]), str(args["reason"]))
        return [running, msgspec.to_builtins(record)]
    raise errors.BadRequest("unknown_command", f"unknown command {cmd.op!r}")
