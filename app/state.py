"""The service's parts, wired once per application and reached through ``app[STATE]``."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from aiohttp import web

from app.agents.registry import AgentRegistry
from app.auth.authenticator import Authenticator
from app.auth.limits import ConnectionLimiter, RunRateLimiter
from app.config import Settings
from app.engine.engine import Engine
from app.fanout.hub import Hub
from app.sinks.base import Sink
from app.store.base import EventStore


@dataclass
class State:
    settings: Settings
    store: EventStore
    hub: Hub
    agents: AgentRegistry
    engine: Engine
    auth: Authenticator
    connections: ConnectionLimiter
    run_limiter: RunRateLimiter
    # Open sinks, so shutdown can close them and /metrics can read their queues.
    sinks: set[Sink] = field(default_factory=set)
    shutting_down: bool = False
    # time.monotonic() by which a graceful stop must be done (0: not stopping).
    shutdown_deadline: float = 0.0


STATE = web.AppKey("state", State)


def connection_id() -> str:
    return "k_" + secrets.token_hex(6)
