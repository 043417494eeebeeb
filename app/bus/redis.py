"""The cluster bus on Redis Pub/Sub (why Pub/Sub and not Streams: docs/ARCHITECTURE.md).

Channels, under one prefix so deployments (and tests) can share a Redis:

- ``<prefix>:events``: every committed batch of every node, as encoded event bytes;
- ``<prefix>:node:<id>``: commands for one node and the answers to its own commands.

Nothing here is the truth. A publish that fails (Redis down, the outbox full) is dropped:
receivers notice the seq gap in the next batch, or in the periodic resync that compares the
hub's marks of subscribed conversations with the store, and read the store (``Relay``). On
every (re)subscription the bus resyncs at once, since messages published while it was away
are gone. All tasks live in one TaskGroup owned by ``start``/``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog

from app.bus.base import Bus, NodeUnreachable
from app.bus.relay import Relay
from app.bus.wire import Envelope, decode_envelope, decode_events, encode_envelope, encode_events
from protocol.codec import EncodedEvent

log = structlog.get_logger(__name__)
LastSeqs = Callable[[list[str]], Awaitable[dict[str, int]]]
Subscribed = Callable[[], list[str]]
RECONNECT_MAX = 2.0
DRAIN_MAX = 512  # bus messages handed to the hub at once


class RedisBus(Bus):
    def __init__(self, url: str, node_id: str, relay: Relay, last_seqs: LastSeqs,
                 subscribed: Subscribed, *, prefix: str = "agentstream",
                 outbox_bytes: int = 16 * 1024 * 1024, resync_interval: float = 1.0,
                 op_timeout: float = 2.0, max_handlers: int = 256) -> None:
        self.url = url
        self.node_id = node_id
        self.relay = relay
        self.last_seqs = last_seqs
        self.subscribed = subscribed
        self.events_channel = f"{prefix}:events"
        self.prefix = prefix
        self.outbox_bytes = outbox_bytes
        self.resync_interval = resync_interval
        self.op_timeout = op_timeout
        self._outbox: deque[bytes] = deque()
        self._outbox_size = 0
        self._wake = asyncio.Event()
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._handlers = asyncio.Semaphore(max_handlers)
        self._client: Any = None
        self._main: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._subscribed = False
        self._ready = asyncio.Event()
        self.dropped = 0  # event messages never sent (Redis down, outbox full)
        self._behind: dict[str, int] = {}  # conversation -> mark, behind at the last resync

    def node_channel(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = aioredis.Redis.from_url(
            self.url, socket_timeout=self.op_timeout, socket_connect_timeout=self.op_timeout)
        self._main = asyncio.create_task(self._run(), name="redis-bus")
        # Wait a little for the first subscription, so a healthy start is ready at once;
        # a Redis that is down does not stop the node (it reports itself unready).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.op_timeout):
                await self._ready.wait()

    async def close(self) -> None:
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        await self.relay.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NodeUnreachable("the bus closed"))
                fut.exception()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    @property
    def healthy(self) -> bool:
        return self._subscribed

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._listen(), name="redis-bus-listen")
            tg.create_task(self._publish_loop(), name="redis-bus-publish")
            tg.create_task(self._resync_loop(), name="redis-bus-resync")

    # ---- events -----------------------------------------------------------------------------

    def committed(self, events: list[EncodedEvent]) -> None:
        self.relay.local(events)
        data = encode_events(self.node_id, events)
        if self._outbox_size + len(data) > self.outbox_bytes:
            self.dropped += 1  # a doorbell: the others read the store when they notice
            return
        self._outbox.append(data)
        self._outbox_size += len(data)
        self._wake.set()

    async def _publish_loop(self) -> None:
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            data = self._outbox.popleft()
            self._outbox_size -= len(data)
            try:
                await self._client.publish(self.events_channel, data)
            except (aioredis.RedisError, OSError) as exc:
                self.dropped += 1
                log.warning("bus_publish_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)

    async def _resync_loop(self) -> None:
        """The safety net for a lost doorbell with nothing after it (a lost ``done``)."""
        while True:
            await asyncio.sleep(self.resync_interval)
            await self.resync()

    async def resync(self, force: bool = False) -> None:
        """Compare the marks of subscribed conversations with the store; fill the ones that
        stayed behind (``force``: all of them at once, after a reconnect)."""
        cids = self.subscribed()
        if not cids:
            return
        try:
            seqs = await self.last_seqs(cids)
        except Exception as exc:
            log.warning("bus_resync_failed", error=f"{type(exc).__name__}: {exc}")
            return
        # Fill only what was behind at the previous pass too, with its mark not moved since:
        # a doorbell still in flight (the common reason to be behind) is not a loss.
        previous, self._behind = self._behind, {}
        for cid, seq in seqs.items():
            mark = self.relay.hub.accepted_seq(cid)
            if seq <= mark:
                continue
            if force or previous.get(cid) == mark:
                self.relay.behind(cid, seq)
            else:
                self._behind[cid] = mark

    async def sync(self, conversation_id: str) -> None:
        await self.relay.sync(conversation_id)

    # ---- receiving --------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Subscribe, dispatch, and on any connection error reconnect with backoff."""
        backoff = 0.05
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.events_channel, self.node_channel(self.node_id))
                self._subscribed = True
                self._ready.set()
                backoff = 0.05
                log.info("bus_subscribed", node_id=self.node_id)
                await self.resync(force=True)  # whatever was published while we were away
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    batch = [] if msg is None else [msg]
                    # Drain what is already buffered and hand it over as one batch per
                    # conversation: the owner commits small batches when it is idle, and a
                    # receiving node fanning each one out alone falls behind (measured: C2).
                    while batch and len(batch) < DRAIN_MAX:
                        more = await pubsub.get_message(ignore_subscribe_messages=True,
                                                        timeout=0.0)
                        if more is None:
                            break
                        batch.append(more)
                    self._dispatch_all(batch)
            except (aioredis.RedisError, OSError) as exc:
                if self._subscribed:
                    log.error("bus_unavailable", error=f"{type(exc).__name__}: {exc}")
                self._subscribed = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch_all(self, messages: list[dict[str, Any]]) -> None:
        events_channel = self.events_channel.encode()
        by_conversation: dict[str, list[EncodedEvent]] = {}
        for msg in messages:
            if msg["channel"] != events_channel:
                self._dispatch(msg["channel"], msg["data"])
                continue
            try:
                node, events = decode_events(msg["data"])
            except Exception as exc:  # a foreign or corrupt message must not stop the bus
                log.warning("bus_bad_message", error=f"{type(exc).__name__}: {exc}")
                continue
            if node == self.node_id:
                continue
            for event in events:  # order within a conversation is kept
                by_conversation.setdefault(event.conversation_id, []).append(event)
        for events in by_conversation.values():
            self.relay.remote(events)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        """A command or an answer on this node's channel."""
        try:
            env = decode_envelope(data)
        except Exception as exc:  # a foreign or corrupt message must not stop the bus
            log.warning("bus_bad_message", error=f"{type(exc).__name__}: {exc}")
            return
        if env.reply is None:
            fut = self._pending.pop(env.id, None)
            if fut is not None and not fut.done():
                fut.set_result(env.body)
        elif self._tg is not None:
            self._tg.create_task(self._handle(env))

    async def _handle(self, env: Envelope) -> None:
        """Answer one command; a handler's failure never reaches the TaskGroup."""
        assert env.reply is not None
        async with self._handlers:
            try:
                assert self.on_request is not None, "no request handler"
                answer = await self.on_request(env.body)
                await self._client.publish(self.node_channel(env.reply),
                                           encode_envelope(Envelope(env.id, None, answer)))
            except Exception as exc:
                log.warning("bus_command_failed", error=f"{type(exc).__name__}: {exc}")

    # ---- commands ---------------------------------------------------------------------------

    async def request(self, node_id: str, body: bytes, timeout: float) -> bytes:
        ident = secrets.token_hex(8)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        try:
            async with asyncio.timeout(timeout):
                receivers = await self._client.publish(
                    self.node_channel(node_id),
                    encode_envelope(Envelope(ident, self.node_id, body)))
                if not receivers:
                    raise NodeUnreachable(f"node {node_id} is not listening")
                return await fut
        except TimeoutError:
            raise NodeUnreachable(f"node {node_id} did not answer within {timeout}s") from None
        except (aioredis.RedisError, OSError) as exc:
            raise NodeUnreachable(f"the bus is unavailable: {type(exc).__name__}") from None
        finally:
            self._pending.pop(ident, None)
