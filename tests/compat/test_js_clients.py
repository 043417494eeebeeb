"""The real JavaScript clients under node against a real server: the ``ai`` package's chat
(AbstractChat + DefaultChatTransport, what ``useChat`` wraps), its resume and
``readUIMessageStream``; and ``@ag-ui/client``'s ``HttpAgent``. The packages are installed
from the npm registry by the test (``npm ci`` from the committed lock file) when missing.
Where node is not installed these tests are skipped, visibly."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.compat.native import native_run
from tests.conftest import LiveServer, url

JS = Path(__file__).parent / "js"
FAST = {"text": "hi", "tokens": 3, "delay_ms": 1}


@pytest.fixture(scope="module")
def node() -> str:
    exe, npm = shutil.which("node"), shutil.which("npm")
    if exe is None or npm is None:
        pytest.skip("node/npm not installed: the AI SDK and AG-UI client tests need them")
    if not (JS / "node_modules" / "ai").exists() or not (JS / "node_modules" / "@ag-ui").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True,
                       timeout=300, capture_output=True)
    return exe


async def run_node(node: str, script: str, *args: str) -> dict[str, Any]:
    """Run a client script (the server lives in this event loop: never block it)."""
    proc = await asyncio.create_subprocess_exec(
        node, script, *args, cwd=JS, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def parts(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [p for p in message["parts"] if p["type"] == kind]


async def test_ai_sdk_chat_assembles_the_native_text(
    node: str, server: LiveServer, http: aiohttp.ClientSession
) -> None:
    out = await run_node(node, "ai_sdk_client.mjs", url(server, ""), "plain", "chat-a",
                         json.dumps(FAST))
    assert out["errors"] == [] and out["status"] == "ready"
    native = await native_run(http, server, out["runIds"][0])
    reply = out["messages"][-1]
    assert reply["id"] == f"msg_{out['runIds'][0]}"
    assert [p["text"] for p in parts(reply, "text")] == native.texts
    assert [p["text"] for p in parts(reply, "reasoning")] == [native.reasoning]
    tool = parts(reply, "dynamic-tool")
    assert [(t["toolName"], t["state"], t["output"]) for t in tool] == [
        ("lookup", "output-available", {"hits": 2})]
    assert native.done["status"] == "completed"


async def test_ai_sdk_question_is_answered_with_add_tool_output(
    node: str, server: LiveServer, http: aiohttp.ClientSession
) -> None:
    out = await run_node(node, "ai_sdk_client.mjs", url(server, ""), "ask", "chat-b",
                         json.dumps({**FAST, "ask": "Proceed?"}))
    assert out["errors"] == [] and out["status"] == "ready"
    assert out["question"]["state"] == "input-available"
    assert out["question"]["input"]["prompt"] == "Proceed?"
    # one request for the question, one for the answer: nothing sent twice
    assert len(out["runIds"]) == 2 and len(set(out["runIds"])) == 1
    native = await native_run(http, server, out["runIds"][0])
    reply = out["messages"][-1]
    assert [p["text"] for p in parts(reply, "text")] == native.texts == [
        "the agent streams ", "You answered: yes"]
    assert native.done["status"] == "completed"


async def test_ai_sdk_resume_continues_the_active_stream(
    node: str, server: LiveServer, http: aiohttp.ClientSession
) -> None:
    """The first client drops after its first bytes (the peer vanishes); the resume GET
    replays the active run and follows it to the end; a second resume finds none (204)."""
    out = await run_node(node, "ai_sdk_client.mjs", url(server, ""), "resume", "chat-c",
                         json.dumps({"text": "hi", "tokens": 30, "delay_ms": 20}))
    assert out["errors"] == [] and out["noActive"] is True
    assert out["runIds"][0] == out["runIds"][1]
    native = await native_run(http, server, out["runIds"][0])
    assert [p["text"] for p in parts(out["messages"][0], "text")] == native.texts
    assert native.done["status"] == "completed"
    async with http.get(url(server, "/v1/ai-sdk/demo/chat/never-seen/stream")) as r:
        assert r.status == 204


async def test_ag_ui_http_agent_runs_and_resumes_an_interrupt(
    node: str, server: LiveServer, http: aiohttp.ClientSession
) -> None:
    out = await run_node(node, "ag_ui_client.mjs", url(server, ""), "thread-1",
                         json.dumps({**FAST, "ask": "Proceed?"}), "yes")
    assert "error" not in out, out.get("error")
    assert out["events"].count("RUN_STARTED") == out["events"].count("RUN_FINISHED") == 2
    [interrupt] = out["interrupts"]
    assert (interrupt["reason"], interrupt["message"]) == ("input_required", "Proceed?")
    assert out["pendingAfter"] == 0
    native = await native_run(http, server, out["runIds"][0])
    assert out["runIds"] == [native.envelopes[0]["run_id"]] * 2
    texts = [m["content"] for m in out["messages"]
             if m["role"] == "assistant" and isinstance(m.get("content"), str)]
    assert texts == native.texts
    assert [m["content"] for m in out["messages"] if m["role"] == "reasoning"] == [
        native.reasoning]
    assert native.envelopes[0]["conversation_id"] == "thread-1"
    assert native.done["status"] == "completed"


async def test_ag_ui_failed_run_is_a_run_error(
    node: str, server: LiveServer, http: aiohttp.ClientSession
) -> None:
    out = await run_node(node, "ag_ui_client.mjs", url(server, ""), "thread-2",
                         json.dumps({**FAST, "fail": True}), "")
    assert out["events"][-1] == "RUN_ERROR"
    assert out["runError"] == {"code": "demo_failure",
                               "message": "the demo agent was asked to fail"}
    native = await native_run(http, server, out["runIds"][0])
    assert native.done["status"] == "failed"
    texts = [m["content"] for m in out["messages"] if m["role"] == "assistant"
             and isinstance(m.get("content"), str)]
    assert texts == native.texts
