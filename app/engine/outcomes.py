"""How a run ends: the status and error for each way its driver can stop.

Pure decisions (no I/O) for ``RunLifecycle._drive``: an exception from the agent, a timeout,
store trouble, or a cancel (requested, server shutdown, or a failure marked from outside).
"""

from __future__ import annotations

import structlog

from app.agents.base import AgentError
from app.engine.event_log import BrokenConversation, InvalidEvent
from app.engine.inputs import InputTimeout
from app.engine.state import ActiveRun
from app.store.writer import StoreUnavailable
from protocol.messages import ErrorDetail

log = structlog.get_logger(__name__)


def failed(run: ActiveRun, exc: Exception, run_timeout: float) -> tuple[str, ErrorDetail]:
    """A run that raised ends ``failed`` with the code of what went wrong (checked in this
    order). Called inside the driver's ``except``, so ``log.exception`` sees the error; a
    run timeout also cancels the agent."""
    if isinstance(exc, TimeoutError):
        if run.agent_task is not None:
            run.agent_task.cancel()
        return "failed", ErrorDetail("run_timeout", f"the run took longer than {run_timeout}s")
    if isinstance(exc, InputTimeout):
        return "failed", ErrorDetail("input_timeout", str(exc))
    if isinstance(exc, AgentError):
        return "failed", ErrorDetail(exc.code, exc.message)
    if isinstance(exc, InvalidEvent):
        return "failed", ErrorDetail("invalid_event", str(exc))
    if isinstance(exc, StoreUnavailable | BrokenConversation):
        return "failed", run.failure or ErrorDetail("store_unavailable", str(exc))
    log.exception("agent_crashed")
    return "failed", ErrorDetail("agent_error", f"{type(exc).__name__}: {exc}")


def cancelled(run: ActiveRun) -> tuple[str, ErrorDetail | None] | None:
    """How a cancelled run ends, or None when the cancel is not the run's (re-raise it)."""
    if run.failure is not None:
        return "failed", run.failure
    if run.shutting_down:
        return "interrupted", ErrorDetail("server_shutdown", "the server shut down during the run")
    if run.cancel_requested:
        return "cancelled", None
    return None
