"""Bad input gets a coded error over HTTP, never a 500, a hang or lost data."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import LiveServer, ServerFactory, url
from tests.sse_client import read_events


async def call(http: aiohttp.ClientSession, method: str, u: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, u, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


def assert_error(status: int, body: Any, want_status: int, want_code: str) -> None:
    assert status == want_status, body
    assert set(body) == {"error"} and body["error"]["code"] == want_code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"[1,2]", 422, "invalid_field"),
        (b'{"input":"hi"}', 422, "invalid_field"),
        (b'{"agent":5}', 422, "invalid_field"),
        (b'{"agent":"demo","surprise":1}', 422, "invalid_field"),
        (b'{"agent":"demo","conversation_id":"has space"}', 422, "invalid_field"),
        (b'{"agent":"demo","on_disconnect":"explode"}', 422, "invalid_field"),
        (b'{"agent":"nope"}', 422, "unknown_agent"),
        (b'{"agent":"demo","input":{"tokens":"many"}}', 422, "invalid_input"),
        (b'{"agent":"demo","input":{"what":1}}', 422, "invalid_input"),
        (b'{"agent":"demo","input":42}', 422, "invalid_input"),
    ],
)
async def test_start_run_bad_bodies(
    server: LiveServer, http: aiohttp.ClientSession, payload: bytes, status: int, code: str
) -> None:
    got = await call(http, "POST", url(server, "/v1/runs"), data=payload,
                     headers={"Content-Type": "application/json"})
    assert_error(*got, status, code)


async def test_huge_body_is_413(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server(max_body=4096)
    big = b'{"agent":"demo","input":"' + b"x" * 10_000 + b'"}'
    assert_error(*await call(http, "POST", url(server, "/v1/runs"), data=big,
                             headers={"Content-Type": "application/json"}),
                 413, "body_too_large")


async def test_wrong_media_type_is_415(server: LiveServer, http: aiohttp.ClientSession) -> None:
    got = await call(http, "POST", url(server, "/v1/runs"), data=b"agent=demo",
                     headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert_error(*got, 415, "unsupported_media_type")


async def test_unknown_ids_are_404_and_bad_ids_422(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    for method, path in [
        ("GET", "/v1/runs/r_missing"),
        ("GET", "/v1/runs/r_missing/events"),
        ("POST", "/v1/runs/r_missing/cancel"),
    ]:
        assert_error(*await call(http, method, url(server, path)), 404, "run_not_found")
    assert_error(*await call(http, "GET", url(server, "/v1/conversations/c_missing/events")),
                 404, "conversation_not_found")
    got = await call(http, "POST", url(server, "/v1/runs/r_missing/input"),
                     json={"request_id": "q", "value": 1})
    assert_error(*got, 404, "run_not_found")
    assert_error(*await call(http, "GET", url(server, "/v1/runs/" + "x" * 65)), 422, "invalid_id")
    assert_error(*await call(http, "GET", url(server, "/nope")), 404, "not_found")
    assert_error(*await call(http, "DELETE", url(server, "/v1/runs")), 405, "method_not_allowed")


async def test_bad_last_event_id(server: LiveServer, http: aiohttp.ClientSession) -> None:
    async with http.post(url(server, "/v1/runs"),
                         json={"agent": "demo", "input": {"tokens": 1, "delay_ms": 0}}) as r:
        run = await r.json()
    events = await read_events(http, url(server, run["events_url"]))
    for bad in ["abc", "-1", "1.5", "9" * 30, " 3x"]:
        got = await call(http, "GET", url(server, run["events_url"]),
                         headers={"Last-Event-ID": bad})
        assert_error(*got, 400, "invalid_last_event_id")
    got = await call(http, "GET", url(server, f"/v1/conversations/{run['conversation_id']}/events"
                                      "?last_event_id=100000"))
    assert_error(*got, 400, "invalid_last_event_id")
    # nothing was lost or corrupted by the bad requests
    assert await read_events(http, url(server, run["events_url"])) == events


async def test_input_errors(server: LiveServer, http: aiohttp.ClientSession) -> None:
    async with http.post(url(server, "/v1/runs"), json={
        "agent": "demo", "input": {"tokens": 0, "ask": "pick", "choices": ["a", "b"]}}) as r:
        run = await r.json()
    answer = url(server, f"/v1/runs/{run['run_id']}/input")
    assert_error(*await call(http, "POST", answer, data=b"{",
                             headers={"Content-Type": "application/json"}),
                 400, "malformed_json")
    assert_error(*await call(http, "POST", answer, json={"value": 1}), 422, "invalid_field")
    assert_error(*await call(http, "POST", answer, json={"request_id": "q_nope", "value": "a"}),
                 404, "input_request_not_found")
    request_id = None
    for _ in range(100):
        async with http.get(url(server, f"/v1/runs/{run['run_id']}")) as r:
            info = await r.json()
        if info.get("pending_input"):
            request_id = info["pending_input"]["request_id"]
            break
        import asyncio
        await asyncio.sleep(0.02)
    assert request_id
    assert_error(*await call(http, "POST", answer, json={"request_id": request_id, "value": "c"}),
                 422, "invalid_input_value")
    status, _ = await call(http, "POST", answer, json={"request_id": request_id, "value": "a"})
    assert status == 200
    events = await read_events(http, url(server, run["events_url"]))
    assert events[-1]["data"]["status"] == "completed"
    assert_error(*await call(http, "POST", answer, json={"request_id": request_id, "value": "b"}),
                 409, "input_already_answered")


async def test_agents_health_ready(server: LiveServer, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "GET", url(server, "/v1/agents"))
    assert status == 200
    demo = next(a for a in body["agents"] if a["name"] == "demo")
    assert demo["can_request_input"] is True
    assert (await call(http, "GET", url(server, "/healthz")))[0] == 200
    assert (await call(http, "GET", url(server, "/readyz")))[0] == 200
