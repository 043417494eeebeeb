"""agentstream_client: a Python client for agentstream (async, aiohttp).

    async with AgentstreamClient("http://127.0.0.1:8080") as client:
        run = await client.start("demo", {"text": "hi", "ask": "Proceed?"})
        async for event in run:                      # typed ``protocol`` structs
            if isinstance(event, MessageChunk):
                print(event.data.delta, end="")
            elif isinstance(event, RequireUserInput):
                await run.answer("yes")
        print(run.result.data.status)                # the run's one ``done``

What it does for you: streams resume by themselves after a drop, from the last seq seen,
with capped exponential backoff and full jitter (``Backoff``); events are de-duplicated and
ordered by seq; ``run.complete`` compares what you saw with ``done.data.events``; event types
this version does not know arrive as ``UnknownEvent``. ``run.cancel()`` stops the run on the
server (you then get its ``done {cancelled}``); ``run.close()`` only stops listening.
``client.subscribe(conversation_id)`` follows a whole conversation. ``transport="ws"`` does
the same over WebSocket. There is no sync wrapper yet: use ``asyncio.run``.

Exceptions (all ``AgentstreamError``): see ``agentstream_client._exceptions`` for the tree —
``TransportError`` (``HandshakeTimeout``, ``ReconnectFailed``), ``APIError`` with
``status``/``code`` (``BadRequest``, ``AuthError``, ``NotFound``, ``Conflict``,
``RateLimited``, ``ServiceUnavailable``), ``ProtocolError``, ``ClientClosed``.
"""

from agentstream_client._backoff import Backoff
from agentstream_client._client import AgentstreamClient
from agentstream_client._events import StreamEvent, UnknownEvent, event_type
from agentstream_client._exceptions import (
    AgentstreamError,
    APIError,
    AuthError,
    BadRequest,
    ClientClosed,
    Conflict,
    HandshakeTimeout,
    NotFound,
    ProtocolError,
    RateLimited,
    ReconnectFailed,
    ServiceUnavailable,
    TransportError,
)
from agentstream_client._stream import Run, Subscription
from protocol.events import (
    Done,
    Message,
    MessageChunk,
    Reasoning,
    RequireUserInput,
    RunStarted,
    ToolCallCompleted,
    ToolCallStarted,
)

__all__ = [
    "APIError",
    "AgentstreamClient",
    "AgentstreamError",
    "AuthError",
    "Backoff",
    "BadRequest",
    "ClientClosed",
    "Conflict",
    "Done",
    "HandshakeTimeout",
    "Message",
    "MessageChunk",
    "NotFound",
    "ProtocolError",
    "RateLimited",
    "Reasoning",
    "ReconnectFailed",
    "RequireUserInput",
    "Run",
    "RunStarted",
    "ServiceUnavailable",
    "StreamEvent",
    "Subscription",
    "ToolCallCompleted",
    "ToolCallStarted",
    "TransportError",
    "UnknownEvent",
    "event_type",
]
