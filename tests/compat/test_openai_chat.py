"""The OpenAI Chat Completions mapping, fed recorded demo-agent runs: exact frames."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from app.compat.common import Answer, AskRef, MappingError, NewRun
from app.compat.openai_chat import ChatRequest, ChatView, completion, error_body, plan
from protocol.events import ErrorDetail
from tests.compat.recorded_runs import feed, index_of, load, with_done

RUN = "r_7b184456edc2e077"
THOUGHT = "The user said 'hi'; I will look it up and answer. "


def view() -> ChatView:
    return ChatView("chatcmpl-x", "demo", 1700000000, RUN)


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "demo", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_run_that_asks_streams_reasoning_tool_text_then_the_question() -> None:
    events = load("ask")
    ask = index_of(events, "require_user_input")
    v = view()
    frames = feed(v, events[:ask + 1])
    reasoning = [f["choices"][0]["delta"]["reasoning_content"] for f in frames[1:12]]
    assert "".join(reasoning) == THOUGHT
    assert frames[0] == chunk({"role": "assistant", "content": ""})
    assert frames[12:] == [
        chunk({"tool_calls": [{"index": 0, "id": "tc_18904432e111", "type": "function",
                               "function": {"name": "lookup", "arguments": '{"query": "hi"}'}}]}),
        chunk({"content": "the "}), chunk({"content": "agent "}), chunk({"content": "streams "}),
        chunk({"tool_calls": [{
            "index": 1, "id": f"ask.{RUN}.22.q_8427ed580523e389", "type": "function",
            "function": {"name": "require_user_input", "arguments":
                         '{"prompt": "Proceed?", "choices": ["yes", "no"], '
                         '"expires_at": 1795327908188}'}}]}),
        chunk({}, "tool_calls"), "[DONE]",
    ]
    assert v.finished and v.error is None
    # the run goes on after the question, but this completion has ended
    assert all(v.feed(e) == [] for e in events[ask + 1:])


def test_the_follow_up_completion_streams_the_rest_of_the_same_run() -> None:
    events = load("ask")
    ask = index_of(events, "require_user_input")
    v = view()
    assert feed(v, events[ask + 1:]) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "You answered: yes"}),
        chunk({}, "stop"), "[DONE]",
    ]


def test_a_failed_run_ends_with_an_error_frame_the_sdk_raises() -> None:
    v = view()
    frames = feed(v, load("fail"))
    body = {"error": {"message": "the demo agent was asked to fail", "type": "server_error",
                      "param": None, "code": "demo_failure"}}
    assert frames[-2:] == [body, "[DONE]"]
    assert v.error == (500, body)
    assert [f for f in frames if isinstance(f, dict) and "choices" in f
            and f["choices"][0]["finish_reason"]] == []


@pytest.mark.parametrize(("status", "http", "code"), [
    ("cancelled", 409, "run_cancelled"), ("interrupted", 503, "server_restarted")])
def test_cancelled_and_interrupted_runs_end_with_their_error(
    status: str, http: int, code: str
) -> None:
    error = ErrorDetail("server_restarted", "restarted") if status == "interrupted" else None
    v = view()
    frames = feed(v, with_done(load("fail"), status, error))
    assert v.error is not None and v.error[0] == http
    assert frames[-2]["error"]["code"] == code and frames[-1] == "[DONE]"


def test_two_message_items_are_one_content_with_a_blank_line() -> None:
    events = load("ask")
    ask = index_of(events, "require_user_input")
    # the same run seen whole, as if the question had not ended the completion
    without_question = [e for i, e in enumerate(events) if i != ask]
    text = "".join(f["choices"][0]["delta"].get("content", "") for f in
                   feed(view(), without_question) if isinstance(f, dict) and "choices" in f)
    assert text == "the agent streams \n\nYou answered: yes"


def test_completion_folds_the_chunks() -> None:
    events = load("ask")
    v = view()
    frames = feed(v, events[:index_of(events, "require_user_input") + 1])
    message = completion(v, frames)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] == "the agent streams "
    assert message["message"]["reasoning_content"] == THOUGHT
    assert [c["function"]["name"] for c in message["message"]["tool_calls"]] == [
        "lookup", "require_user_input"]


def test_goodbye_is_an_error_naming_the_run_once() -> None:
    v = view()
    first = v.goodbye("shutdown")
    assert first[0]["error"]["code"] == "shutdown" and RUN in first[0]["error"]["message"]
    assert v.goodbye("shutdown") == [] and v.feed(load("fail")[-1]) == []


def req(**kw: Any) -> ChatRequest:
    return msgspec.convert({"model": "demo", **kw}, ChatRequest)


def test_plan_takes_the_last_user_text_or_the_whole_history_or_the_explicit_input() -> None:
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hel"},
                                         {"type": "text", "text": "lo"}]}]
    p = plan(req(messages=msgs), takes_messages=False)
    assert isinstance(p, NewRun) and p.request.input == "hello" and p.request.agent == "demo"
    p = plan(req(messages=msgs), takes_messages=True)
    assert isinstance(p, NewRun) and p.request.input == {"messages": msgs}
    p = plan(req(messages=msgs, input={"ask": "ok?"}, conversation_id="c1",
                 on_disconnect="cancel", metadata={"k": "v"}), takes_messages=False)
    assert isinstance(p, NewRun)
    assert (p.request.input, p.request.conversation_id, p.request.on_disconnect,
            p.request.metadata) == ({"ask": "ok?"}, "c1", "cancel", {"k": "v"})


def test_plan_answers_with_a_tool_message() -> None:
    ref = AskRef(RUN, 22, "q_1")
    for content, value in [("yes", "yes"), ("42", 42), ('{"a": 1}', {"a": 1})]:
        p = plan(req(messages=[{"role": "user", "content": "hi"},
                               {"role": "tool", "tool_call_id": str(ref), "content": content}]),
                 takes_messages=False)
        assert p == Answer(ref, value)


@pytest.mark.parametrize(("kw", "code"), [
    ({"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
     "unknown_tool_call"),
    ({"messages": [{"role": "system", "content": "x"}]}, "no_user_message"),
    ({"messages": [{"content": "x"}]}, "invalid_field"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "unsupported_n"),
    ({"messages": [{"role": "user", "content": "x"}], "conversation_id": "bad id!"},
     "invalid_field"),
])
def test_plan_refuses_what_it_cannot_map(kw: dict[str, Any], code: str) -> None:
    with pytest.raises(MappingError) as err:
        plan(req(**kw), takes_messages=False)
    assert err.value.code == code


def test_error_body_has_openais_four_fields() -> None:
    assert error_body(429, "rate_limited", "slow down") == {"error": {
        "message": "slow down", "type": "rate_limit_error", "param": None,
        "code": "rate_limited"}}
