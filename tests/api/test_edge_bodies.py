"""Request bodies at the edge (issues 10 and 11): read whole however they arrive, refused
with a coded 4xx when they are too big, not JSON, not UTF-8, nested too deeply or encoded."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from protocol.messages import MAX_JSON_DEPTH
from tests.conftest import LiveServer, ServerFactory, url
from tests.raw_http import build, chunked, request

JSON = ("Content-Type", "application/json")


def nested(depth: int) -> bytes:
    """A start body whose ``metadata`` makes the whole document ``depth`` levels deep."""
    inner = b"[" * (depth - 2) + b"]" * (depth - 2)
    return b'{"agent":"demo","metadata":{"a":' + inner + b'}}'


async def test_body_in_two_tcp_segments_is_read_whole(server: LiveServer) -> None:
    """Issue 11 item 9: a 4 KB body in two TCP segments was cut at the first one."""
    body = b'{"agent":"demo","input":{"text":"' + b"x" * 4000 + b'","tokens":1}}'
    data = build("POST", "/v1/runs", body, [JSON])
    split = data.index(b"\r\n\r\n") + 4 + 100
    got = await request(server, [data[:split], data[split:]], gap=0.05)
    assert got.status == 202, got.body


async def test_900kb_body_is_read_whole(server: LiveServer, http: aiohttp.ClientSession) -> None:
    """Issue 10 item 11: a 900 KB body (under the 1 MiB limit) got 400 malformed_json."""
    big = {"agent": "demo", "input": {"tokens": 1}, "metadata": {"blob": "y" * 900_000}}
    async with http.post(url(server, "/v1/runs"), json=big) as r:
        assert r.status == 202, await r.text()


async def test_chunked_body_split_over_chunks_is_read_whole(server: LiveServer) -> None:
    body = b'{"agent":"demo","input":{"tokens":1}}'
    data = build("POST", "/v1/runs", chunked(body[:10], body[10:20], body[20:]),
                 [JSON, ("Transfer-Encoding", "chunked")])
    got = await request(server, [data[:-20], data[-20:]], gap=0.05)
    assert got.status == 202, got.body


async def test_oversized_chunked_body_is_413(start_server: ServerFactory) -> None:
    """Issue 11 item 5: a chunked body over the limit got 400, not 413."""
    server = await start_server(max_body=4096)
    body = b'{"agent":"demo","input":"' + b"x" * 10_000 + b'"}'
    data = build("POST", "/v1/runs", chunked(*[body[i:i + 1000] for i in range(0, 11_000, 1000)]),
                 [JSON, ("Transfer-Encoding", "chunked")])
    head = data.index(b"\r\n\r\n") + 4
    # the first chunk alone is valid-looking JSON's start; the rest follows in later segments
    got = await request(server, [data[:head + 500], data[head + 500:head + 3000],
                                 data[head + 3000:]], gap=0.05)
    assert (got.status, got.code) == (413, "body_too_large"), got.body


async def test_oversized_streamed_body_from_a_client_is_413(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(max_body=4096)

    async def parts() -> AsyncIterator[bytes]:
        yield b'{"agent":"demo","input":"'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    async with http.post(url(server, "/v1/runs"), data=parts(), headers=dict([JSON])) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "body_too_large"


async def test_body_of_exactly_the_limit_is_accepted(start_server: ServerFactory) -> None:
    server = await start_server(max_body=4096)
    head = b'{"agent":"demo","input":{"text":"'
    tail = b'","tokens":1}}'
    body = head + b"z" * (4096 - len(head) - len(tail)) + tail
    assert len(body) == 4096
    got = await request(server, build("POST", "/v1/runs", chunked(body[:2000], body[2000:]),
                                      [JSON, ("Transfer-Encoding", "chunked")]))
    assert got.status == 202, got.body


@pytest.mark.parametrize("body", [
    b'{"agent":"demo","input":"\xff\xfe"}',
    b'{"agent":"demo","input":"\xed\xa0\x80"}',  # an encoded surrogate
    b'{"agent":"d\xc3"}',
], ids=["ff", "surrogate", "truncated"])
async def test_invalid_utf8_body_is_400_malformed_json(server: LiveServer, body: bytes) -> None:
    """Issue 10 item 14: invalid UTF-8 in a JSON body was a 500."""
    got = await request(server, build("POST", "/v1/runs", body, [JSON]))
    assert (got.status, got.code) == (400, "malformed_json"), got.body


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 200_000])
async def test_deeply_nested_json_is_400_malformed_json(server: LiveServer, depth: int) -> None:
    """Issue 11 item 4: a few thousand levels raised RecursionError (500)."""
    got = await request(server, build("POST", "/v1/runs", nested(depth), [JSON]))
    assert (got.status, got.code) == (400, "malformed_json"), got.body
    assert b"nested too deeply" in got.body


async def test_nesting_up_to_the_limit_is_accepted(server: LiveServer) -> None:
    got = await request(server, build("POST", "/v1/runs", nested(MAX_JSON_DEPTH), [JSON]))
    assert got.status == 202, got.body


async def test_unbalanced_deep_brackets_are_400(server: LiveServer) -> None:
    got = await request(server, build("POST", "/v1/runs", b"[" * 100_000, [JSON]))
    assert (got.status, got.code) == (400, "malformed_json"), got.body


@pytest.mark.parametrize(("encoding", "body"), [
    ("gzip", gzip.compress(b'{"agent":"demo"}')),
    ("gzip", b"this is not gzip"),
    ("deflate", zlib.compress(b'{"agent":"demo"}')),
    ("deflate", b"nor deflate"),
    ("br", b"\x0b\x02\x80{}\x03"),
    ("zstd", b"(\xb5/\xfd"),
    ("compress", b"x"),
    ("x-custom", b'{"agent":"demo"}'),
    ("gzip, identity", gzip.compress(b'{"agent":"demo"}')),
], ids=["gzip", "gzip-corrupt", "deflate", "deflate-corrupt", "br", "zstd", "compress",
        "unknown", "list"])
async def test_content_encoding_is_415_unsupported_content_encoding(
    server: LiveServer, encoding: str, body: bytes
) -> None:
    """Issue 11 item 8: a gzip/br/corrupt Content-Encoding was a 500 or aiohttp's
    plain-text 'Please install Brotli'."""
    got = await request(server, build("POST", "/v1/runs", body,
                                      [JSON, ("Content-Encoding", encoding)]))
    assert (got.status, got.code) == (415, "unsupported_content_encoding"), got.body
    assert got.headers["content-type"] == "application/json"


async def test_identity_content_encoding_is_accepted(server: LiveServer) -> None:
    got = await request(server, build("POST", "/v1/runs", b'{"agent":"demo"}',
                                      [JSON, ("Content-Encoding", "identity")]))
    assert got.status == 202, got.body


async def test_encoded_body_on_the_input_endpoint_is_415(server: LiveServer) -> None:
    got = await request(server, build("POST", "/v1/runs/r_x/input",
                                      gzip.compress(b'{"request_id":"q"}'),
                                      [JSON, ("Content-Encoding", "gzip")]))
    # the run is looked up first (404), as for any input to an unknown run
    assert got.status in (404, 415), got.body
    run = await request(server, build("POST", "/v1/runs", b'{"agent":"demo"}', [JSON]))
    rid = run.json()["run_id"]
    got = await request(server, build("POST", f"/v1/runs/{rid}/input",
                                      gzip.compress(b'{"request_id":"q"}'),
                                      [JSON, ("Content-Encoding", "gzip")]))
    assert (got.status, got.code) == (415, "unsupported_content_encoding"), got.body


@pytest.mark.parametrize("content_type", [
    None,
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "application/json; charset=latin-1",
    "application/jsonx",
], ids=["none", "text", "text-utf8", "form", "multipart", "octet", "latin1", "jsonx"])
async def test_json_endpoints_accept_only_application_json(
    server: LiveServer, content_type: str | None
) -> None:
    """Issue 11 item 1: text/plain and form bodies were parsed as JSON (simple cross-site
    requests need no CORS preflight, so that made CSRF possible)."""
    headers = [] if content_type is None else [("Content-Type", content_type)]
    got = await request(server, build("POST", "/v1/runs", b'{"agent":"demo"}', headers))
    assert (got.status, got.code) == (415, "unsupported_media_type"), got.body


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8",
])
async def test_json_content_types_are_accepted(server: LiveServer, content_type: str) -> None:
    got = await request(server, build("POST", "/v1/runs", b'{"agent":"demo"}',
                                      [("Content-Type", content_type)]))
    assert got.status == 202, got.body
