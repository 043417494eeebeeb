"""One load-client connection (SSE or WebSocket) over a raw asyncio protocol: it counts events
by scanning bytes (SSE ``\\n\\n`` frames, WebSocket frame headers) instead of parsing JSON, finds
``ts`` for latency with one regex pass per read, and checks each stream against its run's
``done.data.events``. Cheap on purpose: the clients share the server's 2 cores.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loadlib_env import Transport

if TYPE_CHECKING:
    from loadlib_pool import _Worker


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
