"""The AG-UI mapping, fed recorded demo-agent runs: exact events."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from app.compat.ag_ui import AgUiView, RunAgentInput, plan
from app.compat.common import Answer, AskRef, Dismiss, MappingError, NewRun
from protocol.events import ErrorDetail
from tests.compat.recorded_runs import feed, index_of, load, with_done

RUN = "r_7b184456edc2e077"
IDS = {"threadId": "t1", "runId": "client-run"}
M = "m_87488e97eadd"
RS = "rs_a4a863dc2a9e"
TC = "tc_18904432e111"


def view() -> AgUiView:
    return AgUiView("t1", "client-run", RUN)


def test_a_run_that_asks_finishes_with_an_interrupt() -> None:
    events = load("ask")
    ask = index_of(events, "require_user_input")
    v = view()
    frames = feed(v, events[:ask + 1])
    assert frames[:3] == [
        {"type": "RUN_STARTED", **IDS, "protocolVersion": "1.0",
         "metadata": {"agentstream_run_id": RUN}},
        {"type": "REASONING_START", "messageId": RS},
        {"type": "REASONING_MESSAGE_START", "messageId": RS, "role": "reasoning"}]
    assert "".join(f["delta"] for f in frames[3:14]) == (
        "The user said 'hi'; I will look it up and answer. ")
    assert frames[14:] == [
        {"type": "REASONING_MESSAGE_END", "messageId": RS},
        {"type": "REASONING_END", "messageId": RS},
        {"type": "TOOL_CALL_START", "toolCallId": TC, "toolCallName": "lookup"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": TC, "delta": '{"query": "hi"}'},
        {"type": "TOOL_CALL_END", "toolCallId": TC},
        {"type": "TOOL_CALL_RESULT", "messageId": f"{TC}-result", "toolCallId": TC,
         "role": "tool", "content": '{"hits": 2}'},
        {"type": "TEXT_MESSAGE_START", "messageId": M, "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": M, "delta": "the "},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": M, "delta": "agent "},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": M, "delta": "streams "},
        {"type": "TEXT_MESSAGE_END", "messageId": M},
        {"type": "RUN_FINISHED", **IDS, "outcome": {"type": "interrupt", "interrupts": [{
            "id": f"ask.{RUN}.22.q_8427ed580523e389", "reason": "input_required",
            "message": "Proceed?", "expiresAt": "2026-11-22T06:11:48.188000Z",
            "metadata": {"choices": ["yes", "no"]}}]}},
    ]
    assert v.finished and all(v.feed(e) == [] for e in events[ask + 1:])


def test_the_resumed_run_streams_the_rest_and_finishes() -> None:
    events = load("ask")
    frames = feed(view(), events[index_of(events, "require_user_input") + 1:])
    m2 = "m_35771c9d4e5c"
    assert frames[1:] == [
        {"type": "TEXT_MESSAGE_START", "messageId": m2, "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": m2, "delta": "You answered: yes"},
        {"type": "TEXT_MESSAGE_END", "messageId": m2},
        {"type": "RUN_FINISHED", **IDS}]


@pytest.mark.parametrize(("status", "error", "last"), [
    ("failed", None, {"type": "RUN_ERROR", "message": "the demo agent was asked to fail",
                      "code": "demo_failure"}),
    ("cancelled", None, {"type": "RUN_FINISHED", **IDS, "outcome": {"type": "cancelled"}}),
    ("interrupted", ErrorDetail("server_restarted", "restart"),
     {"type": "RUN_ERROR", "message": "restart", "code": "server_restarted"}),
])
def test_runs_that_did_not_complete(status: str, error: ErrorDetail | None, last: Any) -> None:
    events = load("fail")
    if status != "failed":
        events = with_done(events, status, error)
    assert feed(view(), events)[-1] == last


def test_open_messages_are_ended_before_the_run_ends() -> None:
    cut = [e for e in load("fail") if e.__struct_config__.tag != "message"]
    frames = feed(view(), cut)
    assert frames[-2]["type"] == "TEXT_MESSAGE_END" and frames[-1]["type"] == "RUN_ERROR"


def inp(**kw: Any) -> RunAgentInput:
    return msgspec.convert({"threadId": "t1", "runId": "r1", **kw}, RunAgentInput)


def test_plan() -> None:
    msgs = [{"id": "1", "role": "user", "content": "hi"}]
    p = plan(inp(messages=msgs), "demo", takes_messages=False)
    assert isinstance(p, NewRun)
    assert (p.request.input, p.request.conversation_id) == ("hi", "t1")
    p = plan(inp(messages=msgs, forwardedProps={"input": {"ask": "?"}}), "demo", False)
    assert isinstance(p, NewRun) and p.request.input == {"ask": "?"}
    p = plan(inp(messages=msgs), "relay", takes_messages=True)
    assert isinstance(p, NewRun) and p.request.input == {
        "messages": [{"role": "user", "content": "hi"}]}
    ref = AskRef(RUN, 22, "q_1")
    assert plan(inp(resume=[{"interruptId": str(ref), "status": "resolved", "payload": "yes"}]),
                "demo", False) == Answer(ref, "yes")
    assert plan(inp(resume=[{"interruptId": str(ref), "status": "cancelled"}]),
                "demo", False) == Dismiss(ref)


@pytest.mark.parametrize(("kw", "code"), [
    ({"resume": [{"interruptId": "int-1", "status": "resolved"}]}, "unknown_interrupt"),
    ({"messages": []}, "no_user_message"),
])
def test_plan_refuses(kw: dict[str, Any], code: str) -> None:
    with pytest.raises(MappingError) as err:
        plan(inp(**kw), "demo", False)
    assert err.value.code == code
