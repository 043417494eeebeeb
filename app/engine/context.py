"""The RunContext an agent sees: emit content, ask for input; nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from app.agents.base import MISSING
from protocol.events import EVENT_CLASSES, LIFECYCLE_TYPES

if TYPE_CHECKING:
    from app.engine.lifecycle import RunLifecycle
    from app.engine.state import ActiveRun


class AgentContext:
    def __init__(self, runs: RunLifecycle, run: ActiveRun) -> None:
        self._runs = runs
        self._run = run
        self.run_id = run.run_id
        self.conversation_id = run.record.conversation_id
        self.agent = run.agent.name

    async def emit(
        self,
        event_type: str,
        data: msgspec.Struct,
        *,
        item_id: str | None = None,
        thread_id: str | None = None,
        task_id: str | None = None,
    ) -> int:
        cls = EVENT_CLASSES.get(event_type)
        if cls is None or event_type in LIFECYCLE_TYPES:
            raise ValueError(f"agents cannot emit {event_type!r}")
        ev = await self._runs.writes.emit(
            self._run, cls, data, item_id=item_id, thread_id=thread_id, task_id=task_id
        )
        return ev.seq

    async def ask(
        self,
        prompt: str,
        *,
        choices: list[Any] | None = None,
        schema: dict[str, Any] | None = None,
        timeout: float | None = None,
        default: Any = MISSING,
    ) -> Any:
        return await self._runs.inputs.ask(self._run, prompt, choices, schema, timeout, default)
