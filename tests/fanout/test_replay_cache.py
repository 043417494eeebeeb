"""The in-memory window of recent events that catch-ups read before the store."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

from app.fanout.replay_cache import ReplayCache, event_cost
from protocol.codec import EncodedEvent


def evs(conv: str, first: int, n: int) -> list[EncodedEvent]:
    return [EncodedEvent(s, "message_chunk", conv, "r", b"x" * 100) for s in
            range(first, first + n)]


def test_after_returns_a_contiguous_slice_or_none_when_out_of_window() -> None:
    cache = ReplayCache(10**9)
    cache.add(evs("a", 1, 10))
    cache.add(evs("a", 11, 5))
    assert [e.seq for e in cache.after("a", 0, 100) or []] == list(range(1, 16))
    assert [e.seq for e in cache.after("a", 7, 3) or []] == [8, 9, 10]
    assert cache.after("a", 15, 10) == []
    assert cache.after("b", 0, 10) is None


def test_eviction_is_global_oldest_first_and_bounded() -> None:
    cost = event_cost(evs("a", 1, 1)[0])
    cache = ReplayCache(cost * 10)
    cache.add(evs("a", 1, 6))
    cache.add(evs("b", 1, 6))
    assert cache.bytes <= cost * 10
    assert cache.after("a", 0, 10) is None, "a's first two were evicted"
    assert [e.seq for e in cache.after("a", 2, 10) or []] == [3, 4, 5, 6]
    assert [e.seq for e in cache.after("b", 0, 10) or []] == list(range(1, 7))


def test_whole_window_eviction_and_forget() -> None:
    cost = event_cost(evs("a", 1, 1)[0])
    cache = ReplayCache(cost * 3)
    cache.add(evs("a", 1, 3))
    cache.add(evs("b", 1, 3))
    assert cache.after("a", 0, 10) is None and cache.after("a", 3, 10) is None
    cache.forget("b")
    assert cache.after("b", 0, 10) is None
    cache.add(evs("b", 1, 2))  # a new window after forget; old entries age out harmlessly
    cache.add(evs("c", 1, 3))
    assert cache.bytes <= cost * 3
    assert [e.seq for e in cache.after("c", 0, 10) or []] == [1, 2, 3]


def test_a_gap_starts_a_fresh_window() -> None:
    cache = ReplayCache(10**9)
    cache.add(evs("a", 1, 3))
    cache.add(evs("a", 10, 2))
    assert cache.after("a", 0, 10) is None
    assert [e.seq for e in cache.after("a", 9, 10) or []] == [10, 11]


def test_disabled_cache_holds_nothing() -> None:
    cache = ReplayCache(0)
    cache.add(evs("a", 1, 3))
    assert cache.after("a", 0, 10) is None and cache.bytes == 0


# ---- issue 10 item 12: memory follows the byte budget -------------------------------------


def framed(conv: str, first: int, n: int, size: int = 150) -> list[EncodedEvent]:
    """Events as the hub holds them once sinks used them: both frames built."""
    out = [EncodedEvent(s, "message_chunk", conv, "r", b"x" * size) for s in
           range(first, first + n)]
    for e in out:
        _ = e.sse, e.ws
    return out


def live_events() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is EncodedEvent)


def held_by(fill: Callable[[ReplayCache], None], budget: int) -> tuple[int, ReplayCache]:
    """Bytes still allocated after ``fill`` ran on a fresh cache (the events it was given
    are referenced by nothing else)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = ReplayCache(budget)
        fill(cache)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, cache
    finally:
        tracemalloc.stop()


def test_evicted_events_become_unreachable_across_many_active_conversations() -> None:
    """Conversations that keep publishing while their oldest events are evicted (the
    measured 57x: each window kept its evicted entries referenced)."""
    budget = 128 * 1024
    baseline = live_events()

    def fill(cache: ReplayCache) -> None:
        for round_ in range(300):  # far more than the budget holds; no window ever empties
            for i in range(20):
                cache.add(framed(f"conv-{i}", 1 + 2 * round_, 2))

    held, cache = held_by(fill, budget)
    assert cache.bytes <= budget
    per_event = event_cost(framed("x", 1, 1)[0])
    assert live_events() - baseline <= budget // per_event + 1, "no evicted event is kept"
    assert held <= budget * 1.25, f"the cache holds {held / budget:.1f}x its budget"


def test_a_long_conversation_stays_within_its_budget() -> None:
    budget = 256 * 1024

    def fill(cache: ReplayCache) -> None:
        for b in range(2000):
            cache.add(framed("long", 1 + 10 * b, 10))

    held, cache = held_by(fill, budget)
    assert cache.bytes <= budget
    assert held <= budget * 1.25, f"the cache holds {held / budget:.1f}x its budget"
    got = cache.after("long", 19_990, 100) or []
    assert [e.seq for e in got] == list(range(19_991, 20_001))


def test_forgotten_windows_let_go_at_once_and_the_eviction_queue_does_not_grow() -> None:
    budget = 10**9  # never evicts: only ``forget`` and gaps release memory
    baseline = live_events()

    def fill(cache: ReplayCache) -> None:
        for _ in range(2000):
            cache.add(framed("churn", 1, 20))
            cache.add(framed("churn", 100, 5))  # a gap: a fresh window replaces the old
            cache.forget("churn")

    held, cache = held_by(fill, budget)
    assert cache.bytes == 0 and live_events() == baseline
    assert len(cache._order) <= 50, "void entries are dropped, not kept forever"
    assert held < 64 * 1024
