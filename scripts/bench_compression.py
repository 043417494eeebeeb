"""Compression (``--compression true``): SSE gzip and WebSocket permessage-deflate, bytes
on the wire and server CPU per event, beside uncompressed measured in the same run against
the same server and the same stored run.

A demo run of ``--tokens`` chunks is stored once; then ``--readers`` clients read its whole
replay, first without and then with compression (SSE: ``Accept-Encoding: gzip``; WebSocket:
a ``subscribe`` on a socket that offered ``permessage-deflate`` or not), alternated
``--rounds`` times, and the server's CPU (``/proc/<pid>``) and the bytes received are
compared. Then the same live: readers attached while a run streams (the fan-out path), one
paced (2 ms between events: about one event a batch) and one unpaced (many events a batch).

    python3 scripts/bench_compression.py --tokens 20000 --readers 20
    python3 scripts/bench_compression.py --transport ws
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


class WsCount:
    """Frames parsed from a raw socket's bytes: event count, and the done of ``run_id``."""

    def __init__(self, run_id: str) -> None:
        self.run_id = b'"run_id":"%s"' % run_id.encode()
        self.buf = b""
        self.events = 0
        self.done = False
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        buf = self.buf + data
        i = 0
        while len(buf) - i >= 2:
            b0, n = buf[i], buf[i + 1] & 0x7F
            head = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if len(buf) - i < head:
                break
            if n >= 126:
                n = int.from_bytes(buf[i + 2:i + head], "big")
            if len(buf) - i < head + n:
                break
            payload = buf[i + head:i + head + n]
            i += head + n
            if b0 & 0x40:  # RSV1: one permessage-deflate message
                payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
            if payload.startswith(b'{"type":"event"'):
                self.events += 1
                if b'"type":"done"' in payload and self.run_id in payload:
                    self.done = True
        self.buf = buf[i:]


async def ws_read_one(base: str, run_id: str, deflate: bool) -> tuple[int, int]:
    """(wire bytes after the handshake, events) of one ``subscribe`` to the run's end."""
    where = urlsplit(base)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    offer = ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
             if deflate else "")
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{offer}\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert (b"permessage-deflate" in head) == deflate, head
    cmd = b'{"type":"subscribe","run_id":"%s","after":0}' % run_id.encode()
    writer.write(bytes([0x81, 0x80 | len(cmd)]) + b"\0\0\0\0" + cmd)  # zero mask
    count, wire = WsCount(run_id), 0
    try:
        while not count.done:
            data = await asyncio.wait_for(reader.read(1 << 16), 60)
            assert data, f"closed before done: {count.buf[:300]!r} {count.events}"
            wire += len(data)
            count.feed(data)
    finally:
        writer.transport.abort()
    return wire, count.events


async def ws_read_all(base: str, run_id: str, readers: int, deflate: bool) -> tuple[int, int]:
    results = await asyncio.gather(*(ws_read_one(base, run_id, deflate)
                                     for _ in range(readers)))
    return sum(r[0] for r in results), sum(r[1] for r in results)


Reader = Callable[[str, str, int, bool], Awaitable[tuple[int, int]]]


async def sse_reader(base: str, run_id: str, readers: int, gzip: bool) -> tuple[int, int]:
    return await read_all(f"{base}/v1/runs/{run_id}/events", readers, gzip)


async def main(tokens: int, readers: int, rounds: int, transports: list[str]) -> None:
    with temp_workdir() as tmp, product_server(Path(tmp), "--compression", "true") as server:
        server.start()
        for transport in transports:
            # Stored just before its replay, so each transport replays from the replay cache
            # (after the other's runs it would be read back from SQLite: another cost).
            run = start_run(server.url, {"text": "compression", "tokens": tokens,
                                         "delay_ms": 0})
            wait_run(server.url, run["run_id"])
            read: Reader = sse_reader if transport == "sse" else ws_read_all
            names = ("identity", "gzip") if transport == "sse" else ("plain", "deflate")
            await measure(server, read, names, run["run_id"], tokens, readers, rounds)


async def measure(server: Any, read: Reader, names: tuple[str, str], stored: str, tokens: int,
                  readers: int, rounds: int) -> None:
    """Replay of the stored run, then live runs, each compressed and not, alternated."""
    totals: dict[bool, list[float]] = {False: [0, 0, 0.0], True: [0, 0, 0.0]}
    for _ in range(rounds):
        for on in (False, True):
            cpu0 = server.cpu()
            wire, events = await read(server.url, stored, readers, on)
            add(totals[on], wire, events, server.cpu() - cpu0)
    print(f"{names[1]} replay: {tokens} stored tokens, {readers} readers x {rounds} rounds, "
          f"load {load():.2f}")
    report(totals, names)
    for count, delay, what in ((tokens // 10, 2, "one event a batch"),
                               (tokens, 0, "readers attached while it streams: "
                                           "many events a batch")):
        live: dict[bool, list[float]] = {False: [0, 0, 0.0], True: [0, 0, 0.0]}
        for _ in range(rounds):
            for on in (False, True):
                run = start_run(server.url, {"text": "live", "tokens": count,
                                             "delay_ms": delay})
                cpu0 = server.cpu()
                wire, events = await read(server.url, run["run_id"], readers, on)
                add(live[on], wire, events, server.cpu() - cpu0)
        print(f"{names[1]} live ({what}): {count} tokens at {delay} ms, {readers} readers x "
              f"{rounds} rounds, load {load():.2f}")
        report(live, names)


def add(t: list[float], wire: int, events: int, cpu: float) -> None:
    t[0] += wire
    t[1] += events
    t[2] += cpu


def report(totals: dict[bool, list[float]], names: tuple[str, str]) -> None:
    for on in (False, True):
        wire, events, cpu = totals[on]
        print(f"  {names[on]:8}: {wire / events:7.1f} bytes/event on the wire, "
              f"{cpu / events * 1e6:6.2f} us server CPU/event ({events:,.0f} events)")
    c, p = totals[True], totals[False]
    print(f"  {names[1]}/{names[0]}: bytes {c[0] / c[1] / (p[0] / p[1]):.2f}x, "
          f"CPU {c[2] / c[1] / (p[2] / p[1]):.2f}x")


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--readers", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--transport", choices=["sse", "ws", "both"], default="both")
    a = p.parse_args()
    started = time.monotonic()
    chosen = ["sse", "ws"] if a.transport == "both" else [a.transport]
    asyncio.run(main(a.tokens, a.readers, a.rounds, chosen))
    print(f"  ({time.monotonic() - started:.0f} s)")
