"""Recorded demo-agent runs (``tests/compat/recorded``, made by ``record.py``) as events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from protocol.codec import decode_event
from protocol.events import Done, DoneData, ErrorDetail, Event

DIR = Path(__file__).parent / "recorded"


def load(name: str) -> list[Event]:
    """The run's events (``run_started`` .. ``done``), exactly as the native stream sent them."""
    return [decode_event(line) for line in (DIR / f"{name}.jsonl").read_text().splitlines()]


def with_done(events: list[Event], status: str, error: ErrorDetail | None = None) -> list[Event]:
    """The same run ending with another ``done`` status (cancel, restart) at the same seq."""
    done = events[-1]
    assert isinstance(done, Done)
    data = DoneData(status=status, events=done.data.events, error=error)  # type: ignore[arg-type]
    return [*events[:-1], msgspec.structs.replace(done, data=data)]


def feed(view: Any, events: list[Event]) -> list[Any]:
    out = list(view.opening())
    for event in events:
        out += view.feed(event)
    return out


def index_of(events: list[Event], type_: str) -> int:
    return next(i for i, e in enumerate(events) if e.__struct_config__.tag == type_)


def dumps(obj: Any) -> str:
    return json.dumps(obj)
