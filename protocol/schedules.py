"""Wire structs of the recurring schedules API (``/v1/schedules``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from protocol.messages import AgentName, ErrorDetail, Id

# A year: longer intervals are more likely a unit mistake than a wish.
MAX_INTERVAL = 365 * 86_400.0


class CreateScheduleRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    agent: AgentName
    interval_seconds: Annotated[float, msgspec.Meta(gt=0, le=MAX_INTERVAL)]
    input: Any = None
    # Every firing runs in this conversation; the server makes one when absent.
    conversation_id: Id | None = None


class Schedule(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A schedule as stored and as answered (times are epoch milliseconds)."""

    schedule_id: str
    agent: str
    input: Any = None
    interval_seconds: float
    conversation_id: str
    created_at: int
    next_fire_at: int
    last_fire_at: int | None = None
    # Runs started, firings skipped because the previous run was still going, and firings
    # that could not start a run (last_error says why).
    fires: int = 0
    skipped: int = 0
    failures: int = 0
    last_run_id: str | None = None
    last_error: ErrorDetail | None = None
    # Who created it (None without auth): its runs start as that user, and only that user
    # (or an admin) sees the schedule.
    owner: str | None = None
    owner_admin: bool = False


class ScheduleList(msgspec.Struct):
    schedules: list[Schedule]
