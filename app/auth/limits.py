"""Per-user limits: concurrent streaming connections and runs started per minute."""

from __future__ import annotations

import time
from collections import deque

from app import metrics
from app.errors import LimitExceeded


class ConnectionLimiter:
    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._open: dict[str, int] = {}

    def acquire(self, user: str) -> None:
        count = self._open.get(user, 0)
        if self.per_user and count >= self.per_user:
            metrics.LIMITED.labels("connections").inc()
            raise LimitExceeded("too_many_connections",
                           f"at most {self.per_user} open streams per user")
        self._open[user] = count + 1

    def release(self, user: str) -> None:
        count = self._open.get(user, 0) - 1
        if count > 0:
            self._open[user] = count
        else:
            self._open.pop(user, None)


class RunRateLimiter:
    """Sliding one-minute window; memory per user is bounded by the limit itself."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._starts: dict[str, deque[float]] = {}
        self._checks = 0

    def check(self, user: str) -> None:
        if not self.per_minute:
            return
        now = time.monotonic()
        window = self._starts.setdefault(user, deque())
        while window and now - window[0] >= 60.0:
            window.popleft()
        self._checks += 1
        if self._checks % 1024 == 0:
            # Users quiet for a minute have empty windows: drop them, so memory follows
            # active users, not every user ever seen.
            for quiet in [u for u, w in self._starts.items() if not w or now - w[-1] >= 60.0]:
                del self._starts[quiet]
            window = self._starts.setdefault(user, deque())
        if len(window) >= self.per_minute:
            metrics.LIMITED.labels("runs_per_minute").inc()
            retry = int(60.0 - (now - window[0])) + 1
            raise LimitExceeded("rate_limited",
                           f"at most {self.per_minute} runs per minute; retry in {retry}s")
        window.append(now)
