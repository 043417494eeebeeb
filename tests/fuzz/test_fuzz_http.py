"""Fuzzing the HTTP entry points (issue 11) against a live server over raw sockets: random
methods, paths and ids, query strings, headers (credentials, Origin, Content-Type and
-Encoding, Last-Event-ID, Accept) and bodies (random bytes, JSON-shaped, deeply nested,
oversized, chunked). Every answer is a 2xx or a coded 4xx (``{"error": {code, message}}``),
never a 5xx or a hang; afterwards no stream or connection slot is left behind.

Short by design (about 200 examples, no deadline); ``FUZZ_EXAMPLES=5000`` for a long run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.state import STATE
from tests.fuzz.conftest import FUZZ_KEY, ThreadedServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(max_examples=EXAMPLES or 200, deadline=None, derandomize=EXAMPLES is None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
TIMEOUT = 15.0  # a request that gets no answer in this long is a hang (the test fails)

# ---- a blocking raw HTTP/1.1 client ------------------------------------------------------


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def _read_until(sock: socket.socket, buf: bytearray, marker: bytes) -> int:
    while (at := buf.find(marker)) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {bytes(buf[:200])!r}")
        buf += chunk
    return at


def _read_exactly(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def exchange(port: int, data: bytes, method: str) -> Answer:
    """Send one request, read its answer; an SSE 200 is answered once its headers are in."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        # the server may answer early (413, 415) and close: then read that answer
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        buf = bytearray()
        at = _read_until(sock, buf, b"\r\n\r\n")
        head = bytes(buf[:at]).decode("latin-1").split("\r\n")
        del buf[:at + 4]
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (101, 204, 304):
            return Answer(status, headers, b"")
        if headers.get("content-type", "").startswith("text/event-stream"):
            return Answer(status, headers, b"")
        if "content-length" in headers:
            return Answer(status, headers, _read_exactly(sock, buf, int(headers["content-length"])))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                at = _read_until(sock, buf, b"\r\n")
                size = int(bytes(buf[:at]).split(b";")[0], 16)
                del buf[:at + 2]
                if size == 0:
                    return Answer(status, headers, body)
                body += _read_exactly(sock, buf, size + 2)[:-2]
        while chunk := sock.recv(65536):
            buf += chunk
        return Answer(status, headers, bytes(buf))


# ---- strategies --------------------------------------------------------------------------

# Header values a client can send: printable, any script (no CR, LF, NUL or controls,
# which HTTP framing itself forbids; aiohttp's parser refuses those before any handler).
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, blacklist_categories=["Cc", "Cs"]),
    max_size=40,
).map(lambda s: s.strip())
token_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1,
                     max_size=12)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=15,
)
start_bodies = st.fixed_dictionaries(
    {"agent": st.sampled_from(["demo", "nope", "", "a b"])},
    optional={
        "input": st.one_of(json_values, st.fixed_dictionaries(
            {}, optional={"tokens": st.integers(-2, 3), "delay_ms": st.integers(0, 5),
                          "text": st.text(max_size=20), "ask": st.text(max_size=5),
                          "fail": st.booleans()})),
        "conversation_id": st.text(max_size=70),
        "on_disconnect": st.sampled_from(["continue", "cancel", "x"]),
        "metadata": json_values,
        "request_id": st.text(max_size=10),
        "value": json_values,
        "interval_seconds": st.floats(allow_nan=True),
    },
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["json"] * 5 + ["none", "bytes", "mutated", "deep", "big"]))
    if kind == "none":
        return None
    if kind == "json":
        return json.dumps(draw(start_bodies)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "mutated":
        raw = json.dumps(draw(start_bodies)).encode()
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.binary(max_size=4)) + raw[at + draw(st.integers(0, 3)):]
    if kind == "deep":
        depth = draw(st.integers(30, 50_000))
        return b'{"agent":"demo","input":' + b"[" * depth + b"]" * depth + b"}"
    return b'{"agent":"demo","metadata":"' + b"x" * draw(st.integers(60_000, 200_000)) + b'"}'


# (method, path): the routes as they are meant to be called; a random method some of the time
ROUTES = [
    ("POST", "/v1/runs"), ("GET", "/v1/runs/{id}"), ("GET", "/v1/runs/{id}/events"),
    ("POST", "/v1/runs/{id}/input"), ("POST", "/v1/runs/{id}/cancel"),
    ("GET", "/v1/conversations/{id}/events"), ("POST", "/v1/conversations/{id}/stream-token"),
    ("GET", "/v1/agents"), ("POST", "/v1/schedules"), ("GET", "/v1/schedules"),
    ("GET", "/v1/schedules/{id}"), ("DELETE", "/v1/schedules/{id}"), ("GET", "/v1/ws"),
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/{id}"),
]
METHODS = ["GET", "POST", "HEAD", "DELETE", "PUT", "PATCH", "OPTIONS"]


def usually(draw: st.DrawFn, common: Any, rare: st.SearchStrategy[Any],
            percent: int = 75) -> Any:
    """``common`` most of the time, else a draw from ``rare``."""
    return common if draw(st.integers(0, 99)) < percent else draw(rare)


@st.composite
def requests(draw: st.DrawFn, known: dict[str, str], port: int) -> tuple[str, bytes]:
    method, template = draw(st.sampled_from(ROUTES))
    method = usually(draw, method, st.sampled_from(METHODS), 80)
    ident = usually(draw, None, st.text(max_size=80), 70) or draw(
        st.sampled_from(sorted(known.values())))
    path = template.replace("{id}", quote(ident, safe=""))
    query = draw(st.dictionaries(
        st.sampled_from(["last_event_id", "access_token", "after", "x"]) | st.text(max_size=5),
        st.sampled_from(["0", "3", "-1", "\u00b2", "\u0661"]) | st.text(max_size=20),
        max_size=2))
    if query:
        path += "?" + urlencode(query)
    own = f"http://127.0.0.1:{port}"
    json_type = "application/json" if method in ("POST", "PUT", "PATCH") else None
    headers: dict[str, Any] = {
        "Authorization": usually(draw, f"Bearer {FUZZ_KEY}", st.sampled_from(
            [None, "Bearer nope", "Basic eA==", "Bearer "]) | header_text),
        "Cookie": usually(draw, None, st.sampled_from(
            [f"agentstream_token={FUZZ_KEY}", "agentstream_token=nope"]) | header_text),
        "Origin": usually(draw, None, st.sampled_from(
            [own, "https://app.example", "https://evil.example", "null"]) | header_text),
        "Referer": usually(draw, None, st.sampled_from([own + "/x", "https://evil.example/"]),
                           90),
        "Content-Type": usually(draw, json_type, st.sampled_from(
            [None, "application/json; charset=utf-8", "text/plain",
             "application/x-www-form-urlencoded", "application/json; charset=latin-1"])
            | header_text),
        "Content-Encoding": usually(draw, None, st.sampled_from(
            ["gzip", "br", "zstd", "deflate", "identity", "gzip, br"]) | token_text, 85),
        "Accept": usually(draw, None, st.sampled_from(
            ["text/event-stream", "application/json", "*/*"]) | header_text, 60),
        "Last-Event-ID": usually(draw, None, st.sampled_from(
            ["0", "1", "999999", "\u00b2", "\uff11", "-1", " 2 "]) | header_text, 60),
        "X-Request-ID": usually(draw, None, header_text, 90),
    }
    body = draw(bodies()) if method in ("POST", "PUT", "PATCH") or draw(
        st.integers(0, 9)) == 0 else None
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + own[7:].encode()]
    for name, value in headers.items():
        if value is not None and value != "":
            lines.append(name.encode() + b": " + value.encode())
    if body is not None:
        if draw(st.booleans()):
            lines.append(b"Content-Length: %d" % len(body))
            payload = body
        else:
            lines.append(b"Transfer-Encoding: chunked")
            cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
            parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
    else:
        payload = b""
    lines.append(b"Connection: close")
    return method, b"\r\n".join(lines) + b"\r\n\r\n" + payload


# ---- the test ----------------------------------------------------------------------------


def bearer_json(server: ThreadedServer, method: str, path: str, body: Any = None) -> Any:
    data = b"" if body is None else json.dumps(body).encode()
    req = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {FUZZ_KEY}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
           "Connection: close\r\n\r\n").encode() + data
    answer = exchange(server.port, req, method)
    assert answer.status < 300, answer.body
    return json.loads(answer.body)


@pytest.fixture(scope="module")
def known_ids(threaded_server: ThreadedServer) -> dict[str, str]:
    done = bearer_json(threaded_server, "POST", "/v1/runs",
                       {"agent": "demo", "input": {"tokens": 2, "delay_ms": 0}})
    waiting = bearer_json(threaded_server, "POST", "/v1/runs",
                          {"agent": "demo", "input": {"tokens": 0, "ask": "x"}})
    schedule = bearer_json(threaded_server, "POST", "/v1/schedules",
                           {"agent": "demo", "interval_seconds": 3600})
    return {"run": done["run_id"], "conversation": done["conversation_id"],
            "waiting_run": waiting["run_id"], "waiting_conv": waiting["conversation_id"],
            "schedule": schedule["schedule_id"]}


STATS: dict[str, int] = {}


def test_fuzz_http_entry_points(threaded_server: ThreadedServer,
                                known_ids: dict[str, str]) -> None:
    port = threaded_server.port

    @FUZZ
    @given(requests(known_ids, port))
    def one(req: tuple[str, bytes]) -> None:
        method, data = req
        answer = exchange(port, data, method)
        key = f"{answer.status} " + (json.loads(answer.body)["error"]["code"]
                                     if answer.status >= 400 and answer.body else "")
        STATS[key] = STATS.get(key, 0) + 1
        assert 200 <= answer.status < 300 or 400 <= answer.status < 500 or \
            answer.status == 101, (answer.status, answer.body[:300], data[:300])
        if answer.status >= 400 and method != "HEAD":
            assert answer.headers.get("content-type") == "application/json", answer.body[:200]
            error = json.loads(answer.body)["error"]
            assert isinstance(error["code"], str) and error["code"], error
            assert isinstance(error["message"], str), error

    one()
    print("fuzz_http answers:", sum(STATS.values()), dict(sorted(STATS.items())))

    # afterwards: healthy, and no stream or connection slot left behind
    assert exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    "GET").status == 200

    async def leftovers() -> tuple[int, dict[str, int]]:
        st = threaded_server.server.app[STATE]
        return len(st.sinks), dict(st.connections._open)

    deadline = time.monotonic() + 20  # dropped SSE peers are noticed at the next ping (1 s)
    while threaded_server.call(leftovers()) != (0, {}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threaded_server.call(leftovers()) == (0, {})


def test_fuzz_server_still_serves_a_run(threaded_server: ThreadedServer) -> None:
    run = bearer_json(threaded_server, "POST", "/v1/runs",
                      {"agent": "demo", "input": {"tokens": 3, "delay_ms": 0}})
    info = run
    for _ in range(200):
        info = bearer_json(threaded_server, "GET", f"/v1/runs/{run['run_id']}")
        if info["status"] == "completed":
            break
        threaded_server.call(asyncio.sleep(0.02))
    assert info["status"] == "completed"
