"""The one policy every sink (SSE and WebSocket) obeys: heartbeat, queue bounds, timeouts."""

from __future__ import annotations

import msgspec


class SinkPolicy(msgspec.Struct, frozen=True):
    # Seconds between heartbeats: SSE ``: ping`` comments, WebSocket ping/pong.
    heartbeat: float = 15.0
    # A sink whose queue passes either bound drops it and catches up from the store.
    queue_events: int = 10_000
    queue_bytes: int = 8 * 1024 * 1024
    # A write that does not complete within this many seconds closes the connection;
    # the client resumes by id.
    write_timeout: float = 30.0
    # Close a connection that delivered no event for this long (0: never).
    idle_timeout: float = 0.0
    # Close a connection after this long with a retry hint, so it reconnects with its
    # last id (0: never). JD Genie's 1 h SSE timeout is the seed.
    max_lifetime: float = 3600.0
    # The ``retry:`` hint given to SSE clients, in milliseconds.
    retry_ms: int = 1000
    # Events read from the store per catch-up page.
    catchup_page: int = 2000
    # While catching up, fold consecutive chunks of one item into one frame.
    merge_chunks: bool = True
    # gzip SSE responses for clients that send ``Accept-Encoding: gzip`` (opt-in: it costs
    # a compressor per connection and CPU per write; see docs/PERFORMANCE.md).
    compression: bool = False

    def validate(self) -> None:
        if self.heartbeat <= 0:
            raise ValueError("heartbeat must be > 0")
        if self.queue_events < 1 or self.queue_bytes < 1024:
            raise ValueError("queue bounds must be >= 1 event and >= 1024 bytes")
        if self.write_timeout <= 0:
            raise ValueError("write_timeout must be > 0")
        if self.idle_timeout < 0 or self.max_lifetime < 0:
            raise ValueError("idle_timeout and max_lifetime must be >= 0")
        if self.catchup_page < 1:
            raise ValueError("catchup_page must be >= 1")
