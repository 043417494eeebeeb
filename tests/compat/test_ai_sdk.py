"""The AI SDK UI message stream mapping, fed recorded demo-agent runs: exact chunks."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from app.compat.ai_sdk import ChatBody, UiView, plan
from app.compat.common import Answer, AskRef, Dismiss, MappingError, NewRun
from tests.compat.recorded_runs import feed, index_of, load, with_done

RUN = "r_7b184456edc2e077"
TOOL = {"toolCallId": "tc_18904432e111", "dynamic": True, "providerExecuted": True}
M = "m_87488e97eadd"


def test_a_run_that_asks_ends_with_a_client_tool_call() -> None:
    events = load("ask")
    ask = index_of(events, "require_user_input")
    v = UiView(RUN)
    frames = feed(v, events[:ask + 1])
    assert frames[:3] == [{"type": "start", "messageId": f"msg_{RUN}"}, {"type": "start-step"},
                          {"type": "reasoning-start", "id": "rs_a4a863dc2a9e"}]
    assert "".join(f["delta"] for f in frames[3:14]) == (
        "The user said 'hi'; I will look it up and answer. ")
    assert frames[14:] == [
        {"type": "reasoning-end", "id": "rs_a4a863dc2a9e"},
        {"type": "tool-input-start", **TOOL, "toolName": "lookup"},
        {"type": "tool-input-available", **TOOL, "toolName": "lookup", "input": {"query": "hi"}},
        {"type": "tool-output-available", **TOOL, "output": {"hits": 2}},
        {"type": "text-start", "id": M},
        {"type": "text-delta", "id": M, "delta": "the "},
        {"type": "text-delta", "id": M, "delta": "agent "},
        {"type": "text-delta", "id": M, "delta": "streams "},
        {"type": "text-end", "id": M},
        {"type": "tool-input-available", "toolCallId": f"ask.{RUN}.22.q_8427ed580523e389",
         "toolName": "require_user_input", "dynamic": True,
         "input": {"prompt": "Proceed?", "choices": ["yes", "no"], "expires_at": 1795327908188}},
        {"type": "finish-step"}, {"type": "finish", "finishReason": "tool-calls"}, "[DONE]",
    ]
    assert v.finished and all(v.feed(e) == [] for e in events[ask + 1:])


def test_after_the_answer_a_message_without_chunks_is_a_whole_text_part() -> None:
    events = load("ask")
    frames = feed(UiView(RUN), events[index_of(events, "require_user_input") + 1:])
    m2 = "m_35771c9d4e5c"
    assert frames == [
        {"type": "start", "messageId": f"msg_{RUN}"}, {"type": "start-step"},
        {"type": "text-start", "id": m2},
        {"type": "text-delta", "id": m2, "delta": "You answered: yes"},
        {"type": "text-end", "id": m2}, {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"}, "[DONE]",
    ]


@pytest.mark.parametrize(("status", "tail"), [
    ("failed", [{"type": "finish-step"},
                {"type": "error", "errorText": "demo_failure: the demo agent was asked to fail"},
                {"type": "finish", "finishReason": "error"}, "[DONE]"]),
    ("cancelled", [{"type": "finish-step"}, {"type": "abort", "reason": "cancelled"}, "[DONE]"]),
])
def test_a_run_that_did_not_complete(status: str, tail: list[Any]) -> None:
    events = load("fail")
    if status != "failed":
        events = with_done(events, status)
    assert feed(UiView(RUN), events)[-len(tail):] == tail


def test_open_parts_are_closed_when_the_run_ends_mid_message() -> None:
    cut = [e for e in load("fail") if e.__struct_config__.tag != "message"]
    assert feed(UiView(RUN), cut)[-5:] == [
        {"type": "text-end", "id": "m_e00d938c06bc"}, {"type": "finish-step"},
        {"type": "error", "errorText": "demo_failure: the demo agent was asked to fail"},
        {"type": "finish", "finishReason": "error"}, "[DONE]"]


def body(**kw: Any) -> ChatBody:
    return msgspec.convert({"id": "chat1", **kw}, ChatBody)


def user(text: str) -> dict[str, Any]:
    return {"id": "u", "role": "user", "parts": [{"type": "text", "text": text}]}


def test_plan_starts_a_run_in_the_chats_conversation() -> None:
    p = plan(body(messages=[user("hi"), {"role": "assistant", "parts": []}, user("again")]),
             "demo", takes_messages=False)
    assert isinstance(p, NewRun)
    assert (p.request.input, p.request.conversation_id) == ("again", "chat1")
    p = plan(body(messages=[user("hi")]), "relay", takes_messages=True)
    assert isinstance(p, NewRun) and p.request.input == {
        "messages": [{"role": "user", "content": "hi"}]}
    p = plan(body(messages=[user("hi")], input={"ask": "ok?"}, trigger="regenerate-message"),
             "demo", takes_messages=False)
    assert isinstance(p, NewRun) and p.request.input == {"ask": "ok?"}


def test_plan_answers_or_dismisses_from_the_tool_part() -> None:
    ref = AskRef(RUN, 22, "q_1")

    def answered(state: str, **extra: Any) -> ChatBody:
        part = {"type": "dynamic-tool", "toolName": "require_user_input",
                "toolCallId": str(ref), "state": state, "input": {}, **extra}
        return body(messages=[user("hi"), {"id": "a", "role": "assistant",
                                           "parts": [{"type": "text", "text": "x"}, part]}])

    assert plan(answered("output-available", output="yes"), "demo", False) == Answer(ref, "yes")
    assert plan(answered("output-error", errorText="no"), "demo", False) == Dismiss(ref)
    with pytest.raises(MappingError) as err:
        plan(answered("input-available"), "demo", False)
    assert err.value.code == "nothing_to_answer"


@pytest.mark.parametrize(("kw", "code"), [
    ({"messages": []}, "no_messages"),
    ({"id": "not a valid id", "messages": [user("x")]}, "invalid_field"),
])
def test_plan_refuses(kw: dict[str, Any], code: str) -> None:
    with pytest.raises(MappingError) as err:
        plan(body(**kw), "demo", False)
    assert err.value.code == code
