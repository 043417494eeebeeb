"""The domain's error tree: what went wrong, in words and a stable code, with no HTTP in it.

Every layer below the API (engine, store, auth, schedules, agents' registry) raises one of
these; ``app/api/errors.py`` holds the one table that maps each class to an HTTP status and
to a WebSocket ``error`` frame. The ``code`` is the wire vocabulary (PROTOCOL-NOTES lists
them); the class says which kind of failure it is::

    AgentstreamError            code, message
    ├── BadRequest              the request itself is malformed (bad JSON, bad position)
    ├── Unauthenticated         no credential, or one that is invalid or expired
    ├── Forbidden               a credential that may not do this (scope)
    ├── NotFound                unknown id, or one the caller may not see
    ├── Conflict                the thing is in the wrong state (answered, ended, duplicate)
    ├── Expired                 retention removed it (only ever told to its owner)
    ├── TooLarge                a body or frame over its limit
    ├── UnsupportedMediaType    a body that is not JSON
    ├── InvalidInput            a well-formed request with a field that breaks its rule
    ├── LimitExceeded           a per-user or per-socket limit
    └── Unavailable             shutting down, or the store cannot take writes
"""

from __future__ import annotations


class AgentstreamError(Exception):
    """Base of every coded failure the service reports to a client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class BadRequest(AgentstreamError):
    pass


class Unauthenticated(AgentstreamError):
    pass


class Forbidden(AgentstreamError):
    pass


class NotFound(AgentstreamError):
    pass


class Conflict(AgentstreamError):
    pass


class Expired(AgentstreamError):
    pass


class TooLarge(AgentstreamError):
    pass


class UnsupportedMediaType(AgentstreamError):
    pass


class InvalidInput(AgentstreamError):
    pass


class LimitExceeded(AgentstreamError):
    pass


class Unavailable(AgentstreamError):
    pass


def not_found(kind: str, ident: str) -> NotFound:
    return NotFound(f"{kind}_not_found", f"no {kind} {ident!r}")


def shutting_down() -> Unavailable:
    return Unavailable("shutting_down", "the server is shutting down")
