"""What an agent is, and what it may do while it runs.

An agent checks its input before a run exists (``parse_input``: bad input is a 422, not a
run that fails later), then ``run`` streams content through its ``RunContext``. Lifecycle
events (run_started, require_user_input, done, ...) belong to the engine: an agent asks for
input with ``ctx.ask`` and ends by returning or raising.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from typing import Any, Protocol

import msgspec

from protocol.messages import AgentCard


class AgentInputError(Exception):
    """The input cannot be run by this agent (answered 422 before any run exists)."""


class AgentError(Exception):
    """An agent's own failure with a code; the run ends ``done {failed, error}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class RunContext(Protocol):
    run_id: str
    conversation_id: str
    agent: str

    async def emit(
        self,
        event_type: str,
        data: msgspec.Struct,
        *,
        item_id: str | None = None,
        thread_id: str | None = None,
        task_id: str | None = None,
    ) -> int:
        """Append a content event to the conversation; returns its seq."""
        ...

    async def ask(
        self,
        prompt: str,
        *,
        choices: list[Any] | None = None,
        schema: dict[str, Any] | None = None,
        timeout: float | None = None,
        default: Any = MISSING,
    ) -> Any:
        """Pause on ``require_user_input`` until the first answer (or the deadline)."""
        ...


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


class Agent(ABC):
    card: AgentCard

    @property
    def name(self) -> str:
        return self.card.name

    def parse_input(self, raw: Any) -> Any:
        """Validate and normalise the run's input; raise AgentInputError to refuse it."""
        return raw

    @abstractmethod
    async def run(self, ctx: RunContext, input: Any) -> None: ...

    async def close(self) -> None:
        """Release connections the agent holds (called at shutdown)."""
