"""CSRF and cross-site WebSocket hijacking (issue 11 items 1 and 2), through real sockets.

The ``agentstream_token`` cookie is ambient: a browser attaches it to requests that other
sites' pages make. Cookie requests that change state, and WebSocket upgrades, must come from
this origin or one on the CORS allow-list; Bearer and stream-token requests are unaffected.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.auth.origin import allowed_origins
from tests.conftest import LiveServer, ServerFactory, url

ALICE = "alice-key-0123456789abcdef"
KEYS = f"{ALICE}=alice"
EVIL = "https://evil.example"
APP = "https://app.example"
WAITING = {"tokens": 0, "ask": "wait", "reasoning": False, "tool_call": False}


def cookie(**extra: str) -> dict[str, str]:
    return {"Cookie": f"agentstream_token={ALICE}", **extra}


def bearer(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ALICE}", **extra}


def own_origin(server: LiveServer) -> str:
    return f"http://{server.host}:{server.port}"


async def token_server(start_server: ServerFactory, **kw: Any) -> LiveServer:
    return await start_server(auth="token", api_keys=KEYS, **kw)


async def post(http: aiohttp.ClientSession, server: LiveServer, path: str,
               headers: dict[str, str], body: Any = None,
               content_type: str = "application/json") -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    hdrs = {**headers, **({"Content-Type": content_type} if data is not None else {})}
    async with http.post(url(server, path), data=data, headers=hdrs) as r:
        payload = await r.json() if r.content_type == "application/json" else {}
        return r.status, payload.get("error", {}).get("code", "")


async def exists(http: aiohttp.ClientSession, server: LiveServer, cid: str) -> bool:
    async with http.get(url(server, f"/v1/conversations/{cid}/events"), headers=bearer(),
                        params={"last_event_id": "0"}) as r:
        return r.status == 200


@pytest.fixture
async def jar_free_http() -> Any:
    # no cookie jar: each test sends exactly the Cookie header it means to
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_cookie_post_from_a_foreign_origin_is_403(
    start_server: ServerFactory, jar_free_http: aiohttp.ClientSession
) -> None:
    """Issue 11 item 1: a page on another site could start runs as the logged-in user."""
    server = await token_server(start_server)
    body = {"agent": "demo", "conversation_id": "csrf", "input": WAITING}
    got = await post(jar_free_http, server, "/v1/runs", cookie(Origin=EVIL), body)
    assert got == (403, "origin_not_allowed")
    assert not await exists(jar_free_http, server, "csrf"), "the forged start ran"
    # the classic forged form: a foreign page posting text/plain
    got = await post(jar_free_http, server, "/v1/runs", cookie(Origin=EVIL), body,
                     content_type="text/plain")
    assert got == (403, "origin_not_allowed")
    for origin in ("null", "file://", "not a url", EVIL.replace("https", "http")):
        got = await post(jar_free_http, server, "/v1/runs", cookie(Origin=origin), body)
        assert got == (403, "origin_not_allowed"), origin


async def test_cookie_writes_on_every_path_need_an_allowed_origin(
    start_server: ServerFactory, jar_free_http: aiohttp.ClientSession
) -> None:
    """Issue 11 item 1: cancel, answer, stream-token and schedules were forgeable too."""
    server = await token_server(start_server)
    async with jar_free_http.post(url(server, "/v1/runs"), headers=bearer(), json={
            "agent": "demo", "conversation_id": "victim", "input": WAITING}) as r:
        run = await r.json()
    rid, cid = run["run_id"], run["conversation_id"]
    writes: list[tuple[str, str, Any]] = [
        ("POST", f"/v1/runs/{rid}/cancel", None),
        ("POST", f"/v1/runs/{rid}/input", {"request_id": "q_x", "value": 1}),
        ("POST", f"/v1/conversations/{cid}/stream-token", None),
        ("POST", "/v1/schedules", {"agent": "demo", "interval_seconds": 60}),
        ("DELETE", "/v1/schedules/s_x", None),
    ]
    for method, path, body in writes:
        for headers in (cookie(Origin=EVIL), cookie(), cookie(Referer=EVIL + "/page")):
            async with jar_free_http.request(method, url(server, path), headers=headers,
                                             json=body) as r:
                assert r.status == 403, (method, path, headers)
                assert (await r.json())["error"]["code"] == "origin_not_allowed"
    async with jar_free_http.get(url(server, f"/v1/runs/{rid}"), headers=bearer()) as r:
        assert (await r.json())["status"] in ("running", "waiting_input"), "a forged cancel ran"


async def test_cookie_post_without_origin_is_403(
    start_server: ServerFactory, jar_free_http: aiohttp.ClientSession
) -> None:
    server = await token_server(start_server)
    got = await post(jar_free_http, server, "/v1/runs", cookie(), {"agent": "demo"})
    assert got == (403, "origin_not_allowed")


async def test_cookie_post_from_own_or_allowed_origin_is_accepted(
    start_server: ServerFactory, jar_free_http: aiohttp.ClientSession
) -> None:
    server = await token_server(start_server, cors_origins=f"{APP}, http://localhost:3000")
    body = {"agent": "demo", "input": WAITING}
    for headers in (cookie(Origin=own_origin(server)), cookie(Origin=APP),
                    cookie(Origin="http://localhost:3000"),
                    # Referer is the fallback when a privacy setting dropped Origin
                    cookie(Referer=own_origin(server) + "/app/page?x=1"),
                    cookie(Referer=APP + "/")):
        assert (await post(jar_free_http, server, "/v1/runs", headers, body))[0] == 202, headers
    assert (await post(jar_free_http, server, "/v1/runs", cookie(Origin=EVIL), body)) == (
        403, "origin_not_allowed")
    # a JSON endpoint still takes only JSON, also from the own origin
    got = await post(jar_free_http, server, "/v1/runs", cookie(Origin=own_origin(server)),
                     body, content_type="text/plain")
    assert got == (415, "unsupported_media_type")


async def test_wildcard_cors_never_vouches_for_a_cookie(
    start_server: ServerFactory, jar_free_http: aiohttp.ClientSession
) -> None:
    server = await token_server(start_server, cors_origins="*")
    got = await post(jar_free_http, server, "/v1/runs", cookie(Origin=EVIL), {"agent": "demo"})
    assert got == (403, "origin_not_allowed")


async def test_cookie_reads_from_any_origin_are_unaffected(
    start_server: ServerFactory, jar_free_http: aiohttp.ClientSession
) -> None:
    server = await token_server(start_server)
    async with jar_free_http.get(url(server, "/v1/agents"), headers=cookie(Origin=EVIL)) as r:
        assert r.status == 200


async def test_bearer_and_stream_token_requests_are_unaffected(
    start_server: ServerFactory, jar_free_http: aiohttp.ClientSession
) -> None:
    server = await token_server(start_server)
    body = {"agent": "demo", "conversation_id": "mine", "input": WAITING}
    assert (await post(jar_free_http, server, "/v1/runs", bearer(Origin=EVIL), body))[0] == 202
    # a header wins over the cookie: the request is not cookie-authenticated
    assert (await post(jar_free_http, server, "/v1/runs", {**bearer(), **cookie(Origin=EVIL)},
                       {"agent": "demo"}))[0] == 202
    async with jar_free_http.post(url(server, "/v1/conversations/mine/stream-token"),
                                  headers=bearer(Origin=EVIL)) as r:
        assert r.status == 201
        token = (await r.json())["token"]
    async with jar_free_http.get(url(server, "/v1/conversations/mine/events"),
                                 params={"access_token": token},
                                 headers={"Origin": EVIL}) as r:
        assert r.status == 200


async def test_websocket_with_cookie_from_a_foreign_origin_is_403(
    start_server: ServerFactory,
) -> None:
    """Issue 11 item 2: /v1/ws accepted a foreign Origin with the user's cookie."""
    server = await token_server(start_server, cors_origins=APP)
    ws_url = f"ws://{server.host}:{server.port}/v1/ws"
    for origin in (EVIL, None, "null"):
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url, origin=origin,
                               additional_headers=cookie()):
                pass
        assert info.value.response.status_code == 403, origin
        assert json.loads(info.value.response.body or b"{}")["error"]["code"] == (
            "origin_not_allowed")
    for origin in (own_origin(server), APP):
        async with connect(ws_url, origin=origin,
                           additional_headers=cookie()) as ws:
            await ws.send(json.dumps({"type": "ping", "ref": "p"}))
            assert json.loads(await ws.recv()) == {"type": "pong", "ref": "p"}
    # Bearer from any origin: a page cannot make a browser send the header by itself
    async with connect(ws_url, origin=EVIL,
                       additional_headers=bearer()) as ws:
        await ws.send(json.dumps({"type": "ping", "ref": "b"}))
        assert json.loads(await ws.recv()) == {"type": "pong", "ref": "b"}


def test_allow_list_normalization() -> None:
    allowed = allowed_origins(" https://App.Example:443 , http://localhost:3000,*,null, ")
    assert allowed == frozenset({"https://app.example", "http://localhost:3000"})
    assert allowed_origins("http://[::1]:8080") == frozenset({"http://[::1]:8080"})


async def test_without_auth_a_foreign_page_cannot_act_through_the_browser(
    start_server: ServerFactory, jar_free_http: aiohttp.ClientSession
) -> None:
    """``--auth none``: no credential to steal, but a page on another site could still cancel
    a run (a body-less POST needs no preflight) or open a WebSocket (no CORS at all) through
    the user's browser. A browser request (it carries Origin) must come from an allowed
    origin; clients without Origin (curl, SDKs) are unaffected."""
    server = await start_server(cors_origins=APP)
    http = jar_free_http
    async with http.post(url(server, "/v1/runs"), json={"agent": "demo", "input": WAITING}) as r:
        assert r.status == 202
        run_id = (await r.json())["run_id"]
    cancel = f"/v1/runs/{run_id}/cancel"
    assert await post(http, server, cancel, {"Origin": EVIL}) == (403, "origin_not_allowed")
    assert await post(http, server, cancel, {"Origin": "null"}) == (403, "origin_not_allowed")
    async with http.get(url(server, f"/v1/runs/{run_id}")) as r:
        assert (await r.json())["status"] in ("running", "waiting_input")  # not cancelled
    ws_url = f"ws://{server.host}:{server.port}/v1/ws"
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url, origin=EVIL):
            pass
    assert info.value.response.status_code == 403
    for origin in (own_origin(server), APP, None):  # same site, allowed, not a browser
        async with connect(ws_url, origin=origin) as ws:
            await ws.send(json.dumps({"type": "ping", "ref": "p"}))
            assert json.loads(await ws.recv()) == {"type": "pong", "ref": "p"}
    # reads stay open to any origin (the browser's CORS decides who may read them)
    async with http.get(url(server, f"/v1/runs/{run_id}"), headers={"Origin": EVIL}) as r:
        assert r.status == 200
    assert await post(http, server, cancel, {"Origin": APP}) == (202, "")
