"""Cluster benchmarks (issue 14), each beside the single-node figure measured in the same run.

C1 fan-out: a run on node A, N SSE subscribers on node B (events/s delivered, server CPU per
   delivered event) vs the same run and subscribers on one SQLite node.
C2 bus latency: publish->receive p50/p99 for subscribers on B (through Redis) vs on A (the
   owner, no bus) of the same cluster, at a fixed event rate.
C3 appends/s into PostgreSQL: the batched store vs one INSERT per event (autocommit) vs
   the SQLite store.
C4 failover: open runs on A with subscribers on B; SIGKILL A; seconds until every run's
   ``done{interrupted}`` reached B, against the configured lease.

    python scripts/bench_cluster.py --quick          # ~1 minute
    python scripts/bench_cluster.py                  # the figures in the README

Needs PostgreSQL and Redis (127.0.0.1 by default; --pg / --redis). Every scenario makes its
own schema and channel prefix and drops them after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import Ctx, Row, _events, _store_product, fanout_once, latency_run, table
from loadlib import (
    ServerProc,
    Sub,
    exit_on_sigterm,
    free_port,
    machine,
    product_server,
    raise_nofile,
    setup_conversation,
    start_run,
    summarize_hist,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def schema(pg: str) -> Iterator[str]:
    import asyncpg

    name = "bench_" + secrets.token_hex(4)

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(pg)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE SCHEMA {name}"))
    try:
        yield name
    finally:
        asyncio.run(run(f"DROP SCHEMA IF EXISTS {name} CASCADE"))


def cluster_node(ctx: Ctx, pg: str, redis: str, schema_name: str, prefix: str,
                 *flags: str) -> ServerProc:
    sep = "&" if "?" in pg else "?"
    return product_server(ctx.workdir, "--store", f"{pg}{sep}search_path={schema_name}",
                          "--bus", redis, "--cluster-name", prefix, *flags,
                          name=f"node-{free_port()}")


# ---- C1 fan-out -------------------------------------------------------------------------------


def c1(ctx: Ctx, pg: str, redis: str) -> list[Row]:
    n, tokens = ctx.size(1000, 200), ctx.size(5000, 500)
    label = f"C1 fan-out 1 run on A -> {n} SSE on B"
    demo = {"text": "fanout", "tokens": tokens, "delay_ms": 0, "reasoning": False,
            "tool_call": False}
    ctx.log(f"{label}: single SQLite node")
    with product_server(ctx.workdir) as one:
        one.start()
        after = setup_conversation(one.url, "c_fan")
        subs = [Sub("/v1/conversations/c_fan/events", last_event_id=after) for _ in range(n)]
        single = fanout_once(ctx, one, subs, "sse", lambda: start_run(one.url, demo, "c_fan"),
                             300)
    ctx.log(f"{label}: two cluster nodes")
    with schema(pg) as s, cluster_node(ctx, pg, redis, s, s) as a, \
            cluster_node(ctx, pg, redis, s, s) as b:
        a.start()
        b.start()
        after = setup_conversation(a.url, "c_fan")  # owned by A
        subs = [Sub("/v1/conversations/c_fan/events", last_event_id=after) for _ in range(n)]
        a_cpu0 = a.cpu()
        clustered = fanout_once(ctx, b, subs, "sse", lambda: start_run(b.url, demo, "c_fan"),
                                300)
        a_cpu = a.cpu() - a_cpu0
    one_us = single.server_cpu / single.res.events * 1e6
    two_us = (clustered.server_cpu + a_cpu) / clustered.res.events * 1e6
    return [
        Row(label, "delivered events/s", clustered.rate, "ev/s",
            {"single node": single.rate}, f"{clustered.rate / single.rate:.2f}x single",
            note=f"cluster: {clustered.cpu_note()}, node A {a_cpu:.2f} s; "
                 f"single: {single.cpu_note()}"),
        Row(label, "server CPU per delivered event (A + B)", two_us, "us",
            {"single node": one_us}, f"{two_us / one_us:.2f}x single",
            note=f"implies about {1e6 / two_us:,.0f} delivered events/s per core in a cluster "
                 f"vs {1e6 / one_us:,.0f} on one node (fan-out dominates; the bus adds one "
                 "decode per batch per node)"),
    ]


# ---- C2 bus latency ---------------------------------------------------------------------------


def c2(ctx: Ctx, pg: str, redis: str) -> list[Row]:
    n, rate = ctx.size(1000, 200), 200
    seconds = ctx.size(10, 3)
    tokens = rate * seconds
    label = f"C2 latency {n} SSE x {rate} ev/s"
    demo = {"text": "latency", "tokens": tokens, "delay_ms": 1000 / rate, "reasoning": False,
            "tool_call": False}
    got: dict[str, Any] = {}
    with schema(pg) as s, cluster_node(ctx, pg, redis, s, s) as a, \
            cluster_node(ctx, pg, redis, s, s) as b:
        a.start()
        b.start()
        for where, node in (("on A (owner, no bus)", a), ("on B (through Redis)", b)):
            ctx.log(f"{label}: subscribers {where}")
            cid = f"c_lat_{secrets.token_hex(3)}"
            after = setup_conversation(a.url, cid)
            subs = [Sub(f"/v1/conversations/{cid}/events", last_event_id=after)
                    for _ in range(n)]
            got[where] = latency_run(ctx, node, subs, lambda c=cid: start_run(a.url, demo, c),
                                     seconds * 20 + 60)
    on_a = summarize_hist(got["on A (owner, no bus)"].res.hist)
    on_b = summarize_hist(got["on B (through Redis)"].res.hist)
    rows = []
    for q in ("p50", "p99"):
        va, vb = on_a[q], on_b[q]
        rows.append(Row(label, f"publish->receive {q} on B", vb, "ms",
                        {"subscribers on A": va or 0.0},
                        f"{vb - va:+.0f} ms added by the bus" if va is not None and vb is not None
                        else "", "<= 5 ms added" if q == "p99" else "",
                        (vb - va <= 5) if q == "p99" and va is not None and vb is not None
                        else None))
    return rows


# ---- C3 appends -------------------------------------------------------------------------------


async def _pg_batched(pg: str, schema_name: str, n: int) -> float:
    from app.store.ops import AppendEvent
    from app.store.postgres import PostgresEventStore

    store = PostgresEventStore(pg, schema=schema_name)
    await store.open()
    try:
        events = _events(n)
        t0 = time.perf_counter()
        for ev in events:
            await store.wait_for_room()
            store.enqueue(AppendEvent(ev, 0))
        await store.flush(timeout=600)
        elapsed = time.perf_counter() - t0
        if await store.last_seq("c_store") != n:
            raise RuntimeError("not every event was stored")
    finally:
        await store.close()
    return n / elapsed


async def _pg_one_by_one(pg: str, schema_name: str, n: int) -> float:
    import asyncpg

    conn = await asyncpg.connect(pg, server_settings={"search_path": schema_name})
    try:
        await conn.execute("DELETE FROM events")
        t0 = time.perf_counter()
        for ev in _events(n):
            await conn.execute(
                "INSERT INTO events VALUES ($1,$2,$3,$4,$5,$6,$7)", ev.conversation_id,
                ev.seq, ev.run_id, ev.type, ev.item_id, 0, ev.body)
        return n / (time.perf_counter() - t0)
    finally:
        await conn.close()


def c3(ctx: Ctx, pg: str, redis: str) -> list[Row]:
    n = ctx.size(200_000, 20_000)
    naive_n = ctx.size(10_000, 2_000)
    label = "C3 store appends"
    ctx.log(f"{label}: PostgreSQL batched ({n}), one INSERT per event ({naive_n}), SQLite")
    with schema(pg) as s:
        batched = asyncio.run(_pg_batched(pg, s, n))
        naive = asyncio.run(_pg_one_by_one(pg, s, naive_n))
    sqlite = asyncio.run(_store_product(ctx.workdir / "c3.db", n))
    return [Row(label, "appends/s into PostgreSQL (batched)", batched, "ev/s",
                {"one INSERT per event": naive, "SQLite store (single node)": sqlite},
                f"{batched / naive:.1f}x one-per-event, {batched / sqlite:.2f}x SQLite",
                ">= 100k/s and >= 20x", batched >= 100_000 and batched >= 20 * naive,
                "the store's own path (Writer batches, one transaction each, binary COPY); "
                "PostgreSQL on the same 2 cores, fsync on")]


# ---- C4 failover ------------------------------------------------------------------------------


def _read_until_done(url: str, deadline: float) -> float | None:
    """Read an SSE stream; the monotonic time its ``done`` arrived (None if it never did)."""
    with contextlib.suppress(OSError), urllib.request.urlopen(
            url, timeout=max(1.0, deadline - time.monotonic())) as r:
        for line in r:
            if line.startswith(b"event: done"):
                return time.monotonic()
    return None


def c4(ctx: Ctx, pg: str, redis: str) -> list[Row]:
    import threading

    lease, runs = 3.0, ctx.size(50, 10)
    label = f"C4 failover, {runs} open runs, lease {lease:g} s"
    ctx.log(label)
    with schema(pg) as s, cluster_node(ctx, pg, redis, s, s, "--lease-seconds", str(lease)) as a, \
            cluster_node(ctx, pg, redis, s, s, "--lease-seconds", str(lease)) as b:
        a.start()
        b.start()
        ids = [start_run(a.url, {"tokens": 1_000_000, "delay_ms": 50})["run_id"]
               for _ in range(runs)]
        ends: list[float | None] = [None] * runs
        deadline = time.monotonic() + lease + 60

        def read(i: int) -> None:
            ends[i] = _read_until_done(f"{b.url}/v1/runs/{ids[i]}/events", deadline)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(runs)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed = time.monotonic()
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        for t in threads:
            t.join()
    if any(e is None for e in ends):
        raise RuntimeError(f"{sum(e is None for e in ends)} runs never got their done")
    worst = max(e for e in ends if e is not None) - killed
    return [Row(label, "kill -> last done{interrupted} on B", worst, "s",
                {"lease": lease}, f"lease + {worst - lease:.2f} s", "<= lease + 1 s",
                worst <= lease + 1.0,
                "SIGKILL of the owner; a survivor reaps its lease, takes its conversations and "
                "ends every open run (done committed, delivered over the stream on B)")]


SCENARIOS = {"C1": c1, "C2": c2, "C3": c3, "C4": c4}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help=f"comma list of {','.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--pg", default=PG)
    p.add_argument("--redis", default=REDIS)
    args = p.parse_args(argv)
    names = [n.strip() for n in (args.only or ",".join(SCENARIOS)).split(",") if n.strip()]
    exit_on_sigterm()
    raise_nofile()
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="agentstream-cluster-bench-") as tmp:
        ctx = Ctx(Path(tmp), args.quick, args.client_procs, log)
        for name in names:
            try:
                rows += SCENARIOS[name](ctx, args.pg, args.redis)
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                log(f"{name} failed: {exc}")
    cmd = "python scripts/bench_cluster.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    print(f"agentstream cluster bench: `{cmd.strip()}`\nmachine: {machine()}. Nodes, "
          "PostgreSQL, Redis and the client processes share these cores.\n")
    print(table(rows))
    for f in failures:
        print(f"\nFAILED {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
