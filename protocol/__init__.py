"""agentstream wire protocol: pure data types and codecs, no I/O. See PROTOCOL.md."""

from protocol.codec import EncodedEvent, decode_event, encode_event, sse_frame
from protocol.events import EVENT_CLASSES, EVENT_TYPES, Event, EventBase
from protocol.messages import Command, decode_command

__all__ = [
    "EVENT_CLASSES",
    "EVENT_TYPES",
    "Command",
    "EncodedEvent",
    "Event",
    "EventBase",
    "decode_command",
    "decode_event",
    "encode_event",
    "sse_frame",
]
