"""The built-in ``demo`` agent: deterministic, offline, exactly as PROTOCOL.md describes.

It streams reasoning, a tool call, then ``tokens`` message chunks; with ``ask`` it pauses on
``require_user_input`` and echoes the answer before finishing; with ``fail`` it raises.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec

from app.agents.base import MISSING, Agent, AgentError, AgentInputError, RunContext, new_item_id
from protocol.events import (
    MessageChunkData,
    MessageData,
    ReasoningCompletedData,
    ReasoningData,
    ReasoningStartedData,
    ToolCallCompletedData,
    ToolCallStartedData,
)
from protocol.messages import AgentCard

WORDS = (
    "the agent streams each step as it happens so nothing is lost when a connection drops "
    "and every run ends with exactly one done"
).split()


class DemoInput(msgspec.Struct, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(max_length=10_000)] = "hello"
    tokens: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 20
    # Interval between message chunks (a fixed rate, not a pause after each one).
    delay_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 20.0
    reasoning: bool = True
    tool_call: bool = True
    ask: Annotated[str, msgspec.Meta(max_length=2_000)] | None = None
    choices: list[Any] | None = None
    # Seconds the question waits (default: the server's input deadline).
    ask_timeout: Annotated[float, msgspec.Meta(gt=0, le=86_400)] | None = None
    # Answer taken when the deadline passes; without it the run fails ``input_timeout``.
    ask_default: Any = msgspec.UNSET
    fail: bool = False


def token(i: int) -> str:
    return WORDS[i % len(WORDS)] + " "


class DemoAgent(Agent):
    card = AgentCard(
        name="demo",
        description="Offline demo: reasoning, a tool call, N message chunks, optional question.",
        can_request_input=True,
        # a string is short for {"text": ...}; null for all defaults
        input_schema=msgspec.json.schema(str | DemoInput | None),
    )

    def parse_input(self, raw: Any) -> DemoInput:
        if isinstance(raw, str):
            raw = {"text": raw}
        elif raw is None:
            raw = {}
        elif isinstance(raw, dict):
            # JSON Schema calls 20.0 an integer; msgspec's int does not: take the number.
            raw = {k: int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**53
                   else v for k, v in raw.items()}
        try:
            return msgspec.convert(raw, DemoInput)
        except msgspec.ValidationError as exc:
            raise AgentInputError(str(exc)) from None

    async def run(self, ctx: RunContext, input: DemoInput) -> None:
        """The demo's whole script, top to bottom (long on purpose: it reads as the sequence
        of events a client will see, which is what a newcomer opens this file for)."""
        delay = input.delay_ms / 1000.0
        if input.reasoning:
            rid = new_item_id("rs")
            await ctx.emit("reasoning_started", ReasoningStartedData(), item_id=rid)
            thought = f"The user said {input.text!r}; I will look it up and answer."
            for part in thought.split(" "):
                await ctx.emit("reasoning", ReasoningData(delta=part + " "), item_id=rid)
            await ctx.emit("reasoning_completed", ReasoningCompletedData(text=thought), item_id=rid)
            await asyncio.sleep(delay)
        if input.tool_call:
            tid = new_item_id("tc")
            args = {"query": input.text}
            await ctx.emit(
                "tool_call_started", ToolCallStartedData(name="lookup", arguments=args), item_id=tid
            )
            await asyncio.sleep(delay)
            await ctx.emit(
                "tool_call_completed",
                ToolCallCompletedData(
                    name="lookup", arguments=args, result={"hits": len(input.text)}
                ),
                item_id=tid,
            )
        mid = new_item_id("m")
        # Chunks keep a fixed rate, like a model's token stream: chunk i is due at
        # start + i * delay however long emitting took, so the run's length is the agent's
        # own (tokens x delay) and any excess is the service's overhead.
        loop = asyncio.get_running_loop()
        due = loop.time()
        for i in range(input.tokens):
            if delay:
                due += delay
                await asyncio.sleep(max(0.0, due - loop.time()))
            await ctx.emit("message_chunk", MessageChunkData(delta=token(i)), item_id=mid)
        if input.tokens:
            # Rebuilt rather than accumulated: a million-token run holds no list of chunks.
            text = "".join(token(i) for i in range(input.tokens))
            await ctx.emit("message", MessageData(text=text), item_id=mid)
        if input.fail:
            raise AgentError("demo_failure", "the demo agent was asked to fail")
        if input.ask is not None:
            answer = await ctx.ask(
                input.ask, choices=input.choices, timeout=input.ask_timeout,
                default=(
                    MISSING if input.ask_default is msgspec.UNSET else input.ask_default
                ),
            )
            await ctx.emit("message", MessageData(text=f"You answered: {answer}"),
                           item_id=new_item_id("m"))
