"""Capped exponential backoff with full jitter, and the seq bookkeeping of a resumed
stream. Both are I/O-free, so tests feed them numbers."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before reconnect attempt ``n`` (0-based): uniform in ``[0, min(cap,
    initial * factor**n)]`` ("full jitter"), so a thousand clients dropped by one restart do
    not come back in one wave. ``give_up_after``: seconds of consecutive failures after
    which the stream raises ``ReconnectFailed``."""

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 5.0
    give_up_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return self.rng.uniform(0.0, ceiling)


class SeqTracker:
    """Order and de-duplication by ``seq``: a frame is new only when its seq is above the
    last one taken (a resumed stream starts after it, but a server or proxy may still
    repeat). ``counted`` adds up stored events seen (merged frames count their ``merged``),
    to compare with ``done.data.events``."""

    __slots__ = ("counted", "duplicates", "last_seq")

    def __init__(self, after: int = 0) -> None:
        self.last_seq = after
        self.counted = 0
        self.duplicates = 0

    def take(self, seq: int, stored: int = 1) -> bool:
        """True if the event is new (and records it); False for a repeat."""
        if seq <= self.last_seq:
            self.duplicates += 1
            return False
        self.last_seq = seq
        self.counted += stored
        return True
