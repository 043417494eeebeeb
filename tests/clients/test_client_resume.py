"""The client across failures it must survive, injected for real: a TCP proxy cutting the
connection mid-run, the server SIGKILLed and restarted on the same SQLite file, a server
that never comes back, a peer that accepts and never answers. Both transports; every
stream still has one ``done``, contiguous seqs and ``done.data.events`` events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentstream_client import (
    AgentstreamClient,
    Backoff,
    HandshakeTimeout,
    MessageChunk,
    ReconnectFailed,
    StreamEvent,
    TransportError,
)
from tests.agents.tcp_proxy import TcpProxy
from tests.clients.checks import assert_one_run
from tests.conftest import LiveServer
from tests.process import ServerProcess, free_port

TRANSPORTS = ["sse", "ws"]
FAST = Backoff(initial=0.05, cap=0.5, give_up_after=30)


@pytest.fixture
async def proxy(server: LiveServer) -> AsyncIterator[TcpProxy]:
    p = TcpProxy(server.host, server.port)
    await p.start()
    yield p
    await p.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connection_cut_mid_run_resumes_without_gap_or_duplicate(
    proxy: TcpProxy, transport: str
) -> None:
    async with AgentstreamClient(proxy.url(), transport=transport,  # type: ignore[arg-type]
                                 backoff=FAST) as client:
        run = await client.start("demo", {"tokens": 60, "delay_ms": 5, "ask": "Sure?"},
                                 on_input=lambda _: "yes")
        events: list[StreamEvent] = []
        cuts = 0
        async for event in run:
            events.append(event)
            chunks = sum(isinstance(e, MessageChunk) for e in events)
            if isinstance(event, MessageChunk) and chunks in (5, 25, 45):
                proxy.cut()  # a reset on both sides, mid-run
                cuts += 1
    done = assert_one_run(events)
    assert done.data.status == "completed" and run.complete
    assert cuts == 3 and run.reconnects >= 3
    assert proxy.connections >= 4


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_server_restart_on_the_same_database_resumes_to_the_interrupted_done(
    tmp_path: Path, transport: str
) -> None:
    server = ServerProcess(tmp_path / f"restart-{transport}.db", port=free_port())
    await server.start()
    restart: asyncio.Task[None] | None = None
    try:
        async with AgentstreamClient(server.base, transport=transport,  # type: ignore[arg-type]
                                     backoff=FAST) as client:
            run = await client.start("demo", {"tokens": 100000, "delay_ms": 5})
            events: list[StreamEvent] = []
            async for event in run:
                events.append(event)
                if len(events) == 20:
                    server.kill()
                    restart = asyncio.create_task(server.start())
        assert restart is not None
        await restart
    finally:
        server.stop()
    done = assert_one_run(events)
    assert done.data.status == "interrupted" and run.complete
    assert done.data.error is not None and done.data.error.code == "server_restarted"
    assert run.reconnects >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_server_that_never_comes_back_raises_reconnect_failed(
    tmp_path: Path, transport: str
) -> None:
    server = ServerProcess(tmp_path / "gone.db")
    await server.start()
    events: list[StreamEvent] = []
    try:
        async with AgentstreamClient(
            server.base, transport=transport,  # type: ignore[arg-type]
            backoff=Backoff(initial=0.05, cap=0.2, give_up_after=1.0),
        ) as client:
            run = await client.start("demo", {"tokens": 100000, "delay_ms": 5})
            with pytest.raises(ReconnectFailed) as info:
                async for event in run:
                    events.append(event)
                    if len(events) == 5:
                        server.kill()
    finally:
        server.stop()
    assert isinstance(info.value.__cause__, TransportError)
    assert len(events) >= 5 and run.result is None


@contextlib.asynccontextmanager
async def silent_peer() -> AsyncIterator[str]:
    """Accepts connections and never answers (a hung proxy or server)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        for w in held:
            w.transport.abort()
        srv.close()
        await srv.wait_closed()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_handshake_timeout(transport: str) -> None:
    async with silent_peer() as base, AgentstreamClient(
        base, transport=transport, handshake_timeout=0.3,  # type: ignore[arg-type]
        backoff=Backoff(initial=0.05, cap=0.1, give_up_after=0.8),
    ) as client:
        with pytest.raises(HandshakeTimeout):
            await client.start("demo", "hi")
        with pytest.raises(ReconnectFailed) as info:
            async for _ in client.attach("r_1"):
                pass
        assert isinstance(info.value.__cause__, HandshakeTimeout)
