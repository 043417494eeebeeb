"""Snapshot on join (``?snapshot=1``, ``subscribe {snapshot: true}``): read what the target
has stored and fold it with the pure ``protocol.snapshot`` builder.

The subscription then starts after the last event read, so the live part continues exactly
where the snapshot ends: nothing is lost (everything after it comes from the sink's own
catch-up) and nothing is doubled (the sink starts after it).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.api.targets import StreamTarget
from app.engine.engine import Engine
from protocol.codec import EncodedEvent
from protocol.snapshot import SnapshotBuilder

# A snapshot folds at most this many stored events; what lies beyond streams as it is.
SNAPSHOT_MAX_EVENTS = 100_000
SNAPSHOT_PAGE = 2_000


@dataclass(frozen=True)
class Snapshot:
    events: list[EncodedEvent]
    # Where the live subscription starts (the last seq read, or the target's own start).
    after: int
    # A run target whose ``done`` is in the snapshot: nothing will follow it.
    ended: bool


async def take_snapshot(engine: Engine, target: StreamTarget) -> Snapshot:
    builder = SnapshotBuilder()
    after, read, ended = target.after, 0, False
    while read < SNAPSHOT_MAX_EVENTS:
        page = await engine.read_events(target.conversation_id, after, SNAPSHOT_PAGE,
                                        target.run_id)
        for ev in page:
            builder.feed(ev)
            ended = ended or (target.run_id is not None and ev.type == "done")
        read += len(page)
        if len(page) < SNAPSHOT_PAGE or ended:
            break
        after = page[-1].seq
    events = builder.events()
    if target.types is not None:
        events = [e for e in events if e.type in target.types]
    return Snapshot(events, builder.last_seq or target.after, ended)


async def maybe_snapshot(engine: Engine, target: StreamTarget) -> Snapshot:
    """The target's snapshot if it asked for one, else an empty one at its start."""
    if not target.snapshot:
        return Snapshot([], target.after, False)
    return await take_snapshot(engine, target)
