"""What one idle SSE stream costs the server, by allocation site (issue 13, P3).

Starts the real server (``python -m app``, fresh SQLite file) in a child process, creates a
conversation, opens N idle ``GET /v1/conversations/{cid}/events`` streams with
``Last-Event-ID`` at the tail from real clients over loopback (plain asyncio sockets in this
process), and reports:

- RSS per connection (the server's ``/proc`` RSS before and after, divided by N), from a
  run *without* tracemalloc (tracemalloc's own bookkeeping inflates RSS);
- with ``--trace`` (default on), a second run under ``tracemalloc`` (the server child is
  started through this script's ``--serve`` mode, which starts tracemalloc, then runs
  ``app.__main__``, and dumps a snapshot on SIGUSR1): the snapshot diff after/before the N
  streams, bytes per connection grouped by allocation site (top 30 by ``--group`` =
  ``lineno`` or ``traceback``), the live objects per connection by type (``gc``; coroutines,
  tasks and bound methods by name: the suspended stack of an idle stream), and what one
  open request keeps in aiohttp's per-request cache;
- with ``--save``/``--against``, the difference by site from another traced run: the
  minimal aiohttp handler's (``--baseline``), or the code's before a change.

Run it from the repository root with the project's venv::

    python scripts/probe_idle_memory.py                 # 2,000 streams, heartbeat 1 s
    python scripts/probe_idle_memory.py -n 5000 --group traceback --frames 8
    python scripts/probe_idle_memory.py --no-trace -n 10000    # RSS only, as bench P3
    python scripts/probe_idle_memory.py --server-flags "--heartbeat 15"
    python scripts/probe_idle_memory.py --baseline --save /tmp/base.json
    python scripts/probe_idle_memory.py --against /tmp/base.json   # what we hold beyond it

The minimal aiohttp handler of ``scripts/baseline_server.py`` (``GET /idle``) can be probed
the same way with ``--baseline``: what the product holds beyond it is the part to cut.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadlib_env import HOST, ROOT, free_port, proc_rss, raise_nofile
from loadlib_servers import setup_conversation

SNAPSHOT_SIGNAL = signal.SIGUSR1


# ---- the server child (``--serve``) ---------------------------------------------------------


def serve(frames: int, out: str, argv: list[str], baseline: bool) -> int:
    """Run the server under tracemalloc; on SIGUSR1 collect garbage and dump a snapshot to
    ``out`` + ``.N`` (N counts up) and the live objects by type to ``out`` + ``.N.types``."""
    tracemalloc.start(frames)
    dumps = [0]

    def dump(*_: object) -> None:
        gc.collect()
        n = dumps[0] = dumps[0] + 1
        tracemalloc.take_snapshot().dump(f"{out}.{n}")
        counts = Counter(_kind(o) for o in gc.get_objects())
        Path(f"{out}.{n}.types").write_text(
            "\n".join(f"{name}\t{c}" for name, c in counts.items()))
        Path(f"{out}.{n}.request").write_text(_one_request())
        Path(f"{out}.{n}.ok").write_text("ok")

    signal.signal(SNAPSHOT_SIGNAL, dump)
    if baseline:
        sys.argv = ["baseline_server.py", *argv]
        import runpy
        runpy.run_path(str(ROOT / "scripts" / "baseline_server.py"), run_name="__main__")
        return 0
    from app.__main__ import main
    return main(argv)


def _one_request() -> str:
    """What one open request keeps cached (aiohttp's ``reify`` values) and in its state."""
    from aiohttp import web
    for obj in gc.get_objects():
        if isinstance(obj, web.Request) and obj.path.endswith("/events"):
            cache = getattr(obj, "_cache", {})
            return (f"request _cache ({sys.getsizeof(cache)} B): {sorted(cache)}\n"
                    f"request state: {sorted(map(str, obj))}\n")
    return "no open request found\n"


def _kind(obj: object) -> str:
    """A type name; coroutines, tasks and futures also say whose they are."""
    name = type(obj).__qualname__
    if isinstance(obj, types.CoroutineType):
        return f"{name} {obj.__qualname__}"
    if isinstance(obj, asyncio.Task):
        return f"{name} {obj.get_coro().__qualname__}"  # type: ignore[union-attr]
    if isinstance(obj, (types.MethodType, functools.partial)):
        inner = obj.__func__ if isinstance(obj, types.MethodType) else obj.func
        return f"{name} {getattr(inner, '__qualname__', '?')}"
    return name


# ---- the parent: server, clients, report ----------------------------------------------------


class Server:
    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with log.open("ab") as f:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=f)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import urllib.request
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/healthz",
                                                                      timeout=1):
                return
            time.sleep(0.1)
        raise RuntimeError("server not ready")

    def rss(self) -> int:
        return proc_rss(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


async def open_streams(port: int, request: bytes, n: int, concurrency: int = 64
                       ) -> list[asyncio.StreamWriter]:
    """``n`` idle streams: send the request, read up to the end of the headers and the
    first ``retry:`` frame, then hold the socket (reading nothing more: the pings sit in
    the kernel's buffers, far below the server's high-water mark for a probe's minutes)."""
    sem = asyncio.Semaphore(concurrency)
    held: list[asyncio.StreamWriter] = []

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 30)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"stream refused: {head[:200]!r}")
            await asyncio.wait_for(reader.readuntil(b"\n\r\n"), 30)  # the retry chunk
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    return held


def close_streams(held: list[asyncio.StreamWriter]) -> None:
    for w in held:
        w.transport.abort()


def snapshot(dump_base: str, server: Server, n: int) -> tracemalloc.Snapshot:
    server.proc.send_signal(SNAPSHOT_SIGNAL)
    ok = Path(f"{dump_base}.{n}.ok")
    deadline = time.monotonic() + 120
    while not ok.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no snapshot from the server")
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(f"{dump_base}.{n}")


def read_types(path: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in Path(path).read_text().splitlines():
        name, _, c = line.rpartition("\t")
        out[name] = int(c)
    return out


def report_trace(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int,
                 args: argparse.Namespace, types0: Counter[str], types1: Counter[str]) -> None:
    group, top = args.group, args.top
    noise = (tracemalloc.Filter(False, tracemalloc.__file__),
             tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"))
    diff = after.filter_traces(noise).compare_to(before.filter_traces(noise), group)
    total = sum(d.size_diff for d in diff)
    print(f"\ntracemalloc: {total / n:,.0f} B per connection in all "
          f"({total / 1024 / 1024:.1f} MiB for {n:,}); top {top} sites by {group}:")
    print(f"{'B/conn':>8} {'blocks/conn':>11}  site (oldest frame first)")
    sites: dict[str, float] = {}
    for d in diff:
        frames = d.traceback if group == "traceback" else d.traceback[:1]
        where = " -> ".join(f"{_short(f.filename)}:{f.lineno}" for f in frames)
        sites[where] = sites.get(where, 0.0) + d.size_diff / n
    for d in diff[:top]:
        frames = d.traceback if group == "traceback" else d.traceback[:1]
        where = " -> ".join(f"{_short(f.filename)}:{f.lineno}" for f in frames)
        print(f"{d.size_diff / n:8.0f} {d.count_diff / n:11.2f}  {where}")
    if args.save:
        Path(args.save).write_text(json.dumps(sites, indent=0))
    if args.against:
        other: dict[str, float] = json.loads(Path(args.against).read_text())
        keys = set(sites) | set(other)
        delta = sorted(((sites.get(k, 0.0) - other.get(k, 0.0), k) for k in keys),
                       key=lambda dk: -abs(dk[0]))
        print(f"\nagainst {args.against}: {sum(sites.values()) - sum(other.values()):+,.0f} "
              f"B per connection; top {top} differences:")
        for d, k in delta[:top]:
            print(f"{d:+8.0f}  {k}")
    print("\nlive objects per connection by type (gc-tracked only; >= 0.5 per connection):")
    for name, c in sorted(((k, types1[k] - types0.get(k, 0)) for k in types1),
                          key=lambda kv: -kv[1]):
        if c / n >= 0.5:
            print(f"{c / n:8.2f}  {name}")


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/wt-idle/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def run_once(args: argparse.Namespace, trace: bool, workdir: Path) -> None:
    port = free_port()
    dump_base = str(workdir / f"snap-{port}")
    if args.baseline:
        server_argv = ["--port", str(port), "--heartbeat", str(args.heartbeat)]
    else:
        server_argv = ["--port", str(port), "--db", str(workdir / f"probe-{port}.db"),
                       "--log-level", "warning", "--heartbeat", str(args.heartbeat),
                       *args.server_flags.split()]
    if trace:
        argv = [sys.executable, __file__, "--serve", "--frames", str(args.frames),
                "--dump", dump_base, *(["--baseline"] if args.baseline else []),
                "--", *server_argv]
    elif args.baseline:
        argv = [sys.executable, str(ROOT / "scripts" / "baseline_server.py"), *server_argv]
    else:
        argv = [sys.executable, "-m", "app", *server_argv]
    server = Server(argv, port, workdir / f"server-{port}.log")
    try:
        if args.baseline:
            path, last = "/idle", ""
        else:
            cid = "c_probe"
            after = setup_conversation(server.url, cid)
            path, last = f"/v1/conversations/{cid}/events", f"Last-Event-ID: {after}\r\n"
        request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                   f"Accept: text/event-stream\r\n{last}\r\n").encode()
        snaps = asyncio.run(_measure(args, server, request, trace, dump_base))
    finally:
        server.stop()
    if snaps is not None:
        before, after, n = snaps
        print(Path(f"{dump_base}.2.request").read_text(), end="")
        report_trace(before, after, n, args,
                     read_types(f"{dump_base}.1.types"), read_types(f"{dump_base}.2.types"))


async def _measure(args: argparse.Namespace, server: Server, request: bytes, trace: bool,
                   dump_base: str) -> tuple[tracemalloc.Snapshot, tracemalloc.Snapshot, int] | None:
    """Open the streams, print RSS per connection; under ``trace`` the snapshots before
    and after them (and how many were open)."""
    warm = await open_streams(server.port, request, 20)  # every lazy code path once
    await asyncio.sleep(0.5)
    close_streams(warm)
    await asyncio.sleep(1.0)
    snaps = 0
    if trace:
        snaps += 1
        before = await asyncio.to_thread(snapshot, dump_base, server, snaps)
    rss0 = server.rss()
    held = await open_streams(server.port, request, args.n)
    await asyncio.sleep(args.settle)  # a few heartbeats: the steady state, not the opening
    rss1 = server.rss()
    kind = "baseline /idle" if args.baseline else "agentstream"
    label = "(under tracemalloc: inflated)" if trace else ""
    print(f"{kind}: {len(held):,} idle streams, RSS {(rss1 - rss0) / len(held) / 1024:.2f} "
          f"KiB per connection {label}")
    out = None
    if trace:
        snaps += 1
        after = await asyncio.to_thread(snapshot, dump_base, server, snaps)
        out = before, after, len(held)
    close_streams(held)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="idle streams (default 2000)")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between opening the streams and measuring")
    parser.add_argument("--trace", action=argparse.BooleanOptionalAction, default=True,
                        help="also a tracemalloc run (default on)")
    parser.add_argument("--group", choices=("lineno", "traceback", "filename"),
                        default="lineno")
    parser.add_argument("--frames", type=int, default=1, help="traceback depth to record")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--server-flags", default="", help="extra flags for python -m app")
    parser.add_argument("--baseline", action="store_true",
                        help="probe baseline_server.py's minimal /idle handler instead")
    parser.add_argument("--save", help="write the traced bytes per connection by site "
                        "(JSON), for a later --against")
    parser.add_argument("--against", help="a --save file (e.g. of --baseline, or of the "
                        "code before a change): print the differences by site")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.frames, args.dump, args.rest, args.baseline)
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="probe-idle-") as tmp:
        run_once(args, False, Path(tmp))
        if args.trace:
            run_once(args, True, Path(tmp))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
