"""The single-process bus: a commit is published to the hub at once, nothing else exists."""

from __future__ import annotations

from app.bus.base import Bus, NodeUnreachable
from app.fanout.hub import Hub
from protocol.codec import EncodedEvent


class LocalBus(Bus):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def committed(self, events: list[EncodedEvent]) -> None:
        self.hub.publish(events)

    async def request(self, node_id: str, body: bytes, timeout: float) -> bytes:
        raise NodeUnreachable(f"no node {node_id!r}: this server runs alone")
