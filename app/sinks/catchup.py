"""Reading what a lagging subscription missed: the replay cache when it reaches back, else
the store. Apart from the sink, so the sink is its writer loop and nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.fanout.hub import Hub
from app.sinks.cursor import Cursor, Page

if TYPE_CHECKING:
    from app.store.base import EventStore


async def read_page(hub: Hub, store: EventStore, cursor: Cursor, limit: int) -> Page:
    """The next page a lagging cursor missed: from the replay cache when it reaches back
    (the hub's own frames, no store round trip), else from the store. The hub's published
    mark is sampled first, so a complete page covers everything up to it."""
    conversation = cursor.conversation_id
    after = cursor.written_seq
    published = hub.published_seq(conversation)
    cached = hub.recent.after(conversation, after, limit)
    if cached is not None:
        return Page.read(cached, after, limit, published, cursor.run_id, shared=True)
    rows = await store.read_events(conversation, after, limit, run_id=cursor.run_id)
    return Page.read(rows, after, limit, published)
