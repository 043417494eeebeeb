"""Opt-in gzip for SSE (issue 16): each event is flushed as it is written (a client sees a
question while the run waits on it), the stream is one valid gzip member, and clients that
do not ask, or servers that do not offer it, get identity."""

from __future__ import annotations

import json
import zlib
from typing import Any

import aiohttp

from app.sinks.sse import accepts_gzip
from protocol.sse_parser import SseParser
from tests.conftest import LiveServer, ServerFactory, url
from tests.helpers import check_run, post_run

ASK = {"text": "hi", "tokens": 30, "delay_ms": 0, "ask": "Proceed?"}


class GzipReader:
    """Inflates a gzipped SSE response as it arrives and parses its events."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.parser = SseParser()
        self.events: list[dict[str, Any]] = []
        self.wire_bytes = 0

    async def until(self, stop: str) -> list[dict[str, Any]]:
        while not self.events or self.events[-1]["type"] != stop:
            chunk = await self.resp.content.readany()
            assert chunk, "the stream ended early"
            self.wire_bytes += len(chunk)
            for frame in self.parser.feed(self.inflate.decompress(chunk)):
                if frame.data:
                    self.events.append(json.loads(frame.data))
        return self.events


async def test_gzip_stream_flushes_every_event(
    start_server: ServerFactory,
) -> None:
    server: LiveServer = await start_server(compression=True)
    async with aiohttp.ClientSession(auto_decompress=False) as raw:
        run = await post_run(raw, server, input=ASK)
        async with raw.get(url(server, run["events_url"]),
                           headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert "Accept-Encoding" in resp.headers.get("Vary", "")
            reader = GzipReader(resp)
            # the run is waiting on this question: it arrived because it was flushed
            events = await reader.until("require_user_input")
            question = events[-1]["data"]
            async with raw.post(url(server, f"/v1/runs/{run['run_id']}/input"), json={
                    "request_id": question["request_id"], "value": "yes"}) as r:
                assert r.status == 200
            events = await reader.until("done")
            while chunk := await resp.content.readany():  # the rest: the gzip trailer
                reader.inflate.decompress(chunk)
                reader.wire_bytes += len(chunk)
            assert reader.inflate.eof  # one complete gzip member
    check_run(events, run["run_id"])
    assert 0 < reader.wire_bytes < sum(len(json.dumps(e)) for e in events)


async def test_identity_unless_asked_and_offered(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    plain = await start_server()
    offered = await start_server(compression=True, db=tmp_path / "offered.db")
    for server, headers in ((plain, {"Accept-Encoding": "gzip"}),
                            (offered, {"Accept-Encoding": "identity"}),
                            (offered, {"Accept-Encoding": "gzip;q=0"})):
        run = await post_run(http, server, input={"tokens": 3, "delay_ms": 0})
        async with http.get(url(server, run["events_url"]), headers=headers) as resp:
            assert "Content-Encoding" not in resp.headers
            body = await resp.read()
        events = [json.loads(f.data) for f in SseParser().feed(body) if f.data]
        check_run(events, run["run_id"])


def test_accept_encoding_parsing() -> None:
    assert accepts_gzip("gzip, deflate, br")
    assert accepts_gzip("br;q=1.0, gzip;q=0.8")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("deflate, br")
    assert not accepts_gzip("")
