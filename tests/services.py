"""Real PostgreSQL and Redis for tests: a fresh schema / key prefix per test.

Unreachable services skip the test with a visible reason on a laptop; with
``AGENTSTREAM_REQUIRE_SERVICES=1`` (``.ci/run`` sets it) they fail it instead, so CI can
never go green by skipping them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
import redis.asyncio as aioredis

PG_DSN = os.environ.get("AGENTSTREAM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AGENTSTREAM_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("AGENTSTREAM_REQUIRE_SERVICES") == "1"


def unavailable(what: str, exc: BaseException) -> None:
    reason = f"{what} unreachable ({type(exc).__name__}: {exc})"
    if REQUIRE:
        pytest.fail(reason + " and AGENTSTREAM_REQUIRE_SERVICES=1")
    pytest.skip(reason)


def schema_dsn(schema: str, dsn: str = PG_DSN) -> str:
    """The DSN whose connections use ``schema`` (asyncpg passes unknown query parameters
    on as server settings), as ``--store`` takes it."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}search_path={schema}"


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A new empty schema, dropped afterwards; yields its name."""
    name = "t_" + secrets.token_hex(6)
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable("PostgreSQL", exc)
        raise
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
        yield name
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await conn.close()


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A key/channel prefix of this test alone (Redis has no schemas)."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        await client.aclose()
        unavailable("Redis", exc)
        raise
    prefix = "t" + secrets.token_hex(6)
    try:
        yield prefix
    finally:
        await client.aclose()
