"""The ``types`` hook of the I/O-free cursor (issue 16 filters), fed batches and pages."""

from __future__ import annotations

import re

from app.fanout.batch import Batch
from app.sinks.cursor import Cursor, Page, Phase
from protocol.codec import EncodedEvent
from tests.sinks.test_cursor import CONV, chunk, done

TYPES = frozenset({"done"})


def seqs(raw: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"^id: (\d+)$", raw, re.M)]


def test_live_batches_keep_only_the_wanted_types_and_the_cursor_moves_past_the_rest() -> None:
    cursor = Cursor(CONV, "r1", 0, True, types=TYPES)
    cursor.phase = Phase.LIVE
    blob = cursor.take_live(Batch(CONV, [chunk(1), chunk(2)]), "sse")
    assert blob is not None and blob.count == 0 and blob.last_seq == 2
    blob = cursor.take_live(Batch(CONV, [chunk(3), done(4)]), "sse")
    assert blob is not None and seqs(blob.data) == [4] and blob.done_run
    # the unfiltered view of the same batch is a different blob (views are keyed by filter)
    batch = Batch(CONV, [chunk(5), done(6, run="r2")])
    plain = batch.blob("sse", None, 4)
    assert seqs(plain.data) == [5, 6] and seqs(batch.blob("sse", None, 4, TYPES).data) == [6]


def test_catch_up_pages_are_filtered_and_still_reach_the_published_mark() -> None:
    cursor = Cursor(CONV, None, 0, False, types=TYPES)
    rows: list[EncodedEvent] = [chunk(1), chunk(2), done(3), chunk(4)]
    page = Page.read(rows, 0, 100, published=4)
    out = cursor.plan_page(page, merge=False)
    assert [e.seq for e in out.events] == [3]
    assert cursor.page_written(out, published_now=4) is False
    assert cursor.phase is Phase.LIVE and cursor.written_seq == 4


def test_overflow_merge_folds_tool_call_argument_deltas_like_chunks() -> None:
    from app.sinks.merge import merge_chunks
    from protocol.codec import decode_event
    from protocol.events import ToolCallArguments, ToolCallArgumentsData

    def args(seq: int, delta: str) -> EncodedEvent:
        return EncodedEvent.from_event(ToolCallArguments(
            seq=seq, conversation_id=CONV, run_id="r1", agent="a", ts=0, item_id="t",
            data=ToolCallArgumentsData(delta=delta)))

    out = merge_chunks([args(1, '{"a"'), args(2, ": 1}"), chunk(3)])
    assert [e.seq for e in out] == [2, 3]
    folded = decode_event(out[0].body)
    assert isinstance(folded, ToolCallArguments)
    assert (folded.data.delta, folded.data.merged) == ('{"a": 1}', 2)
