"""Request parsing and error responses shared by every handler."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from aiohttp import web

from app.errors import BadRequest, InvalidInput, TooLarge, UnsupportedMediaType
from protocol.messages import ID_PATTERN, ErrorBody, ErrorDetail

T = TypeVar("T")
_ID = re.compile(ID_PATTERN)
_encoder = msgspec.json.Encoder()
# curl -d sends form-urlencoded and some clients send nothing: both carry our JSON fine.
JSON_TYPES = frozenset(
    {"application/json", "application/x-www-form-urlencoded", "text/plain", "",
     "application/octet-stream"}
)


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(obj), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response(ErrorBody(ErrorDetail(code, message)), status)


def path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not _ID.match(value):
        raise InvalidInput("invalid_id", f"{name} must match {ID_PATTERN}")
    return value


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_type not in JSON_TYPES:
        raise UnsupportedMediaType("unsupported_media_type",
                       f"send application/json, not {request.content_type}")
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge("body_too_large", f"body is over {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise TooLarge("body_too_large", f"body is over {limit} bytes")
    return body


async def read_json(request: web.Request, typ: type[T], limit: int) -> T:
    body = await read_body(request, limit)
    if not body.strip():
        raise BadRequest("malformed_json", "the body is empty; send a JSON object")
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest("malformed_json", f"body is not valid JSON: {exc}") from None
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise InvalidInput("invalid_field", str(exc)) from None


def parse_last_event_id(request: web.Request) -> int:
    """``Last-Event-ID`` header, else ``?last_event_id=`` (a browser's first connect)."""
    raw = request.headers.get("Last-Event-ID")
    source = "Last-Event-ID"
    if raw is None:
        raw = request.query.get("last_event_id")
        source = "last_event_id"
    if raw is None or raw.strip() == "":
        return 0
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest("invalid_last_event_id",
                       f"{source} must be a non-negative integer seq, got {raw[:40]!r}")
    return int(raw)


def wants_sse(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")
