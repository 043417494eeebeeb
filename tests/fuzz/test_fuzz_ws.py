"""Fuzzing WebSocket commands through a live socket (issue 11): random text frames, JSON
shaped like commands, mutated and deeply nested. The socket stays open, every reply is a JSON
object, and a ``ping`` sent after each frame is answered (the command loop never died on the
frame before). ``decode_command`` is what turns bad frames into error replies."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.fuzz.conftest import FUZZ_KEY, ThreadedServer
from tests.fuzz.test_fuzz_decoders import commands

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(max_examples=EXAMPLES or 100, deadline=None, derandomize=EXAMPLES is None,
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def frames(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["command", "command", "text", "mutated", "deep"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    cmd = draw(commands)
    if cmd.get("type") == "start":
        cmd["agent"] = "demo"  # a run that starts, then ends quickly
        cmd["input"] = {"tokens": 1, "delay_ms": 0}
    text = json.dumps(cmd)
    if kind == "mutated":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=3)) + text[at + draw(st.integers(0, 3)):]
    if kind == "deep":
        depth = draw(st.integers(60, 30_000))
        text = '{"type":"start","agent":"demo","input":' + "[" * depth + "]" * depth + "}"
    return text


def test_fuzz_websocket_commands(threaded_server: ThreadedServer) -> None:
    ws_url = f"ws://127.0.0.1:{threaded_server.port}/v1/ws"
    counts: dict[str, int] = {}
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {FUZZ_KEY}"},
                 open_timeout=10, close_timeout=5, max_size=None) as ws:
        seq = [0]

        @FUZZ
        @given(frames())
        def one(frame: str) -> None:
            seq[0] += 1
            marker = f"fuzz-ping-{seq[0]}"
            ws.send(frame)
            ws.send(json.dumps({"type": "ping", "ref": marker}))
            while True:
                reply: Any = json.loads(ws.recv(timeout=15))
                assert isinstance(reply, dict) and isinstance(reply.get("type"), str), reply
                if reply == {"type": "pong", "ref": marker}:
                    return
                if reply["type"] == "error":
                    code = reply["code"]
                    assert isinstance(code, str) and code, reply
                    counts[code] = counts.get(code, 0) + 1

        one()
    print("fuzz_ws error replies:", dict(sorted(counts.items())))
