"""The HTTP side of a remote agent: the calls to another agentstream server.

``RemoteServer`` owns the session and knows the remote's API (PROTOCOL.md): check that it
has the agent, start a run as SSE, resume a run's events, forward an answer, cancel. Each
call is bounded in time and retried only where a repeat is harmless (see each method).
``RemoteAgent`` (remote.py) drives a run with it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import aiohttp
import msgspec
import structlog

from app.agents.base import AgentError
from app.agents.http_client import (
    LazySession,
    RequestProbe,
    backoff_delay,
    backoff_delays,
    read_error_text,
    safe_to_retry,
)
from protocol.messages import AgentList

log = structlog.get_logger(__name__)

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
_agents_decoder = msgspec.json.Decoder(AgentList)


class RemoteOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the operator configures for one remote agent (the TOML entry extends this)."""

    url: str
    remote_agent: str
    can_request_input: bool = True
    connect_timeout: PositiveSeconds = 10.0
    # Each JSON call, and the wait for a stream's response headers.
    request_timeout: PositiveSeconds = 30.0
    # Longest silence on a stream; the remote sends heartbeats, so this means it is gone.
    idle_timeout: PositiveSeconds = 60.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    resume_retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5
    backoff: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5
    cancel_timeout: PositiveSeconds = 3.0


@dataclass
class RemoteRun:
    run_id: str | None = None
    last_seq: int = 0
    ended: bool = False
    # Resume attempts since an event last got through, and the seq they resume from.
    resume_failures: int = 0
    resumed_from: int = 0
    problem: str = ""


class RemoteServer:
    def __init__(self, options: RemoteOptions) -> None:
        self.options = options
        self.base = options.url.rstrip("/")
        self._http = LazySession(options.connect_timeout)
        self._lock = asyncio.Lock()
        self._ready = False

    async def ensure_ready(self) -> None:
        """Check once (concurrent first runs share one check) that the remote has the agent."""
        if self._ready:
            return
        opts = self.options
        # Every attempt at its timeout plus every backoff at its longest (+20% jitter).
        sleeps = sum(min(10.0, opts.backoff * 2.0**i) * 1.2 for i in range(opts.retries))
        budget = (opts.retries + 1) * opts.request_timeout + sleeps + 1.0
        try:
            async with asyncio.timeout(budget), self._lock:
                if not self._ready:
                    await self._check_remote()
                    self._ready = True
        except TimeoutError:
            raise AgentError("remote_unavailable", f"{self.base} did not answer in time") from None

    async def _check_remote(self) -> None:
        opts = self.options
        delays = backoff_delays(opts.retries, opts.backoff)
        while True:
            problem = await self._fetch_agents()
            if problem is None:
                log.info("remote_ready", remote=self.base, remote_agent=opts.remote_agent)
                return
            delay = next(delays, None)
            if delay is None:
                raise AgentError("remote_unavailable", f"{self.base}: {problem}")
            log.warning("remote_setup_retry", remote=self.base, problem=problem,
                        delay=round(delay, 3))
            await asyncio.sleep(delay)

    async def _fetch_agents(self) -> str | None:
        """None when the remote lists our agent; else why not (retried). A remote without
        the agent is final."""
        try:
            async with asyncio.timeout(self.options.request_timeout), self._http.get().get(
                f"{self.base}/v1/agents"
            ) as resp:
                if resp.status != 200:
                    return f"GET /v1/agents answered {resp.status}: {await read_error_text(resp)}"
                listing = _agents_decoder.decode(await resp.read())
        except TimeoutError:
            return f"no answer within {self.options.request_timeout:g}s"
        except aiohttp.ClientError as exc:
            return f"cannot connect ({exc or type(exc).__name__})"
        except msgspec.MsgspecError:
            return "GET /v1/agents did not return an agent list"
        names = sorted(a.name for a in listing.agents)
        if self.options.remote_agent not in names:
            raise AgentError("remote_agent_unknown",
                             f"{self.base} has no agent {self.options.remote_agent!r} "
                             f"(it has: {', '.join(names)})")
        return None

    async def start(self, input: Any) -> aiohttp.ClientResponse:
        """POST the run (as SSE, cancelled by the remote if this link drops). Retried only
        while nothing was sent: a repeat after that could start the run twice."""
        opts = self.options
        body = {"agent": opts.remote_agent, "input": input, "on_disconnect": "cancel"}
        delays = backoff_delays(opts.retries, opts.backoff)
        while True:
            probe = RequestProbe()
            try:
                async with asyncio.timeout(opts.request_timeout):
                    resp = await self._http.get().post(
                        f"{self.base}/v1/runs", json=body,
                        headers={"Accept": "text/event-stream"}, trace_request_ctx=probe,
                    )
                break
            except (TimeoutError, aiohttp.ClientError) as exc:
                delay = next(delays, None) if safe_to_retry(exc, probe) else None
                if delay is not None:
                    await asyncio.sleep(delay)
                    continue
                if isinstance(exc, aiohttp.ClientConnectorError):
                    self._ready = False
                    message = f"cannot connect to {self.base}: {exc}"
                elif isinstance(exc, TimeoutError):
                    message = f"{self.base} did not answer within {opts.request_timeout:g}s"
                else:
                    message = f"{self.base}: {exc or type(exc).__name__}"
                if probe.sent:
                    message += " (not retried: the remote had the start request)"
                raise AgentError("remote_unavailable", message) from None
        if resp.status == 200:
            return resp
        async with resp:
            await self.raise_http_error(resp, "starting the run")

    async def resume(self, remote: RemoteRun) -> aiohttp.ClientResponse:
        """Re-open the run's events after the last seq relayed. Attempts are bounded while
        no event gets through; any progress makes a later drop start afresh."""
        opts = self.options
        url = f"{self.base}/v1/runs/{remote.run_id}/events"
        while True:
            if remote.last_seq > remote.resumed_from:
                remote.resume_failures = 0
            remote.resumed_from = remote.last_seq
            if remote.resume_failures >= opts.resume_retries:
                raise AgentError(
                    "remote_disconnected",
                    f"lost the stream of remote run {remote.run_id} and could not resume it "
                    f"({opts.resume_retries} attempts; last: {remote.problem})",
                )
            await asyncio.sleep(backoff_delay(remote.resume_failures, opts.backoff))
            remote.resume_failures += 1
            try:
                async with asyncio.timeout(opts.request_timeout):
                    resp = await self._http.get().get(url, headers={
                        "Accept": "text/event-stream", "Last-Event-ID": str(remote.last_seq)})
            except (TimeoutError, aiohttp.ClientError) as exc:
                remote.problem = str(exc) or type(exc).__name__
                continue
            if resp.status == 200:
                log.info("remote_stream_resumed", remote_run_id=remote.run_id,
                         last_event_id=remote.last_seq, attempt=remote.resume_failures)
                return resp
            async with resp:
                if resp.status < 500:
                    await self.raise_http_error(resp, "resuming the stream")
                remote.problem = f"{resp.status} {await read_error_text(resp)}"

    async def raise_http_error(self, resp: aiohttp.ClientResponse, doing: str) -> NoReturn:
        text = await read_error_text(resp)
        code = "remote_unavailable" if resp.status in (502, 503, 504) else "remote_http_error"
        raise AgentError(code, f"{self.base} answered {resp.status} {doing}: {text}")

    async def forward_input(self, run_id: str, request_id: str, value: Any) -> None:
        """POST the answer. The remote keeps the first answer to a request and refuses later
        ones with 409, so a repeat is harmless: connection failures, timeouts and 502-504
        are retried."""
        opts = self.options
        url = f"{self.base}/v1/runs/{run_id}/input"
        delays = backoff_delays(opts.retries, opts.backoff)
        while True:
            try:
                async with asyncio.timeout(opts.request_timeout), self._http.get().post(
                    url, json={"request_id": request_id, "value": value}
                ) as resp:
                    if resp.status == 200:
                        return
                    if resp.status == 409:
                        # Settled there already: our own earlier attempt, the remote's default
                        # at the same deadline, or the run ended (its done follows).
                        log.info("remote_input_already_settled", request_id=request_id,
                                 detail=await read_error_text(resp))
                        return
                    if resp.status not in (502, 503, 504):
                        await self.raise_http_error(resp, "forwarding the answer")
                    problem = f"{resp.status} {await read_error_text(resp)}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = str(exc) or type(exc).__name__
            delay = next(delays, None)
            if delay is None:
                raise AgentError("remote_unavailable",
                                 f"could not forward the answer to {self.base}: {problem}")
            log.warning("remote_input_retry", request_id=request_id, problem=problem,
                        delay=round(delay, 3))
            await asyncio.sleep(delay)

    async def cancel(self, run_id: str) -> None:
        try:
            async with asyncio.timeout(self.options.cancel_timeout), self._http.get().post(
                f"{self.base}/v1/runs/{run_id}/cancel"
            ) as resp:
                log.info("remote_cancel_forwarded", remote_run_id=run_id, status=resp.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("remote_cancel_failed", remote_run_id=run_id,
                        error=str(exc) or type(exc).__name__)

    async def close(self) -> None:
        await self._http.close()
