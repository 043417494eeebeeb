"""The oracle for the real-client tests: the same run read through the native SSE endpoint."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from app.compat.common import message_texts
from protocol.codec import decode_event
from protocol.events import Event, Reasoning
from tests.conftest import LiveServer, url
from tests.run_client import done_of
from tests.sse_client import read_events


class NativeRun:
    """A whole run as ``GET /v1/runs/{id}/events`` carried it, checked: exactly one ``done``,
    last; ``seq`` +1 each; ``done.data.events`` equals the count."""

    def __init__(self, envelopes: list[dict[str, Any]]) -> None:
        self.envelopes = envelopes
        self.done = done_of(envelopes)
        seqs = [e["seq"] for e in envelopes]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        self.events: list[Event] = [decode_event(_json(e)) for e in envelopes]

    @property
    def texts(self) -> list[str]:
        """The run's message items' texts, in order."""
        return message_texts(self.events)

    @property
    def reasoning(self) -> str:
        return "".join(e.data.delta for e in self.events if isinstance(e, Reasoning))

    def types(self) -> list[str]:
        return [e["type"] for e in self.envelopes]


def _json(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope).encode()


async def native_run(
    http: aiohttp.ClientSession, server: LiveServer, run_id: str,
    headers: dict[str, str] | None = None,
) -> NativeRun:
    return NativeRun(await read_events(http, url(server, f"/v1/runs/{run_id}/events"),
                                       headers=headers))
