"""The pure run-output assembler, fed event sequences (no server)."""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.events import EVENT_CLASSES, Event
from protocol.output import OutputBuilder, assemble_output


def ev(seq: int, typ: str, item: str | None = None, **data: Any) -> Event:
    raw = {"seq": seq, "conversation_id": "c", "run_id": "r", "agent": "a", "ts": 0,
           "type": typ, "item_id": item, "data": data}
    return msgspec.convert(raw, EVENT_CLASSES[typ])  # type: ignore[return-value]


def test_open_and_closed_items_in_one_run() -> None:
    out = assemble_output([
        ev(1, "run_started"),
        ev(2, "message_chunk", "m1", delta="Hel"),
        ev(3, "reasoning_started", "r1"),
        ev(4, "message_chunk", "m1", delta="lo"),
        ev(5, "reasoning", "r1", delta="think"),
        ev(6, "message", "m1", text="Hello"),
        ev(7, "tool_call_started", "t1", name="f"),
        ev(8, "tool_call_arguments", "t1", delta='{"a":'),
        ev(9, "tool_call_arguments", "t1", delta="1}"),
        ev(10, "require_user_input", request_id="q1", prompt="ok?"),
        ev(11, "user_input_received", request_id="q1", value="yes"),
        ev(12, "component_generator", "k1", component_type="chart", payload={"x": 1}),
        ev(13, "message_chunk", "m2", delta="still "),
        ev(14, "message_chunk", "m2", delta="going"),
    ])
    assert out.text == "Hello\n\nstill going"
    assert [(m.text, m.complete) for m in out.messages] == [("Hello", True),
                                                           ("still going", False)]
    assert [(r.text, r.complete) for r in out.reasoning] == [("think", False)]
    tool = out.tool_calls[0]
    assert (tool.name, tool.complete, tool.arguments_text) == ("f", False, '{"a":1}')
    assert [(q.request_id, q.answered, q.value) for q in out.questions] == [("q1", True, "yes")]
    assert out.components[0].payload == {"x": 1}


def test_completion_events_win_over_their_deltas() -> None:
    out = assemble_output([
        ev(1, "reasoning_started", "r"),
        ev(2, "reasoning", "r", delta="a"),
        ev(3, "reasoning_completed", "r", text="final thought"),
        ev(4, "tool_call_started", "t", name="f", arguments={"q": 1}),
        ev(5, "tool_call_completed", "t", name="f", result=[1, 2],
           error={"code": "x", "message": "y"}),
        ev(6, "message", "m", text="only final"),
    ])
    assert [(r.text, r.complete) for r in out.reasoning] == [("final thought", True)]
    tool = out.tool_calls[0]
    assert (tool.arguments, tool.result, tool.complete) == ({"q": 1}, [1, 2], True)
    assert tool.error is not None and tool.error.code == "x"
    assert out.text == "only final"


def test_feeding_in_pages_equals_feeding_at_once() -> None:
    events = [ev(i, "message_chunk", "m", delta=str(i)) for i in range(1, 50)]
    builder = OutputBuilder()
    for i in range(0, len(events), 7):
        for e in events[i:i + 7]:
            builder.feed(e)
    assert builder.output() == assemble_output(events)
    assert builder.output().text == "".join(str(i) for i in range(1, 50))
