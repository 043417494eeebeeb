"""The API issue's tests (reads and listings, idempotent starts and the multitask policy,
webhooks with their outbox and answer links, stream targets, type filters and snapshots) run
again on one cluster node: PostgreSQL as the
store, Redis as the bus. Same tests, same assertions; only the ``start_server`` fixture
differs (a test's ``db=`` names the one cluster database here)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_filters_snapshots import *  # noqa: F403
from tests.api.test_history import *  # noqa: F403
from tests.api.test_starts import *  # noqa: F403
from tests.api.test_targets import *  # noqa: F403
from tests.api.test_webhooks import *  # noqa: F403
from tests.cluster.conftest import NodeFactory
from tests.conftest import LiveServer, ServerFactory


@pytest.fixture
async def start_server(start_node: NodeFactory) -> ServerFactory:
    async def factory(**overrides: Any) -> LiveServer:
        overrides.pop("db", None)
        return await start_node(**overrides)

    return factory
