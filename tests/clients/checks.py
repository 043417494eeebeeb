"""The stream invariants every client test asserts on what a client yielded."""

from __future__ import annotations

from collections.abc import Sequence

from agentstream_client import Done, StreamEvent, event_type
from agentstream_client._events import stored_count


def assert_one_run(events: Sequence[StreamEvent]) -> Done:
    """Exactly one ``done``, last; seqs strictly +1 (the run alone in its conversation);
    ``done.data.events`` equals the stored events seen. Returns the ``done``."""
    dones = [e for e in events if isinstance(e, Done)]
    assert len(dones) == 1 and events[-1] is dones[0], [event_type(e) for e in events][-5:]
    seqs = [e.seq for e in events]
    expected = list(range(seqs[0], seqs[0] + len(seqs)))
    assert seqs == expected, f"gap or duplicate: {seqs}"
    assert dones[0].data.events == sum(stored_count(e) for e in events)
    assert event_type(events[0]) == "run_started"
    return dones[0]


def assert_contiguous(events: Sequence[StreamEvent], first: int = 1) -> None:
    seqs = [e.seq for e in events]
    assert seqs == list(range(first, first + len(seqs))), seqs
