"""Worker processes holding the client connections (multiprocessing, spawn) and the pool that
deals subscribers to them and merges what they report.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from loadlib_conn import ClientJob, ConnResult, Sub, _Conn
from loadlib_stats import merge_hist


class _Worker:
    """All the connections of one worker process, plus the counters it reports."""

    def __init__(self, wid: int, job: ClientJob, out: Any, stop: Any) -> None:
        self.wid = wid
        self.job = job
        self.out = out
        self.stop = stop
        self.events = 0
        self.reported_events = 0
        self.hist: dict[int, int] = {}
        self.reported_hist: dict[int, int] = {}
        self.errors = 0
        self.error_samples: list[str] = []
        self.reconnects = 0
        self.first_event: float | None = None
        self.last_event: float | None = None
        self.finished = 0
        self.all_done = asyncio.Event()
        self.results: list[ConnResult] = []
        self.run_ids: dict[int, str] | None = {}
        self.conns: list[_Conn] = []
        self.cpu_at_ready = time.process_time()

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)

    def on_finished(self) -> None:
        """A connection got its run's done, or gave up: one fewer to wait for."""
        self.finished += 1
        if self.finished >= len(self.job.subs) and not self.job.idle:
            self.all_done.set()

    async def _open(self, sub: Sub, result: ConnResult) -> _Conn | None:
        loop = asyncio.get_running_loop()
        for attempt in range(5):
            try:
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, sub, result), self.job.host, self.job.port
                )
                self.conns.append(conn)
                async with asyncio.timeout(30):
                    await conn.ready
                return conn
            except (OSError, TimeoutError) as exc:
                if attempt == 4:
                    self.error(f"connect: {exc!r}")
                await asyncio.sleep(0.2 * (attempt + 1))
        return None

    async def _hold(self, sub: Sub, sem: asyncio.Semaphore, ready: list[int]) -> None:
        """Open, then keep reconnecting until the run's done arrives (or we are stopped)."""
        result = ConnResult(0.0, None, 0)
        self.results.append(result)
        async with sem:
            result.started = time.monotonic()
            conn = await self._open(sub, result)
        ready.append(1 if conn is not None and conn.status in (101, 200, 204) else 0)
        while conn is not None:
            await conn.closed
            if conn.finished:
                return
            if self.job.idle or self.stop_requested:
                return
            if not self.job.reconnect or result.reconnects >= self.job.max_reconnects:
                self.error(f"connection closed before done: {sub.path}")
                return
            result.reconnects += 1
            self.reconnects += 1
            last = conn.last_id()
            if last is not None:
                sub.last_event_id = last
            run_id = (self.run_ids or {}).get(id(conn))
            sub = self._resume_sub(sub, run_id)
            await asyncio.sleep(0.05)
            conn = await self._open(sub, result)
        self.on_finished()

    def _resume_sub(self, sub: Sub, run_id: str | None) -> Sub:
        """The same stream from the last id seen (a POST start resumes on its run's URL)."""
        if sub.method == "POST" and run_id is not None:
            if self.job.transport == "ws":
                msg = {"type": "subscribe", "run_id": run_id, "after": sub.last_event_id or 0}
                return Sub(sub.path, "GET", None, sub.last_event_id, msg)
            return Sub(f"/v1/runs/{run_id}/events", "GET", None, sub.last_event_id)
        if self.job.transport == "ws" and sub.ws_message is not None:
            msg = dict(sub.ws_message)
            if msg.get("type") == "subscribe" and sub.last_event_id is not None:
                msg["after"] = sub.last_event_id
            return replace(sub, ws_message=msg)
        return replace(sub)

    @property
    def stop_requested(self) -> bool:
        return bool(self.stop.is_set())

    def _progress(self) -> dict[str, Any]:
        delta = {k: v - self.reported_hist.get(k, 0) for k, v in self.hist.items()
                 if v != self.reported_hist.get(k, 0)}
        self.reported_hist = dict(self.hist)
        msg = {
            "t": time.monotonic(), "events": self.events - self.reported_events,
            "hist": delta, "finished": self.finished, "errors": self.errors,
            "reconnects": self.reconnects,
        }
        self.reported_events = self.events
        return msg

    async def main(self) -> None:
        job = self.job
        sem = asyncio.Semaphore(job.connect_concurrency)
        ready: list[int] = []
        holders = [asyncio.create_task(self._hold(s, sem, ready)) for s in job.subs]
        deadline = time.monotonic() + job.timeout
        try:
            while len(ready) < len(job.subs) and time.monotonic() < deadline:
                if self.stop_requested:
                    return
                await asyncio.sleep(0.02)
            self.out.put(("ready", self.wid, {"ok": sum(ready), "errors": self.errors,
                                             "error_samples": self.error_samples}))
            self.cpu_at_ready = time.process_time()
            next_progress = time.monotonic() + job.progress_interval
            while not self.stop_requested and time.monotonic() < deadline:
                if self.all_done.is_set() or (holders and all(h.done() for h in holders)
                                              and not job.idle):
                    break
                await asyncio.sleep(0.02)
                if job.progress_interval and time.monotonic() >= next_progress:
                    next_progress += job.progress_interval
                    self.out.put(("progress", self.wid, self._progress()))
            if not self.all_done.is_set() and not job.idle and not self.stop_requested:
                self.error(f"timeout: {len(job.subs) - self.finished} connections unfinished")
        finally:
            for h in holders:
                h.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            for conn in self.conns:
                conn.close()
            await asyncio.sleep(0.05)
            final = self._progress()
            final.update(
                total_events=self.events, first_event=self.first_event,
                last_event=self.last_event, hist_total=self.hist, error_samples=self.error_samples,
                results=[(r.started, r.finished, r.reconnects) for r in self.results],
                cpu=time.process_time() - self.cpu_at_ready,
            )
            self.out.put(("final", self.wid, final))


def _worker_entry(wid: int, job: ClientJob, out: Any, stop: Any) -> None:
    """Process entry point (module level so spawn can import it)."""
    async def run() -> None:
        await _Worker(wid, job, out, stop).main()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@dataclass
class PoolResult:
    events: int = 0
    errors: int = 0
    reconnects: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    first_event: float | None = None
    last_event: float | None = None
    results: list[tuple[float, float | None, int]] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    # CPU seconds the client workers spent after their connections were open.
    client_cpu: float = 0.0

    @property
    def finished(self) -> int:
        return sum(1 for r in self.results if r[1] is not None)


class ClientPool:
    """Worker processes holding the client connections; subs are dealt round-robin."""

    def __init__(self, job: ClientJob, procs: int = 2) -> None:
        self.ctx = mp.get_context("spawn")
        self.out: Any = self.ctx.Queue()
        self.stop_event: Any = self.ctx.Event()
        procs = max(1, min(procs, len(job.subs) or 1))
        self.jobs = [replace(job, subs=job.subs[i::procs]) for i in range(procs)]
        self.procs: list[Any] = []
        self.ready: dict[int, dict[str, Any]] = {}
        self.finals: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> ClientPool:
        for wid, job in enumerate(self.jobs):
            p = self.ctx.Process(target=_worker_entry, args=(wid, job, self.out, self.stop_event),
                                 daemon=True)
            p.start()
            self.procs.append(p)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _poll(self, timeout: float, on_progress: Callable[[dict[str, Any]], None] | None) -> None:
        try:
            kind, wid, msg = self.out.get(timeout=timeout)
        except queue.Empty:
            return
        msg["wid"] = wid
        if kind == "ready":
            self.ready[wid] = msg
        elif kind == "final":
            self.finals[wid] = msg
            if on_progress is not None:
                on_progress(msg)
        elif kind == "progress" and on_progress is not None:
            on_progress(msg)

    def _check_alive(self, waiting: Iterable[int]) -> None:
        for wid in waiting:
            if not self.procs[wid].is_alive() and wid not in self.finals:
                raise RuntimeError(f"client worker {wid} died (exit {self.procs[wid].exitcode})")

    def wait_ready(self, timeout: float = 120.0) -> int:
        """Block until every worker has its connections open; returns how many are open."""
        deadline = time.monotonic() + timeout
        while len(self.ready) < len(self.procs):
            if time.monotonic() > deadline:
                raise TimeoutError("client workers not ready in time")
            self._poll(0.1, None)
            self._check_alive(w for w in range(len(self.procs)) if w not in self.ready)
        return sum(int(m["ok"]) for m in self.ready.values())

    def wait_final(
        self,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> PoolResult:
        """Block until every worker reported its final numbers (they stop by themselves)."""
        deadline = time.monotonic() + timeout
        while len(self.finals) < len(self.procs):
            if time.monotonic() > deadline:
                self.stop_event.set()
                deadline = time.monotonic() + 30
                timeout = -1
            self._poll(0.1, on_progress)
            if tick is not None:
                tick()
            self._check_alive(w for w in range(len(self.procs)) if w not in self.finals)
        return self._merge()

    def stop(self, timeout: float = 60.0) -> PoolResult:
        """Tell the workers to stop (idle mode) and collect their numbers."""
        self.stop_event.set()
        return self.wait_final(timeout)

    def _merge(self) -> PoolResult:
        res = PoolResult()
        for msg in self.finals.values():
            res.events += int(msg["total_events"])
            res.errors += int(msg["errors"])
            res.reconnects += int(msg["reconnects"])
            merge_hist(res.hist, msg["hist_total"])
            res.results.extend(msg["results"])
            res.error_samples.extend(msg["error_samples"])
            res.client_cpu += float(msg["cpu"])
            for key, pick in (("first_event", min), ("last_event", max)):
                v = msg[key]
                if v is not None:
                    cur = getattr(res, key)
                    setattr(res, key, v if cur is None else pick(cur, v))
        return res

    def close(self) -> None:
        self.stop_event.set()
        for p in self.procs:
            p.join(timeout=10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        self.out.close()
        self.out.join_thread()
