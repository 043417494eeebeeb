"""Shared machinery of ``loadtest.py`` and ``bench.py``: servers under test, /proc sampling,
and load clients that are cheap enough not to be the bottleneck.

Why it looks like this: the machine has 2 cores shared by the server and its clients, so the
clients run in worker processes (multiprocessing, spawn), speak HTTP/1.1 and WebSocket over
raw asyncio protocols, and count events by scanning bytes (SSE: ``b"\\n\\n"``; WebSocket: frame
headers) instead of parsing JSON. Latency is ``receive time - envelope ts`` (both the same
machine's clock), found by one regex pass over each read. Servers run as subprocesses and
are sampled through ``/proc/<pid>``; every one is stopped in a ``finally``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
HOST = "127.0.0.1"
Transport = Literal["sse", "ws"]

# Demo input for a run that only creates its conversation (a subscriber needs one to exist).
SETUP_INPUT: dict[str, Any] = {
    "text": "setup", "tokens": 0, "delay_ms": 0, "reasoning": False, "tool_call": False,
}


# ---- environment ----------------------------------------------------------------------------


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the servers and workers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def raise_nofile(want: int = 65_536) -> int:
    """Raise the soft fd limit toward the hard one; children (server, workers) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def machine() -> str:
    """One line describing the box, for the output: results only mean something beside it."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024 // 1024
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}"
    )


# ---- /proc ----------------------------------------------------------------------------------


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of CPU the whole machine used over ``seconds`` (/proc/stat):
    taken before a run, it says whether other work on the box will skew the figures."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields) - idle, sum(fields)

    (b0, t0), _ = sample(), time.sleep(seconds)
    b1, t1 = sample()
    return (os.cpu_count() or 1) * (b1 - b0) / max(1, t1 - t0)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    """Resident set size in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of the process (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def kernel_mem() -> int:
    """Kernel memory that grows with sockets: slab (sock, file, inode...) plus TCP buffer
    pages (``/proc/meminfo`` Slab + ``/proc/net/sockstat`` TCP mem). Not part of any RSS."""
    total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Slab:"):
                total += int(line.split()[1]) * 1024
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                parts = line.split()
                total += int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    return total


# ---- servers under test ---------------------------------------------------------------------


class ServerProc:
    """A server in its own process; ``stop`` sends TERM, then KILL, and is always called."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServerProc:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def rss(self) -> int:
        return proc_rss(self.pid)

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> ServerProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def product_server(workdir: Path, *flags: str, name: str = "agentstream") -> ServerProc:
    """``python -m app`` on a free port with a fresh SQLite file in ``workdir``."""
    port = free_port()
    db = workdir / f"{name}-{port}.db"
    argv = [sys.executable, "-m", "app", "--port", str(port), "--db", str(db),
            "--log-level", "warning", *flags]
    return ServerProc(name, argv, port, workdir / f"{name}-{port}.log")


def baseline_server(workdir: Path, *flags: str, name: str = "baseline") -> ServerProc:
    port = free_port()
    argv = [sys.executable, str(SCRIPTS / "baseline_server.py"), "--port", str(port), *flags]
    return ServerProc(name, argv, port, workdir / f"{name}-{port}.log")


def temp_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="agentstream-bench-")


# ---- control-plane HTTP (parent process; a handful of requests) ----------------------------


def http_json(
    method: str, url: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """A small JSON request with urllib; returns (status, parsed body or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = int(exc.code)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def start_run(base: str, input: dict[str, Any], conversation_id: str | None = None) -> Any:
    body: dict[str, Any] = {"agent": "demo", "input": input}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    status, doc = http_json("POST", base + "/v1/runs", body)
    if status != 202:
        raise RuntimeError(f"POST /v1/runs -> {status} {doc}")
    return doc


def wait_run(base: str, run_id: str, timeout: float = 120.0) -> Any:
    """Poll until the run has ended; returns its info (``done_seq``, ``events``...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, doc = http_json("GET", f"{base}/v1/runs/{run_id}")
        if status == 200 and doc.get("done_seq") is not None:
            return doc
        time.sleep(0.02)
    raise TimeoutError(f"run {run_id} did not end in {timeout}s")


def setup_conversation(base: str, conversation_id: str) -> int:
    """Create the conversation with an empty run; returns its last seq (the ``after``)."""
    run = start_run(base, SETUP_INPUT, conversation_id)
    return int(wait_run(base, run["run_id"])["done_seq"])


def ws_available(base: str) -> bool:
    """False when the server answers 404 on /v1/ws (the endpoint has not landed yet)."""
    req = urllib.request.Request(base + "/v1/ws")
    try:
        with urllib.request.urlopen(req, timeout=5):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code != 404
    except OSError:
        return False


WS_SKIP = "skipped: the server answers 404 on GET /v1/ws (WebSocket endpoint not there yet)"


def scrape_metrics(base: str) -> dict[str, float]:
    """Sum each Prometheus sample name over its labels (enough for a report line)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError, urllib.error.URLError):
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            key = name.split("{", 1)[0]
            with contextlib.suppress(ValueError):
                out[key] = out.get(key, 0.0) + float(value)
    return out


# ---- statistics -----------------------------------------------------------------------------


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of a histogram of integer milliseconds."""
    total = sum(hist.values())
    if not total:
        return None
    rank = q * (total - 1)
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen > rank:
            return float(value)
    return float(max(hist))


def merge_hist(into: dict[int, int], other: dict[int, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


# ---- load clients (run inside worker processes) --------------------------------------------


@dataclass
class Sub:
    """One client connection: an SSE request, or a WebSocket and its first message."""

    path: str
    method: str = "GET"
    body: bytes | None = None
    last_event_id: int | None = None
    # WebSocket only: the JSON text message sent right after the upgrade (subscribe/start).
    ws_message: dict[str, Any] | None = None


@dataclass
class ClientJob:
    host: str
    port: int
    transport: Transport
    subs: list[Sub]
    # Extract the envelope ts of every event for latency (else only count).
    latency: bool = False
    # Reconnect (Last-Event-ID / after) when a connection drops before its run's done.
    reconnect: bool = True
    max_reconnects: int = 20
    # Idle mode: connections never "finish"; the worker holds them until told to stop.
    idle: bool = False
    connect_concurrency: int = 64
    # Each stream holds exactly one whole run: check its count against done.data.events.
    check_complete: bool = True
    progress_interval: float = 0.0
    timeout: float = 120.0


# Patterns found by scanning bytes (see the module docstring for why not JSON).
_TS_RE = re.compile(rb'"ts":(\d+)[,}]')
_MERGED_RE = re.compile(rb'"merged":(\d+)')
_RUN_RE = re.compile(rb'"run_id":"([A-Za-z0-9_-]+)"')
_DONE_EVENTS_RE = re.compile(rb'"type":"done","data":\{"status":"\w+","events":(\d+)')
_SEQ_TAIL = b',"seq":'
SSE_DONE = b"\nevent: done\n"
WS_EVENT = b'{"type":"event","event":'
WS_DONE = b'{"type":"event","event":{"type":"done"'


def _ws_client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 5.3): clients must mask, servers must not."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return head + key
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + masked


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 SSE or WebSocket client connection that counts what it receives."""

    def __init__(self, worker: _Worker, sub: Sub, result: ConnResult) -> None:
        self.w = worker
        self.sub = sub
        self.result = result
        # A stream that starts right before its run (the subscriber's ``after`` is the
        # previous run's done, or it started the run) must carry exactly the run's events.
        self.expect_whole_run = worker.job.check_complete
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.status: int | None = None
        self.rest = b""
        self.ws_key = base64.b64encode(os.urandom(16))
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished = False
        self.tail: tuple[bytes, int] | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request())

    def data_received(self, data: bytes) -> None:
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            line = self.head[: self.head.find(b"\r\n")].split()
            self.status = int(line[1]) if len(line) > 1 and line[1].isdigit() else 0
            data, self.head = self.head[end + 4:], b""
            self._on_status()
            if not data or self.finished:
                return
        if self.w.job.transport == "sse":
            self._sse(data)
        else:
            self._ws(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(self.status or 0)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- request and status --

    def _request(self) -> bytes:
        sub = self.sub
        host = f"{self.w.job.host}:{self.w.job.port}"
        lines = [f"{sub.method} {sub.path} HTTP/1.1", f"Host: {host}"]
        if self.w.job.transport == "ws":
            lines += ["Upgrade: websocket", "Connection: Upgrade",
                      f"Sec-WebSocket-Key: {self.ws_key.decode()}", "Sec-WebSocket-Version: 13"]
        else:
            lines += ["Accept: text/event-stream", "Cache-Control: no-cache"]
            if sub.last_event_id is not None:
                lines.append(f"Last-Event-ID: {sub.last_event_id}")
        if sub.body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(sub.body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + (sub.body or b"")

    def _on_status(self) -> None:
        w = self.w
        ok = 101 if w.job.transport == "ws" else 200
        if self.status == ok:
            if w.job.transport == "ws" and self.sub.ws_message is not None:
                self._send_ws(json.dumps(self.sub.ws_message).encode())
            if not self.ready.done():
                self.ready.set_result(ok)
            return
        if self.status == 204:
            # The run's done was already delivered (SSE resume after done): finished.
            self._finish()
        else:
            w.error(f"HTTP {self.status} on {self.sub.method} {self.sub.path}")
        if not self.ready.done():
            self.ready.set_result(self.status or 0)
        self.close()

    def _send_ws(self, payload: bytes, opcode: int = 1) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_ws_client_frame(payload, opcode))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.result.finished = time.monotonic()
            self.w.on_finished()

    # -- body scanning --

    def _sse(self, data: bytes) -> None:
        buf = self.rest + data if self.rest else data
        if buf.endswith(b"0\r\n\r\n") and buf.endswith(b"\r\n0\r\n\r\n"):
            # The last chunk: the server ended the response (e.g. max lifetime) but keeps
            # the connection alive; close it so the stream reconnects now.
            self.close()
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.rest = buf
            return
        cut += 2
        # Keep the blank line's last "\n" with the rest: the next frame's "id:" line must
        # still follow a newline when a read ends right between two frames.
        self.rest = buf[cut - 1:]
        # Complete frames only (up to the last blank line); each event frame has one
        # "id:" line, after a newline (of the previous frame or of the chunk framing).
        events = buf.count(b"\nid: ", 0, cut)
        if buf.find(b'"merged":', 0, cut) >= 0:
            events += sum(int(m) - 1 for m in _MERGED_RE.findall(buf, 0, cut))
        self._account(buf, cut, events, buf.find(SSE_DONE, 0, cut) >= 0)

    def _ws(self, data: bytes) -> None:
        buf = self.rest + data if self.rest else data
        n = len(buf)
        pos = 0
        other: list[bytes] = []
        while n - pos >= 2:
            ln = buf[pos + 1] & 0x7F
            if ln < 126:
                hdr = 2
            elif ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            else:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2: pos + 10], "big")
                hdr = 10
            end = pos + hdr + ln
            if end > n:
                break
            op = buf[pos] & 0x0F
            if op != 1 or not buf.startswith(WS_EVENT, pos + hdr):
                other.append(bytes([op]) + buf[pos + hdr: end])
            pos = end
        self.rest = buf[pos:]
        if not pos:
            return
        events = buf.count(WS_EVENT, 0, pos)
        if buf.find(b'"merged":', 0, pos) >= 0:
            events += sum(int(m) - 1 for m in _MERGED_RE.findall(buf, 0, pos))
        for frame in other:
            self._ws_control(frame[0], frame[1:])
        self._account(buf, pos, events, buf.find(WS_DONE, 0, pos) >= 0)

    def _ws_control(self, op: int, payload: bytes) -> None:
        if op == 9:
            self._send_ws(payload, 0xA)  # pong
        elif op == 8:
            self.close()
        elif op == 1 and payload.startswith(b'{"type":"error"'):
            self.w.error(payload[:200].decode(errors="replace"))

    def last_id(self) -> int | None:
        """The last event seq received (parsed only when a reconnect needs it)."""
        if self.tail is None:
            return None
        buf, end = self.tail
        if self.w.job.transport == "sse":
            i = buf.rfind(b"\nid: ", 0, end)
            return int(buf[i + 5: buf.find(b"\n", i + 5)]) if i >= 0 else None
        i = buf.rfind(_SEQ_TAIL, 0, end)
        if i < 0:
            return None
        j = k = i + len(_SEQ_TAIL)
        while buf[k:k + 1].isdigit():
            k += 1
        return int(buf[j:k])

    def _account(self, buf: bytes, end: int, events: int, done: bool) -> None:
        w = self.w
        now = time.monotonic()
        if events > 0:
            self.tail = (buf, end)
            if w.first_event is None:
                w.first_event = now
            w.events += events
            w.last_event = now
            self.result.events += events
        if w.job.latency:
            now_ms = time.time() * 1000.0
            hist = w.hist
            for ts in _TS_RE.findall(buf, 0, end):
                ms = int(now_ms - int(ts))
                hist[ms] = hist.get(ms, 0) + 1
        if w.run_ids is not None and self.sub.method == "POST" and id(self) not in w.run_ids:
            m = _RUN_RE.search(buf, 0, end)
            if m:
                w.run_ids[id(self)] = m.group(1).decode()
        if done:
            # done.data.events counts the run's events: a lossless stream got exactly that.
            m = _DONE_EVENTS_RE.search(buf, 0, end)
            if m and int(m.group(1)) != self.result.events and self.expect_whole_run:
                w.error(f"incomplete stream: {self.result.events} of {int(m.group(1))} events "
                        f"on {self.sub.path}")
            self._finish()
            self.close()


@dataclass
class ConnResult:
    """One subscriber across its reconnects: timing, and events got vs the run's own count."""

    started: float
    finished: float | None
    reconnects: int
    events: int = 0


class _Worker:
    """All the connections of one worker process, plus the counters it reports."""

    def __init__(self, wid: int, job: ClientJob, out: Any, stop: Any) -> None:
        self.wid = wid
        self.job = job
        self.out = out
        self.stop = stop
        self.events = 0
        self.reported_events = 0
        self.hist: dict[int, int] = {}
        self.reported_hist: dict[int, int] = {}
        self.errors = 0
        self.error_samples: list[str] = []
        self.reconnects = 0
        self.first_event: float | None = None
        self.last_event: float | None = None
        self.finished = 0
        self.all_done = asyncio.Event()
        self.results: list[ConnResult] = []
        self.run_ids: dict[int, str] | None = {}
        self.conns: list[_Conn] = []
        self.cpu_at_ready = time.process_time()

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)

    def on_finished(self) -> None:
        """A connection got its run's done, or gave up: one fewer to wait for."""
        self.finished += 1
        if self.finished >= len(self.job.subs) and not self.job.idle:
            self.all_done.set()

    async def _open(self, sub: Sub, result: ConnResult) -> _Conn | None:
        loop = asyncio.get_running_loop()
        for attempt in range(5):
            try:
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, sub, result), self.job.host, self.job.port
                )
                self.conns.append(conn)
                async with asyncio.timeout(30):
                    await conn.ready
                return conn
            except (OSError, TimeoutError) as exc:
                if attempt == 4:
                    self.error(f"connect: {exc!r}")
                await asyncio.sleep(0.2 * (attempt + 1))
        return None

    async def _hold(self, sub: Sub, sem: asyncio.Semaphore, ready: list[int]) -> None:
        """Open, then keep reconnecting until the run's done arrives (or we are stopped)."""
        result = ConnResult(0.0, None, 0)
        self.results.append(result)
        async with sem:
            result.started = time.monotonic()
            conn = await self._open(sub, result)
        ready.append(1 if conn is not None and conn.status in (101, 200, 204) else 0)
        while conn is not None:
            await conn.closed
            if conn.finished:
                return
            if self.job.idle or self.stop_requested:
                return
            if not self.job.reconnect or result.reconnects >= self.job.max_reconnects:
                self.error(f"connection closed before done: {sub.path}")
                return
            result.reconnects += 1
            self.reconnects += 1
            last = conn.last_id()
            if last is not None:
                sub.last_event_id = last
            run_id = (self.run_ids or {}).get(id(conn))
            sub = self._resume_sub(sub, run_id)
            await asyncio.sleep(0.05)
            conn = await self._open(sub, result)
        self.on_finished()

    def _resume_sub(self, sub: Sub, run_id: str | None) -> Sub:
        """The same stream from the last id seen (a POST start resumes on its run's URL)."""
        if sub.method == "POST" and run_id is not None:
            if self.job.transport == "ws":
                msg = {"type": "subscribe", "run_id": run_id, "after": sub.last_event_id or 0}
                return Sub(sub.path, "GET", None, sub.last_event_id, msg)
            return Sub(f"/v1/runs/{run_id}/events", "GET", None, sub.last_event_id)
        if self.job.transport == "ws" and sub.ws_message is not None:
            msg = dict(sub.ws_message)
            if msg.get("type") == "subscribe" and sub.last_event_id is not None:
                msg["after"] = sub.last_event_id
            return replace(sub, ws_message=msg)
        return replace(sub)

    @property
    def stop_requested(self) -> bool:
        return bool(self.stop.is_set())

    def _progress(self) -> dict[str, Any]:
        delta = {k: v - self.reported_hist.get(k, 0) for k, v in self.hist.items()
                 if v != self.reported_hist.get(k, 0)}
        self.reported_hist = dict(self.hist)
        msg = {
            "t": time.monotonic(), "events": self.events - self.reported_events,
            "hist": delta, "finished": self.finished, "errors": self.errors,
            "reconnects": self.reconnects,
        }
        self.reported_events = self.events
        return msg

    async def main(self) -> None:
        job = self.job
        sem = asyncio.Semaphore(job.connect_concurrency)
        ready: list[int] = []
        holders = [asyncio.create_task(self._hold(s, sem, ready)) for s in job.subs]
        deadline = time.monotonic() + job.timeout
        try:
            while len(ready) < len(job.subs) and time.monotonic() < deadline:
                if self.stop_requested:
                    return
                await asyncio.sleep(0.02)
            self.out.put(("ready", self.wid, {"ok": sum(ready), "errors": self.errors,
                                             "error_samples": self.error_samples}))
            self.cpu_at_ready = time.process_time()
            next_progress = time.monotonic() + job.progress_interval
            while not self.stop_requested and time.monotonic() < deadline:
                if self.all_done.is_set() or (holders and all(h.done() for h in holders)
                                              and not job.idle):
                    break
                await asyncio.sleep(0.02)
                if job.progress_interval and time.monotonic() >= next_progress:
                    next_progress += job.progress_interval
                    self.out.put(("progress", self.wid, self._progress()))
            if not self.all_done.is_set() and not job.idle and not self.stop_requested:
                self.error(f"timeout: {len(job.subs) - self.finished} connections unfinished")
        finally:
            for h in holders:
                h.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            for conn in self.conns:
                conn.close()
            await asyncio.sleep(0.05)
            final = self._progress()
            final.update(
                total_events=self.events, first_event=self.first_event,
                last_event=self.last_event, hist_total=self.hist, error_samples=self.error_samples,
                results=[(r.started, r.finished, r.reconnects) for r in self.results],
                cpu=time.process_time() - self.cpu_at_ready,
            )
            self.out.put(("final", self.wid, final))


def _worker_entry(wid: int, job: ClientJob, out: Any, stop: Any) -> None:
    """Process entry point (module level so spawn can import it)."""
    async def run() -> None:
        await _Worker(wid, job, out, stop).main()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@dataclass
class PoolResult:
    events: int = 0
    errors: int = 0
    reconnects: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    first_event: float | None = None
    last_event: float | None = None
    results: list[tuple[float, float | None, int]] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    # CPU seconds the client workers spent after their connections were open.
    client_cpu: float = 0.0

    @property
    def finished(self) -> int:
        return sum(1 for r in self.results if r[1] is not None)


class ClientPool:
    """Worker processes holding the client connections; subs are dealt round-robin."""

    def __init__(self, job: ClientJob, procs: int = 2) -> None:
        self.ctx = mp.get_context("spawn")
        self.out: Any = self.ctx.Queue()
        self.stop_event: Any = self.ctx.Event()
        procs = max(1, min(procs, len(job.subs) or 1))
        self.jobs = [replace(job, subs=job.subs[i::procs]) for i in range(procs)]
        self.procs: list[Any] = []
        self.ready: dict[int, dict[str, Any]] = {}
        self.finals: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> ClientPool:
        for wid, job in enumerate(self.jobs):
            p = self.ctx.Process(target=_worker_entry, args=(wid, job, self.out, self.stop_event),
                                 daemon=True)
            p.start()
            self.procs.append(p)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _poll(self, timeout: float, on_progress: Callable[[dict[str, Any]], None] | None) -> None:
        try:
            kind, wid, msg = self.out.get(timeout=timeout)
        except queue.Empty:
            return
        msg["wid"] = wid
        if kind == "ready":
            self.ready[wid] = msg
        elif kind == "final":
            self.finals[wid] = msg
            if on_progress is not None:
                on_progress(msg)
        elif kind == "progress" and on_progress is not None:
            on_progress(msg)

    def _check_alive(self, waiting: Iterable[int]) -> None:
        for wid in waiting:
            if not self.procs[wid].is_alive() and wid not in self.finals:
                raise RuntimeError(f"client worker {wid} died (exit {self.procs[wid].exitcode})")

    def wait_ready(self, timeout: float = 120.0) -> int:
        """Block until every worker has its connections open; returns how many are open."""
        deadline = time.monotonic() + timeout
        while len(self.ready) < len(self.procs):
            if time.monotonic() > deadline:
                raise TimeoutError("client workers not ready in time")
            self._poll(0.1, None)
            self._check_alive(w for w in range(len(self.procs)) if w not in self.ready)
        return sum(int(m["ok"]) for m in self.ready.values())

    def wait_final(
        self,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> PoolResult:
        """Block until every worker reported its final numbers (they stop by themselves)."""
        deadline = time.monotonic() + timeout
        while len(self.finals) < len(self.procs):
            if time.monotonic() > deadline:
                self.stop_event.set()
                deadline = time.monotonic() + 30
                timeout = -1
            self._poll(0.1, on_progress)
            if tick is not None:
                tick()
            self._check_alive(w for w in range(len(self.procs)) if w not in self.finals)
        return self._merge()

    def stop(self, timeout: float = 60.0) -> PoolResult:
        """Tell the workers to stop (idle mode) and collect their numbers."""
        self.stop_event.set()
        return self.wait_final(timeout)

    def _merge(self) -> PoolResult:
        res = PoolResult()
        for msg in self.finals.values():
            res.events += int(msg["total_events"])
            res.errors += int(msg["errors"])
            res.reconnects += int(msg["reconnects"])
            merge_hist(res.hist, msg["hist_total"])
            res.results.extend(msg["results"])
            res.error_samples.extend(msg["error_samples"])
            res.client_cpu += float(msg["cpu"])
            for key, pick in (("first_event", min), ("last_event", max)):
                v = msg[key]
                if v is not None:
                    cur = getattr(res, key)
                    setattr(res, key, v if cur is None else pick(cur, v))
        return res

    def close(self) -> None:
        self.stop_event.set()
        for p in self.procs:
            p.join(timeout=10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        self.out.close()
        self.out.join_thread()


def summarize_hist(hist: dict[int, int]) -> dict[str, float | None]:
    return {
        "n": float(sum(hist.values())),
        "p50": percentile(hist, 0.50),
        "p95": percentile(hist, 0.95),
        "p99": percentile(hist, 0.99),
        "max": float(max(hist)) if hist else None,
    }
