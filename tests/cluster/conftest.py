"""Two (or more) cluster nodes on real sockets, one fresh PostgreSQL schema and one Redis
prefix per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.server import create_app
from tests.conftest import LiveServer, make_settings
from tests.services import PG_DSN, REDIS_URL, pg_schema, redis_prefix, schema_dsn

NodeFactory = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def cluster_urls() -> AsyncIterator[tuple[str, str, str]]:
    """(store URL, bus URL, cluster name) of a cluster no other test shares."""
    async with pg_schema() as schema, redis_prefix() as prefix:
        yield schema_dsn(schema, PG_DSN), REDIS_URL, prefix


@pytest.fixture
async def start_node(
    cluster_urls: tuple[str, str, str], tmp_path: Path
) -> AsyncIterator[NodeFactory]:
    store, bus, name = cluster_urls
    nodes: list[LiveServer] = []

    async def factory(**overrides: Any) -> LiveServer:
        overrides.setdefault("lease_seconds", 3.0)
        agents = overrides.pop("agents", None)
        settings = make_settings(tmp_path / "unused.db", store=store, bus=bus,
                                 cluster_name=name, **overrides)
        node = LiveServer(create_app(settings, agents=agents))
        await node.start()
        nodes.append(node)
        return node

    yield factory
    for node in reversed(nodes):
        await node.close()
