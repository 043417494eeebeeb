"""HTTP plumbing shared by agents that call other servers: one lazily created session per
agent, retry delays, the rule for what may be retried, and bounded reads of error bodies.

A session is made on first use (inside the running loop, never at import or config time)
and closed by the agent's ``close()`` at shutdown. Its own total timeout is off: a stream may
last as long as the run, so callers put ``asyncio.timeout`` around each step instead.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgspec


class RequestProbe:
    """Passed as a request's ``trace_request_ctx``: ``sent`` turns true when the request
    starts to go out (its headers are written), i.e. the peer may have seen it."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


async def _on_headers_sent(_session: Any, ctx: SimpleNamespace, _params: Any) -> None:
    probe = getattr(ctx, "trace_request_ctx", None)
    if isinstance(probe, RequestProbe):
        probe.sent = True


def _probe_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    return trace


def safe_to_retry(exc: BaseException, probe: RequestProbe) -> bool:
    """Whether a failed request that is not idempotent (a POST that starts work) may be sent
    again: only when none of it went out, i.e. connecting failed (refused, DNS, TLS, connect
    timeout) or the deadline passed before a connection was made. Once the request was
    written, the peer may be working on it and a repeat could do the work twice; a response
    that started is never a reason to repeat either."""
    if probe.sent:
        return False
    return isinstance(exc, aiohttp.ClientConnectorError | TimeoutError)


class LazySession:
    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None, sock_connect=self.connect_timeout, sock_read=None
                ),
                trace_configs=[_probe_trace()],
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def backoff_delay(attempt: int, base: float, cap: float = 10.0) -> float:
    """Exponential delay before retry number ``attempt`` (0-based), with jitter so that many
    runs retrying at once spread out."""
    return min(cap, base * 2.0**attempt) * random.uniform(0.8, 1.2)


def backoff_delays(retries: int, base: float, cap: float = 10.0) -> Iterator[float]:
    for attempt in range(retries):
        yield backoff_delay(attempt, base, cap)


async def read_error_text(resp: aiohttp.ClientResponse, limit: int = 64 * 1024,
                          within: float = 5.0) -> str:
    """The human message of an error response: ``error.message`` of a JSON body (OpenAI and
    PROTOCOL.md both use that shape), else the start of the body text."""
    try:
        async with asyncio.timeout(within):
            raw = await resp.content.read(limit)
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            code = err.get("code")
            return f"{err['message']}" + (f" ({code})" if isinstance(code, str) else "")
        if isinstance(err, str):
            return err
    text = raw.decode("utf-8", errors="replace").strip()
    return text[:500] or resp.reason or "no body"
