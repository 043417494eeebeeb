"""The client's exception tree. Every exception it raises is an ``AgentstreamError``:

    AgentstreamError
    ├── TransportError            the network failed (connect, handshake, read)
    │   ├── HandshakeTimeout      no response headers / WebSocket upgrade within the timeout
    │   └── ReconnectFailed       resuming a stream kept failing for ``give_up_after`` seconds
    ├── APIError                  the server answered ``{"error": {code, message}}`` (status, code)
    │   ├── BadRequest            400, 413, 415, 422: the request itself is wrong
    │   ├── AuthError             401, 403
    │   ├── NotFound              404, 410 (an id never seen, or deleted by retention)
    │   ├── Conflict              409 (a question answered already, a run that ended)
    │   ├── RateLimited           429 (retried while resuming; raised from start/answer)
    │   └── ServiceUnavailable    5xx (retried while resuming; raised from start/answer)
    ├── ProtocolError             the server sent something the protocol does not allow
    └── ClientClosed              the client or handle was closed and cannot be used

Streams resume by themselves on ``TransportError``, ``RateLimited`` and
``ServiceUnavailable``: a caller iterating a run sees one only once ``give_up_after``
passed. ``start`` is never retried (a lost reply could mean a started run), so it raises
``TransportError`` and the caller decides. A run ending ``failed`` or ``cancelled`` is not an
exception: it is the run's ``done`` event.
"""

from __future__ import annotations


class AgentstreamError(Exception):
    """Base of everything this package raises."""


class TransportError(AgentstreamError):
    """The connection failed: refused, reset, timed out, or closed mid-stream."""


class HandshakeTimeout(TransportError):
    """No HTTP response headers or WebSocket upgrade arrived within ``handshake_timeout``."""


class ReconnectFailed(TransportError):
    """A stream could not be resumed within ``give_up_after`` seconds of failures."""


class ProtocolError(AgentstreamError):
    """A frame or body that PROTOCOL.md does not allow (e.g. a known event type with a
    payload that does not decode). Unknown event *types* are not errors: they arrive as
    ``UnknownEvent``."""


class ClientClosed(AgentstreamError):
    """The client (or this handle) was closed."""


class APIError(AgentstreamError):
    """A non-2xx answer with the protocol's error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class BadRequest(APIError):
    """400, 413, 415, 422."""


class AuthError(APIError):
    """401 or 403."""


class NotFound(APIError):
    """404, or 410 for ids retention deleted."""


class Conflict(APIError):
    """409: wrong state (answered already, run ended, duplicate ref)."""


class RateLimited(APIError):
    """429."""


class ServiceUnavailable(APIError):
    """5xx: shutting down, store unavailable."""


def api_error(status: int, code: str, message: str) -> APIError:
    """The ``APIError`` subclass for an HTTP status (WebSocket error frames use the same
    codes; ``status`` is 0 there)."""
    if status in (401, 403):
        return AuthError(status, code, message)
    if status in (404, 410):
        return NotFound(status, code, message)
    if status == 409:
        return Conflict(status, code, message)
    if status == 429:
        return RateLimited(status, code, message)
    if status >= 500:
        return ServiceUnavailable(status, code, message)
    return BadRequest(status, code, message)


RETRYABLE: tuple[type[AgentstreamError], ...] = (TransportError, RateLimited, ServiceUnavailable)
