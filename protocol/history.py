"""Read-side responses: conversation and run listings, run detail with output, event pages.

Lists are paginated with an opaque ``next_cursor`` (conversations) or a position
(``next_after``: a run's first seq, an event's seq); ``null`` means there is no next page.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.messages import RunInfo
from protocol.output import RunOutput


class ConversationInfo(msgspec.Struct, omit_defaults=True):
    conversation_id: str
    created_at: int
    updated_at: int
    metadata: dict[str, Any] | None = None


class ConversationList(msgspec.Struct):
    conversations: list[ConversationInfo]
    next_cursor: str | None = None


class ConversationDetail(msgspec.Struct, omit_defaults=True):
    conversation_id: str
    created_at: int
    updated_at: int
    last_seq: int
    runs: list[RunInfo]
    # More runs than fit: ``GET /v1/runs?conversation_id=..&after=<runs_next_after>``.
    runs_next_after: int | None = None
    metadata: dict[str, Any] | None = None


class RunList(msgspec.Struct):
    runs: list[RunInfo]
    next_after: int | None = None


class RunDetail(RunInfo, omit_defaults=True, kw_only=True):
    """``GET /v1/runs/{id}``: the run row plus its output, assembled from its events."""

    output: RunOutput | None = None


class EventPage(msgspec.Struct):
    """Stored envelopes (``msgspec.Raw``: the stored bytes as they are) after ``after``."""

    events: list[msgspec.Raw]
    last_seq: int
    next_after: int | None = None


class Deleted(msgspec.Struct):
    conversation_id: str
    deleted: bool = True
    # Runs that were open and were ended (``cancelled``) before the deletion.
    cancelled_runs: list[str] = msgspec.field(default_factory=list)
