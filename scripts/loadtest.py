"""Load-test agentstream over real sockets on loopback.

N SSE or WebSocket subscribers watch M concurrent demo runs (subscriber j watches run j % M,
each run in its own conversation); a live progress line goes to stderr, a summary to stdout:
delivered events/s, publish->receive latency (envelope ``ts`` vs the receive clock: same
machine), errors, reconnects and, when this script started the server, its RSS and CPU.
Bounded: it stops when every subscriber has seen its run's ``done``, or at ``--timeout``.

    python scripts/loadtest.py -n 200 -m 20 --tokens 500 --delay-ms 5 --json lt.json --plot lt.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadlib import (
    HOST,
    WS_SKIP,
    ClientJob,
    ClientPool,
    ServerProc,
    Sub,
    exit_on_sigterm,
    machine,
    merge_hist,
    percentile,
    product_server,
    raise_nofile,
    setup_conversation,
    start_run,
    summarize_hist,
    temp_workdir,
    ws_available,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="test this running server instead of starting one")
    p.add_argument("-n", "--subscribers", type=int, default=100)
    p.add_argument("-m", "--runs", type=int, default=10, help="concurrent demo runs")
    p.add_argument("--tokens", type=int, default=200, help="message chunks per run")
    p.add_argument("--delay-ms", type=float, default=10.0, help="demo delay between chunks")
    p.add_argument("--reasoning", action="store_true", help="demo runs also stream reasoning")
    p.add_argument("--tool-call", action="store_true", help="demo runs also make a tool call")
    p.add_argument("--transport", choices=("sse", "ws"), default="sse")
    p.add_argument("--client-procs", type=int, default=2, help="client worker processes")
    p.add_argument("--timeout", type=float, default=120.0, help="hard stop, seconds")
    p.add_argument("--interval", type=float, default=0.5, help="progress/sample period, s")
    p.add_argument("--heartbeat", type=float, default=15.0, help="server heartbeat (own server)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra flag for the started server, e.g. --server-arg=--store-batch=500")
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--plot", type=Path, help="write a PNG of throughput and latency over time")
    args = p.parse_args(argv)
    if min(args.subscribers, args.runs) < 1 or args.tokens < 0:
        p.error("--subscribers and --runs must be >= 1, --tokens >= 0")
    return args


@dataclass
class Series:
    """Progress reports bucketed by time since the runs were started."""

    t0: float
    interval: float
    events: dict[int, int] = field(default_factory=dict)
    hists: dict[int, dict[int, int]] = field(default_factory=dict)
    server: list[tuple[float, float, float]] = field(default_factory=list)  # t, cpu %, rss MiB
    finished: dict[int, int] = field(default_factory=dict)
    errors: dict[int, int] = field(default_factory=dict)
    reconnects: dict[int, int] = field(default_factory=dict)
    total: int = 0
    hist: dict[int, int] = field(default_factory=dict)

    def add(self, msg: dict[str, Any], wid: int) -> None:
        b = max(0, int((msg["t"] - self.t0) / self.interval))
        self.events[b] = self.events.get(b, 0) + int(msg["events"])
        merge_hist(self.hists.setdefault(b, {}), msg["hist"])
        merge_hist(self.hist, msg["hist"])
        self.total += int(msg["events"])
        self.finished[wid] = int(msg["finished"])
        self.errors[wid] = int(msg["errors"])
        self.reconnects[wid] = int(msg["reconnects"])

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for b in sorted(self.events):
            h = self.hists.get(b, {})
            out.append({
                "t": round((b + 1) * self.interval, 3),
                "events_per_s": self.events[b] / self.interval,
                "p50_ms": percentile(h, 0.5), "p99_ms": percentile(h, 0.99),
            })
        return out


class Sampler:
    """Server CPU and RSS from /proc, when we started the server."""

    def __init__(self, server: ServerProc | None, t0: float) -> None:
        self.server = server
        self.t0 = t0
        self.last: tuple[float, float] | None = None
        self.cpu_start = server.cpu() if server else 0.0
        self.rss_start = server.rss() if server else 0
        self.rss_peak = self.rss_start
        self.cpu_pct = 0.0
        self.rss = self.rss_start

    def sample(self, series: Series) -> None:
        if self.server is None:
            return
        now, cpu = time.monotonic(), self.server.cpu()
        if self.last is not None and now > self.last[0]:
            self.cpu_pct = 100.0 * (cpu - self.last[1]) / (now - self.last[0])
        self.last = (now, cpu)
        self.rss = self.server.rss()
        self.rss_peak = max(self.rss_peak, self.rss)
        series.server.append((now - self.t0, self.cpu_pct, self.rss / 2**20))


def progress_line(series: Series, sampler: Sampler, n_subs: int) -> str:
    elapsed = time.monotonic() - series.t0
    recent = [series.events.get(b, 0) for b in range(int(elapsed / series.interval) - 2,
                                                    int(elapsed / series.interval))]
    rate = sum(recent) / (len(recent) * series.interval) if recent else 0.0
    p50, p99 = percentile(series.hist, 0.5), percentile(series.hist, 0.99)
    lat = f"p50 {p50:.0f} p99 {p99:.0f} ms" if p50 is not None and p99 is not None else "p50 -"
    srv = (f"  server {sampler.cpu_pct:3.0f}% CPU {sampler.rss / 2**20:.0f} MiB"
           if sampler.server else "")
    return (f"\r[{elapsed:6.1f}s] {series.total:>11,} events {rate:>10,.0f}/s  {lat}  "
            f"done {sum(series.finished.values())}/{n_subs}  err {sum(series.errors.values())}"
            f"  rc {sum(series.reconnects.values())}{srv}   ")


def write_plot(path: Path, series: Series, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = series.rows()
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    t = [r["t"] for r in rows]
    axes[0].plot(t, [r["events_per_s"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("delivered events/s")
    axes[1].plot(t, [r["p50_ms"] for r in rows], label="p50")
    axes[1].plot(t, [r["p99_ms"] for r in rows], label="p99")
    axes[1].set_ylabel("publish->receive ms")
    axes[1].legend(loc="upper right")
    if series.server:
        axes[2].plot([s[0] for s in series.server], [s[1] for s in series.server],
                     color="tab:red", label="server CPU %")
        ax2 = axes[2].twinx()
        ax2.plot([s[0] for s in series.server], [s[2] for s in series.server],
                 color="tab:green", label="RSS MiB")
        ax2.set_ylabel("RSS MiB")
        axes[2].set_ylabel("CPU % of one core")
    axes[2].set_xlabel("seconds since the runs started")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace, base: str, server: ServerProc | None) -> dict[str, Any]:
    host, port = urlsplit(base).hostname or HOST, urlsplit(base).port or 80
    tag = secrets.token_hex(3)
    convs = [f"lt_{tag}_{i}" for i in range(args.runs)]
    with ThreadPoolExecutor(16) as pool:
        afters = list(pool.map(lambda c: setup_conversation(base, c), convs))
    subs = []
    for j in range(args.subscribers):
        i = j % args.runs
        if args.transport == "sse":
            subs.append(Sub(f"/v1/conversations/{convs[i]}/events", last_event_id=afters[i]))
        else:
            subs.append(Sub("/v1/ws", ws_message={
                "type": "subscribe", "conversation_id": convs[i], "after": afters[i],
                "ref": f"s{j}"}))
    demo = {"text": "load", "tokens": args.tokens, "delay_ms": args.delay_ms,
            "reasoning": args.reasoning, "tool_call": args.tool_call}
    job = ClientJob(host, port, args.transport, subs, latency=True,
                    progress_interval=args.interval, timeout=args.timeout)
    started_runs = 0
    run_errors: list[str] = []
    with ClientPool(job, args.client_procs) as clients:
        opened = clients.wait_ready(timeout=args.timeout)
        time.sleep(0.3)  # let the last subscriptions finish their (empty) catch-up read
        t0 = time.monotonic()
        series = Series(t0, args.interval)
        sampler = Sampler(server, t0)

        def start(cid: str) -> None:
            nonlocal started_runs
            try:
                start_run(base, demo, cid)
                started_runs += 1
            except (RuntimeError, OSError) as exc:
                run_errors.append(str(exc))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(start, convs))
        next_sample = [0.0]

        def tick() -> None:
            now = time.monotonic()
            if now >= next_sample[0]:
                next_sample[0] = now + args.interval
                sampler.sample(series)
                sys.stderr.write(progress_line(series, sampler, len(subs)))
                sys.stderr.flush()

        result = clients.wait_final(
            args.timeout + 30, on_progress=lambda msg: series.add(msg, msg["wid"]), tick=tick
        )
        sampler.sample(series)
        sys.stderr.write(progress_line(series, sampler, len(subs)) + "\n")
    end = result.last_event or time.monotonic()
    elapsed = max(1e-9, end - t0)
    out: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(),
        "url": base,
        "subscribers_open": opened,
        "subscribers_complete": result.finished,
        "runs_started": started_runs,
        "delivered_events": result.events,
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(result.events / elapsed, 1),
        "latency_ms": summarize_hist(result.hist),
        "errors": result.errors + len(run_errors),
        "error_samples": (run_errors + result.error_samples)[:10],
        "reconnects": result.reconnects,
        "timeseries": series.rows(),
    }
    if server is not None:
        out["server"] = {
            "pid": server.pid,
            "rss_start_mib": round(sampler.rss_start / 2**20, 1),
            "rss_peak_mib": round(sampler.rss_peak / 2**20, 1),
            "rss_end_mib": round(sampler.rss / 2**20, 1),
            "cpu_s": round(server.cpu() - sampler.cpu_start, 2),
            "cpu_pct_of_core": round(100 * (server.cpu() - sampler.cpu_start) / elapsed, 1),
            "samples": [[round(a, 2), round(b, 1), round(c, 1)] for a, b, c in series.server],
        }
    if args.plot:
        write_plot(args.plot, series,
                   f"agentstream {args.transport}: {args.subscribers} subscribers, "
                   f"{args.runs} runs x {args.tokens} tokens @ {args.delay_ms:g} ms")
    return out


def print_summary(r: dict[str, Any]) -> None:
    c = r["config"]
    lat = r["latency_ms"]
    print(f"agentstream loadtest ({c['transport']}): {c['subscribers']} subscribers, "
          f"{c['runs']} runs x {c['tokens']} tokens @ {c['delay_ms']:g} ms, "
          f"{c['client_procs']} client processes")
    print(f"machine: {r['machine']} (server and clients share these cores)")
    print(f"subscribers: {r['subscribers_open']} open, {r['subscribers_complete']} saw done; "
          f"runs started: {r['runs_started']}")
    print(f"delivered: {r['delivered_events']:,} events in {r['elapsed_s']:.2f} s = "
          f"{r['events_per_s']:,.0f} events/s")
    if lat["p50"] is not None:
        print(f"latency publish->receive (ms, 1 ms resolution): p50 {lat['p50']:.0f}  "
              f"p95 {lat['p95']:.0f}  p99 {lat['p99']:.0f}  max {lat['max']:.0f}  "
              f"(n={lat['n']:,.0f})")
    print(f"errors: {r['errors']}  reconnects: {r['reconnects']}")
    for sample in r["error_samples"]:
        print(f"  error: {sample}")
    s = r.get("server")
    if s:
        print(f"server pid {s['pid']}: RSS {s['rss_start_mib']} -> {s['rss_end_mib']} MiB "
              f"(peak {s['rss_peak_mib']}), CPU {s['cpu_s']} s "
              f"({s['cpu_pct_of_core']}% of one core)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    raise_nofile()
    with contextlib.ExitStack() as stack:
        server: ServerProc | None = None
        if args.url:
            base = args.url.rstrip("/")
        else:
            workdir = Path(stack.enter_context(temp_workdir()))
            server = stack.enter_context(
                product_server(workdir, "--heartbeat", str(args.heartbeat), *args.server_arg)
            )
            server.start()
            base = server.url
        if args.transport == "ws" and not ws_available(base):
            print(f"agentstream loadtest (ws): {WS_SKIP}")
            if args.json:
                args.json.write_text(json.dumps({"skipped": WS_SKIP}, indent=2))
            return 0
        result = run(args, base, server)
    print_summary(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    complete = result["subscribers_complete"] == args.subscribers
    return 0 if complete and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
