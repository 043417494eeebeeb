"""An incremental Server-Sent Events parser: bytes in, dispatched events out.

Pure (no I/O), so relays and clients share one parser and tests can drive it byte by byte.
Follows the WHATWG event-stream rules: lines end with CRLF, LF or a lone CR (a CRLF split
across two reads is one line end); a leading BOM is dropped; ``:`` lines are comments;
``data`` lines join with ``\\n``; a blank line dispatches; an event cut off by the end of the
stream is discarded. Lines are decoded only once complete, and CR/LF bytes never occur inside
a multi-byte UTF-8 sequence, so a character split across reads decodes intact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n?|\n")
DEFAULT_MAX_LINE = 8 * 1024 * 1024


class SseProtocolError(ValueError):
    """The byte stream cannot be an event stream (e.g. a line beyond the size limit)."""


@dataclass(slots=True)
class SseEvent:
    event: str = "message"
    data: str = ""
    # The ``id`` field of this event, if it had one (``SseParser.last_event_id`` is sticky).
    id: str | None = None
    retry: int | None = None


class SseParser:
    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self.last_event_id = ""
        self.retry: int | None = None
        self.comments = 0
        self._buf = b""
        self._skip_lf = False
        self._first_line = True
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Consume the next bytes; return the events they complete, in order."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        events: list[SseEvent] = []
        pos = 0
        end = len(buf)
        while pos < end:
            m = _EOL.search(buf, pos)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == end:
                # The LF of a CRLF may be the first byte of the next read.
                self._skip_lf = True
            self._line(buf[pos : m.start()], events)
            pos = m.end()
        self._buf = buf[pos:]
        if len(self._buf) > self.max_line:
            raise SseProtocolError(f"an event-stream line is longer than {self.max_line} bytes")
        return events

    def _line(self, raw: bytes, events: list[SseEvent]) -> None:
        line = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            self.comments += 1
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
            self.retry = self._retry
        # Unknown fields are ignored, as the spec says.

    def _dispatch(self, events: list[SseEvent]) -> None:
        if self._data:
            events.append(
                SseEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
            )
        self._event = ""
        self._data = []
        self._id = None
        self._retry = None
