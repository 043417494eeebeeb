"""Webhooks (issue 16): signed POSTs on done and require_user_input to a real receiver on a
real socket, retries from the persisted outbox, a restart losing none, the one-time answer
link, and the SSRF guard."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from app.api.webhooks import DELIVERER
from app.state import STATE
from protocol.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify_signature
from tests.api.test_history import check_stream, until_status
from tests.api.test_starts import post, until_done
from tests.conftest import LiveServer, ServerFactory, url
from tests.run_client import conversation_events, done_of

SECRET = "whsec-test-0123456789"


class Receiver:
    """A webhook receiver on a real socket: records every POST, fails the first ``fail``."""

    def __init__(self, fail: int = 0, hang: int = 0) -> None:
        self.fail = fail
        self.hang = hang  # requests left to never answer (a peer that stops responding)
        self.gate: asyncio.Event | None = None  # when set: answer only once it is set
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
        self.port = 0

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((dict(request.headers), body))
        self.arrived.set()
        if self.hang > 0:
            self.hang -= 1
            await asyncio.Event().wait()  # cancelled when the client gives up
        if self.gate is not None:
            await self.gate.wait()
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=500)
        return web.Response(status=204)

    async def start(self, port: int = 0) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def close(self) -> None:
        await self.runner.cleanup()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]

    async def until(self, count: int) -> None:
        async with asyncio.timeout(15):
            while len(self.got) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def hooked(start_server: ServerFactory, **kw: Any) -> LiveServer:
    server = await start_server(webhook_secret=SECRET, webhook_allow_private=True, **kw)
    server.app[DELIVERER].backoff_first_ms = 30  # retries within the test's patience
    return server


async def test_question_and_done_are_signed_and_the_answer_link_works_once(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        server = await hooked(start_server)
        _, run = await post(http, server, {
            "agent": "demo", "conversation_id": "wh", "webhook_url": receiver.url,
            "input": {"tokens": 2, "delay_ms": 0, "ask": "Ship it?"}})
        await receiver.until(1)
        headers, body = receiver.got[0]
        assert verify_signature(SECRET.encode(), headers[SIGNATURE_HEADER], body,
                                int(time.time()))
        assert not verify_signature(b"wrong", headers[SIGNATURE_HEADER], body, int(time.time()))
        question = receiver.payloads()[0]
        assert question["type"] == "run.input_required" and question["run_id"] == run["run_id"]
        assert headers[DELIVERY_HEADER] == question["id"] == \
            f"{run['run_id']}.{question['event']['seq']}"
        link = question["answer"]
        assert link["request_id"] == question["event"]["data"]["request_id"]
        async with http.post(url(server, link["path"]), json={"value": "yes"}) as r:
            assert r.status == 200, await r.text()
        async with http.post(url(server, link["path"]), json={"value": "again"}) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (404,
                                                                     "answer_token_not_found")
        await receiver.until(2)
        done = receiver.payloads()[1]
        assert done["type"] == "run.done" and done["event"]["data"]["status"] == "completed"
        events = await conversation_events(http, server, "wh")
        check_stream(events)
        assert "You answered: yes" in [e["data"].get("text") for e in events]
        assert done["event"] == events[-1]
        assert len(receiver.got) == 2  # one delivery per event, no duplicates
    finally:
        await receiver.close()


async def test_failed_deliveries_are_retried_with_the_same_id(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    receiver = Receiver(fail=2)
    await receiver.start()
    try:
        server = await hooked(start_server)
        _, run = await post(http, server, {"agent": "demo", "webhook_url": receiver.url,
                                           "input": {"tokens": 1, "delay_ms": 0}})
        await receiver.until(3)
        ids = {h[DELIVERY_HEADER] for h, _ in receiver.got}
        assert len(ids) == 1 and [p["type"] for p in receiver.payloads()] == ["run.done"] * 3
        delivery = ids.pop()
        assert delivery.startswith(run["run_id"] + ".")
        store = server.app[STATE].store
        async with asyncio.timeout(10):
            while (entry := await store.get_outbox(delivery)) is None or \
                    entry.status != "delivered":
                await asyncio.sleep(0.02)
        assert entry.attempts == 3 and entry.last_error is None
    finally:
        await receiver.close()


async def test_a_receiver_that_hangs_times_out_and_is_retried(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    receiver = Receiver(hang=1)
    await receiver.start()
    try:
        server = await hooked(start_server)
        server.app[DELIVERER].timeout = 0.3
        _, run = await post(http, server, {"agent": "demo", "webhook_url": receiver.url,
                                           "input": {"tokens": 1, "delay_ms": 0}})
        await receiver.until(2)
        assert len({h[DELIVERY_HEADER] for h, _ in receiver.got}) == 1
        delivery = receiver.got[0][0][DELIVERY_HEADER]
        store = server.app[STATE].store
        async with asyncio.timeout(10):
            while (entry := await store.get_outbox(delivery)) is None or \
                    entry.status != "delivered":
                await asyncio.sleep(0.02)
        assert entry.attempts == 2 and delivery.startswith(run["run_id"])
    finally:
        await receiver.close()


async def test_the_store_failing_during_bookkeeping_loses_and_doubles_nothing(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """The disk fails (injected transient commit failures) while a delivery's outcome is
    being recorded: the loop survives, the row ends delivered once, later ones still go."""
    receiver = Receiver()
    receiver.gate = asyncio.Event()
    await receiver.start()
    try:
        server = await hooked(start_server)
        store = server.app[STATE].store
        _, run = await post(http, server, {"agent": "demo", "webhook_url": receiver.url,
                                           "input": {"tokens": 1, "delay_ms": 0}})
        await receiver.until(1)  # the POST is in flight, held by the receiver
        store.writer.faults.every = 1  # from now on every commit fails (transiently)
        receiver.gate.set()
        await asyncio.sleep(0.5)  # the outcome cannot be recorded meanwhile
        delivery = receiver.got[0][0][DELIVERY_HEADER]
        assert (await store.get_outbox(delivery)).status == "pending"  # type: ignore[union-attr]
        store.writer.faults.every = 0  # the disk is back
        async with asyncio.timeout(10):
            while (entry := await store.get_outbox(delivery)) is None or \
                    entry.status != "delivered":
                await asyncio.sleep(0.02)
        assert len(receiver.got) == 1 and entry.attempts == 1
        _, second = await post(http, server, {"agent": "demo", "webhook_url": receiver.url,
                                              "input": {"tokens": 1, "delay_ms": 0}})
        await receiver.until(2)
        assert receiver.payloads()[1]["run_id"] == second["run_id"] != run["run_id"]
    finally:
        await receiver.close()


async def test_a_restart_loses_no_delivery(
    start_server: ServerFactory, http: aiohttp.ClientSession, db_path: Path
) -> None:
    receiver = Receiver()
    await receiver.start()
    port = receiver.port
    await receiver.close()  # the receiver is down when the run ends
    server = await hooked(start_server)
    _, run = await post(http, server, {"agent": "demo",
                                       "webhook_url": f"http://127.0.0.1:{port}/hook",
                                       "input": {"tokens": 1, "delay_ms": 0}})
    done = await until_done(http, server, run["run_id"])
    await server.close()
    receiver = Receiver()
    await receiver.start(port)
    try:
        await hooked(start_server, db=db_path)
        await receiver.until(1)
        assert receiver.got[0][0][DELIVERY_HEADER] == f"{run['run_id']}.{done['done_seq']}"
    finally:
        await receiver.close()


async def test_ssrf_guard_and_configuration(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    plain = await start_server(db=tmp_path / "plain.db")
    status, body = await post(http, plain, {"agent": "demo", "webhook_url": "https://a.example/x"})
    assert (status, body["error"]["code"]) == (422, "webhooks_not_configured")
    guarded = await start_server(webhook_secret=SECRET, webhook_allow_hosts="hooks.example.com")
    for bad in ("http://127.0.0.1:9/x", "http://[::1]/x", "http://10.0.0.8/x",
                "ftp://hooks.example.com/x", "https://other.example.org/x",
                "https://user:pw@hooks.example.com/x", "http://169.254.169.254/latest"):
        status, body = await post(http, guarded, {"agent": "demo", "webhook_url": bad})
        assert (status, body["error"]["code"]) == (422, "webhook_url_not_allowed"), bad


async def test_a_name_resolving_to_loopback_is_refused_when_connecting(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        server = await start_server(webhook_secret=SECRET, webhook_max_attempts=1)
        _, run = await post(http, server, {
            "agent": "demo", "webhook_url": f"http://localhost:{receiver.port}/hook",
            "input": {"tokens": 1, "delay_ms": 0}})
        assert run.get("run_id"), run
        done = await until_done(http, server, run["run_id"])
        store = server.app[STATE].store
        delivery = f"{run['run_id']}.{done['done_seq']}"
        async with asyncio.timeout(10):
            while (entry := await store.get_outbox(delivery)) is None or entry.status != "failed":
                await asyncio.sleep(0.02)
        assert "not allowed" in (entry.last_error or "")
        assert receiver.got == []
        events = await conversation_events(http, server, run["conversation_id"])
        done_of([e for e in events if e["run_id"] == run["run_id"]])
    finally:
        await receiver.close()


async def test_without_a_secret_nothing_is_queued(server: LiveServer,
                                                 http: aiohttp.ClientSession) -> None:
    """Without webhooks configured nothing is queued: the outbox stays empty."""
    _, run = await post(http, server, {"agent": "demo", "input": {"tokens": 1, "ask": "?"}})
    await until_status(http, server, run["run_id"], "waiting_input")
    assert await server.app[STATE].store.due_outbox(1 << 62, 10) == []
