"""Domain errors to the wire, in one table: an HTTP status and body, or a WebSocket frame.

The layers below raise ``app.errors`` classes and know nothing of HTTP; this is the only
place that decides which status each kind of failure gets.
"""

from __future__ import annotations

from aiohttp import web

from app.api.common import error_response
from app.errors import (
    AgentstreamError,
    BadRequest,
    Conflict,
    Expired,
    Forbidden,
    InvalidInput,
    LimitExceeded,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from protocol.messages import ErrorReply

HTTP_STATUS: dict[type[AgentstreamError], int] = {
    BadRequest: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Expired: 410,
    TooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    LimitExceeded: 429,
    Unavailable: 503,
}


def http_status(exc: AgentstreamError) -> int:
    """The status of the nearest class in the table (a subclass inherits its parent's)."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 400


def http_error(exc: AgentstreamError) -> web.Response:
    return error_response(http_status(exc), exc.code, exc.message)


def ws_error(exc: AgentstreamError, ref: str | None = None) -> ErrorReply:
    return ErrorReply(ref=ref, code=exc.code, message=exc.message)
