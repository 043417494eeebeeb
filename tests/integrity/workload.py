"""The mixed client workload: many demo runs over SSE and WebSocket, asks, cancels, drops.

Every client records what it was sent in a ``StreamLog`` (the checker compares it with the
store). A client has two phases: ``live`` (start the run and follow it; a connection the
client drops on purpose is resumed at once, from the server's memory; a lost server ends the
phase) and ``resume`` (after a restart: reconnect from the last seq and read until ``done``,
from the store). Randomness comes only from the ``random.Random`` the caller seeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.integrity.invariants import StreamLog
from tests.sse_client import iter_frames

WS_PREFIX = '{"type":"event","event":'
LOST = (aiohttp.ClientError, ConnectionError, TimeoutError, OSError)
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5, sock_read=15)


class Dropped(Exception):
    """The client drops its own connection (to resume it, as on a flaky network)."""


@dataclass
class RunPlan:
    name: str
    transport: str  # "sse_post" | "sse_get" | "ws"
    conversation_id: str
    input: dict[str, Any]
    answer: bool  # answer the question (when the input asks one)
    cancel_after: int | None  # cancel once this many frames arrived
    drop_after: int | None  # drop the connection once, after this many frames, and resume
    start_delay: float
    poison: bool = False  # carries the marker of commit_fail_permanent

    @property
    def body(self) -> dict[str, Any]:
        # Plans share a pool of conversations and overlap on purpose: ask for ``parallel``
        # (the default multitask policy, ``reject``, would refuse the overlap).
        return {"agent": "demo", "input": self.input, "conversation_id": self.conversation_id,
                "multitask": "parallel"}


def make_plans(rng: random.Random, tag: str, n: int, pool: list[str],
               poison: str | None = None, poison_runs: int = 0,
               max_start_delay: float = 1.0) -> list[RunPlan]:
    """``n`` varied runs; conversations new, shared within the round, or reused from ``pool``
    (ids of earlier rounds, which retention may have expired: a 410 is then expected)."""
    plans: list[RunPlan] = []
    fresh: list[str] = []
    for i in range(n):
        r = rng.random()
        if pool and r < 0.2:
            cid = rng.choice(pool)
        elif fresh and r < 0.35:
            cid = rng.choice(fresh)  # concurrent runs in one conversation
        else:
            cid = f"{tag}-c{i}"
            fresh.append(cid)
        inp: dict[str, Any] = {
            "text": f"{tag} run {i}",
            "tokens": rng.choice([0, 3, 20, 60, 150, 400]),
            "delay_ms": rng.choice([0, 0, 1, 3, 8]),
            "reasoning": rng.random() < 0.8,
            "tool_call": rng.random() < 0.7,
        }
        is_poison = bool(poison) and i < poison_runs
        if is_poison:
            inp["text"] = f"{poison} {tag} run {i}"
        ask = rng.random() < 0.3
        answer = ask and rng.random() < 0.75
        if ask:
            inp["ask"] = "Proceed?"
            inp["ask_timeout"] = rng.choice([1.0, 2.0])
            if rng.random() < 0.5:
                inp["ask_default"] = "default-yes"
        if rng.random() < 0.05:
            inp["fail"] = True
        plans.append(RunPlan(
            name=f"{tag}-r{i}",
            transport=rng.choice(["sse_post", "sse_get", "ws"]),
            conversation_id=cid,
            input=inp,
            answer=answer,
            cancel_after=rng.randint(2, 40) if rng.random() < 0.15 else None,
            drop_after=rng.randint(1, 30) if rng.random() < 0.3 else None,
            start_delay=rng.uniform(0, max_start_delay),
            poison=is_poison,
        ))
    pool.extend(fresh)
    del pool[:-200]
    return plans


@dataclass
class RunClient:
    plan: RunPlan
    stream: StreamLog = field(init=False)
    run_id: str | None = None
    start_status: int | None = None  # HTTP status of the start (or "ack"/"error" for WS)
    start_error: str | None = None
    notes: Counter[str] = field(default_factory=Counter)
    _dropped: bool = False
    _cancelled: bool = False
    _answered: set[str] = field(default_factory=set)
    _bg: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        kind = "ws" if self.plan.transport == "ws" else "sse"
        self.stream = StreamLog(self.plan.name, kind, conversation_id=self.plan.conversation_id)

    @property
    def finished(self) -> bool:
        return self.stream.done is not None or self.stream.outcome.startswith("final:")

    # ---- phases -------------------------------------------------------------------------

    async def live(self, http: aiohttp.ClientSession, base: str) -> None:
        """Start and follow the run until done, or until the server goes away."""
        await asyncio.sleep(self.plan.start_delay)
        try:
            while not self.finished:
                try:
                    if self.stream.connects == 0:
                        await self._start(http, base)
                    else:
                        await self._reconnect(http, base)
                except Dropped:
                    self.notes["voluntary_drop"] += 1
                    continue
                if not self.finished and self.stream.connects and self.run_id is None:
                    return  # never started
                if not self.finished:
                    # The stream ended without done. Like a real client, reconnect: if the
                    # server went away that raises (LOST) and the resume phase takes over;
                    # if it is alive (it closed this connection: a dead-peer verdict after
                    # a SIGSTOP, a lifetime), the run must still be followed to its done.
                    self.notes["live_reconnect"] += 1
                    await asyncio.sleep(0.05)
        except LOST as exc:
            self.notes[f"live_lost:{type(exc).__name__}"] += 1
        finally:
            await self._settle_bg()

    async def resume(self, http: aiohttp.ClientSession, base: str, timeout: float) -> None:
        """After a restart: reconnect from the last seq and read until done."""
        if self.finished:
            return
        if self.run_id is None:
            self.stream.outcome = "final:start lost with the server (no run id known)"
            self.notes["start_lost"] += 1
            return
        # A run whose batches the store refuses for good need not finish; every other must.
        self.stream.must_complete = not self.plan.poison
        try:
            async with asyncio.timeout(timeout):
                while not self.finished:
                    try:
                        await self._reconnect(http, base)
                    except Dropped:
                        continue
                    except LOST as exc:
                        self.notes[f"resume_lost:{type(exc).__name__}"] += 1
                        await asyncio.sleep(0.2)
        except TimeoutError:
            self.stream.outcome = f"gave up after {timeout}s resuming"
        finally:
            await self._settle_bg()

    async def _settle_bg(self) -> None:
        if self._bg:
            await asyncio.wait(self._bg, timeout=10)
            for t in self._bg:
                t.cancel()

    # ---- transports ---------------------------------------------------------------------

    async def _start(self, http: aiohttp.ClientSession, base: str) -> None:
        p = self.plan
        if p.transport == "ws":
            await self._ws(http, base, {"type": "start", "ref": "s", **p.body})
            return
        if p.transport == "sse_post":
            headers = {"Accept": "text/event-stream"}
            async with http.post(base + "/v1/runs", json=p.body, headers=headers) as resp:
                self.start_status = resp.status
                self.stream.connects += 1
                if resp.status != 200:
                    self._start_refused(resp.status, await resp.text())
                    return
                await self._read_sse(resp, http, base)
            return
        async with http.post(base + "/v1/runs", json=p.body) as resp:
            self.start_status = resp.status
            text = await resp.text()
        if resp.status != 202:
            self.stream.connects += 1
            self._start_refused(resp.status, text)
            return
        self.run_id = json.loads(text)["run_id"]
        self.stream.run_id = self.run_id
        await self._reconnect(http, base)

    def _start_refused(self, status: int, text: str) -> None:
        self.start_error = f"{status} {text[:200]}"
        code = ""
        with contextlib.suppress(Exception):
            code = json.loads(text)["error"]["code"]
        self.notes[f"start_refused:{status}:{code}"] += 1
        self.stream.outcome = f"final:start refused {status} {code}"

    async def _reconnect(self, http: aiohttp.ClientSession, base: str) -> None:
        assert self.run_id is not None
        s = self.stream
        if self.plan.transport == "ws":
            await self._ws(http, base, {"type": "subscribe", "ref": "sub", "run_id": self.run_id,
                                        "after": s.last_seq})
            return
        headers = {"Accept": "text/event-stream"}
        if s.frames:
            headers["Last-Event-ID"] = str(s.last_seq)
        s.resumes["sse"] += 1
        async with http.get(f"{base}/v1/runs/{self.run_id}/events", headers=headers) as resp:
            s.connects += 1
            if resp.status == 200:
                await self._read_sse(resp, http, base)
            else:
                self._resume_refused(resp.status, await resp.text())

    def _resume_refused(self, status: int, text: str) -> None:
        self.notes[f"resume_refused:{status}"] += 1
        if status == 410:
            self.stream.outcome = "final:expired (410)"
        elif status == 404:
            # The server gave out this run id (202 / ack) but it did not survive: reported
            # by the caller (a note after SIGKILL, a violation under a store fault).
            self.stream.outcome = "final:run unknown after restart (404): acked run lost"
            self.stream.must_complete = False
            self.notes["acked_run_lost"] += 1
        elif status == 204:
            self.stream.outcome = "final:204 before this client saw done"
        else:
            self.stream.outcome = f"final:resume refused {status} {text[:200]}"

    async def _read_sse(self, resp: aiohttp.ClientResponse, http: aiohttp.ClientSession,
                        base: str) -> None:
        async for frame in iter_frames(resp):
            if not frame.data:
                continue
            self._on_event(frame.data.encode(), http, base, None)
            if frame.event == "done":
                return
            self._maybe_drop()

    async def _ws(self, http: aiohttp.ClientSession, base: str, first: dict[str, Any]) -> None:
        s = self.stream
        async with http.ws_connect(base + "/v1/ws", heartbeat=None, autoping=True) as ws:
            s.connects += 1
            if first["type"] == "subscribe":
                s.resumes["ws"] += 1
            await ws.send_json(first)
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                text: str = msg.data
                if text.startswith(WS_PREFIX):
                    self._on_event(text[len(WS_PREFIX):-1].encode(), http, base, ws)
                    if s.done is not None:
                        return
                    self._maybe_drop()
                    continue
                reply = json.loads(text)
                if reply["type"] == "ack" and reply.get("ref") == "s":
                    self.start_status = 200
                    self.run_id = reply["run_id"]
                    s.run_id = self.run_id
                elif reply["type"] == "error":
                    self.notes[f"ws_error:{reply.get('code')}"] += 1
                    if reply.get("ref") == "s":
                        self.start_status = 0
                        self.start_error = text[:200]
                        s.outcome = f"final:start refused {reply.get('code')}"
                        self.notes[f"start_refused:ws:{reply.get('code')}"] += 1
                        return
                    if reply.get("ref") == "sub":
                        code = reply.get("code")
                        status = {"run_expired": 410, "conversation_expired": 410,
                                  "run_not_found": 404}.get(str(code), 0)
                        self._resume_refused(status, text)
                        return
            # the server ended the socket before done: say how, for the report
            self.notes[f"ws_closed_by_server:{ws.close_code}"] += 1

    def _maybe_drop(self) -> None:
        p = self.plan
        if p.drop_after is not None and not self._dropped and len(self.stream.frames) >= (
                p.drop_after):
            self._dropped = True
            raise Dropped

    def _on_event(self, body: bytes, http: aiohttp.ClientSession, base: str,
                  ws: aiohttp.ClientWebSocketResponse | None) -> None:
        f = self.stream.add(body)
        if self.run_id is None and f.run_id is not None:
            self.run_id = f.run_id
            self.stream.run_id = f.run_id
        p = self.plan
        if f.type == "require_user_input" and p.answer:
            rid = json.loads(body)["data"]["request_id"]
            if rid not in self._answered:
                self._answered.add(rid)
                self._spawn(self._command(http, base, ws, "input", request_id=rid,
                                          value="yes"))
        if (p.cancel_after is not None and not self._cancelled
                and len(self.stream.frames) >= p.cancel_after and self.run_id):
            self._cancelled = True
            self._spawn(self._command(http, base, ws, "cancel"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _command(self, http: aiohttp.ClientSession, base: str,
                       ws: aiohttp.ClientWebSocketResponse | None, kind: str,
                       **fields: Any) -> None:
        try:
            if ws is not None and not ws.closed:
                await ws.send_json({"type": kind, "run_id": self.run_id, **fields})
                self.notes[f"{kind}:ws"] += 1
                return
            path = "input" if kind == "input" else "cancel"
            async with asyncio.timeout(10), http.post(
                f"{base}/v1/runs/{self.run_id}/{path}", json=fields or None
            ) as resp:
                self.notes[f"{kind}:http:{resp.status}"] += 1
        except (*LOST, RuntimeError):
            self.notes[f"{kind}:lost"] += 1


@dataclass
class ConversationWatcher:
    """A conversation stream (SSE, stays open) resumed with Last-Event-ID over restarts.
    ``slow`` reads with a pause per frame, to make a small per-connection queue overflow
    (the catch-up then may merge chunks)."""

    conversation_id: str
    slow: float = 0.0
    stream: StreamLog = field(init=False)
    notes: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.stream = StreamLog(f"watch {self.conversation_id}", "sse",
                                conversation_id=self.conversation_id)

    async def follow(self, http: aiohttp.ClientSession, base: str,
                     stop: Callable[[], bool]) -> None:
        """Read until ``stop()`` (checked per frame and per reconnect) or the server is gone."""
        s = self.stream
        while not stop():
            headers = {"Accept": "text/event-stream"}
            if s.frames:
                headers["Last-Event-ID"] = str(s.last_seq)
            try:
                async with http.get(
                    f"{base}/v1/conversations/{self.conversation_id}/events", headers=headers
                ) as resp:
                    s.connects += 1
                    if resp.status != 200:
                        self.notes[f"watch_refused:{resp.status}"] += 1
                        if resp.status == 404:  # conversation not created yet
                            await asyncio.sleep(0.1)
                            continue
                        return
                    async for frame in iter_frames(resp):
                        if frame.data:
                            s.add(frame.data.encode())
                            if self.slow:
                                await asyncio.sleep(self.slow)
                        if stop():
                            return
            except LOST as exc:
                self.notes[f"watch_lost:{type(exc).__name__}"] += 1
                return
