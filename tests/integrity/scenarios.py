"""Fault scenarios shared by the tests and ``scripts/crashloop.py``.

``crash_loop``: rounds of a mixed workload (runs over SSE and WebSocket, asks, cancels,
voluntary drops, conversation watchers, retention and a schedule on), each ended by a
SIGKILL at a random moment; the file is checked as the crash left it, the server restarts
on it, every client resumes from its last seq, and everything is checked again.

The other scenarios (full disk, read-only file, second instance, injected commit failures)
are in ``faults.py``; they share ``Report`` and the round machinery here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.integrity.invariants import (
    Snapshot,
    StreamLog,
    Violation,
    at,
    check_recovered,
    check_store,
    check_streams,
    open_runs,
    read_snapshot,
)
from tests.integrity.server import IntegrityServer
from tests.integrity.workload import CLIENT_TIMEOUT, ConversationWatcher, RunClient, make_plans

# Flags every harness server runs with: retention on (short, so conversations do expire
# between rounds and resumes meet 410s), fast heartbeats, a short SIGTERM grace.
BASE_ARGS: tuple[str, ...] = (
    "--retention", "4", "--retention-sweep", "1", "--heartbeat", "1",
    "--shutdown-grace", "3", "--input-timeout", "5", "--schedule-min-interval", "1",
)
# Varied per restart: resumes served from the replay cache, or with none (all from the
# store), or with small per-connection queues (overflow, catch-up with merged chunks).
ROUND_ARGS: tuple[tuple[str, ...], ...] = (
    (),
    ("--replay-cache-bytes", "0"),
    ("--store-batch", "50", "--queue-events", "50", "--replay-cache-bytes", "100000"),
)
SCHEDULE_CONVERSATION = "schedule-conv"


@dataclass
class Report:
    name: str
    seed: int
    kills: int = 0
    rounds: int = 0
    runs_planned: int = 0
    runs_started: int = 0  # runs a client learnt the id of
    frames_checked: int = 0
    stored_events_checked: int = 0
    violations: list[Violation] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    observations: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _seen: set[tuple[str, str | None, int | None, str | None]] = field(default_factory=set)

    def add(self, where: str, violations: Iterable[Violation]) -> None:
        """Record violations once each (a stream is re-checked at every later check point)."""
        for v in at(where, violations):
            key = (v.invariant, v.conversation_id, v.seq, v.run_id)
            if key not in self._seen:
                self._seen.add(key)
                self.violations.append(v)

    def observe(self, line: str) -> None:
        self.observations.append(line)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> str:
        return (f"{self.name}: {self.kills:,} SIGKILLs, {self.runs_started:,} runs "
                f"({self.runs_planned:,} planned), {self.frames_checked:,} client frames and "
                f"{self.stored_events_checked:,} stored events checked, "
                f"{len(self.violations):,} violations in {self.elapsed:.0f} s (seed {self.seed})")

    def by_invariant(self) -> Counter[str]:
        return Counter(v.invariant for v in self.violations)

    def details(self, limit: int = 40) -> str:
        lines = [self.summary()]
        if self.violations:
            lines.append("violations by invariant: " + ", ".join(
                f"{k}={n}" for k, n in self.by_invariant().most_common()))
            lines += [f"  {v}" for v in self.violations[:limit]]
            if len(self.violations) > limit:
                lines.append(f"  ... {len(self.violations) - limit} more")
        lines += [f"  observed: {o}" for o in self.observations]
        if self.notes:
            lines.append("client notes: " + ", ".join(
                f"{k}={n}" for k, n in sorted(self.notes.items())))
        return "\n".join(lines)


def check_point(report: Report, where: str, db: Path, streams: Sequence[StreamLog], *,
                quiescent: bool = False, were_open: dict[str, str] | None = None) -> Snapshot:
    snap = read_snapshot(db)
    report.add(where, check_store(snap, quiescent=quiescent))
    if were_open is not None:
        report.add(where, check_recovered(snap, were_open))
    found, _ = check_streams(snap, streams)
    report.add(where, found)
    report.stored_events_checked = max(report.stored_events_checked, snap.event_count())
    return snap


async def create_schedule(http: aiohttp.ClientSession, base: str) -> str | None:
    body = {"agent": "demo", "interval_seconds": 1, "conversation_id": SCHEDULE_CONVERSATION,
            "input": {"text": "tick", "tokens": 5, "delay_ms": 0}}
    async with http.post(base + "/v1/schedules", json=body) as r:
        if r.status != 201:
            return None
        return str((await r.json())["schedule_id"])


@dataclass
class Round:
    """One round's clients: run clients and conversation watchers."""

    clients: list[RunClient]
    watchers: list[ConversationWatcher]

    @property
    def streams(self) -> list[StreamLog]:
        return [c.stream for c in self.clients] + [w.stream for w in self.watchers]

    def all_finished(self) -> bool:
        return all(c.finished or c.run_id is None for c in self.clients)

    def notes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for c in self.clients:
            total.update(c.notes)
        for w in self.watchers:
            total.update(w.notes)
        return total


def new_round(rng: random.Random, tag: str, runs: int, pool: list[str],
              poison: str | None = None, poison_runs: int = 0) -> Round:
    plans = make_plans(rng, tag, runs, pool, poison=poison, poison_runs=poison_runs)
    clients = [RunClient(p) for p in plans]
    cids = sorted({p.conversation_id for p in plans if p.conversation_id.startswith(tag)})
    watched = rng.sample(cids, min(2, len(cids)))
    watchers = [ConversationWatcher(c, slow=0.004 if i == 0 else 0.0)
                for i, c in enumerate(watched)]
    return Round(clients, watchers)


async def run_live(http: aiohttp.ClientSession, base: str, rnd: Round,
                   stop: Callable[[], bool]) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(c.live(http, base)) for c in rnd.clients]
    tasks += [asyncio.create_task(w.follow(http, base, stop)) for w in rnd.watchers]
    return tasks


async def settle(tasks: Sequence[asyncio.Task[None]], timeout: float) -> int:
    """Wait for client tasks; cancel stragglers. Returns how many had to be cancelled."""
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    return len(pending)


async def resume_all(http: aiohttp.ClientSession, base: str, rnd: Round,
                     timeout: float) -> None:
    """Resume every client after a restart, watchers until every run client is done."""
    finished = asyncio.Event()
    watchers = [asyncio.create_task(w.follow(http, base, finished.is_set))
                for w in rnd.watchers]
    await asyncio.gather(*(c.resume(http, base, timeout) for c in rnd.clients))
    finished.set()
    await settle(watchers, 10)


async def crash_loop(workdir: Path, *, kills: int, runs_per_round: int, seed: int,
                     env: dict[str, str] | None = None, poison: str | None = None,
                     kill_window: tuple[float, float] = (0.1, 2.5),
                     resume_timeout: float = 60.0, name: str = "crash loop",
                     progress: Callable[[Report, int], None] | None = None,
                     stop_at: float | None = None) -> Report:
    """``stop_at``: a ``time.monotonic()`` after which no new round starts."""
    rng = random.Random(seed)
    report = Report(name, seed)
    db = workdir / "crash.db"
    server = IntegrityServer(db, *BASE_ARGS, log_dir=workdir / "logs", env=env)
    pool: list[str] = []
    await server.start()
    schedule_watch = ConversationWatcher(SCHEDULE_CONVERSATION)
    try:
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
            if await create_schedule(http, server.base) is None:
                report.observe("could not create the schedule")
            for k in range(kills):
                if stop_at is not None and time.monotonic() > stop_at:
                    report.observe(f"stopped after {k} of {kills} rounds (time budget)")
                    break
                report.rounds += 1
                rnd = new_round(rng, f"k{k}", runs_per_round, pool, poison=poison,
                                poison_runs=2 if poison else 0)
                report.runs_planned += len(rnd.clients)
                killed = asyncio.Event()
                tasks = await run_live(http, server.base, rnd, killed.is_set)
                tasks.append(asyncio.create_task(
                    schedule_watch.follow(http, server.base, killed.is_set)))
                await asyncio.sleep(rng.uniform(*kill_window))
                server.kill()
                report.kills += 1
                killed.set()
                await settle(tasks, 20)
                streams = [*rnd.streams, schedule_watch.stream]
                snap = check_point(report, f"round {k} after SIGKILL", db, streams)
                were_open = open_runs(snap)
                server.args = BASE_ARGS + ROUND_ARGS[rng.randrange(len(ROUND_ARGS))]
                try:
                    await server.start()
                except (RuntimeError, TimeoutError) as exc:
                    report.add(f"round {k} restart", [Violation(
                        "restart_succeeds", f"the server did not restart on the file: {exc}")])
                    return report
                done_event = asyncio.Event()
                sched = asyncio.create_task(
                    schedule_watch.follow(http, server.base, done_event.is_set))
                await resume_all(http, server.base, rnd, resume_timeout)
                done_event.set()
                await settle([sched], 10)
                check_point(report, f"round {k} after restart", db, streams,
                            were_open=were_open)
                report.frames_checked += sum(len(s.frames) for s in rnd.streams)
                report.runs_started += sum(1 for c in rnd.clients if c.run_id)
                report.notes.update(rnd.notes())
                if progress is not None:
                    progress(report, k)
            took = server.terminate_within(20)
            report.observe(f"final SIGTERM took {took:.1f} s" if took is not None
                           else "final SIGTERM did not exit within 20 s (SIGKILLed)")
            check_point(report, "after final SIGTERM", db, [schedule_watch.stream],
                        quiescent=took is not None)
            report.frames_checked += len(schedule_watch.stream.frames)
    finally:
        server.stop()
    return report
