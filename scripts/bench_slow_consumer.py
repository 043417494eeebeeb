#!/usr/bin/env python3
"""Issue 4's proof in numbers: does one stalled reader slow 100 fast ones?

Starts ``python -m app`` (temp SQLite file), then, twice in the same run: 100 raw SSE readers
of one conversation read a fast run (``--tokens`` chunks, no delay) as fast as they can; in
the second pass one more client connects and reads nothing until the others are done, then
reads everything. Reports the fast readers' delivered events/s with and without the stalled
one (and their ratio), whether the stalled one got every event, and the server's peak RSS.

    python scripts/bench_slow_consumer.py --tokens 20000 --readers 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DONE = re.compile(rb'"type":"done","data":\{"status":"completed"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def post(base: str, path: str, body: dict) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def wait_ready(base: str) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("server did not start")


async def open_stream(port: int, path: str, rcvbuf: int | None = None
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def read_until_done(reader: asyncio.StreamReader) -> tuple[int, float]:
    """Frames read until the completed run's ``done``; returns (frames, finish time)."""
    frames, tail = 0, b""
    while True:
        chunk = await reader.read(1 << 16)
        if not chunk:
            raise ConnectionError("stream ended before done")
        frames += (tail + chunk).count(b"\nid: ") - tail.count(b"\nid: ")
        if DONE.search(tail + chunk):
            return frames, time.perf_counter()
        tail = chunk[-64:]


async def one_pass(port: int, base: str, readers: int, tokens: int, stalled: bool,
                   pid: int) -> dict:  # type: ignore[type-arg]
    conv = f"bench-{time.monotonic_ns()}"
    first = post(base, "/v1/runs", {"agent": "demo", "conversation_id": conv, "input": {
        "tokens": 0, "ask": "go?", "reasoning": False, "tool_call": False}})
    path = f"/v1/conversations/{conv}/events"
    slow = await open_stream(port, path, rcvbuf=4096) if stalled else None
    if slow is not None:
        slow[1].transport.pause_reading()
    fast = [await open_stream(port, path) for _ in range(readers)]
    await asyncio.sleep(0.3)
    post(base, f"/v1/runs/{first['run_id']}/cancel", {})
    peak = rss_kb(pid)
    started = time.perf_counter()
    # The cancelled run may still be ending: ``parallel`` (the default policy would refuse).
    post(base, "/v1/runs", {"agent": "demo", "conversation_id": conv, "multitask": "parallel",
                            "input": {"tokens": tokens, "delay_ms": 0, "reasoning": False,
                                      "tool_call": False}})
    tasks = [asyncio.create_task(read_until_done(r)) for r, _ in fast]
    while not all(t.done() for t in tasks):
        peak = max(peak, rss_kb(pid))
        await asyncio.sleep(0.02)
    results = [t.result() for t in tasks]
    elapsed = max(t for _, t in results) - started
    events = tokens + 3  # run_started, chunks, message, done
    out = {"stalled": stalled, "readers": readers, "events_per_reader": events,
           "seconds": round(elapsed, 3),
           "delivered_per_s": round(readers * events / elapsed)}
    for _, w in fast:
        w.close()
    if slow is not None:
        slow[1].transport.resume_reading()
        frames, _ = await asyncio.wait_for(read_until_done(slow[0]), 120)
        out["stalled_frames_after_resume"] = frames
        slow[1].close()
    out["server_peak_rss_mb"] = round(peak / 1024, 1)
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--stalled-first", action="store_true",
                    help="run the stalled pass first (to see each pass's own peak RSS)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port), "--db", f"{tmp}/b.db",
             "--log-level", "warning", "--queue-bytes", str(2 * 1024 * 1024)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            await asyncio.to_thread(wait_ready, base)
            order = [True, False] if args.stalled_first else [False, True]
            passes = {}
            for is_stalled in order:
                passes[is_stalled] = await one_pass(port, base, args.readers, args.tokens,
                                                    is_stalled, proc.pid)
            free, stalled = passes[False], passes[True]
        finally:
            proc.terminate()
            proc.wait(20)
    ratio = stalled["delivered_per_s"] / free["delivered_per_s"]
    print("| pass | fast readers' delivered events/s | seconds | server peak RSS MB |")
    print("| --- | --- | --- | --- |")
    for r in (free, stalled):
        label = "with 1 stalled reader" if r["stalled"] else "all fast"
        print(f"| {label} | {r['delivered_per_s']:,} | {r['seconds']} | "
              f"{r['server_peak_rss_mb']} |")
    print(f"\nratio with/without the stalled reader: {ratio:.2f}x")
    print(f"stalled reader, after it resumed: {stalled['stalled_frames_after_resume']} frames "
          f"(chunks may be merged; each frame's data.merged says how many)")
    if args.json:
        args.json.write_text(json.dumps({"free": free, "stalled": stalled, "ratio": ratio},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
