"""Request parsing and error responses shared by every handler."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from aiohttp import web

from app.errors import BadRequest, InvalidInput, TooLarge, UnsupportedMediaType
from protocol.messages import (
    ID_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    ErrorBody,
    ErrorDetail,
    decode_json,
)

T = TypeVar("T")
_ID = re.compile(ID_PATTERN)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_encoder = msgspec.json.Encoder()
# The only request body type: a browser cannot send it cross-site without a CORS preflight,
# so a form or text/plain post from another site never reaches a handler as JSON (CSRF).
JSON_TYPE = "application/json"
# Bodies are read as they arrived (aiohttp's decompression is off): identity only.
IDENTITY_ENCODINGS = frozenset({"", "identity"})


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(obj), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response(ErrorBody(ErrorDetail(code, message)), status)


def path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not _ID.match(value):
        raise InvalidInput("invalid_id", f"{name} must match {ID_PATTERN}")
    return value


def _check_body_headers(request: web.Request, limit: int) -> None:
    if request.content_type != JSON_TYPE:
        sent = request.headers.get("Content-Type", "")[:80] or "no Content-Type"
        raise UnsupportedMediaType("unsupported_media_type",
                                   f"send Content-Type: application/json, not {sent!r}")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("unsupported_media_type",
                                   f"JSON bodies are UTF-8, not charset {charset[:40]!r}")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in IDENTITY_ENCODINGS:
        raise UnsupportedMediaType(
            "unsupported_content_encoding",
            f"request bodies are not decoded; send them without Content-Encoding, "
            f"not {encoding[:40]!r}")
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge("body_too_large", f"body is over {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body (however many TCP segments or chunks it came in), at most ``limit``
    bytes: ``413 body_too_large`` as soon as more than that has arrived."""
    _check_body_headers(request, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise TooLarge("body_too_large", f"body is over {limit} bytes")


async def read_json(request: web.Request, typ: type[T], limit: int) -> T:
    body = await read_body(request, limit)
    if not body.strip():
        raise BadRequest("malformed_json", "the body is empty; send a JSON object")
    try:
        # A first, untyped pass: malformed JSON is a 400 wherever the typed pass would stop,
        # and it refuses invalid UTF-8 and deep nesting (MAX_JSON_DEPTH) as DecodeErrors.
        decode_json(body)
    except msgspec.DecodeError as exc:
        raise BadRequest("malformed_json", f"body is not valid JSON: {exc}") from None
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise InvalidInput("invalid_field", str(exc)) from None


def parse_position(raw: str) -> int | None:
    """A stream position: 1-18 ASCII digits, else None. ``str.isdigit`` is not enough:
    it accepts superscripts ('²', which ``int`` refuses) and Arabic or full-width digits
    (which ``int`` reads as numbers)."""
    if 0 < len(raw) <= 18 and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


def parse_last_event_id(request: web.Request) -> int:
    """``Last-Event-ID`` header, else ``?last_event_id=`` (a browser's first connect). Both
    are checked when both are sent (a bad one is never silently ignored); empty is no
    position."""
    header = request.headers.get("Last-Event-ID", "").strip()
    # No query string, no parsed query: it would be kept for the request's life (an idle
    # stream's, issue 13).
    raw = request.query.get("last_event_id", "") if has_query(request) else ""
    query = _position("last_event_id", raw.strip())
    return _position("Last-Event-ID", header) if header else query


def has_query(request: web.Request) -> bool:
    """The request target has a query string. Read from the raw target: ``query`` and
    even ``query_string`` are cached on the request for its whole life, which for an idle
    stream is memory per connection (issue 13)."""
    return bool(request.rel_url.raw_query_string)


def _position(source: str, raw: str) -> int:
    if not raw:
        return 0
    position = parse_position(raw)
    if position is None:
        raise BadRequest("invalid_last_event_id",
                         f"{source} must be a non-negative integer seq (ASCII digits), "
                         f"got {raw[:40]!r}")
    return position


def wants_sse(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def wants_json(request: web.Request) -> bool:
    """An explicit ``Accept: application/json`` without ``text/event-stream``."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


def idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header: 1-255 printable ASCII characters, else 422."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    if not _IDEMPOTENCY_KEY.match(raw):
        raise InvalidInput("invalid_idempotency_key",
                           "Idempotency-Key must be 1-255 printable ASCII characters")
    return raw


def query_flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: ``1``/``true`` or ``0``/``false`` (absent: false)."""
    raw = request.query.get(name)
    if raw is None or raw in ("0", "false", ""):
        return False
    if raw in ("1", "true"):
        return True
    raise InvalidInput(f"invalid_{name}", f"{name} must be 1, true, 0 or false")
