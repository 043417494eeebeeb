"""HTTP plumbing shared by both transports: JSON calls, error bodies to exceptions, the
SSE request and the WebSocket upgrade, each bounded by the handshake timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from agentstream_client._exceptions import (
    APIError,
    HandshakeTimeout,
    TransportError,
    api_error,
)

# WebSocket error codes to the HTTP status the same operation has over HTTP.
_WS_CODE_STATUS = {
    "run_not_found": 404, "conversation_not_found": 404, "not_subscribed": 404,
    "run_expired": 410, "conversation_expired": 410,
    "input_already_answered": 409, "run_ended": 409, "duplicate_ref": 409,
    "rate_limited": 429, "too_many_connections": 429, "too_many_subscriptions": 429,
    "unauthenticated": 401, "invalid_token": 401, "token_expired": 401,
    "forbidden": 403, "insufficient_scope": 403, "origin_not_allowed": 403,
    "store_unavailable": 503, "shutting_down": 503, "internal_error": 500,
}


def ws_error(code: str, message: str) -> APIError:
    return api_error(_WS_CODE_STATUS.get(code, 400), code, message)


class _ErrorDetail(msgspec.Struct):
    code: str = "http_error"
    message: str = ""


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


async def error_of(resp: aiohttp.ClientResponse) -> APIError:
    body = await resp.read()
    try:
        detail = msgspec.json.decode(body, type=_ErrorBody).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        detail = _ErrorDetail("http_error", body[:200].decode("utf-8", "replace"))
    return api_error(resp.status, detail.code, detail.message)


class Http:
    """One aiohttp session, the base URL, the credential and the two timeouts."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None,
                 handshake_timeout: float, idle_timeout: float, compress: bool = False) -> None:
        self.session = session
        self.compress = compress
        self.base_url = base_url.rstrip("/")
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _timeout(self) -> aiohttp.ClientTimeout:
        # sock_read: a stream silent for idle_timeout (several missed heartbeats) is dead.
        return aiohttp.ClientTimeout(total=None, connect=self.handshake_timeout,
                                     sock_connect=self.handshake_timeout,
                                     sock_read=self.idle_timeout)

    async def request_json(self, method: str, path: str, body: Any = None,
                           expect: tuple[int, ...] = (200,)) -> Any:
        """A JSON call bounded by the handshake timeout (a reply is small)."""
        timeout = aiohttp.ClientTimeout(total=self.handshake_timeout)
        try:
            async with self.session.request(
                method, self.base_url + path, json=body, headers=self.headers,
                timeout=timeout,
            ) as resp:
                if resp.status not in expect:
                    raise await error_of(resp)
                return msgspec.json.decode(await resp.read())
        except TimeoutError:
            raise HandshakeTimeout(f"{method} {path}: no answer in time") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise TransportError(f"{method} {path}: {exc!r}") from None
        except msgspec.DecodeError as exc:
            raise TransportError(f"{method} {path}: unreadable reply: {exc}") from None

    async def post_json(self, path: str, body: Any, expect: tuple[int, ...] = (200,)) -> Any:
        return await self.request_json("POST", path, body, expect)

    @contextlib.asynccontextmanager
    async def stream(self, path: str,
                     headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientResponse | None]:
        """An SSE GET: the open 200 response, or None for a 204 (nothing more to send)."""
        try:
            # The response headers within the handshake timeout; then sock_read (idle).
            async with asyncio.timeout(self.handshake_timeout):
                resp = await self.session.get(self.base_url + path,
                                              headers={**self.headers, **headers},
                                              timeout=self._timeout())
        except TimeoutError:
            raise HandshakeTimeout(f"GET {path}: no response in time") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise TransportError(f"GET {path}: {exc!r}") from None
        async with resp:
            if resp.status == 204:
                yield None
                return
            if resp.status != 200:
                raise await error_of(resp)
            yield resp

    @contextlib.asynccontextmanager
    async def websocket(self) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """The upgrade of ``/v1/ws``. aiohttp's heartbeat pings every ``idle_timeout / 2``
        and drops a peer that does not answer, so a dead server is found. ``compress``:
        offer permessage-deflate (the server accepts it when run with compression on)."""
        try:
            async with asyncio.timeout(self.handshake_timeout):
                ws = await self.session.ws_connect(
                    self.base_url + "/v1/ws", headers=self.headers,
                    heartbeat=self.idle_timeout / 2, compress=15 if self.compress else 0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.handshake_timeout))
        except TimeoutError:
            raise HandshakeTimeout("websocket upgrade: no answer in time") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise api_error(exc.status, "websocket_refused", exc.message) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise TransportError(f"websocket upgrade: {exc!r}") from None
        try:
            yield ws
        finally:
            await ws.close()
