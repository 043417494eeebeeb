"""Benchmarks P1-P7 of agentstream, each beside baselines measured in the same run.

Why baselines: on a shared 2-core box an absolute figure says little; next to the least a
minimal aiohttp server (or plain aiosqlite, or bare asyncio) needs for the same work, it says
what the product costs. Prints a markdown table (figures, ratios, targets); ``--json`` keeps it.

    python scripts/bench.py                 # everything, ~10 minutes
    python scripts/bench.py --quick --only P4,P5   # a smoke run in well under a minute
    python scripts/bench.py --only P7 --server-flags "--store-batch 10000"   # tuned server

P7 (many small runs, one SSE subscriber each) is measured beside ``floor_server.py``: the
same essential work (encode once, group-commit to SQLite, one write per subscriber backlog).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadlib import (
    HOST,
    SSE_DONE,
    WS_SKIP,
    ClientJob,
    ClientPool,
    PoolResult,
    ServerProc,
    Sub,
    Transport,
    baseline_server,
    bucket_quantile,
    busy_cores,
    exit_on_sigterm,
    floor_server,
    http_json,
    kernel_mem,
    load_avg,
    machine,
    product_server,
    raise_nofile,
    scrape_histogram,
    scrape_metrics,
    setup_conversation,
    start_run,
    summarize_hist,
    wait_run,
    ws_available,
)


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    metric: str
    value: float | None
    unit: str
    baselines: dict[str, float] = field(default_factory=dict)
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Ctx:
    workdir: Path
    quick: bool
    procs: int
    log: Callable[[str], None]
    # Extra ``python -m app`` flags for every product server (``--server-flags``).
    flags: tuple[str, ...] = ()
    # P7's run counts (``--p7-runs``); empty: the default sizes.
    p7_runs: tuple[int, ...] = ()
    # Rounds per P7 size (``--p7-repeat``); the median round is reported.
    p7_repeat: int = 3

    def size(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full

    def product(self, *flags: str) -> ServerProc:
        return product_server(self.workdir, *self.flags, *flags)


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        s = f"{v:,.0f}"
    elif abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return f"{s} {unit}".strip()


# ---- shared drivers ---------------------------------------------------------------------------


@dataclass
class Fanout:
    """One measured fan-out: what the clients got, and who spent the CPU."""

    res: PoolResult
    elapsed: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.res.events / self.elapsed

    def cpu_note(self) -> str:
        return (f"CPU over {self.elapsed:.2f} s: server {self.server_cpu:.2f} s, "
                f"clients {self.res.client_cpu:.2f} s")


def fanout_once(ctx: Ctx, server: ServerProc, subs: list[Sub], transport: Transport,
                trigger: Callable[[], object], timeout: float) -> Fanout:
    """Open the subscribers, fire ``trigger`` once all are open, wait for every done."""
    job = ClientJob(HOST, server.port, transport, subs, latency=False, timeout=timeout)
    with ClientPool(job, ctx.procs) as pool:
        opened = pool.wait_ready(timeout)
        if opened < len(subs):
            raise RuntimeError(f"only {opened}/{len(subs)} subscribers connected")
        time.sleep(0.5)  # let every subscription finish its (empty) catch-up read
        cpu0, t0 = server.cpu(), time.monotonic()
        trigger()
        res = pool.wait_final(timeout + 30)
        cpu1 = server.cpu()
    if res.errors:
        raise RuntimeError(f"{res.errors} client errors: {res.error_samples[:3]}")
    if res.last_event is None:
        raise RuntimeError("no event arrived")
    return Fanout(res, res.last_event - t0, cpu1 - cpu0)


def product_fanout(ctx: Ctx, transport: Transport, n: int, tokens: int,
                   *flags: str) -> tuple[Fanout, dict[str, float]]:
    """One demo run (no delay) fanned out to ``n`` subscribers of its conversation."""
    with ctx.product(*flags) as server:
        server.start()
        if transport == "ws" and not ws_available(server.url):
            raise SkipScenario(WS_SKIP)
        cid = f"c_fanout_{n}"
        after = setup_conversation(server.url, cid)
        if transport == "sse":
            subs = [Sub(f"/v1/conversations/{cid}/events", last_event_id=after)
                    for _ in range(n)]
        else:
            subs = [Sub("/v1/ws", ws_message={"type": "subscribe", "conversation_id": cid,
                                              "after": after, "ref": f"s{i}"})
                    for i in range(n)]
        demo = {"text": "fanout", "tokens": tokens, "delay_ms": 0, "reasoning": False,
                "tool_call": False}
        got = fanout_once(ctx, server, subs, transport,
                          lambda: start_run(server.url, demo, cid), 300)
        metrics = scrape_metrics(server.url)
    return got, metrics


def baseline_fanout(ctx: Ctx, transport: Transport, n: int, events: int, write: str) -> Fanout:
    with baseline_server(ctx.workdir) as server:
        server.start()
        path = f"/{transport}?write={write}"
        subs = [Sub(path) for _ in range(n)]

        def go() -> None:
            http_json("POST", server.url + "/go", {"events": events, "batch": 2000})

        return fanout_once(ctx, server, subs, transport, go, 300)


class SkipScenario(Exception):
    """The scenario cannot run against this server (e.g. no WebSocket endpoint yet)."""


# ---- P1: fan-out ------------------------------------------------------------------------------


def p1(ctx: Ctx, transport: Transport = "sse") -> list[Row]:
    rows = []
    name = "P1" if transport == "sse" else "P1-ws"
    for n, tokens in ctx.size([(100, 20_000), (1000, 2_000)], [(100, 2_000), (1000, 200)]):
        label = f"{name} fan-out 1 run -> {n} {transport.upper()}"
        ctx.log(f"{label}: agentstream ({tokens} tokens, persistence on)")
        try:
            prod, metrics = product_fanout(ctx, transport, n, tokens)
        except SkipScenario as exc:
            rows.append(Row(label, "delivered events/s", None, "ev/s", note=str(exc)))
            continue
        per_events = max(200, (tokens + 3) // 4)
        ctx.log(f"{label}: baseline, one write per event ({per_events} events)")
        per = baseline_fanout(ctx, transport, n, per_events, "per")
        ctx.log(f"{label}: baseline, coalesced writes")
        floor = baseline_fanout(ctx, transport, n, tokens + 3, "coalesced")
        ratio = prod.rate / floor.rate
        ns = 1e9 * prod.server_cpu / max(1, prod.res.events)
        floor_ns = 1e9 * floor.server_cpu / max(1, floor.res.events)
        notes = [f"{prod.res.events:,}/{n * (tokens + 3):,} events",
                 f"server CPU per delivered event {ns:.0f} ns vs floor {floor_ns:.0f} ns",
                 prod.cpu_note(), f"floor {floor.cpu_note()}"]
        catchups = metrics.get("agentstream_sink_catchups_total", 0)
        if catchups:
            notes.append(f"{catchups:.0f} sink overflows")
        rows.append(Row(
            label, "delivered events/s", prod.rate, "ev/s",
            {"per-event writes": per.rate, "coalesced (floor)": floor.rate},
            f"{ratio:.2f}x floor, {prod.rate / per.rate:.1f}x per-event", ">= 0.5x floor",
            ratio >= 0.5, "; ".join(notes),
        ))
    return rows


def p1_ws(ctx: Ctx) -> list[Row]:
    return p1(ctx, "ws")


# ---- P2: latency at a fixed offered rate ------------------------------------------------------


@dataclass
class Latency:
    """A latency run: the bulk clients, one quiet canary beside them, and the server's own
    publish -> fan-out-done quantiles (from its histogram), when it has one."""

    bulk: Fanout
    canary: PoolResult
    server_ms: dict[str, float | None]


def latency_run(ctx: Ctx, server: ServerProc, subs: list[Sub], canary: Sub,
                trigger: Callable[[], object], timeout: float) -> Latency:
    """``subs`` in ``ctx.procs`` bulk workers and ``canary`` alone in its own process: the
    bulk clients use more CPU than the server on 2 cores, so their tail says as much about
    the load generator as about the server; the canary's says what a quiet client sees."""
    job = ClientJob(HOST, server.port, "sse", subs, latency=True, timeout=timeout)
    quiet = ClientJob(HOST, server.port, "sse", [canary], latency=True, timeout=timeout)
    with ClientPool(job, ctx.procs) as pool, ClientPool(quiet, 1) as solo:
        opened = pool.wait_ready(timeout) + solo.wait_ready(timeout)
        if opened < len(subs) + 1:
            raise RuntimeError(f"only {opened}/{len(subs) + 1} subscribers connected")
        time.sleep(0.5)
        hist0 = scrape_histogram(server.url, FANOUT_HIST)
        cpu0, t0 = server.cpu(), time.monotonic()
        trigger()
        res = pool.wait_final(timeout + 30)
        cres = solo.wait_final(timeout + 30)
        cpu1 = server.cpu()
        hist1 = scrape_histogram(server.url, FANOUT_HIST)
    for r in (res, cres):
        if r.errors:
            raise RuntimeError(f"{r.errors} client errors: {r.error_samples[:3]}")
    server_ms = {q: (v * 1000 if v is not None else None) for q, v in
                 (("p50", bucket_quantile(hist0, hist1, 0.5)),
                  ("p99", bucket_quantile(hist0, hist1, 0.99)))}
    bulk = Fanout(res, (res.last_event or time.monotonic()) - t0, cpu1 - cpu0)
    return Latency(bulk, cres, server_ms)


def p2(ctx: Ctx) -> list[Row]:
    n, rate = 1000, 200
    seconds = ctx.size(10, 2)
    tokens = rate * seconds
    label = f"P2 latency {n} SSE x {rate} ev/s"
    ctx.log(f"{label}: agentstream ({tokens} tokens @ 5 ms; load {load_avg()})")
    timeout = seconds * 20 + 60
    with ctx.product() as server:
        server.start()
        cid = "c_latency"
        after = setup_conversation(server.url, cid)
        path = f"/v1/conversations/{cid}/events"
        subs = [Sub(path, last_event_id=after) for _ in range(n)]
        demo = {"text": "latency", "tokens": tokens, "delay_ms": 1000 / rate,
                "reasoning": False, "tool_call": False}
        got = latency_run(ctx, server, subs, Sub(path, last_event_id=after),
                          lambda: start_run(server.url, demo, cid), timeout)
    ctx.log(f"{label}: baseline (minimal aiohttp, coalesced writes, same rate)")
    with baseline_server(ctx.workdir) as base:
        base.start()
        subs = [Sub("/sse?write=coalesced") for _ in range(n)]
        bres = latency_run(ctx, base, subs, Sub("/sse?write=coalesced"), lambda: http_json(
            "POST", base.url + "/go", {"events": tokens + 3, "rate": rate}), timeout)
    return p2_rows(label, n, rate, got, bres)


FANOUT_HIST = "agentstream_fanout_seconds"


def p2_rows(label: str, n: int, rate: int, got: Latency, base: Latency) -> list[Row]:
    res = got.bulk.res
    lat, blat = summarize_hist(res.hist), summarize_hist(base.bulk.res.hist)
    canary, bcanary = summarize_hist(got.canary.hist), summarize_hist(base.canary.hist)
    achieved = _achieved_rate(res, n)
    rows = [Row(label, "events/s the run produced (offered rate)", achieved, "ev/s",
                {"minimal aiohttp producer": _achieved_rate(base.bulk.res, n)},
                f"{achieved / rate:.2f}x of {rate}/s",
                f">= {0.9 * rate:.0f}/s (90 % of {rate})", achieved >= 0.9 * rate,
                "the demo agent paces chunks on a fixed schedule (delay_ms apart); "
                f"{got.bulk.cpu_note()}; load {load_avg()}")]
    for q in ("p50", "p95", "p99"):
        v, b = lat[q], blat[q]
        rows.append(Row(label, f"publish->receive {q} (bulk clients)", v, "ms",
                        {"minimal aiohttp": b or 0.0},
                        f"{v - b:+.0f} ms" if v is not None and b is not None else ""))
    v, b = canary["p99"], bcanary["p99"]
    rows.append(Row(label, "publish->receive p99 (quiet canary client)", v, "ms",
                    {"minimal aiohttp": b or 0.0},
                    f"{v - b:+.0f} ms" if v is not None and b is not None else "",
                    "< 50 ms", v is not None and v < 50,
                    f"one subscriber in its own process beside the {n} bulk ones; "
                    f"canary p50 {canary['p50']} ms"))
    for q in ("p50", "p99"):
        rows.append(Row(label, f"server publish->fan-out done {q}", got.server_ms[q], "ms",
                        note="from agentstream_fanout_seconds (bucket upper bound), once per "
                        "hub flush" if q == "p99" else ""))
    return rows


def _achieved_rate(res: PoolResult, n: int) -> float:
    if res.first_event is None or res.last_event is None or res.last_event <= res.first_event:
        return 0.0
    return res.events / n / (res.last_event - res.first_event)


# ---- P3: idle connections ---------------------------------------------------------------------


def idle_measure(ctx: Ctx, server: ServerProc, subs: list[Sub], window: float,
                 warm: list[Sub]) -> dict[str, float]:
    """RSS before/after opening ``subs`` idle streams, then server CPU over ``window`` s."""
    warm_job = ClientJob(HOST, server.port, "sse", warm, idle=True, timeout=60)
    with ClientPool(warm_job, 1) as pool:  # load every lazy code path before measuring
        pool.wait_ready(60)
        time.sleep(0.5)
        pool.stop()
    time.sleep(1.0)
    rss0, kmem0 = server.rss(), kernel_mem()
    job = ClientJob(HOST, server.port, "sse", subs, idle=True, timeout=600,
                    connect_concurrency=64)
    with ClientPool(job, ctx.procs) as pool:
        opened = pool.wait_ready(300)
        time.sleep(2.0)
        rss1, kmem1 = server.rss(), kernel_mem()
        cpu0, t0 = server.cpu(), time.monotonic()
        time.sleep(window)
        cpu1, t1 = server.cpu(), time.monotonic()
        res = pool.stop()
    n = max(1, opened)
    # Both ends of each loopback connection are on this machine: half is the server's.
    return {"opened": opened, "rss_per_conn": (rss1 - rss0) / n, "kernel_per_conn":
            (kmem1 - kmem0) / n / 2, "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
            "cpu_s": cpu1 - cpu0, "window": t1 - t0, "errors": res.errors}


def p3(ctx: Ctx) -> list[Row]:
    n = ctx.size(10_000, 1_000)
    window = ctx.size(10.0, 3.0)
    hb = 1.0
    label = f"P3 idle {n:,} SSE, heartbeat {hb:g} s"
    ctx.log(f"{label}: agentstream")
    with ctx.product("--heartbeat", str(hb)) as server:
        server.start()
        cid = "c_idle"
        after = setup_conversation(server.url, cid)
        path = f"/v1/conversations/{cid}/events"
        prod = idle_measure(ctx, server, [Sub(path, last_event_id=after) for _ in range(n)],
                            window, [Sub(path, last_event_id=after) for _ in range(20)])
    ctx.log(f"{label}: baseline, minimal aiohttp SSE handler with the same ping")
    with baseline_server(ctx.workdir, "--heartbeat", str(hb)) as base:
        base.start()
        mini = idle_measure(ctx, base, [Sub("/idle") for _ in range(n)], window,
                            [Sub("/idle") for _ in range(20)])
    ctx.log(f"{label}: floor, bare asyncio socket holder")
    with baseline_server(ctx.workdir, "--raw", name="raw") as raw:
        raw.start()
        floor = idle_measure(ctx, raw, [Sub("/hold") for _ in range(n)], window,
                             [Sub("/hold") for _ in range(20)])
    over = (prod["rss_per_conn"] - floor["rss_per_conn"]) / 1024
    pings = n * window / hb
    note = (f"{prod['opened']:.0f}/{n} open; the kernel's own per server socket (slab + TCP "
            f"buffers, not in RSS) {prod['kernel_per_conn'] / 1024:.1f} KiB; target read as "
            "RSS per connection minus the bare-asyncio floor")
    return [
        Row(label, "server RSS per connection", prod["rss_per_conn"] / 1024, "KiB",
            {"minimal aiohttp": mini["rss_per_conn"] / 1024,
             "bare asyncio": floor["rss_per_conn"] / 1024},
            f"+{over:.1f} KiB over bare", "<= 10 KiB over bare", over <= 10, note),
        Row(label, "server CPU on heartbeats", prod["cpu_pct"], "% core",
            {"minimal aiohttp": mini["cpu_pct"], "bare asyncio": floor["cpu_pct"]},
            f"{prod['cpu_s'] / pings * 1e6:.0f} us/ping vs "
            f"{mini['cpu_s'] / pings * 1e6:.0f} us minimal", "report", None,
            f"{pings:,.0f} pings in {prod['window']:.0f} s"),
    ]


# ---- P4: store appends ------------------------------------------------------------------------


def _events(n: int) -> list[Any]:
    from protocol.codec import EncodedEvent
    from protocol.events import MessageChunk, MessageChunkData

    ts = int(time.time() * 1000)
    return [EncodedEvent.from_event(MessageChunk(
        seq=i, conversation_id="c_store", run_id="r_0123456789abcdef", agent="demo", ts=ts,
        item_id="m_0123456789ab", data=MessageChunkData(delta="token "),
    )) for i in range(1, n + 1)]


async def _store_product(path: Path, n: int) -> float:
    from app.store.ops import AppendEvent
    from app.store.sqlite import SqliteEventStore

    events = _events(n)
    store = SqliteEventStore(path)
    await store.open()
    try:
        t0 = time.perf_counter()
        for ev in events:
            await store.wait_for_room()  # what the engine does before each event
            store.enqueue(AppendEvent(ev, 0))
        await store.flush(timeout=600)
        elapsed = time.perf_counter() - t0
        got = await store.last_seq("c_store")
        if got != n:
            raise RuntimeError(f"store has {got} events, expected {n}")
    finally:
        await store.close()
    return n / elapsed


async def _store_naive(path: Path, n: int, one_transaction: bool) -> float:
    import aiosqlite

    from app.store.sqlite import SCHEMA

    events = _events(n)
    db = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.executescript(SCHEMA)
        sql = "INSERT INTO events VALUES (?,?,?,?,?,?,?)"
        t0 = time.perf_counter()
        if one_transaction:
            await db.execute("BEGIN")
        for ev in events:
            if not one_transaction:
                await db.execute("BEGIN")
            await db.execute(sql, (ev.conversation_id, ev.seq, ev.run_id, ev.type, ev.item_id,
                                   0, ev.body))
            if not one_transaction:
                await db.execute("COMMIT")
        if one_transaction:
            await db.execute("COMMIT")
        return n / (time.perf_counter() - t0)
    finally:
        await db.close()


def _sqlite_ceiling(path: Path, n: int) -> float:
    """Plain sqlite3 in one thread, no event loop: what SQLite itself does on this disk."""
    import sqlite3

    from app.store.sqlite import SCHEMA

    events = _events(n)
    rows = [(e.conversation_id, e.seq, e.run_id, e.type, e.item_id, 0, e.body) for e in events]
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        t0 = time.perf_counter()
        for i in range(0, n, 2000):
            db.execute("BEGIN")
            db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", rows[i:i + 2000])
            db.execute("COMMIT")
        return n / (time.perf_counter() - t0)
    finally:
        db.close()


def p4(ctx: Ctx) -> list[Row]:
    n = ctx.size(200_000, 20_000)
    n_commit = ctx.size(5_000, 1_000)
    n_tx = ctx.size(20_000, 4_000)
    reps = 3  # the disk and the shared VM are noisy: each figure is the median of 3
    label = "P4 store appends (SQLite, WAL, synchronous=NORMAL)"

    def median(make: Callable[[Path], float], tag: str) -> float:
        return statistics.median(make(ctx.workdir / f"p4-{tag}-{i}.db") for i in range(reps))

    ctx.log(f"{label}: SqliteEventStore, {n:,} appends x {reps}")
    prod = median(lambda p: asyncio.run(_store_product(p, n)), "store")
    ctx.log(f"{label}: aiosqlite one execute + commit per event")
    commit = median(lambda p: asyncio.run(_store_naive(p, n_commit, False)), "commit")
    ctx.log(f"{label}: aiosqlite one execute per event, one transaction")
    tx = median(lambda p: asyncio.run(_store_naive(p, n_tx, True)), "tx")
    ctx.log(f"{label}: plain sqlite3 executemany, no event loop (the ceiling)")
    ceiling = median(lambda p: _sqlite_ceiling(p, n), "ceiling")
    worst = min(prod / commit, prod / tx)
    return [Row(label, "appends/s", prod, "ev/s",
                {"execute+commit per event": commit, "execute per event, 1 tx": tx,
                 "plain sqlite3, no loop (ceiling)": ceiling},
                f"{prod / commit:.0f}x commit/event, {prod / tx:.1f}x execute/event, "
                f"{prod / ceiling:.2f}x ceiling",
                ">= 200k/s and >= 20x both", prod >= 200_000 and worst >= 20,
                f"{n:,} appends in-process, engine-style wait_for_room + enqueue, then flush; "
                f"median of {reps}")]


# ---- P5: resume -------------------------------------------------------------------------------


class _Timed(asyncio.Protocol):
    """Times one SSE response: to the first event byte and to the final done frame."""

    def __init__(self, request: bytes, t0: float) -> None:
        self.request = request
        self.t0 = t0
        self.buf = b""
        self.headers_done = False
        self.first: float | None = None
        self.last: float | None = None
        self.events = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.headers_done:
            self.buf += data
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            self.headers_done = True
            data, self.buf = self.buf[i + 4:], b""
        if self.first is None and b"id: " in data:
            self.first = now
        tail = self.buf[-16:] + data
        self.buf = tail[-16:]
        self.events += data.count(b"\n\n") - data.count(b"retry: ")
        if SSE_DONE in tail:
            self.last = now
            if not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _time_resume(port: int, path: str, last_id: int | None) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    head = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n"
    if last_id is not None:
        head += f"Last-Event-ID: {last_id}\r\n"
    t0 = time.perf_counter()
    transport, proto = await loop.create_connection(
        lambda: _Timed((head + "\r\n").encode(), t0), HOST, port)
    try:
        async with asyncio.timeout(30):
            await proto.done
    finally:
        transport.close()
    if proto.first is None or proto.last is None:
        raise RuntimeError(f"resume of {path} did not complete")
    return (proto.first - t0) * 1000, (proto.last - t0) * 1000


def _resume_series(
    port: int, path: str, last_id: int | None, reps: int
) -> list[tuple[float, float]]:
    async def go() -> list[tuple[float, float]]:
        await _time_resume(port, path, last_id)  # warm-up (page cache, lazy imports)
        return [await _time_resume(port, path, last_id) for _ in range(reps)]

    return asyncio.run(go())


def p5(ctx: Ctx) -> list[Row]:
    missed = 10_000
    reps = ctx.size(10, 3)
    label = f"P5 resume after {missed:,} missed events"
    ctx.log(f"{label}: agentstream (Last-Event-ID on the run's SSE URL)")
    with ctx.product() as server:
        server.start()
        run = start_run(server.url, {"text": "resume", "tokens": missed, "delay_ms": 0,
                                     "reasoning": False, "tool_call": False}, "c_resume")
        info = wait_run(server.url, run["run_id"])
        prod = _resume_series(server.port, f"/v1/runs/{run['run_id']}/events",
                              int(info["done_seq"]) - missed, reps)
    ctx.log(f"{label}: baseline (minimal aiohttp, {missed:,} frames from memory, one write)")
    with baseline_server(ctx.workdir) as base:
        base.start()
        floor = _resume_series(base.port, f"/replay?events={missed}", None, reps)
    rows = []
    for i, (what, limit) in enumerate((("first replayed byte", 20.0), ("last replayed byte",
                                                                        100.0))):
        vals = [p[i] for p in prod]
        med, worst = statistics.median(vals), max(vals)
        b = statistics.median(p[i] for p in floor)
        rows.append(Row(label, f"time to {what} (median)", med, "ms",
                        {"from memory": b}, f"{med / b:.1f}x" if b else "",
                        f"< {limit:g} ms", med < limit, f"max {worst:.1f} ms of {reps}"))
    return rows


# ---- P6: many concurrent runs -----------------------------------------------------------------


async def _asyncio_overhead(runs: int, tokens: int, delay: float) -> list[float]:
    """The same sleeps in bare asyncio: what the agents' delays cost with no server at all."""

    async def one() -> float:
        t0 = time.monotonic()
        for _ in range(tokens):
            await asyncio.sleep(delay)
        return time.monotonic() - t0

    return list(await asyncio.gather(*(one() for _ in range(runs))))


def p6(ctx: Ctx) -> list[Row]:
    runs, tokens, delay_ms = ctx.size((500, 100, 20.0), (100, 50, 10.0))
    ideal = tokens * delay_ms / 1000
    label = f"P6 {runs} concurrent runs x {tokens} tokens @ {delay_ms:g} ms, 1 SSE each"
    ctx.log(f"{label}: agentstream")
    demo = {"text": "many", "tokens": tokens, "delay_ms": delay_ms, "reasoning": False,
            "tool_call": False}
    body = json.dumps({"agent": "demo", "input": demo}).encode()
    with ctx.product() as server:
        server.start()
        subs = [Sub("/v1/runs", method="POST", body=body) for _ in range(runs)]
        job = ClientJob(HOST, server.port, "sse", subs, timeout=ideal * 20 + 60)
        with ClientPool(job, ctx.procs) as pool:
            pool.wait_ready(120)
            res = pool.wait_final(ideal * 20 + 90)
    if res.errors:
        raise RuntimeError(f"{res.errors} client errors: {res.error_samples[:3]}")
    walls = [f - s for s, f, _ in res.results if f is not None]
    if len(walls) < runs:
        raise RuntimeError(f"only {len(walls)}/{runs} runs finished; {res.error_samples[:3]}")
    ctx.log(f"{label}: baseline (the same sleeps in bare asyncio)")
    base = asyncio.run(_asyncio_overhead(runs, tokens, delay_ms / 1000))
    over = [100 * (w / ideal - 1) for w in walls]
    bover = [100 * (w / ideal - 1) for w in base]
    mean, bmean = statistics.fmean(over), statistics.fmean(bover)
    p95 = sorted(over)[int(0.95 * (len(over) - 1))]
    return [Row(label, "run time over its token delays (mean)", mean, "%",
                {"bare asyncio sleeps": bmean}, f"{mean - bmean:+.1f} pts", "< 10 %",
                mean < 10, f"p95 {p95:.1f} %, max {max(over):.1f} %; ideal {ideal:g} s/run; "
                f"{res.events:,} events")]


# ---- P7: many small runs, each with its own subscriber -----------------------------------------


@dataclass
class ManyRuns:
    """One measured many-runs load: events, rate, server CPU and latency."""

    fan: Fanout
    runs: int

    @property
    def rate(self) -> float:
        res = self.fan.res
        if res.first_event is None or res.last_event is None:
            return 0.0
        return res.events / max(1e-6, res.last_event - res.first_event)

    @property
    def us_per_event(self) -> float:
        return 1e6 * self.fan.server_cpu / max(1, self.fan.res.events)

    def lat(self, q: str) -> float:
        return summarize_hist(self.fan.res.hist)[q] or 0.0


def many_runs_once(ctx: Ctx, server: ServerProc, runs: int, tokens: int,
                   delay_ms: float) -> ManyRuns:
    """``runs`` clients each POST a demo run and read its SSE stream to its ``done``; the
    server's CPU is read around the whole thing (connections, runs, streams)."""
    demo = {"text": "many", "tokens": tokens, "delay_ms": delay_ms, "reasoning": False,
            "tool_call": False}
    body = json.dumps({"agent": "demo", "input": demo}).encode()
    ideal = tokens * delay_ms / 1000
    subs = [Sub("/v1/runs", method="POST", body=body) for _ in range(runs)]
    job = ClientJob(HOST, server.port, "sse", subs, latency=True, timeout=ideal * 20 + 60)
    cpu0, t0 = server.cpu(), time.monotonic()
    with ClientPool(job, ctx.procs) as pool:
        pool.wait_ready(120)
        res = pool.wait_final(ideal * 20 + 90)
    cpu1 = server.cpu()
    if res.errors:
        raise RuntimeError(f"{res.errors} client errors: {res.error_samples[:3]}")
    if res.finished < runs:
        raise RuntimeError(f"only {res.finished}/{runs} streams got their done")
    expected = runs * (tokens + 3)  # run_started, the chunks, message, done
    if res.events != expected:
        raise RuntimeError(f"{res.events} events delivered, expected {expected}")
    return ManyRuns(Fanout(res, (res.last_event or time.monotonic()) - t0, cpu1 - cpu0), runs)


def p7_round(ctx: Ctx, m: int, tokens: int, delay_ms: float) -> dict[str, ManyRuns]:
    """One round at ``m`` runs: the product, the floor, and the floor on uvloop (the loop
    the product serves on by default: the like-for-like comparison of the code)."""
    out: dict[str, ManyRuns] = {}
    with ctx.product() as server:
        server.start()
        out["agentstream"] = many_runs_once(ctx, server, m, tokens, delay_ms)
    for name, flags in (("floor", ()), ("floor on uvloop", ("--uvloop",))):
        with floor_server(ctx.workdir, *flags) as fserver:
            fserver.start()
            out[name] = many_runs_once(ctx, fserver, m, tokens, delay_ms)
    return out


def p7(ctx: Ctx) -> list[Row]:
    """The many-runs workload, ``--p7-repeat`` rounds per size (default 3): on this shared
    2-core box one round's ratio swings 0.65-0.95x for the same code, so the row is the
    round with the median events/s ratio, and the note lists every round."""
    tokens, rate = ctx.size((200, 100), (50, 100))
    delay_ms = 1000 / rate
    rows: list[Row] = []
    for m in ctx.p7_runs or ctx.size([100, 300, 1000], [20, 60]):
        label = f"P7 {m} runs x {tokens} tokens @ {rate} ev/s, 1 SSE each"
        rounds = []
        for i in range(ctx.p7_repeat):
            ctx.log(f"{label}: round {i + 1}/{ctx.p7_repeat}: agentstream, floor, floor on "
                    f"uvloop (load {load_avg()})")
            rounds.append(p7_round(ctx, m, tokens, delay_ms))

        def ratio(r: dict[str, ManyRuns], base: str = "floor") -> float:
            return r["agentstream"].rate / max(1e-9, r[base].rate)

        def cpu_ratio(r: dict[str, ManyRuns], base: str = "floor") -> float:
            return r["agentstream"].us_per_event / max(1e-9, r[base].us_per_event)

        rounds.sort(key=ratio)
        mid = rounds[len(rounds) // 2]
        prod, floor, fuv = mid["agentstream"], mid["floor"], mid["floor on uvloop"]
        every = "; ".join(f"{ratio(r):.2f}x/{cpu_ratio(r):.2f}x" for r in rounds)
        uv_rate, uv_cpu = ratio(mid, "floor on uvloop"), cpu_ratio(mid, "floor on uvloop")
        note = (f"median of {len(rounds)} rounds (events/s / CPU per event vs the floor, "
                f"each round: {every}); vs the floor on uvloop: {uv_rate:.2f}x events/s, "
                f"{uv_cpu:.2f}x CPU; "
                f"{prod.fan.res.events:,} events each; offered {m * rate:,} ev/s; "
                f"{prod.fan.cpu_note()}; floor {floor.fan.cpu_note()}; load {load_avg()}")
        r_rate, r_cpu = ratio(mid), cpu_ratio(mid)
        rows.append(Row(label, "delivered events/s", prod.rate, "ev/s",
                        {"floor": floor.rate, "floor on uvloop": fuv.rate},
                        f"{r_rate:.2f}x floor", ">= 0.9x floor", r_rate >= 0.9, note))
        rows.append(Row(label, "server CPU per event", prod.us_per_event, "us",
                        {"floor": floor.us_per_event, "floor on uvloop": fuv.us_per_event},
                        f"{r_cpu:.2f}x floor", "<= 1.5x floor", r_cpu <= 1.5))
        for q in ("p50", "p99"):
            v, b = prod.lat(q), floor.lat(q)
            ratio_q = v / b if b else float("inf")
            rows.append(Row(label, f"publish->receive {q}", v, "ms",
                            {"floor": b, "floor on uvloop": fuv.lat(q)},
                            f"{ratio_q:.2f}x floor" if b else f"{v - b:+.0f} ms",
                            "<= 2x floor" if q == "p99" else "",
                            (v <= 2 * max(b, 1.0)) if q == "p99" else None))
    return rows


SCENARIOS: dict[str, Callable[[Ctx], list[Row]]] = {
    "P1": p1, "P1-ws": p1_ws, "P2": p2, "P3": p3, "P4": p4, "P5": p5, "P6": p6, "P7": p7,
}
RUN_ORDER = ["P4", "P5", "P1", "P1-ws", "P2", "P6", "P7", "P3"]


def table(rows: list[Row]) -> str:
    """The markdown table, with each row's note as a numbered footnote below it."""
    out = ["| scenario | metric | agentstream | baseline(s), same run | ratio | target | met |",
           "| --- | --- | ---: | --- | --- | --- | --- |"]
    notes: list[str] = []
    for r in rows:
        base = "<br>".join(f"{k}: {fmt(v, r.unit)}" for k, v in r.baselines.items()) or "-"
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        value = fmt(r.value, r.unit) if r.value is not None else "skipped"
        mark = ""
        if r.note:
            notes.append(r.note)
            mark = f" [{len(notes)}]"
        out.append(f"| {r.scenario} | {r.metric}{mark} | {value} | {base} | {r.ratio or '-'} "
                   f"| {r.target or '-'} | {met} |")
    out.append("")
    out += [f"- [{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help=f"comma list of {','.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--server-flags", default="",
                   help='extra flags for every agentstream server, e.g. "--store-batch 10000"')
    p.add_argument("--p7-runs", default="",
                   help="comma list of P7's run counts (default 100,300,1000), e.g. 1000")
    p.add_argument("--p7-repeat", type=int, default=0,
                   help="rounds per P7 size, the median reported (default 3; 1 with --quick)")
    args = p.parse_args(argv)
    names = list(SCENARIOS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            p.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    exit_on_sigterm()
    nofile = raise_nofile()
    background = busy_cores()
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="agentstream-bench-") as tmp:
        ctx = Ctx(Path(tmp), args.quick, args.client_procs, log,
                  tuple(shlex.split(args.server_flags)),
                  tuple(int(m) for m in args.p7_runs.split(",") if m.strip()),
                  args.p7_repeat or (1 if args.quick else 3))
        by_name: dict[str, list[Row]] = {}
        # The in-process store bench first, on a quiet disk; 10,000 sockets last.
        for name in sorted(names, key=RUN_ORDER.index):
            try:
                by_name[name] = SCENARIOS[name](ctx)
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                log(f"{name} failed: {exc}")
        rows = [row for name in names for row in by_name.get(name, [])]
    cmd = "python scripts/bench.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                       ).rstrip()
    print(f"agentstream bench ({'quick' if args.quick else 'full'}): `{cmd.strip()}`")
    print(f"machine: {machine()}; fd limit {nofile}.")
    print(f"Server and {args.client_procs} client processes share these cores: every figure "
          "includes the clients' CPU competing with the server's. Before the run, other work "
          f"on the box used {background:.2f} cores" + (" (figures are skewed: rerun on an idle "
                                                      "box)" if background > 0.2 else "") + ".\n")
    print(table(rows))
    for f in failures:
        print(f"\nFAILED {f}")
    print(f"\n({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({
            "command": cmd.strip(), "machine": machine(), "quick": args.quick,
            "client_procs": args.client_procs, "background_cores": round(background, 2),
            "rows": [asdict(r) for r in rows],
            "failures": failures,
        }, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
