"""HTTP/1.1 over a raw socket, for tests that need byte-level control: bodies split across
TCP segments, non-UTF-8 header bytes, chunked bodies, HEAD with keep-alive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import LiveServer


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = b""
    # bytes that followed the response on the same connection (must be none after HEAD)
    extra: bytes = b""
    header_list: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            body = self.json()
        except ValueError:
            return None
        return body.get("error", {}).get("code") if isinstance(body, dict) else None


def build(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str | bytes]] = (),
    *,
    close: bool = True,
) -> bytes:
    """A request's bytes; Content-Length is added for a body unless a header frames it."""
    names = {k.lower() for k, _ in headers}
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    for name, value in headers:
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes)
                                             else value.encode()))
    if body is not None and not names & {"content-length", "transfer-encoding"}:
        lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    pairs = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            pairs.append((name.strip(), value.strip()))
    return status, pairs, head


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str],
                     method: str) -> bytes:
    if method == "HEAD":
        return b""
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return await reader.read()


class RawConnection:
    """One TCP connection to the server; writes go out as separate segments (NODELAY)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: LiveServer) -> RawConnection:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, method: str = "GET") -> RawResponse:
        status, pairs, head = await _read_head(self.reader)
        headers = {k.lower(): v for k, v in pairs}
        body = await _read_body(self.reader, headers, method)
        return RawResponse(status, headers, body, head, header_list=pairs)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def request(server: LiveServer, data: bytes | Iterable[bytes], method: str = "GET",
                  within: float = 10.0, gap: float = 0.0) -> RawResponse:
    """Send ``data`` (several writes if a sequence, ``gap`` seconds apart so that the server
    sees them as separate reads), read one response. A hang fails."""
    conn = await RawConnection.open(server)
    try:
        async with asyncio.timeout(within):
            for i, part in enumerate([data] if isinstance(data, bytes) else data):
                if i and gap:
                    await asyncio.sleep(gap)
                await conn.send(part)
            return await conn.response(method)
    finally:
        await conn.close()
