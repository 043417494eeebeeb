"""The stream promise, checked on what a client received."""

from __future__ import annotations

from typing import Any


def check_run_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's stream: exactly one ``done``, last; seqs strictly rising with no
    duplicate; ``done.data.events`` equals the events received. Returns done's data."""
    assert events, "no events"
    dones = [e for e in events if e["type"] == "done"]
    assert len(dones) == 1 and events[-1] is dones[0], [e["type"] for e in events][-5:]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), f"duplicate or out-of-order seqs: {seqs}"
    assert dones[0]["data"]["events"] == len(events)
    return dict(dones[0]["data"])


def check_conversation(events: list[dict[str, Any]]) -> None:
    """A whole conversation: seq is exactly 1, 2, 3, ... and every run has one done."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    runs: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("run_id"):
            runs.setdefault(e["run_id"], []).append(e)
    for run_events in runs.values():
        check_run_stream(run_events)
