"""Access control through real sockets: ownership 404s on every path and transport, token
checks, EventSource stream tokens, WebSocket expiry/refresh, limits and CORS."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.config import Settings
from tests.conftest import LiveServer, ServerFactory, url
from tests.process import ServerProcess
from tests.sse_client import iter_frames, read_events

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdefgh"
ADMIN = "ops-key-0123456789abcdefgh"
KEYS = f"{ALICE}=alice,{BOB}=bob,{ADMIN}=ops admin"
SECRET = "s" * 40


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def token_server(start_server: ServerFactory, **kw: Any) -> LiveServer:
    return await start_server(auth="token", api_keys=KEYS, **kw)


async def alice_run(http: aiohttp.ClientSession, server: LiveServer) -> dict[str, Any]:
    async with http.post(url(server, "/v1/runs"), headers=bearer(ALICE), json={
            "agent": "demo", "conversation_id": "alice-conv",
            "input": {"tokens": 0, "ask": "x", "reasoning": False, "tool_call": False}}) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())


async def status_code(http: aiohttp.ClientSession, method: str, u: str, key: str,
                      **kw: Any) -> tuple[int, str]:
    async with http.request(method, u, headers=bearer(key), **kw) as r:
        body = await r.json() if r.content_type == "application/json" else {}
        return r.status, body.get("error", {}).get("code", "")


async def test_second_user_gets_404_on_every_path(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await token_server(start_server)
    run = await alice_run(http, server)
    rid, cid = run["run_id"], run["conversation_id"]
    paths = [
        ("GET", f"/v1/runs/{rid}", {}),
        ("GET", f"/v1/runs/{rid}/events", {}),
        ("GET", f"/v1/conversations/{cid}/events", {}),
        ("POST", f"/v1/runs/{rid}/input", {"json": {"request_id": "q_x", "value": 1}}),
        ("POST", f"/v1/runs/{rid}/cancel", {}),
        ("POST", f"/v1/conversations/{cid}/stream-token", {}),
    ]
    for method, path, kw in paths:
        got = await status_code(http, method, url(server, path), BOB, **kw)
        assert got[0] == 404 and got[1].endswith("_not_found"), (path, got)
        # exactly what an unknown id gets, so existence is not revealed
        unknown = path.replace(rid, "r_unknown").replace(cid, "c_unknown")
        if unknown != path:
            assert (await status_code(http, method, url(server, unknown), BOB, **kw))[0] == 404
    ws_url = f"ws://{server.host}:{server.port}/v1/ws"
    async with connect(ws_url, additional_headers=bearer(BOB)) as ws:
        for cmd in ({"type": "subscribe", "conversation_id": cid},
                    {"type": "subscribe", "run_id": rid},
                    {"type": "input", "run_id": rid, "request_id": "q", "value": 1},
                    {"type": "cancel", "run_id": rid}):
            await ws.send(json.dumps(cmd))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["type"] == "error" and reply["code"].endswith("_not_found"), (cmd, reply)
    # the owner and an admin do see it
    assert (await status_code(http, "GET", url(server, f"/v1/runs/{rid}"), ALICE))[0] == 200
    assert (await status_code(http, "GET", url(server, f"/v1/runs/{rid}"), ADMIN))[0] == 200
    assert (await status_code(http, "POST", url(server, f"/v1/runs/{rid}/cancel"),
                              ALICE))[0] == 202


async def test_missing_malformed_expired_and_wrongly_signed_credentials(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth="jwt", jwt_secret=SECRET)
    u = url(server, "/v1/agents")
    good = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 5}, SECRET,
                         algorithm="HS256")
    forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "x" * 40,
                        algorithm="HS256")
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    async with http.get(u) as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == "unauthenticated"
    cases = [(good, 200, ""), (expired, 401, "token_expired"), (forged, 401, "invalid_token"),
             (no_sub, 401, "invalid_token"), ("not.a.jwt", 401, "invalid_token"),
             ("garbage", 401, "invalid_token")]
    for token, want, code in cases:
        got = await status_code(http, "GET", u, token)
        assert got == (want, code), (token[:20], got)
    async with http.get(u, headers={"Authorization": "Basic abc"}) as r:
        assert r.status == 401
    # health and metrics stay open for probes
    async with http.get(url(server, "/healthz")) as r:
        assert r.status == 200


async def test_rs256_jwts(start_server: ServerFactory, http: aiohttp.ClientSession,
                          tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    server = await start_server(auth="jwt", jwt_public_key_file=str(tmp_path / "pub.pem"))
    token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, key, algorithm="RS256")
    assert (await status_code(http, "GET", url(server, "/v1/agents"), token))[0] == 200
    hs = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert await status_code(http, "GET", url(server, "/v1/agents"), hs) == (401,
                                                                              "invalid_token")


async def test_eventsource_stream_token_in_query(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await token_server(start_server, stream_token_ttl=1)
    run = await alice_run(http, server)
    cid = run["conversation_id"]
    async with http.post(url(server, f"/v1/conversations/{cid}/stream-token"),
                         headers=bearer(ALICE)) as r:
        assert r.status == 201
        token = (await r.json())["token"]
    # a plain EventSource: no headers, token in the URL
    async with http.get(url(server, f"/v1/conversations/{cid}/events?access_token={token}")) as r:
        assert r.status == 200
        async for frame in iter_frames(r):
            if frame.event == "require_user_input":
                break
    async with http.get(url(server, f"{run['events_url']}?access_token={token}")) as r:
        assert r.status == 200
    # scoped: another conversation is invisible, writing is refused
    async with http.post(url(server, "/v1/runs"), headers=bearer(ALICE),
                         json={"agent": "demo", "conversation_id": "other"}) as r:
        assert r.status == 202
    async with http.get(url(server, f"/v1/conversations/other/events?access_token={token}")) as r:
        assert r.status == 404
    async with http.post(url(server, f"/v1/runs/{run['run_id']}/cancel?access_token={token}")) as r:
        assert r.status == 403 and (await r.json())["error"]["code"] == "insufficient_scope"
    # long-lived keys are not accepted in a URL
    async with http.get(url(server, f"/v1/conversations/{cid}/events?access_token={ALICE}")) as r:
        assert r.status == 401
    # and a cookie works like a header
    async with aiohttp.ClientSession(cookies={"agentstream_token": ALICE}) as jar, \
            jar.get(url(server, f"/v1/runs/{run['run_id']}")) as r:
        assert r.status == 200
    await asyncio.sleep(1.3)
    async with http.get(url(server, f"/v1/conversations/{cid}/events?access_token={token}")) as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == "token_expired"


async def test_tokens_in_urls_never_reach_the_logs(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "log.db", "--auth", "token", "--api-keys", KEYS,
                         "--log-level", "debug")
    try:
        await proc.start()
        async with aiohttp.ClientSession() as http:
            async with http.post(proc.base + "/v1/runs", headers=bearer(ALICE), json={
                    "agent": "demo", "input": {"tokens": 2, "delay_ms": 0}}) as r:
                run = await r.json()
            async with http.post(proc.base + f"/v1/conversations/{run['conversation_id']}"
                                 "/stream-token", headers=bearer(ALICE)) as r:
                token = (await r.json())["token"]
            await read_events(http, proc.base + run["events_url"] + f"?access_token={token}")
            async with http.get(proc.base + f"/v1/runs/{run['run_id']}?access_token=bogus.{ALICE}"
                                ".x") as r:
                assert r.status in (200, 401)
    finally:
        proc.stop()
    logs = proc.log_path.read_text()
    assert "/v1/runs/" in logs, "the access log was written"
    assert token not in logs and ALICE not in logs


async def test_websocket_auth_at_upgrade_expiry_and_refresh(
    start_server: ServerFactory,
) -> None:
    server = await start_server(auth="jwt", jwt_secret=SECRET)
    ws_url = f"ws://{server.host}:{server.port}/v1/ws"
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url):
            pass
    assert info.value.response.status_code == 401

    def token(ttl: float) -> str:
        return jwt.encode({"sub": "dave", "exp": int(time.time() + ttl)}, SECRET,
                          algorithm="HS256")

    started = time.monotonic()
    async with connect(ws_url, additional_headers=bearer(token(1.2))) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert time.monotonic() - started < 4

    async with connect(ws_url, additional_headers=bearer(token(1.2))) as ws:
        await ws.send(json.dumps({"type": "refresh", "ref": "r", "token": token(60)}))
        assert json.loads(await ws.recv()) == {"type": "ack", "ref": "r"}
        await asyncio.sleep(2.2)
        await ws.send(json.dumps({"type": "ping", "ref": "p"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong", "ref": "p"}
        other = jwt.encode({"sub": "eve", "exp": int(time.time() + 60)}, SECRET,
                           algorithm="HS256")
        await ws.send(json.dumps({"type": "refresh", "ref": "r2", "token": other}))
        assert json.loads(await ws.recv())["code"] == "invalid_token"


async def test_limits_answer_with_their_status_and_others_stay_healthy(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await token_server(start_server, runs_per_minute=3, max_connections_per_user=2,
                                max_subscriptions=2)
    body = {"agent": "demo", "input": {"tokens": 0, "ask": "x"}}
    statuses = []
    for _ in range(4):
        async with http.post(url(server, "/v1/runs"), headers=bearer(ALICE), json=body) as r:
            statuses.append(r.status)
            last = await r.json()
    assert statuses == [202, 202, 202, 429] and last["error"]["code"] == "rate_limited"
    async with http.post(url(server, "/v1/runs"), headers=bearer(BOB), json=body) as r:
        assert r.status == 202, "another user is not limited"
        bob_run = await r.json()
    # concurrent streams per user
    streams = [await http.get(url(server, f"/v1/runs/{bob_run['run_id']}/events"),
                              headers=bearer(BOB)) for _ in range(2)]
    async with http.get(url(server, f"/v1/runs/{bob_run['run_id']}/events"),
                        headers=bearer(BOB)) as r:
        assert r.status == 429 and (await r.json())["error"]["code"] == "too_many_connections"
    for s in streams:
        s.close()
    # subscriptions per socket
    async with connect(f"ws://{server.host}:{server.port}/v1/ws",
                       additional_headers=bearer(ADMIN)) as ws:
        for cid in ("alice-x", "alice-y", "alice-z"):
            await ws.send(json.dumps({"type": "start", "agent": "demo", "conversation_id": cid,
                                      "ref": cid, "input": {"tokens": 0, "ask": "x"}}))
        replies = []
        while len(replies) < 3:
            f = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if f["type"] in ("ack", "error"):
                replies.append(f)
        assert [f["type"] for f in replies] == ["ack", "ack", "error"]
        assert replies[2]["code"] == "too_many_subscriptions"
    async with http.get(url(server, "/metrics")) as r:
        text = await r.text()
    for limit in ("runs_per_minute", "connections", "subscriptions"):
        assert f'agentstream_requests_limited_total{{limit="{limit}"}}' in text
    async with http.get(url(server, "/readyz")) as r:
        assert r.status == 200


async def test_cors_allow_list(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server(cors_origins="https://app.example", cors_credentials=True)
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type"}
    async with http.options(url(server, "/v1/runs"), headers=pre) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
    async with http.options(url(server, "/v1/runs"),
                            headers={**pre, "Origin": "https://evil.example"}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    with pytest.raises(ValueError, match="cannot be combined"):
        Settings(cors_origins="*", cors_credentials=True).validate()
