"""Cluster mode: which node a command belongs to.

A conversation is numbered by exactly one node, its owner (ARCHITECTURE.md, "Seq across
nodes"), so a start, an answer, a cancel or a delete for a conversation another live node
owns is forwarded there. These are the engine's two questions about that, kept apart from
the engine's commands so the single-node path reads straight through.
"""

from __future__ import annotations

import hashlib

import msgspec

from app.bus.base import Bus
from app.engine.lifecycle import RunLifecycle
from app.engine.opening import new_id
from app.engine.peers import Peers
from app.errors import Unavailable, shutting_down
from app.ids import scoped
from app.store.records import UNFINISHED, RunRecord
from protocol.messages import StartRunRequest


class Routing:
    def __init__(self, runs: RunLifecycle, bus: Bus, peers: Peers, clustered: bool) -> None:
        self.runs = runs
        self.bus = bus
        self.peers = peers
        self.clustered = clustered

    async def owner_for_start(
        self, req: StartRunRequest, owner: str | None, idempotency_key: str | None,
        forwarded: bool,
    ) -> tuple[StartRunRequest, str | None]:
        """Name the conversation (a new one gets its id here, so the owner can be claimed
        before anything is numbered) and find its owning node: None when it is this one.
        A keyed start of a new conversation names it after the key (``keyed_conversation``):
        its retries reach the same owner, whose single flight and stored key replay it."""
        if not self.runs.accepting:
            raise shutting_down()
        if not self.bus.healthy:
            raise Unavailable("bus_unavailable", "the cluster bus (Redis) is unreachable")
        if req.conversation_id is None:
            cid = (keyed_conversation(owner, idempotency_key) if idempotency_key is not None
                   else new_id("c"))
            req = msgspec.structs.replace(req, conversation_id=cid)
        assert req.conversation_id is not None
        node = await self.peers.acquire(scoped(owner, req.conversation_id))
        if node is not None and forwarded:
            raise Unavailable("node_unavailable", "the conversation's owner changed; retry")
        return req, node

    async def remote_owner(self, record: RunRecord) -> str | None:
        """The other live node running this unfinished run, if any. An unfinished run whose
        owner is gone is a 503 until a survivor ends it (within the lease)."""
        if not self.clustered or record.status not in UNFINISHED:
            return None
        node = await self.peers.owner_of(record.conversation_id)
        if node is None:
            raise Unavailable("node_unavailable",
                              "the node running this run is gone; it ends shortly")
        return None if node == self.peers.node_id else node


def keyed_conversation(owner: str | None, idempotency_key: str) -> str:
    """Cluster mode: the id of the new conversation a keyed start opens, derived from the
    user's key, so that concurrent retries sent to different nodes meet on one owner."""
    digest = hashlib.sha256(f"{owner or ''}\n{idempotency_key}".encode()).hexdigest()
    return f"c_{digest[:16]}"
