"""The shared pieces of the compat mappings: ask handles, native frames, answer text."""

from __future__ import annotations

import msgspec

from app.agents.demo import DemoInput
from app.agents.openai_relay import OpenAIInput
from app.compat.common import (
    AskRef,
    message_texts,
    native_events,
    parse_ask_ref,
    sse_frames,
    takes_messages,
    text_of,
)
from protocol.codec import EncodedEvent
from tests.compat.recorded_runs import index_of, load


def test_ask_ref_round_trips_and_refuses_anything_else() -> None:
    ref = AskRef("r_1", 17, "q_abc")
    assert str(ref) == "ask.r_1.17.q_abc" and parse_ask_ref(str(ref)) == ref
    for bad in ["", "call_1", "ask.r_1.x.q", "ask.r 1.1.q", "ask.r_1.1.q.extra", "ask..1.q"]:
        assert parse_ask_ref(bad) is None


def test_native_events_reads_back_the_frames_a_sink_writes() -> None:
    events = load("ask")
    data = b"".join(EncodedEvent.from_event(e).sse for e in events)
    assert native_events(data) == events
    assert native_events(b"retry: 1000\n\n: ping\n\n") == []


def test_sse_frames_have_no_id_and_pass_the_sentinel() -> None:
    assert sse_frames([{"a": 1}, "[DONE]"]) == b'data: {"a":1}\n\ndata: [DONE]\n\n'


def test_message_texts_is_one_text_per_item() -> None:
    events = load("ask")
    assert message_texts(events) == ["the agent streams ", "You answered: yes"]
    # a message after its chunks is not counted twice, even alone
    assert message_texts(events[index_of(events, "message_chunk"):]) == [
        "the agent streams ", "You answered: yes"]


def test_takes_messages_reads_the_agents_schema() -> None:
    assert takes_messages(msgspec.json.schema(OpenAIInput))
    assert not takes_messages(msgspec.json.schema(DemoInput))
    assert not takes_messages(None)


def test_text_of_content_parts() -> None:
    assert text_of("x") == "x"
    assert text_of([{"type": "text", "text": "a"}, {"type": "image_url"},
                    {"type": "text", "text": "b"}]) == "ab"
    assert text_of(None) == ""
