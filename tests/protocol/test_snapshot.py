"""The pure snapshot fold, fed event sequences (no server)."""

from __future__ import annotations

import random
from typing import Any

import msgspec

from protocol.codec import EncodedEvent, decode_event
from protocol.events import EVENT_CLASSES
from protocol.snapshot import snapshot


def enc(seq: int, typ: str, item: str | None = None, run: str = "r", **data: Any) -> EncodedEvent:
    raw = {"seq": seq, "conversation_id": "c", "run_id": run, "agent": "a", "ts": 0,
           "type": typ, "item_id": item, "data": data}
    return EncodedEvent.from_event(msgspec.convert(raw, EVENT_CLASSES[typ]))


def data(ev: EncodedEvent) -> dict[str, Any]:
    return dict(msgspec.to_builtins(decode_event(ev.body).data))


def test_completed_items_are_one_event_open_ones_merged_so_far() -> None:
    events = [
        enc(1, "run_started"),
        enc(2, "reasoning_started", "rs"),
        enc(3, "reasoning", "rs", delta="a "),
        enc(4, "reasoning", "rs", delta="b"),
        enc(5, "reasoning_completed", "rs"),
        enc(6, "tool_call_started", "t", name="f"),
        enc(7, "tool_call_arguments", "t", delta='{"q":'),
        enc(8, "message_chunk", "m", delta="Hel"),
        enc(9, "tool_call_arguments", "t", delta="1}"),
        enc(10, "tool_call_completed", "t", name="f", result=2),
        enc(11, "message_chunk", "m", delta="lo"),
        enc(12, "message", "m", text="Hello"),
        enc(13, "require_user_input", request_id="q", prompt="?"),
        enc(14, "message_chunk", "m2", delta="x"),
        enc(15, "message_chunk", "m2", delta="y"),
        enc(16, "reasoning_started", "rs2"),
        enc(17, "reasoning", "rs2", delta="hm"),
        enc(18, "tool_call_started", "t2", name="g"),
    ]
    out = snapshot(events)
    assert [(e.seq, e.type) for e in out] == [
        (1, "run_started"), (5, "reasoning_completed"), (10, "tool_call_completed"),
        (12, "message"), (13, "require_user_input"), (15, "message_chunk"),
        (16, "reasoning_started"), (17, "reasoning"), (18, "tool_call_started")]
    assert data(out[1])["text"] == "a b"  # a completion without text gets its deltas'
    assert data(out[5]) == {"delta": "xy", "merged": 2}
    assert data(out[7]) == {"delta": "hm"}  # a single delta passes unchanged
    assert out[-1].seq == events[-1].seq


def test_events_without_items_and_other_runs_are_kept_apart() -> None:
    events = [enc(1, "message_chunk", None, delta="a"), enc(2, "message_chunk", None, delta="b"),
              enc(3, "message_chunk", "m", run="r1", delta="x"),
              enc(4, "message_chunk", "m", run="r2", delta="y"),
              enc(5, "notify", message="hi")]
    out = snapshot(events)
    assert [e.seq for e in out] == [1, 2, 3, 4, 5]
    assert [e.body for e in out] == [e.body for e in events]  # nothing folded


def test_random_interleavings_lose_nothing() -> None:
    """Deltas of open items concatenate to what was sent; seqs stay increasing."""
    rng = random.Random(7)
    for _ in range(200):
        seq, sent, events = 0, {}, []
        open_items = [f"m{i}" for i in range(rng.randint(1, 4))]
        for _ in range(rng.randint(1, 40)):
            item = rng.choice(open_items)
            seq += 1
            piece = rng.choice(["a", "bb", "c c", "é"])
            sent[item] = sent.get(item, "") + piece
            events.append(enc(seq, "message_chunk", item, delta=piece))
        out = snapshot(events)
        assert [e.seq for e in out] == sorted({e.seq for e in out})
        assert out[-1].seq == seq
        got = {e.item_id: data(e)["delta"] for e in out}
        merged = sum(data(e).get("merged", 1) for e in out)
        assert got == sent and merged == len(events)
