"""The official ``openai`` Python SDK against a real server: streaming and not, the demo
agent and a run that asks, errors, and a client that goes away mid-stream."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from tests.compat.native import native_run
from tests.conftest import LiveServer, ServerFactory, url
from tests.run_client import conversation_events

FAST = {"text": "hi", "tokens": 5, "delay_ms": 1}
HI = [{"role": "user", "content": "hi"}]
KA, KB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdefgh"


def client(server: LiveServer, key: str = "none", retries: int = 2) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url(server, "/v1"), api_key=key, max_retries=retries,
                       timeout=30)


async def read_stream(stream: Any) -> dict[str, Any]:
    """What a streaming client assembles from the chunks."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "tools": {}, "finish": None,
                           "ids": set()}
    async for chunk in stream:
        out["ids"].add(chunk.id)
        choice = chunk.choices[0]
        delta = choice.delta
        out["content"] += delta.content or ""
        out["reasoning"] += getattr(delta, "reasoning_content", None) or ""
        for call in delta.tool_calls or []:
            out["tools"][call.index] = (call.id, call.function.name, call.function.arguments)
        out["finish"] = choice.finish_reason or out["finish"]
    return out


async def test_streaming_carries_the_native_text_reasoning_and_tool_call(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    async with client(server) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="demo", messages=HI, stream=True, extra_body={"input": FAST})
        run_id = raw.headers["x-agentstream-run-id"]
        got = await read_stream(raw.parse())
    native = await native_run(http, server, run_id)
    assert native.done["status"] == "completed"
    assert [got["content"]] == native.texts
    assert got["reasoning"] == native.reasoning and got["reasoning"]
    assert got["finish"] == "stop" and len(got["ids"]) == 1
    assert [t[1] for t in got["tools"].values()] == ["lookup"]
    assert json.loads(got["tools"][0][2]) == {"query": "hi"}


async def test_non_streaming_is_one_completion_with_the_native_text(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    async with client(server) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="demo", messages=HI, extra_body={"input": FAST})
        done = raw.parse()
    native = await native_run(http, server, raw.headers["x-agentstream-run-id"])
    assert raw.headers["x-agentstream-conversation-id"] == native.envelopes[0]["conversation_id"]
    assert [done.choices[0].message.content] == native.texts
    assert done.choices[0].finish_reason == "stop" and done.object == "chat.completion"


def answer_messages(first: Any, call_id: str, answer: str) -> list[dict[str, Any]]:
    return [*HI, {"role": "assistant", "content": first, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": "require_user_input", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": call_id, "content": answer}]


@pytest.mark.parametrize("stream", [True, False])
async def test_a_question_is_a_tool_call_answered_by_the_follow_up(
    server: LiveServer, http: aiohttp.ClientSession, stream: bool
) -> None:
    ask = {**FAST, "ask": "Proceed?", "choices": ["yes", "no"]}
    async with client(server) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="demo", messages=HI, stream=stream, extra_body={"input": ask})
        run_id = raw.headers["x-agentstream-run-id"]
        if stream:
            first = await read_stream(raw.parse())
            content, finish, (call_id, name, args) = (
                first["content"], first["finish"], first["tools"][1])
        else:
            message = raw.parse().choices[0]
            content, finish = message.message.content, message.finish_reason
            call = (message.message.tool_calls or [])[1]
            call_id, name, args = call.id, call.function.name, call.function.arguments
        assert (finish, name) == ("tool_calls", "require_user_input")
        assert json.loads(args)["prompt"] == "Proceed?"
        assert json.loads(args)["choices"] == ["yes", "no"]
        raw2 = await sdk.chat.completions.with_raw_response.create(
            model="demo", messages=answer_messages(content, call_id, "yes"), stream=stream)
        assert raw2.headers["x-agentstream-run-id"] == run_id
        if stream:
            second = await read_stream(raw2.parse())
            content2, finish2 = second["content"], second["finish"]
        else:
            c = raw2.parse().choices[0]
            content2, finish2 = c.message.content, c.finish_reason
    native = await native_run(http, server, run_id)
    assert [content, content2] == native.texts == [
        "the agent streams each step ", "You answered: yes"]
    assert finish2 == "stop" and native.done["status"] == "completed"
    assert native.types().count("require_user_input") == 1


async def test_errors_are_openai_errors(server: LiveServer) -> None:
    async with client(server) as sdk:
        with pytest.raises(openai.NotFoundError) as nf:
            await sdk.chat.completions.create(model="nope", messages=HI)
        assert nf.value.code == "model_not_found" and nf.value.param == "model"
        with pytest.raises(openai.UnprocessableEntityError) as bad:
            await sdk.chat.completions.create(model="demo", messages=HI,
                                              extra_body={"input": {"tokens": -1}})
        assert bad.value.code == "invalid_input"
        with pytest.raises(openai.UnprocessableEntityError) as tool:
            await sdk.chat.completions.create(model="demo", messages=[
                {"role": "tool", "tool_call_id": "call_1", "content": "x"}])
        assert tool.value.code == "unknown_tool_call"
        with pytest.raises(openai.NotFoundError) as resp:
            await sdk.responses.create(model="demo", input="hi")
        assert resp.value.status_code == 404 and resp.value.code == "unsupported_endpoint"
        models = [m.id async for m in sdk.models.list()]
        assert models == ["demo"] and (await sdk.models.retrieve("demo")).id == "demo"


async def test_a_failed_run_raises_and_is_not_retried_into_a_second_run(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    fail = {**FAST, "fail": True}
    async with client(server, retries=2) as sdk:
        with pytest.raises(openai.InternalServerError) as err:
            await sdk.chat.completions.create(
                model="demo", messages=HI, extra_body={"input": fail, "conversation_id": "cf1"})
        assert err.value.code == "demo_failure"
        stream = await sdk.chat.completions.create(
            model="demo", messages=HI, stream=True,
            extra_body={"input": fail, "conversation_id": "cf2"})
        with pytest.raises(openai.APIError) as mid:
            await read_stream(stream)
        assert "asked to fail" in mid.value.message
    for conv in ("cf1", "cf2"):
        events = await conversation_events(http, server, conv)
        assert [e["type"] for e in events].count("run_started") == 1
        assert [e["data"]["status"] for e in events if e["type"] == "done"] == ["failed"]


@pytest.mark.parametrize("on_disconnect", ["continue", "cancel"])
async def test_a_client_that_goes_away_mid_stream(
    server: LiveServer, http: aiohttp.ClientSession, on_disconnect: str
) -> None:
    """The peer vanishes after the first content: the run goes on (resumable natively with
    the header's run id), or is cancelled when the request said so."""
    slow = {"text": "hi", "tokens": 200, "delay_ms": 20, "reasoning": False}
    async with client(server) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="demo", messages=HI, stream=True,
            extra_body={"input": slow, "on_disconnect": on_disconnect})
        run_id = raw.headers["x-agentstream-run-id"]
        stream = raw.parse()
        async for chunk in stream:
            if chunk.choices[0].delta.content:
                break
        await stream.close()
    native = await native_run(http, server, run_id)
    want = "completed" if on_disconnect == "continue" else "cancelled"
    assert native.done["status"] == want
    if want == "completed":
        assert native.texts == ["".join(f"{w} " for w in native.texts[0].split())]


async def test_ownership_applies_to_answers(start_server: ServerFactory) -> None:
    """Another user's question cannot be answered through the compat endpoint (404)."""
    server = await start_server(auth="token", api_keys=f"{KA}=alice,{KB}=bob")
    ask = {"tokens": 0, "ask": "x", "reasoning": False, "tool_call": False}
    async with client(server, KA) as alice, client(server, KB) as bob:
        first = await alice.chat.completions.create(model="demo", messages=HI,
                                                    extra_body={"input": ask})
        call = (first.choices[0].message.tool_calls or [])[0]
        with pytest.raises(openai.NotFoundError) as err:
            await bob.chat.completions.create(
                model="demo", messages=answer_messages("", call.id, "yes"))
        assert err.value.code == "run_not_found"
        second = await alice.chat.completions.create(
            model="demo", messages=answer_messages("", call.id, "yes"))
        assert second.choices[0].message.content == "You answered: yes"


async def test_auth_and_middleware_errors_are_openai_errors_too(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """A wrong key is the SDK's AuthenticationError with OpenAI's fields (it was our native
    shape, raised before the endpoint's own error mapping); native paths keep theirs."""
    server = await start_server(auth="token", api_keys=f"{KA}=alice",
                                cors_origins="https://app.example")
    async with client(server, "wrong-key-0123456789", retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as err:
            await sdk.models.list()
        assert err.value.code == "invalid_token"
        assert isinstance(err.value.body, dict) and err.value.body.get("type")
    async with http.get(url(server, "/v1/agents"), headers={"Authorization": "Bearer x"}) as r:
        body = await r.json()
        assert r.status == 401 and set(body["error"]) == {"code", "message"}
    # a browser on an allowed origin may read the run id of a compat response
    async with http.post(url(server, "/v1/chat/completions"), json={
            "model": "demo", "messages": HI, "input": FAST},
            headers={"Authorization": f"Bearer {KA}", "Origin": "https://app.example"}) as r:
        assert r.status == 200
        exposed = r.headers.get("Access-Control-Expose-Headers", "").lower()
        assert "x-agentstream-run-id" in exposed and r.headers["X-Agentstream-Run-Id"]
