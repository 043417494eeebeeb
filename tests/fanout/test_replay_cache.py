"""The in-memory window of recent events that catch-ups read before the store."""

from __future__ import annotations

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
