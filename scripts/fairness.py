"""Fairness: does one agent emitting as fast as it can starve everyone else?

Starts ``python -m app`` on a temporary database, measures ``GET /healthz`` latency while
idle, then while a demo run emits ``--tokens`` chunks with no delay (an agent that never
awaits anything but ``emit``), and prints p50/p99/max of both and the ratio. Real client,
real socket, same run; nothing is asserted (the machine is shared and noisy).

    python3 scripts/fairness.py --tokens 200000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.process import ServerProcess


async def probe(http: aiohttp.ClientSession, base: str, seconds: float) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        async with http.get(base + "/healthz") as r:
            await r.read()
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.005)
    return out


def summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms, max {max(ms):.2f} ms ({len(ms)} probes)"


async def main(tokens: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(Path(tmp) / "f.db")
        await proc.start()
        try:
            async with aiohttp.ClientSession() as http:
                idle = await probe(http, proc.base, seconds)
                async with http.post(proc.base + "/v1/runs", json={
                        "agent": "demo", "input": {"tokens": tokens, "delay_ms": 0,
                                                   "reasoning": False, "tool_call": False}}) as r:
                    run = await r.json()
                busy = await probe(http, proc.base, seconds)
                async with http.get(f"{proc.base}/v1/runs/{run['run_id']}") as r:
                    status = (await r.json())["status"]
        finally:
            proc.stop()
    print(f"idle:             {summary(idle)}")
    print(f"busy run emitting: {summary(busy)}  (run status at the end: {status})")
    ratio = statistics.quantiles(busy, n=100)[98] / statistics.quantiles(idle, n=100)[98]
    print(f"p99 ratio busy/idle: {ratio:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(main(args.tokens, args.seconds))
