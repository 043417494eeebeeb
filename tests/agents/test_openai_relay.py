"""The openai relay agent against a fake OpenAI-compatible upstream on a real port."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from app.agents.demo import DemoAgent
from app.agents.openai_relay import OpenAIOptions, OpenAIRelayAgent
from app.agents.registry import AgentRegistry
from tests.agents.fake_openai import API_KEY, CONTENT, REASONING, TOOL_ARGS, FakeOpenAI
from tests.conftest import LiveServer, ServerFactory, url
from tests.run_client import conversation_events, done_of, stream_run, types
from tests.sse_client import iter_frames


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOpenAI, LiveServer]]:
    fake = FakeOpenAI()
    upstream = LiveServer(fake.app())
    await upstream.start()
    yield fake, upstream
    fake.release.set()
    await upstream.close()


def relay(upstream: LiveServer, **options: Any) -> OpenAIRelayAgent:
    opts: dict[str, Any] = {
        "base_url": url(upstream, "/v1"), "model": "ok", "first_byte_timeout": 0.4,
        "idle_timeout": 0.5, "retries": 1, "backoff": 0.05,
    }
    opts.update(options)
    return OpenAIRelayAgent("gpt", OpenAIOptions(**opts), api_key=API_KEY,
                            description="test relay")


@pytest.fixture
async def server(
    start_server: ServerFactory, fake: tuple[FakeOpenAI, LiveServer]
) -> LiveServer:
    return await start_server(agents=AgentRegistry([DemoAgent(), relay(fake[1])]))


async def run(http: aiohttp.ClientSession, server: LiveServer, model: str) -> list[dict[str, Any]]:
    return await stream_run(http, server, {"agent": "gpt", "input": {"prompt": "hi",
                                                                      "model": model}})


@pytest.mark.parametrize("model", ["ok", "crlf"])
async def test_full_stream_maps_to_events_and_ends_once(
    server: LiveServer, http: aiohttp.ClientSession, fake: tuple[FakeOpenAI, LiveServer],
    model: str,
) -> None:
    events = await run(http, server, model)
    assert done_of(events) == {"status": "completed", "events": len(events)}
    got = types(events)
    assert got == (
        ["run_started", "reasoning_started"] + ["reasoning"] * len(REASONING)
        + ["reasoning_completed"] + ["message_chunk"] * len(CONTENT)
        + ["tool_call_started"] + ["tool_call_arguments"] * len(TOOL_ARGS)
        + ["tool_call_started", "tool_call_arguments"]
        + ["message", "tool_call_completed", "tool_call_completed", "done"]
    )
    by_type = {e["type"]: e for e in events}
    assert "".join(e["data"]["delta"] for e in events if e["type"] == "reasoning") == "".join(
        REASONING)
    assert by_type["reasoning_completed"]["data"]["text"] == "".join(REASONING)
    chunks = [e for e in events if e["type"] == "message_chunk"]
    assert [c["data"]["delta"] for c in chunks] == CONTENT
    assert by_type["message"]["data"]["text"] == "".join(CONTENT)
    assert {c["item_id"] for c in chunks} == {by_type["message"]["item_id"]}
    calls = [e for e in events if e["type"] == "tool_call_completed"]
    assert [(c["data"]["name"], c["data"]["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {})]
    started = [e for e in events if e["type"] == "tool_call_started"]
    assert [s["item_id"] for s in started] == [c["item_id"] for c in calls]
    # Argument deltas stream between started and completed, per call, as the model sent them.
    for call, sent in zip(calls, ["".join(TOOL_ARGS), "{}"], strict=True):
        deltas = [e["data"]["delta"] for e in events
                  if e["type"] == "tool_call_arguments" and e["item_id"] == call["item_id"]]
        assert "".join(deltas) == sent
    # The upstream got one streaming request with the key and the prompt.
    [req] = fake[0].requests
    assert req["auth"] == f"Bearer {API_KEY}"
    assert req["body"]["stream"] is True
    assert req["body"]["messages"] == [{"role": "user", "content": "hi"}]
    # Exactly one done for this run in the stored conversation, nothing after it.
    stored = await conversation_events(http, server, events[0]["conversation_id"])
    assert types(stored)[-1] == "done" and types(stored).count("done") == 1


@pytest.mark.parametrize(
    ("model", "code", "text", "requests"),
    [
        ("http500", "upstream_http_error", "500: The server had an error", 1),
        ("garbage", "upstream_bad_response", "502 Bad Gateway", 1),
        ("not-sse", "upstream_bad_response", "application/json", 1),
        ("drop", "upstream_disconnected", "the upstream stream broke", 1),
        ("eof", "upstream_disconnected", "before it finished", 1),
        ("error-event", "upstream_error", "Rate limit reached", 1),
        ("idle", "upstream_timeout", "sent nothing for 0.5s", 1),
        ("slow", "upstream_timeout", "no response from the upstream within 0.4s (1 attempt", 1),
        ("vanish", "upstream_disconnected", "closed the connection before answering", 1),
        ("error-named", "upstream_error", "Upstream overloaded", 1),
    ],
)
async def test_broken_upstream_fails_the_run_with_its_reason(
    server: LiveServer, http: aiohttp.ClientSession, fake: tuple[FakeOpenAI, LiveServer],
    model: str, code: str, text: str, requests: int,
) -> None:
    events = await run(http, server, model)
    done = done_of(events)
    assert done["status"] == "failed"
    assert done["error"]["code"] == code
    assert text in done["error"]["message"]
    # Nothing is retried once the upstream had the request (the agent allows one retry).
    assert len(fake[0].requests) == requests


async def test_drop_mid_stream_keeps_the_chunks_already_relayed(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await run(http, server, "drop")
    assert [e["data"]["delta"] for e in events if e["type"] == "message_chunk"] == CONTENT[:3]
    assert "message" not in types(events)


@pytest.mark.parametrize("model", ["slow", "vanish"])
async def test_no_retry_after_the_post_was_sent(
    server: LiveServer, http: aiohttp.ClientSession, fake: tuple[FakeOpenAI, LiveServer],
    model: str,
) -> None:
    """Issue 10 item 15: a first-byte timeout or a connection lost after the POST went out
    was retried, and the upstream may have generated the answer twice."""
    events = await run(http, server, model)
    done = done_of(events)
    assert done["status"] == "failed"
    assert "(1 attempt; not retried: the upstream had the request)" in done["error"]["message"]
    assert len(fake[0].requests) == 1


async def test_heartbeat_data_lines_do_not_fail_the_run(
    server: LiveServer, http: aiohttp.ClientSession, fake: tuple[FakeOpenAI, LiveServer]
) -> None:
    """Issue 10 item 15: ``data: heartbeat`` (JD Genie's relay) failed the run as an
    unreadable chunk; keep-alives of every usual shape are now skipped."""
    events = await run(http, server, "heartbeats")
    assert done_of(events)["status"] == "completed"
    assert types(events) == (["run_started"] + ["message_chunk"] * len(CONTENT)
                             + ["message", "done"])
    assert [e["data"]["delta"] for e in events if e["type"] == "message_chunk"] == CONTENT
    assert events[-2]["data"]["text"] == "".join(CONTENT)
    assert [e["seq"] for e in events] == list(range(events[0]["seq"],
                                                    events[0]["seq"] + len(events)))
    assert len(fake[0].requests) == 1


async def test_heartbeats_keep_a_quiet_upstream_alive_past_the_idle_timeout(
    server: LiveServer, http: aiohttp.ClientSession, fake: tuple[FakeOpenAI, LiveServer]
) -> None:
    fake[0].slow_seconds = 1.2  # only heartbeats, for over twice the 0.5 s idle timeout
    events = await run(http, server, "heartbeat-wait")
    assert done_of(events)["status"] == "completed"
    assert events[-2]["data"]["text"] == "thinking done"


async def test_dns_failure_is_retried_before_anything_is_sent(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    agent = OpenAIRelayAgent("gpt", OpenAIOptions(
        base_url="http://upstream.invalid/v1", model="m", retries=2, backoff=0.01))
    server = await start_server(agents=AgentRegistry([agent]))
    done = done_of(await stream_run(http, server, {"agent": "gpt", "input": "hi"}))
    assert done["error"]["code"] == "upstream_unavailable"
    assert "(3 attempts)" in done["error"]["message"]


async def test_wrong_key_is_upstream_http_error_with_upstream_message(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake: tuple[FakeOpenAI, LiveServer],
) -> None:
    agent = OpenAIRelayAgent("gpt", OpenAIOptions(base_url=url(fake[1], "/v1"), model="ok"),
                             api_key="wrong")
    server = await start_server(agents=AgentRegistry([agent]))
    done = done_of(await stream_run(http, server, {"agent": "gpt", "input": "hi"}))
    assert done["error"] == {"code": "upstream_http_error", "message":
                             "upstream answered 401: Incorrect API key provided (invalid_api_key)"}


async def test_unreachable_upstream_retries_then_fails_unavailable(
    start_server: ServerFactory, http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    agent = OpenAIRelayAgent("gpt", OpenAIOptions(
        base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", model="m", retries=2, backoff=0.05))
    server = await start_server(agents=AgentRegistry([agent]))
    started = time.monotonic()
    done = done_of(await stream_run(http, server, {"agent": "gpt", "input": "hi"}))
    assert done["error"]["code"] == "upstream_unavailable"
    assert "(3 attempts)" in done["error"]["message"]
    assert time.monotonic() - started >= 0.1  # two backoff sleeps happened


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one"),
        ({}, "exactly one"),
        ({"prompt": "a", "base_url": "http://elsewhere"}, "fixed by this agent"),
        ({"prompt": "a", "api_key": "sk-x"}, "unknown field"),
        ({"prompt": 3}, "Expected `str"),
    ],
)
async def test_input_the_relay_cannot_take_is_422(
    server: LiveServer, http: aiohttp.ClientSession, body: dict[str, Any], fragment: str
) -> None:
    async with http.post(url(server, "/v1/runs"), json={"agent": "gpt", "input": body}) as resp:
        assert resp.status == 422
        error = (await resp.json())["error"]
    assert error["code"] == "invalid_input"
    assert fragment in error["message"]


async def test_cancel_mid_stream_ends_cancelled_and_releases_the_upstream(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    async def cancel_on_first_chunk(event: dict[str, Any]) -> None:
        if event["type"] == "message_chunk" and event["data"]["delta"] == "then silence":
            async with http.post(url(server, f"/v1/runs/{event['run_id']}/cancel")) as r:
                assert r.status in (200, 202)

    events = await stream_run(http, server, {"agent": "gpt", "input": {"prompt": "x",
                                                                      "model": "idle"}},
                              on_event=cancel_on_first_chunk)
    assert done_of(events)["status"] == "cancelled"


async def test_token_limit_stop_completes_with_a_warning_and_late_tool_name(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await run(http, server, "length")
    assert done_of(events)["status"] == "completed"
    # Fragments that came before the name go out together once the call started.
    assert types(events) == ["run_started", "tool_call_started", "tool_call_arguments",
                             "message_chunk", "message", "tool_call_completed", "notify", "done"]
    assert events[2]["data"] == {"delta": '{"q": 1}'}
    call = events[5]["data"]
    assert (call["name"], call["arguments"]) == ("search", {"q": 1})
    assert events[6]["data"] == {"message": "the upstream stopped at its token limit",
                                 "level": "warning"}


async def test_streamed_arguments_reach_the_output_and_fold_in_a_snapshot(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await run(http, server, "ok")
    done_of(events)
    async with http.get(url(server, f"/v1/runs/{events[0]['run_id']}")) as r:
        output = (await r.json())["output"]
    assert [(t["name"], t["arguments_text"], t["complete"]) for t in output["tool_calls"]] == [
        ("get_weather", "".join(TOOL_ARGS), True), ("get_time", "{}", True)]
    # A snapshot of the finished run folds each call to its tool_call_completed.
    snapshot: list[dict[str, Any]] = []
    async with http.get(url(server, f"/v1/runs/{events[0]['run_id']}/events?snapshot=1")) as r:
        async for frame in iter_frames(r):
            if frame.data:
                snapshot.append(frame.json)
    assert [e["type"] for e in snapshot if e["type"].startswith("tool_call")] == [
        "tool_call_completed", "tool_call_completed"]
    assert snapshot[-1] == events[-1]
