"""SSE gzip (``--compression true``): bytes on the wire and server CPU per event, beside
identity measured in the same run against the same server and the same stored run.

A demo run of ``--tokens`` chunks is stored once; then ``--readers`` clients read its whole
replay, first without and then with ``Accept-Encoding: gzip`` (alternated ``--rounds``
times), and the server's CPU (``/proc/<pid>``) and the bytes received are compared.

    python3 scripts/bench_compression.py --tokens 20000 --readers 20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import zlib
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.loadlib_servers import product_server, start_run, temp_workdir, wait_run


async def read_all(url: str, readers: int, gzip: bool) -> tuple[int, int]:
    """(wire bytes, events) over ``readers`` concurrent full replays."""
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}

    async def one(http: aiohttp.ClientSession) -> tuple[int, int]:
        wire = 0
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200 and (resp.headers.get("Content-Encoding") == "gzip") == gzip
            body = bytearray()
            async for chunk in resp.content.iter_any():
                wire += len(chunk)
                body += chunk
        data = bytes(body)
        if gzip:
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
        return wire, data.count(b"\ndata: ") + data.startswith(b"data: ")

    async with aiohttp.ClientSession(auto_decompress=False) as http:
        results = await asyncio.gather(*(one(http) for _ in range(readers)))
    return sum(r[0] for r in results), sum(r[1] for r in results)


async def main(tokens: int, readers: int, rounds: int) -> None:
    with temp_workdir() as tmp, product_server(Path(tmp), "--compression", "true") as server:
        server.start()
        run = start_run(server.url, {"text": "compression", "tokens": tokens, "delay_ms": 0})
        wait_run(server.url, run["run_id"])
        url = f"{server.url}/v1/runs/{run['run_id']}/events"
        totals: dict[bool, list[float]] = {False: [0, 0, 0.0], True: [0, 0, 0.0]}
        for _ in range(rounds):
            for gzip in (False, True):
                cpu0 = server.cpu()
                wire, events = await read_all(url, readers, gzip)
                t = totals[gzip]
                t[0] += wire
                t[1] += events
                t[2] += server.cpu() - cpu0
        print(f"replay: {tokens} stored tokens, {readers} readers x {rounds} rounds, "
              f"load {load():.2f}")
        report(totals)
        # live: readers attached while a run streams, so most writes carry one event each
        live: dict[bool, list[float]] = {False: [0, 0, 0.0], True: [0, 0, 0.0]}
        for _ in range(rounds):
            for gzip in (False, True):
                run = start_run(server.url, {"text": "live", "tokens": tokens // 10,
                                             "delay_ms": 2})
                cpu0 = server.cpu()
                wire, events = await read_all(
                    f"{server.url}/v1/runs/{run['run_id']}/events", readers, gzip)
                t = live[gzip]
                t[0] += wire
                t[1] += events
                t[2] += server.cpu() - cpu0
        print(f"live: {tokens // 10} tokens at 2 ms, {readers} readers x {rounds} rounds, "
              f"load {load():.2f}")
        report(live)


def report(totals: dict[bool, list[float]]) -> None:
    for gzip in (False, True):
        wire, events, cpu = totals[gzip]
        print(f"  {'gzip    ' if gzip else 'identity'}: {wire / events:7.1f} bytes/event on "
              f"the wire, {cpu / events * 1e6:6.2f} us server CPU/event ({events:,.0f} events)")
    g, i = totals[True], totals[False]
    print(f"  gzip/identity: bytes {g[0] / g[1] / (i[0] / i[1]):.2f}x, "
          f"CPU {g[2] / g[1] / (i[2] / i[1]):.2f}x")


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--readers", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    started = time.monotonic()
    asyncio.run(main(a.tokens, a.readers, a.rounds))
    print(f"  ({time.monotonic() - started:.0f} s)")
