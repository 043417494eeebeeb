"""The scheduler: one task, owned by the app lifecycle, that starts each schedule's runs.

Timing rule: after a firing that was due at ``due``, the next one is ``due + interval`` if
that is still ahead, else ``now + interval``. So a server that was down for many intervals
runs a missed schedule once on start-up, not once per missed interval, and a punctual one
keeps its cadence without drift. A firing while the schedule's previous run is still going
is skipped (counted), so slow runs never pile up. A firing that cannot start a run (unknown
agent, store trouble, ...) is recorded in ``last_error`` and the schedule carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from app.agents.base import AgentInputError
from app.auth.authenticator import Principal
from app.clock import now_ms
from app.engine.engine import Engine, new_id
from app.errors import AgentstreamError, InvalidInput, LimitExceeded, not_found
from app.ids import scoped
from app.schedules.store import Schedules
from app.store.records import UNFINISHED
from protocol.messages import ErrorDetail, StartRunRequest
from protocol.schedules import CreateScheduleRequest, Schedule

log = structlog.get_logger(__name__)

MAX_SCHEDULES = 10_000
# The loop re-checks at least this often, whatever the clock did.
MAX_IDLE = 30.0
# Longest a firing may wait for the engine to take its run (store backpressure).
START_TIMEOUT = 30.0
# With schedules shared by nodes, how often the table is read again (others' changes).
SHARED_RELOAD = 2.0




class Scheduler:
    def __init__(self, store: Schedules, engine: Engine, *, min_interval: float) -> None:
        self.store = store
        self.engine = engine
        self.min_interval = min_interval
        self._schedules: dict[str, Schedule] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        for schedule in await self.store.load():
            self._schedules[schedule.schedule_id] = schedule
        self._task = asyncio.create_task(self._loop(), name="scheduler")
        log.info("scheduler_started", schedules=len(self._schedules))

    async def stop(self, within: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(within):
                    await self._task
            self._task = None
        await self.store.close()

    # ---- the API's operations -----------------------------------------------------------

    async def create(
        self, req: CreateScheduleRequest, owner: str | None = None, admin: bool = True
    ) -> Schedule:
        if req.interval_seconds < self.min_interval:
            raise InvalidInput("invalid_field",
                           f"interval_seconds must be >= {self.min_interval:g}")
        agent = self.engine.agents.get(req.agent)  # 422 unknown_agent
        try:
            agent.parse_input(req.input)
        except AgentInputError as exc:
            raise InvalidInput("invalid_input", f"{agent.name}: {exc}") from None
        if len(self._schedules) >= MAX_SCHEDULES:
            raise LimitExceeded("too_many_schedules", f"at most {MAX_SCHEDULES} schedules")
        now = now_ms()
        schedule = Schedule(
            schedule_id=new_id("s"),
            agent=req.agent,
            input=req.input,
            interval_seconds=req.interval_seconds,
            conversation_id=req.conversation_id or new_id("c"),
            created_at=now,
            next_fire_at=now + _ms(req.interval_seconds),
            owner=owner,
            owner_admin=admin,
        )
        await self.store.insert(schedule)
        self._schedules[schedule.schedule_id] = schedule
        self._wake.set()
        log.info("schedule_created", schedule_id=schedule.schedule_id, agent=schedule.agent,
                 interval=schedule.interval_seconds, conversation_id=schedule.conversation_id)
        return schedule

    def conversation_ids(self) -> set[str]:
        """Conversations the schedules run in (store keys): retention keeps them."""
        return {scoped(s.owner, s.conversation_id) for s in self._schedules.values()}

    def list(self, viewer: Principal | None = None) -> list[Schedule]:
        mine = [s for s in self._schedules.values()
                if viewer is None or viewer.can_access(s.owner)]
        return sorted(mine, key=lambda s: (s.created_at, s.schedule_id))

    def get(self, schedule_id: str, viewer: Principal | None = None) -> Schedule:
        schedule = self._schedules.get(schedule_id)
        if schedule is None or (viewer is not None and not viewer.can_access(schedule.owner)):
            raise not_found("schedule", schedule_id)
        return schedule

    async def delete(self, schedule_id: str, viewer: Principal | None = None) -> None:
        self.get(schedule_id, viewer)  # 404 when unknown or not the caller's
        await self.store.delete(schedule_id)
        self._schedules.pop(schedule_id, None)
        self._wake.set()
        log.info("schedule_deleted", schedule_id=schedule_id)

    # ---- firing -------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()  # before scanning: a change made meanwhile wakes the wait
            try:
                if self.store.shared:
                    await self._reload()
                await self._fire_due()
            except Exception:
                log.exception("scheduler_pass_failed")
            wait = self._seconds_to_next()
            if self.store.shared:  # other nodes create, delete and fire schedules too
                wait = min(wait, SHARED_RELOAD)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _reload(self) -> None:
        self._schedules = {s.schedule_id: s for s in await self.store.load()}

    async def _fire_due(self) -> None:
        now = now_ms()
        for schedule in sorted(self._schedules.values(), key=lambda s: s.next_fire_at):
            if schedule.next_fire_at > now or not self.engine.accepting:
                # Not due yet; or shutting down: leave it due, the next start runs it.
                return
            if schedule.schedule_id in self._schedules:  # not deleted meanwhile
                await self._fire(schedule)

    def _seconds_to_next(self) -> float:
        if not self._schedules:
            return MAX_IDLE
        soonest = min(s.next_fire_at for s in self._schedules.values())
        return min(MAX_IDLE, max(0.0, (soonest - now_ms()) / 1000))

    async def _fire(self, schedule: Schedule) -> None:
        """Start one run (or skip, or record why not); never lets an error end the loop."""
        sid = schedule.schedule_id
        now = now_ms()
        interval = _ms(schedule.interval_seconds)
        due = schedule.next_fire_at
        due_next = due + interval
        next_due = due_next if due_next > now else now + interval
        if not await self.store.claim(sid, due, next_due):
            # Another node took this due time (cluster): it fires, we see its row later.
            if self.store.shared:
                await self._reload()
            return
        schedule.next_fire_at = next_due
        schedule.last_fire_at = now
        if await self._still_running(schedule.last_run_id):
            schedule.skipped += 1
            log.info("schedule_skipped", schedule_id=sid, running=schedule.last_run_id)
        else:
            await self._start_run(schedule)
        if sid not in self._schedules:
            return  # deleted while the run started
        try:
            await self.store.update(schedule)
        except Exception:
            # Memory keeps the new times; the next firing's save persists them.
            log.exception("schedule_save_failed", schedule_id=sid)

    async def _still_running(self, run_id: str | None) -> bool:
        """The previous firing's run is not over (on this node, or, when schedules are
        shared, on any: its committed row says)."""
        if run_id is None:
            return False
        if run_id in self.engine.active:
            return True
        if not self.store.shared:
            return False
        try:
            record = await self.engine.get_run(run_id)
        except AgentstreamError:
            return False
        return record.status in UNFINISHED

    async def _start_run(self, schedule: Schedule) -> None:
        req = StartRunRequest(
            agent=schedule.agent, input=schedule.input,
            conversation_id=schedule.conversation_id,
            metadata={"schedule_id": schedule.schedule_id},
        )
        try:
            async with asyncio.timeout(START_TIMEOUT):
                # engine.start, as POST /v1/runs: the multitask policy applies, so a firing
                # while the last one still runs is refused (conversation_busy, recorded as
                # this firing's error) instead of starting a second run beside it.
                started = await self.engine.start(
                    req, owner=schedule.owner, admin=schedule.owner_admin
                )
        except AgentstreamError as exc:
            error = ErrorDetail(exc.code, exc.message)
        except TimeoutError:
            error = ErrorDetail("start_timeout", f"the run did not start within {START_TIMEOUT}s")
        except Exception as exc:
            log.exception("schedule_fire_crashed", schedule_id=schedule.schedule_id)
            error = ErrorDetail("internal_error", f"{type(exc).__name__}: {exc}")
        else:
            schedule.fires += 1
            schedule.last_run_id = started.record.run_id
            schedule.last_error = None
            log.info("schedule_fired", schedule_id=schedule.schedule_id,
                     run_id=started.record.run_id,
                     conversation_id=schedule.conversation_id)
            return
        schedule.failures += 1
        schedule.last_error = error
        log.warning("schedule_fire_failed", schedule_id=schedule.schedule_id, code=error.code,
                    message=error.message)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


SCHEDULER = web.AppKey("scheduler", Scheduler)


async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx step: after the engine recovered; stopped before the engine shuts down."""
    scheduler = app[SCHEDULER]
    await scheduler.start()
    try:
        yield
    finally:
        await scheduler.stop()
