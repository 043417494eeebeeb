"""The delivery loop: POST due outbox rows, signed; record each outcome durably.

One task, owned by the app's cleanup context (``webhooks_ctx``), cancelled at shutdown.
It reads due rows from the store, POSTs each under a timeout through a connector whose
resolver refuses private addresses (guard.py), and commits the outcome before reading
again, so a row is never sent twice by one process; a crash between a POST and its
bookkeeping re-sends it with the same ``Agentstream-Delivery`` id (at-least-once; receivers
dedupe by id). Failures back off exponentially (capped) up to ``max_attempts``, then the
row is ``failed``. New rows wake the loop through the store's commit listener.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import structlog

from app.clock import now_ms
from app.errors import InvalidInput
from app.store.base import EventStore
from app.store.ops import UpdateOutbox
from app.store.records import OutboxEntry
from app.webhooks.guard import GuardedResolver, WebhookPolicy, check_url, refused_address
from app.webhooks.outbox import WEBHOOK_TYPES
from protocol.codec import EncodedEvent
from protocol.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, sign

log = structlog.get_logger(__name__)
BACKOFF_FIRST_MS = 1_000
BACKOFF_MAX_MS = 10 * 60 * 1000
PAGE = 50


def backoff_ms(attempts: int, first: int = BACKOFF_FIRST_MS) -> int:
    """Delay before attempt ``attempts + 1``: first, 2x, 4x, ... capped."""
    return int(min(first * (2 ** max(attempts - 1, 0)), BACKOFF_MAX_MS))


class Deliverer:
    def __init__(self, store: EventStore, secret: str, policy: WebhookPolicy, *,
                 max_attempts: int = 8, timeout: float = 10.0, poll: float = 5.0,
                 backoff_first_ms: int = BACKOFF_FIRST_MS,
                 may_deliver: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self.store = store
        # Cluster mode: claims the delivery's conversation (True: this node owns it now and
        # sends; False: its live owner does). One process sends everything.
        self.may_deliver = may_deliver
        self.secret = secret.encode()
        self.policy = policy
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.poll = poll
        self.backoff_first_ms = backoff_first_ms
        self.wake = asyncio.Event()
        # Earliest retry this process scheduled (ms): the loop sleeps no longer than that.
        self._next_retry: int | None = None
        store.add_commit_listener(self._committed)

    def _committed(self, events: list[EncodedEvent]) -> None:
        if any(e.type in WEBHOOK_TYPES for e in events):
            self.wake.set()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy), limit=16)
        async with aiohttp.ClientSession(connector=connector) as http:
            while True:
                self.wake.clear()
                try:
                    due = await self.store.due_outbox(now_ms(), PAGE)
                    for entry in due:
                        if self.may_deliver is None or await self.may_deliver(
                                entry.conversation_id):
                            await self.deliver(http, entry)
                except Exception:
                    # The store failed under us (its writer retries; rows stay pending):
                    # the loop outlives it and reads again after ``poll``.
                    log.exception("webhook_loop_failed")
                    due = []
                if len(due) < PAGE:
                    await self._sleep()

    async def _sleep(self) -> None:
        """Until a new delivery commits, the earliest retry is due, or ``poll`` passes."""
        delay = self.poll
        if self._next_retry is not None:
            delay = min(delay, max(self._next_retry - now_ms(), 0) / 1000)
            self._next_retry = None
        try:
            async with asyncio.timeout(delay):
                await self.wake.wait()
        except TimeoutError:
            pass

    async def deliver(self, http: aiohttp.ClientSession, entry: OutboxEntry) -> None:
        error = await self._post(http, entry)
        attempts = entry.attempts + 1
        if error is None:
            update = UpdateOutbox(entry.delivery_id, "delivered", attempts, entry.next_at)
        elif attempts >= self.max_attempts or error.startswith("not_allowed"):
            update = UpdateOutbox(entry.delivery_id, "failed", attempts, entry.next_at, error)
        else:
            due = now_ms() + backoff_ms(attempts, self.backoff_first_ms)
            update = UpdateOutbox(entry.delivery_id, "pending", attempts, due, error)
            self._next_retry = min(due, self._next_retry or due)
        log.info("webhook_attempt", delivery_id=entry.delivery_id, status=update.status,
                 attempts=attempts, error=error)
        await self.store.apply_now(update)

    async def _post(self, http: aiohttp.ClientSession, entry: OutboxEntry) -> str | None:
        """None on a 2xx, else why not (``not_allowed...`` is never retried)."""
        try:
            check_url(entry.url, self.policy)
        except InvalidInput as exc:
            return f"not_allowed: {exc.message}"
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(self.secret, int(time.time()), entry.body),
                   DELIVERY_HEADER: entry.delivery_id}
        try:
            async with http.post(entry.url, data=entry.body, headers=headers,
                                 allow_redirects=False,
                                 timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"http_{resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            refused = refused_address(exc)
            if refused is not None:
                return f"not_allowed: {refused.strerror}"
            return f"{type(exc).__name__}: {exc}"[:300]
