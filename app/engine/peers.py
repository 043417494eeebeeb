"""Who may number into a conversation, and how to reach the node that may.

``seq`` is numbered in memory by the one node that *owns* a conversation (a row in the
database, fenced in every commit: docs/ARCHITECTURE.md, Cluster). ``Peers`` is what the
engine needs of that: ``acquire`` before numbering, ``forward`` a command to the owner when
it is another node. A single process owns everything (``LocalPeers``); ``app.cluster``
implements the real thing. The engine never imports the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from app.store.records import RunRecord


class Peers(Protocol):
    node_id: str

    def owns(self, conversation_id: str) -> bool:
        """True when this node owns the conversation now (no I/O)."""

    async def acquire(self, conversation_id: str) -> str | None:
        """Own the conversation if no live node does; None when this node owns it, else the
        live owner's node id. On a new ownership the local hub is brought up to the store
        before this returns (so nothing this node numbers next can leave a hole)."""

    async def owner_of(self, conversation_id: str) -> str | None:
        """The live node owning the conversation, if any (no claim)."""

    def forget(self, conversation_ids: list[str]) -> None:
        """Retention deleted these conversations (and their ownership)."""

    async def forward(self, node_id: str, op: str, args: dict[str, Any]) -> Any:
        """Run ``op`` on ``node_id`` and return its result; raises the domain error it
        raised there, or ``Unavailable('node_unavailable')`` when it did not answer."""


class LocalPeers:
    """One process: this node owns every conversation, there is nobody to forward to."""

    node_id = "local"

    def owns(self, conversation_id: str) -> bool:
        return True

    async def acquire(self, conversation_id: str) -> str | None:
        return None

    async def owner_of(self, conversation_id: str) -> str | None:
        return self.node_id

    def forget(self, conversation_ids: list[str]) -> None:
        pass

    async def forward(self, node_id: str, op: str, args: dict[str, Any]) -> Any:
        raise AssertionError("a single node never forwards")


@dataclass
class RemoteRun:
    """A run started on its conversation's owner for a client of this node."""

    record: RunRecord

    @property
    def run_id(self) -> str:
        return self.record.run_id
