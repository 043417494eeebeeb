"""WebSocket permessage-deflate on real sockets: library clients that offer it and that do
not, the browser's usual offer, takeover and window parameters, and a deflate bomb.

Each streaming test checks the promise (one ``done``, contiguous ``seq``,
``done.data.events``); the raw client also checks the frame bits: event frames carry RSV1
when compressed, and each one inflates on its own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import zlib
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from tests.compression.deflate_client import TAIL, DeflateClient, inflate
from tests.conftest import LiveServer, ServerFactory, url
from tests.helpers import check_run, post_run

RUN = {"tokens": 40, "delay_ms": 1}
CHROMIUM_OFFER = "permessage-deflate; client_max_window_bits"


async def until_done(http: aiohttp.ClientSession, server: LiveServer, run_id: str) -> None:
    status: list[str] = []

    async def poll() -> bool:
        async with http.get(url(server, f"/v1/runs/{run_id}")) as resp:
            status.append((await resp.json())["status"])
        return status[-1] == "completed"

    for _ in range(2000):
        if await poll():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"run still {status[-1]}")


def ws_url(server: LiveServer) -> str:
    return f"ws://{server.host}:{server.port}/v1/ws"


def start(ref: str = "s") -> dict[str, Any]:
    return {"type": "start", "ref": ref, "agent": "demo",
            "conversation_id": f"z-{uuid.uuid4().hex[:8]}", "input": RUN}


@pytest.fixture
async def zserver(start_server: ServerFactory) -> LiveServer:
    return await start_server(compression=True)


async def raw_run(server: LiveServer, offer: str | None) -> tuple[DeflateClient, list[Any],
                                                                  list[dict[str, Any]]]:
    """Start a run on a raw socket; (client, text frames, events) once its ``done`` came."""
    client = await DeflateClient.connect(server.host, server.port, offer)
    client.send(**start())
    ack = (await client.recv_frame()).json()
    assert ack["type"] == "ack", ack
    frames, events = await client.messages_until_done(ack["run_id"])
    check_run(events, ack["run_id"])
    return client, frames, events


async def test_websockets_client_with_deflate_gets_the_full_run(zserver: LiveServer) -> None:
    async with connect(ws_url(zserver), compression="deflate") as ws:
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        await ws.send(json.dumps({"type": "ping", "ref": "p"}))  # a compressed command
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"
        await ws.send(json.dumps(start()))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "done":
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            events.append(msg["event"])
        check_run(events, ack["run_id"])


async def test_websockets_client_without_deflate_gets_the_full_run(zserver: LiveServer) -> None:
    async with connect(ws_url(zserver), compression=None) as ws:
        assert ws.protocol.extensions == []
        await ws.send(json.dumps(start()))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "done":
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["event"])
        check_run(events, ack["run_id"])


async def test_aiohttp_client_with_compress_15_gets_the_full_run(zserver: LiveServer) -> None:
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(ws_url(zserver), compress=15) as ws:
        assert ws.compress == 15
        await ws.send_json(start())
        ack = await ws.receive_json(timeout=10)
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "done":
            events.append((await ws.receive_json(timeout=10))["event"])
        check_run(events, ack["run_id"])


async def test_the_browser_offer_gets_batch_compressed_event_frames(zserver: LiveServer) -> None:
    """Without ``server_no_context_takeover`` frames may refer to earlier ones of their
    batch: the client's kept decompressor reads them all (``raw_run`` checked the run)."""
    client, frames, _ = await raw_run(zserver, CHROMIUM_OFFER)
    client.close()
    assert client.extensions is not None and "permessage-deflate" in client.extensions
    assert not client.no_takeover
    compressed = [f for f in frames if f.rsv1]
    assert compressed, "no event frame was compressed"
    assert all(f.json()["type"] == "event" for f in compressed)


async def test_no_context_takeover_offers_are_accepted_and_honoured(zserver: LiveServer) -> None:
    """With ``server_no_context_takeover`` every compressed frame inflates alone (the test
    client uses a fresh decompressor per message then)."""
    offer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    client, frames, _ = await raw_run(zserver, offer)
    client.close()
    assert client.no_takeover
    compressed = [f for f in frames if f.rsv1]
    assert compressed
    for f in compressed:
        assert inflate(f.payload) == f.text


async def test_a_catch_up_page_is_written_in_cached_per_event_frames(
    zserver: LiveServer, http: aiohttp.ClientSession
) -> None:
    """A subscribe to a finished run: its events come as a catch-up page, in the events'
    own cached compressed frames (the same bytes for every reader), read whole."""
    run = await post_run(http, zserver, input=RUN)
    await until_done(http, zserver, run["run_id"])
    client = await DeflateClient.connect(zserver.host, zserver.port, CHROMIUM_OFFER)
    client.send(type="subscribe", ref="r", conversation_id=run["conversation_id"], after=0)
    assert (await client.recv_frame()).json()["type"] == "ack"
    frames, events = await client.messages_until_done(run["run_id"])
    client.close()
    check_run(events, run["run_id"])
    compressed = [f for f in frames if f.rsv1]
    assert compressed
    for f in compressed:
        assert inflate(f.payload) == f.text


async def test_library_clients_read_a_batch_compressed_catch_up_page(
    zserver: LiveServer, http: aiohttp.ClientSession
) -> None:
    """The same page through ``websockets`` and aiohttp, which keep their inflate context."""
    run = await post_run(http, zserver, input=RUN)
    await until_done(http, zserver, run["run_id"])
    sub = {"type": "subscribe", "ref": "r", "conversation_id": run["conversation_id"],
           "after": 0}
    async with connect(ws_url(zserver), compression="deflate") as ws:
        await ws.send(json.dumps(sub))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ack"
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "done":
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["event"])
        check_run(events, run["run_id"])
    async with http.ws_connect(ws_url(zserver), compress=15) as aws:
        await aws.send_json(sub)
        assert (await aws.receive_json(timeout=10))["type"] == "ack"
        events = []
        while not events or events[-1]["type"] != "done":
            events.append((await aws.receive_json(timeout=10))["event"])
        check_run(events, run["run_id"])


async def test_compressed_commands_with_client_context_takeover_are_read(
    zserver: LiveServer,
) -> None:
    """The client keeps its compressor across messages (the default): the second ping
    refers back to the first, so the server must keep its decompressor too."""
    client = await DeflateClient.connect(zserver.host, zserver.port, CHROMIUM_OFFER)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    for ref in ("same-ref", "same-ref"):
        body = c.compress(json.dumps({"type": "ping", "ref": ref}).encode())
        body += c.flush(zlib.Z_SYNC_FLUSH)
        client.send_frame(body[:-4] if body.endswith(TAIL) else body, 0xC1)
        assert (await client.recv_frame()).json() == {"type": "pong", "ref": ref}
    client.close()


async def test_a_client_that_does_not_offer_it_gets_plain_frames(zserver: LiveServer) -> None:
    client, frames, _ = await raw_run(zserver, None)
    client.close()
    assert client.extensions is None
    assert not any(f.rsv1 for f in frames)


async def test_a_smaller_server_window_gets_plain_frames(zserver: LiveServer) -> None:
    """Our shared frames assume the 15-bit window; a client asking less gets plain ones."""
    client, frames, _ = await raw_run(zserver, "permessage-deflate; server_max_window_bits=10")
    client.close()
    assert client.extensions is not None and "server_max_window_bits=10" in client.extensions
    assert not any(f.rsv1 for f in frames)


async def test_compression_off_by_default_negotiates_nothing(server: LiveServer) -> None:
    client, frames, _ = await raw_run(server, CHROMIUM_OFFER)
    client.close()
    assert client.extensions is None
    assert not any(f.rsv1 for f in frames)


async def test_a_deflate_bomb_is_closed_1009_without_inflating_it(
    start_server: ServerFactory,
) -> None:
    server = await start_server(compression=True, max_ws_message=4096)
    client = await DeflateClient.connect(server.host, server.port, CHROMIUM_OFFER)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = bomb.compress(b'{"type":"ping","ref":"' + b"A" * 3_000_000) + bomb.flush(
        zlib.Z_SYNC_FLUSH)
    assert len(body) < 4096 < 3_000_000  # small on the wire, huge inflated
    client.send_frame(body[:-4], 0xC1)
    frame = await client.recv_frame()
    while frame.opcode != 0x8:
        frame = await client.recv_frame()
    assert int.from_bytes(frame.payload[:2], "big") == 1009
    client.close()
    # The server is fine: a new socket still works.
    again = await DeflateClient.connect(server.host, server.port, CHROMIUM_OFFER)
    again.send(compressed=True, type="ping", ref="after")
    assert (await again.recv_frame()).json() == {"type": "pong", "ref": "after"}
    again.close()
