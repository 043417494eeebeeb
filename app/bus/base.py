"""The ``Bus`` interface the engine and the cluster use.

Two jobs, one connection: *committed events* go to the local hub and to every other node
(``committed``, the store's commit listener), and *commands* go to one named node and come
back with its answer (``request``; the node's handler is ``on_request``). Either can be
lost in a cluster: events are doorbells (a node that misses one notices the seq gap and
reads the store), and a command that gets no answer in time fails with ``NodeUnreachable``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from protocol.codec import EncodedEvent

RequestHandler = Callable[[bytes], Awaitable[bytes]]


class NodeUnreachable(Exception):
    """No answer from the node a command was sent to (gone, partitioned, or too slow)."""


class Bus(ABC):
    node_id: str = "local"
    on_request: RequestHandler | None = None

    async def start(self) -> None:
        """Connect (a cluster bus keeps reconnecting by itself afterwards)."""

    async def close(self) -> None:
        """Disconnect and end every task the bus owns."""

    @property
    def healthy(self) -> bool:
        return True

    @abstractmethod
    def committed(self, events: list[EncodedEvent]) -> None:
        """Events just committed here, in commit order: to the local hub, and onwards."""

    @abstractmethod
    async def request(self, node_id: str, body: bytes, timeout: float) -> bytes:
        """Send a command to ``node_id`` and return its answer (``NodeUnreachable``)."""

    async def sync(self, conversation_id: str) -> None:
        """Bring the local hub up to the store for this conversation (cluster takeovers)."""
