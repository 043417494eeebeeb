"""Where an idle SSE connection's memory goes: tracemalloc, by allocating line.

Why: bench P3 gives RSS per idle connection (one number); this says which lines hold it. The
server runs in this process (``create_app``, the product's own app) with tracemalloc on; the
clients run in a child process (raw sockets, so their allocations are not counted), each
opening ``GET /v1/conversations/{cid}/events`` at the conversation's tail and then only
reading heartbeats. A snapshot is taken before the connections open and once they are all
open and idle; the difference, per connection, is printed by line (top ``--top``).

    python scripts/probe_idle_memory.py [--connections 2000] [--top 25]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import socket
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from app.config import load_settings
from app.logging import configure
from app.server import create_app
from scripts.loadlib_servers import setup_conversation


def hold(port: int, path: str, n: int, ready: multiprocessing.Event,  # type: ignore[type-arg]
         stop: multiprocessing.Event) -> None:  # type: ignore[type-arg]
    """The child: open ``n`` streams, read their headers, then hold them until told."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.setblocking(False)
    ready.set()
    while not stop.wait(0.5):
        for s in socks:
            try:
                while s.recv(65536):
                    pass
            except BlockingIOError:
                pass
    for s in socks:
        s.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(["--db", str(Path(tmp) / "probe.db"), "--heartbeat", "1",
                                  "--log-level", "warning"], environ={})
        configure("json", "warning")
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        tail = await asyncio.get_running_loop().run_in_executor(
            None, setup_conversation, base, "c_probe")
        path = f"/v1/conversations/c_probe/events?last_event_id={tail}"
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        # Warm every lazy path with a few connections first, so they are not counted.
        warm = ctx.Process(target=hold, args=(port, path, 20, ready, stop))
        warm.start()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60)
        stop.set()
        warm.join()
        await asyncio.sleep(1.0)
        ready.clear()
        stop.clear()
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        child = ctx.Process(target=hold, args=(port, path, args.connections, ready, stop))
        child.start()
        started = time.monotonic()
        while not ready.is_set():
            assert time.monotonic() - started < 120, "the connections did not open"
            await asyncio.sleep(0.2)
        await asyncio.sleep(3.0)  # a few heartbeats
        gc.collect()
        after = tracemalloc.take_snapshot()
        stats = after.compare_to(before, "lineno")
        n = args.connections
        total = sum(s.size_diff for s in stats)
        print(f"{n} idle SSE connections: {total / n / 1024:.2f} KiB per connection "
              "(Python heap, tracemalloc; RSS adds the allocator's and the kernel's share)")
        for s in stats[: args.top]:
            frame = s.traceback[0]
            print(f"{s.size_diff / n:8.0f} B {s.count_diff / n:6.2f} blocks  "
                  f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}")
        stop.set()
        child.join(30)
        await runner.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--top", type=int, default=25)
    asyncio.run(main(p.parse_args()))
