"""Stream positions at the edge (issues 10 and 11): ``Last-Event-ID`` and
``?last_event_id`` are ASCII digits or a coded 400, never a 500 and never a Unicode digit
taken as a number."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import LiveServer, url
from tests.raw_http import build, request
from tests.sse_client import read_events


async def finished_run(server: LiveServer, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.post(url(server, "/v1/runs"),
                         json={"agent": "demo", "input": {"tokens": 2, "delay_ms": 0}}) as r:
        run = dict(await r.json())
    await read_events(http, url(server, run["events_url"]))  # returns after done
    return run


# ---- Last-Event-ID: ASCII digits only --------------------------------------------------

# superscript two, Arabic-Indic one, full-width one-two, NKo one, ASCII with a superscript,
# Arabic-Indic three-four: all pass str.isdigit()
UNICODE_DIGITS = ["\u00b2", "\u0661", "\uff11\uff12", "\u07c1", "3\u00b2", "\u0663\u0664"]


@pytest.mark.parametrize("value", UNICODE_DIGITS)
async def test_unicode_digits_in_last_event_id_are_400(
    server: LiveServer, http: aiohttp.ClientSession, value: str
) -> None:
    """Issue 11 item 8 / issue 10 item 14: superscript two passed isdigit() and int() raised (500);
    Arabic and full-width digits were taken as positions."""
    run = await finished_run(server, http)
    for path in (run["events_url"], f"/v1/conversations/{run['conversation_id']}/events"):
        got = await request(server, build("GET", path, None,
                                          [("Last-Event-ID", value.encode())]))
        assert (got.status, got.code) == (400, "invalid_last_event_id"), got.body


@pytest.mark.parametrize("value", UNICODE_DIGITS)
async def test_unicode_digits_in_last_event_id_query_are_400(
    server: LiveServer, http: aiohttp.ClientSession, value: str
) -> None:
    run = await finished_run(server, http)
    async with http.get(url(server, run["events_url"]),
                        params={"last_event_id": value}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_last_event_id"


async def test_non_utf8_last_event_id_is_400(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    run = await finished_run(server, http)
    got = await request(server, build("GET", run["events_url"], None,
                                      [("Last-Event-ID", b"\xff\xfe1")]))
    assert (got.status, got.code) == (400, "invalid_last_event_id"), got.body


async def test_ascii_positions_still_resume(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    run = await finished_run(server, http)
    events = await read_events(http, url(server, run["events_url"]))
    resumed = await read_events(http, url(server, run["events_url"]),
                                headers={"Last-Event-ID": f" {events[1]['seq']} "})
    assert resumed == events[2:]
