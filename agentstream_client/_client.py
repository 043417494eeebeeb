"""``AgentstreamClient``: the entry point. It owns the aiohttp session (unless given one)
and every handle it made; closing it closes them."""

from __future__ import annotations

import weakref
from typing import Any, Literal

import aiohttp
import msgspec

from agentstream_client._backoff import Backoff
from agentstream_client._exceptions import ClientClosed
from agentstream_client._http import Http
from agentstream_client._stream import OnInput, Run, Subscription, _Stream
from agentstream_client._transports import SseTransport, Target, Transport, WsTransport
from protocol.messages import AgentCard, AgentList, RunInfo


class AgentstreamClient:
    """Talks to one agentstream service.

    ``transport``: ``"sse"`` (``POST /v1/runs`` then an EventSource-style GET) or ``"ws"``
    (one WebSocket per handle). Both resume by seq; answers and cancels go over HTTP.
    ``handshake_timeout``: seconds for a connection's response headers / upgrade / ack and
    for each JSON call. ``idle_timeout``: seconds of silence (no event, no heartbeat) after
    which a stream counts as dead and is resumed; keep it above the server's
    ``--heartbeat`` (15 s by default). ``compress``: WebSocket only, offer
    permessage-deflate (used when the server runs with ``--compression true``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        transport: Literal["sse", "ws"] = "sse",
        token: str | None = None,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 45.0,
        backoff: Backoff | None = None,
        session: aiohttp.ClientSession | None = None,
        compress: bool = False,
    ) -> None:
        if transport not in ("sse", "ws"):
            raise ValueError(f"transport must be 'sse' or 'ws', not {transport!r}")
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession()
        self.http = Http(self._session, base_url, token, handshake_timeout, idle_timeout,
                         compress)
        self.transport: Transport = (SseTransport(self.http) if transport == "sse"
                                     else WsTransport(self.http))
        self.backoff = backoff or Backoff()
        # Weak: a finished handle nobody holds is not kept alive by the client.
        self._handles: weakref.WeakSet[_Stream] = weakref.WeakSet()
        self._closed = False

    async def __aenter__(self) -> AgentstreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every handle (runs go on on the server), then the session."""
        self._closed = True
        for handle in list(self._handles):
            await handle.close()
        self._handles.clear()
        if self._own_session:
            await self._session.close()

    def _check(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")

    def _track(self, handle: _Stream) -> None:
        self._handles.add(handle)

    async def start(
        self,
        agent: str,
        input: Any = None,
        *,
        conversation_id: str | None = None,
        on_disconnect: Literal["continue", "cancel"] = "continue",
        metadata: dict[str, Any] | None = None,
        on_input: OnInput | None = None,
    ) -> Run:
        """Start a run; iterate the returned ``Run`` for its events. Never retried: a lost
        reply may hide a started run, so a ``TransportError`` here is the caller's call.
        ``on_input`` (sync or async) answers each ``require_user_input`` by its return."""
        self._check()
        body: dict[str, Any] = {"agent": agent, "input": input, "on_disconnect": on_disconnect}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        if metadata is not None:
            body["metadata"] = metadata
        started, first = await self.transport.start(body)
        run = Run(self.http, self.transport, started.run_id, started.conversation_id,
                  self.backoff, first=first, on_input=on_input)
        self._track(run)
        return run

    def attach(self, run_id: str, *, after: int = 0, on_input: OnInput | None = None) -> Run:
        """A handle on an existing run: its events after seq ``after`` (all by default)."""
        self._check()
        run = Run(self.http, self.transport, run_id, None, self.backoff, after=after,
                  on_input=on_input)
        self._track(run)
        return run

    def subscribe(self, conversation_id: str, *, after: int = 0) -> Subscription:
        """Every event of a conversation with seq above ``after``, replay then live."""
        self._check()
        sub = Subscription(self.transport, Target("conversation", conversation_id),
                           self.backoff, after)
        self._track(sub)
        return sub

    async def agents(self) -> list[AgentCard]:
        self._check()
        raw = await self.http.request_json("GET", "/v1/agents")
        return msgspec.convert(raw, AgentList).agents

    async def get_run(self, run_id: str) -> RunInfo:
        self._check()
        return msgspec.convert(await self.http.request_json("GET", f"/v1/runs/{run_id}"),
                               RunInfo)
