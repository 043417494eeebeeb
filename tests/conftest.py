"""Shared fixtures: a real agentstream server on a real socket, backed by a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.config import Settings
from app.server import create_app
from app.sinks.policy import SinkPolicy


class LiveServer:
    """The app on a real socket, run the way ``python -m app`` runs it (AppRunner, no
    handler cancellation), unlike aiohttp's TestServer."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.host = "127.0.0.1"
        self.port = 0
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def make_url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def close(self) -> None:
        await self.runner.cleanup()


ServerFactory = Callable[..., Awaitable[LiveServer]]



def make_settings(db: Path | str, **overrides: Any) -> Settings:
    policy_fields = set(SinkPolicy.__struct_fields__)
    policy = {k: overrides.pop(k) for k in list(overrides) if k in policy_fields}
    policy.setdefault("heartbeat", 1.0)
    return Settings(db=str(db), policy=SinkPolicy(**policy), **overrides)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "agentstream.db"


@pytest.fixture
async def start_server(db_path: Path) -> AsyncIterator[ServerFactory]:
    """Start servers on real ephemeral ports; each is closed at the end of the test."""
    servers: list[LiveServer] = []

    async def factory(**overrides: Any) -> LiveServer:
        db = overrides.pop("db", db_path)
        agents = overrides.pop("agents", None)
        app = create_app(make_settings(db, **overrides), agents=agents)
        server = LiveServer(app)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.close()


@pytest.fixture
async def server(start_server: ServerFactory) -> LiveServer:
    return await start_server()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def url(server: LiveServer, path: str) -> str:
    return server.make_url(path)
