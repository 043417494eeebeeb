"""The ``openai`` relay agent: one run is one streamed Chat Completions request to an
OpenAI-compatible server, its chunks re-emitted as agentstream events (``openai_stream``).

Failure is always a coded ``done {failed}`` with the upstream's own message where it gave
one. Retries (exponential backoff) happen only while none of the request was sent (connect
refused, DNS, connect timeout): once the POST went out the upstream may have started work,
and a repeated request would be a second answer. Keep-alives in the stream (comments, empty
data, ``data: heartbeat``-style bare words, ``event: ping``) are skipped.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import structlog

from app.agents.base import Agent, AgentError, AgentInputError, RunContext
from app.agents.http_client import (
    LazySession,
    RequestProbe,
    backoff_delays,
    read_error_text,
    safe_to_retry,
)
from app.agents.openai_stream import StreamMapper, decode_chunk, error_text, is_keepalive
from protocol.messages import AgentCard
from protocol.sse_parser import SseParser, SseProtocolError

log = structlog.get_logger(__name__)

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]


class OpenAIOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the operator configures for one relay agent (the TOML entry extends this)."""

    base_url: str | None = None
    model: str | None = None
    connect_timeout: PositiveSeconds = 10.0
    # Until the response status line arrives; retried only if the request was not sent yet.
    first_byte_timeout: PositiveSeconds = 60.0
    # Longest silence between two reads once streaming; not retried.
    idle_timeout: PositiveSeconds = 120.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    backoff: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5


class OpenAIInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    prompt: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    messages: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)] | None = None
    system: str | None = None
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    # Only for agents configured without a base_url (the operator opted in).
    base_url: str | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


class _Request(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    temperature: float | None = None
    max_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


class _Prepared(msgspec.Struct):
    url: str
    body: _Request


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AgentInputError(f"base_url must be an http(s) URL, got {url[:200]!r}")
    return url.rstrip("/")


class OpenAIRelayAgent(Agent):
    def __init__(
        self,
        name: str,
        options: OpenAIOptions,
        *,
        api_key: str | None = None,
        description: str = "",
    ) -> None:
        if options.base_url is not None:
            _check_base_url(options.base_url)
        self.options = options
        self._api_key = api_key
        self.card = AgentCard(
            name=name,
            description=description
            or f"OpenAI-compatible chat model {options.model or '(model from input)'}",
            can_request_input=False,
            input_schema=msgspec.json.schema(OpenAIInput),
        )
        self._http = LazySession(options.connect_timeout)

    def parse_input(self, raw: Any) -> _Prepared:
        if isinstance(raw, str):
            raw = {"prompt": raw}
        try:
            inp = msgspec.convert(raw, OpenAIInput)
        except msgspec.ValidationError as exc:
            raise AgentInputError(str(exc)) from None
        if (inp.prompt is None) == (inp.messages is None):
            raise AgentInputError("give exactly one of prompt or messages")
        model = inp.model or self.options.model
        if model is None:
            raise AgentInputError("no model: this agent has none configured, give input.model")
        if inp.base_url is not None and self.options.base_url is not None:
            raise AgentInputError("base_url is fixed by this agent's configuration")
        base = inp.base_url or self.options.base_url
        if base is None:
            raise AgentInputError("no base_url: this agent has none configured, give one")
        messages = inp.messages or [{"role": "user", "content": inp.prompt}]
        if inp.system is not None:
            messages = [{"role": "system", "content": inp.system}, *messages]
        body = _Request(
            model=model, messages=messages, stream=True, temperature=inp.temperature,
            max_tokens=inp.max_tokens, tools=inp.tools, tool_choice=inp.tool_choice,
        )
        return _Prepared(_check_base_url(base) + "/chat/completions", body)

    async def run(self, ctx: RunContext, input: _Prepared) -> None:
        structlog.contextvars.bind_contextvars(upstream=urlsplit(input.url).netloc)
        resp = await self._open(input)
        async with resp:
            if resp.status != 200:
                text = await read_error_text(resp)
                raise AgentError("upstream_http_error", f"upstream answered {resp.status}: {text}")
            if resp.content_type != "text/event-stream":
                text = await read_error_text(resp)
                raise AgentError(
                    "upstream_bad_response",
                    f"upstream sent {resp.content_type or 'no content type'}, "
                    f"not an event stream: {text}",
                )
            mapper = StreamMapper(ctx)
            await self._pump(resp, mapper)
        log.info("upstream_stream_ended", finish_reason=mapper.finish_reason)

    async def _open(self, prepared: _Prepared) -> aiohttp.ClientResponse:
        """POST the request. Retried only while nothing of it was sent (``safe_to_retry``):
        the upstream may already be generating once it has the request, so a timeout or a
        dropped connection after that fails the run instead of asking for a second answer."""
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        payload = msgspec.json.encode(prepared.body)
        delays = backoff_delays(self.options.retries, self.options.backoff)
        attempt = 0
        while True:
            attempt += 1
            probe = RequestProbe()
            try:
                async with asyncio.timeout(self.options.first_byte_timeout):
                    return await self._http.get().post(prepared.url, data=payload,
                                                       headers=headers, trace_request_ctx=probe)
            except (TimeoutError, aiohttp.ClientError) as exc:
                code, message = self._open_failure(exc, probe)
                retry = safe_to_retry(exc, probe)
            delay = next(delays, None) if retry else None
            if delay is None:
                tried = f"{attempt} attempt{'s' * (attempt > 1)}"
                if not retry and probe.sent:
                    tried += "; not retried: the upstream had the request"
                raise AgentError(code, f"{message} ({tried})")
            log.warning("upstream_retry", attempt=attempt, code=code, delay=round(delay, 3))
            await asyncio.sleep(delay)

    def _open_failure(self, exc: BaseException, probe: RequestProbe) -> tuple[str, str]:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return "upstream_timeout", (
                f"connecting to the upstream timed out after {self.options.connect_timeout:g}s")
        if isinstance(exc, TimeoutError):
            if not probe.sent:
                return "upstream_timeout", (
                    f"could not reach the upstream within {self.options.first_byte_timeout:g}s")
            return "upstream_timeout", (
                f"no response from the upstream within {self.options.first_byte_timeout:g}s")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return "upstream_unavailable", f"cannot connect to the upstream: {exc}"
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionError):
            return "upstream_disconnected", (
                "the upstream closed the connection before answering"
                f" ({exc or type(exc).__name__})")
        # Bytes arrived but were not HTTP.
        return "upstream_bad_response", f"invalid upstream response: {exc}"

    async def _pump(self, resp: aiohttp.ClientResponse, mapper: StreamMapper) -> None:
        parser = SseParser()
        idle = self.options.idle_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await resp.content.readany()
            except TimeoutError:
                raise AgentError("upstream_timeout",
                                 f"the upstream sent nothing for {idle:g}s") from None
            except aiohttp.ClientError as exc:
                raise AgentError("upstream_disconnected",
                                 f"the upstream stream broke: {exc or type(exc).__name__}"
                                 ) from None
            if not chunk:
                raise AgentError("upstream_disconnected",
                                 "the upstream closed the stream before it finished")
            try:
                events = parser.feed(chunk)
            except SseProtocolError as exc:
                raise AgentError("upstream_bad_response", str(exc)) from None
            for event in events:
                data = event.data.strip()
                if data == "[DONE]":
                    await mapper.finish(None)
                    return
                if is_keepalive(event.event, data):
                    continue
                if event.event == "error":
                    raise AgentError("upstream_error", error_text(data))
                await mapper.feed(decode_chunk(data))
                if mapper.finished:
                    return

    async def close(self) -> None:
        await self._http.close()
