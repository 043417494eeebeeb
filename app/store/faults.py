"""Store faults injected on purpose, for the crash-and-fault harness (``AGENTSTREAM_FAULTS``).

Off unless the environment variable is set; the value is a comma-separated list of
``name=value`` settings:

- ``commit_fail_every=N``: every Nth batch fails with a transient error (the writer retries);
- ``commit_fail=P``: each batch fails with a transient error with probability P;
- ``commit_fail_permanent=MARKER``: any unit holding an event whose JSON contains MARKER
  fails permanently (as an integrity error would), so the poisoned-batch path runs.

A production process never sets it; ``/metrics`` shows ``agentstream_faults_enabled``.
"""

from __future__ import annotations

import os
import random

ENV = "AGENTSTREAM_FAULTS"


class InjectedTransientFault(OSError):
    """Looks like a disk that failed this time and may work the next."""


class InjectedPermanentFault(ValueError):
    """Looks like data the database will never accept."""


class Faults:
    def __init__(self, spec: str = "") -> None:
        self.every = 0
        self.probability = 0.0
        self.marker: bytes | None = None
        self._batches = 0
        self._random = random.Random(0)
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, value = part.partition("=")
            if name == "commit_fail_every":
                self.every = int(value)
            elif name == "commit_fail":
                self.probability = float(value)
            elif name == "commit_fail_permanent":
                self.marker = value.encode()
            else:
                raise ValueError(f"{ENV}: unknown fault {name!r}")

    @classmethod
    def from_env(cls) -> Faults:
        return cls(os.environ.get(ENV, ""))

    @property
    def enabled(self) -> bool:
        return bool(self.every or self.probability or self.marker)

    def before_batch(self) -> None:
        """Raise a transient fault for this batch if one is due."""
        self._batches += 1
        if self.every and self._batches % self.every == 0:
            raise InjectedTransientFault(f"injected fault (batch {self._batches})")
        if self.probability and self._random.random() < self.probability:
            raise InjectedTransientFault(f"injected fault (batch {self._batches})")

    def check_event(self, body: bytes) -> None:
        if self.marker is not None and self.marker in body:
            raise InjectedPermanentFault("injected permanent fault (marked event)")
