"""The input broker: ``require_user_input`` questions, their deadlines and first-wins answers.

An answer is checked and taken in one synchronous step, so two answers (over any transports)
can never both win, and an answer racing a cancel in the same loop iteration is told the run
is ending instead of resolving a future the cancel already cancelled.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from app import metrics
from app.agents.base import MISSING
from app.clock import now_ms
from app.engine.state import ActiveRun, PendingRequest
from app.errors import Conflict, InvalidInput, not_found
from app.store.records import RunRecord
from protocol.events import (
    EventBase,
    RequireUserInput,
    RequireUserInputData,
    UserInputReceived,
    UserInputReceivedData,
)
from protocol.messages import PendingInput

# Queue a lifecycle event together with the run's row: waiting for room (Emit, the agent's
# side) or at once, returning the commit to acknowledge on (EmitNow, a client's answer).
Emit = Callable[[ActiveRun, type[EventBase], msgspec.Struct], Awaitable[None]]
EmitNow = Callable[[ActiveRun, type[EventBase], msgspec.Struct], "asyncio.Future[None]"]


class InputTimeout(Exception):
    pass


def new_request_id() -> str:
    return f"q_{secrets.token_hex(8)}"


class InputBroker:
    def __init__(self, emit: Emit, emit_now: EmitNow, default_timeout: float) -> None:
        self._emit = emit
        self._emit_now = emit_now
        self.default_timeout = default_timeout

    async def ask(
        self,
        run: ActiveRun,
        prompt: str,
        choices: list[Any] | None,
        schema: dict[str, Any] | None,
        timeout: float | None,
        default: Any,
    ) -> Any:
        """Emit the question, wait for the first answer or the deadline."""
        deadline = timeout if timeout is not None else self.default_timeout
        expires_at = now_ms() + int(deadline * 1000)
        request_id = new_request_id()
        has_default = default is not MISSING
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        run.pending = PendingRequest(request_id, fut, choices, expires_at)
        run.record.status = "waiting_input"
        run.record.pending_input = PendingInput(request_id, prompt, choices, schema, expires_at)
        await self._emit(run, RequireUserInput, RequireUserInputData(
            request_id=request_id, prompt=prompt, choices=choices, schema=schema,
            expires_at=expires_at, default=default if has_default else None,
            has_default=has_default,
        ))
        metrics.INPUT_PENDING.inc()
        try:
            return await self._wait(run, fut, request_id, deadline, default, has_default)
        finally:
            metrics.INPUT_PENDING.dec()
            if run.pending is not None and run.pending.request_id == request_id:
                run.pending = None

    async def _wait(
        self, run: ActiveRun, fut: asyncio.Future[Any], request_id: str, deadline: float,
        default: Any, has_default: bool,
    ) -> Any:
        try:
            async with asyncio.timeout(deadline):
                return await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return fut.result()  # answered in the same iteration the deadline hit
        run.pending = None
        run.expired.add(request_id)
        if not has_default:
            raise InputTimeout(f"no answer to {request_id} within {deadline:g}s")
        self._resume(run)
        await self._emit(run, UserInputReceived, UserInputReceivedData(
            request_id=request_id, value=default, source="default"))
        return default

    @staticmethod
    def _resume(run: ActiveRun) -> None:
        run.record.status = "running"
        run.record.pending_input = None

    def answer(self, run: ActiveRun, request_id: str, value: Any) -> asyncio.Future[None]:
        """Take the answer (first wins) and return the commit of its event to wait on."""
        pending = run.pending
        if run.ended or run.cancel_requested or run.failure is not None:
            raise Conflict("run_ended", f"run {run.run_id!r} is ending")
        if pending is None or pending.request_id != request_id:
            raise self.not_pending(run.record, request_id, run.expired)
        if pending.future.done():
            # Its deadline fired in this same loop iteration (the wait was cancelled).
            raise Conflict("input_expired", f"request {request_id!r} has expired")
        if pending.choices is not None and value not in pending.choices:
            raise InvalidInput("invalid_input_value", f"value must be one of {pending.choices!r}")
        run.pending = None
        run.record.answered.append(request_id)
        self._resume(run)
        pending.future.set_result(value)
        return self._emit_now(
            run, UserInputReceived, UserInputReceivedData(request_id=request_id, value=value)
        )

    @staticmethod
    def not_pending(record: RunRecord, request_id: str, expired: set[str]) -> Exception:
        if request_id in record.answered:
            return Conflict("input_already_answered",
                            f"request {request_id!r} was already answered")
        if request_id in expired:
            return Conflict("input_expired", f"request {request_id!r} has expired")
        if record.done_seq is not None:
            return Conflict("run_ended", f"run {record.run_id!r} has ended")
        return not_found("input_request", request_id)
