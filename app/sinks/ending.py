"""Why a sink ended: the closed error, the peer-lost reasons, and timeout detection."""

from __future__ import annotations

# Close reasons meaning the client is gone (or stopped reading): ``Sink.peer_lost``.
PEER_LOST_REASONS = frozenset({"disconnected", "write_timeout"})


class SinkClosed(Exception):
    """The sink is closed (the reason is in ``Sink.close_reason``): no more subscriptions,
    no more writes."""


def caused_by_timeout(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what it wraps) is a timeout, e.g. the kernel's
    TCP_USER_TIMEOUT surfacing as ETIMEDOUT under aiohttp's ``Connection lost``."""
    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
