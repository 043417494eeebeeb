"""The demo page and agentstream.js in a real Chromium against a real server: a run
streamed to done with a question answered by a button, a connection cut mid-run (TCP
proxy), a reload mid-run, a server SIGKILL + restart on the same SQLite file, and no
reconnect after done. Both transports (EventSource and WebSocket)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.state import STATE
from tests.agents.tcp_proxy import TcpProxy
from tests.browser.driver import Browser, browser
from tests.conftest import LiveServer
from tests.process import ServerProcess, free_port

TRANSPORTS = ["sse", "ws"]
EVENTS = "window.agentstreamDemo.events"


def assert_one_run(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One done, last; seqs +1 from the run's first event; done.data.events == count."""
    types = [e["type"] for e in events]
    assert types.count("done") == 1 and types[-1] == "done", types[-5:]
    assert types[0] == "run_started"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap or duplicate: {seqs}"
    done = events[-1]["data"]
    assert done["events"] == len(events)
    return dict(done)


@pytest.fixture
async def page() -> AsyncIterator[Browser]:
    async with browser() as b:
        yield b


@pytest.fixture
async def proxy(server: LiveServer) -> AsyncIterator[TcpProxy]:
    p = TcpProxy(server.host, server.port)
    await p.start()
    yield p
    await p.close()


async def start_from_form(page: Browser, base: str, transport: str, tokens: int,
                          delay_ms: int, ask: bool) -> None:
    await page.open(f"{base}/#transport={transport}")
    await page.wait("document.querySelector('#agent').options.length > 0")
    await page.eval(f"""(() => {{
        document.querySelector('#tokens').value = '{tokens}';
        document.querySelector('#delay').value = '{delay_ms}';
        document.querySelector('#ask').checked = {str(ask).lower()};
    }})()""")
    await page.click("#go")
    await page.wait("window.agentstreamDemo.run && window.agentstreamDemo.run.runId")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_page_streams_answers_a_question_and_stops_after_done(
    page: Browser, server: LiveServer, proxy: TcpProxy, transport: str
) -> None:
    await start_from_form(page, proxy.url(), transport, tokens=30, delay_ms=5, ask=True)
    await page.wait("!document.querySelector('#question').hidden")
    assert await page.eval("document.querySelector('#prompt').textContent") == "Shall I go on?"
    await page.click("#choices button[data-answer='\"yes\"']")
    await page.wait("document.body.dataset.state === 'done'")
    events = await page.eval(EVENTS)
    done = assert_one_run(events)
    assert done["status"] == "completed"
    received = [e for e in events if e["type"] == "user_input_received"]
    assert [e["data"]["value"] for e in received] == ["yes"]
    text = await page.eval("document.querySelector('#transcript').textContent")
    assert "done: completed" in text and "answered: \"yes\"" in text
    # After done: the handle holds no connection, and the server has none left open.
    assert await page.eval("window.agentstreamDemo.run._source === null && "
                           "window.agentstreamDemo.run._socket === null")
    assert await page.eval("window.agentstreamDemo.run.complete") is True
    sinks = server.app[STATE].sinks
    for _ in range(400):
        if not sinks:
            break
        await asyncio.sleep(0.05)
    assert not sinks, "a connection is still open after done"
    opened = await page.eval("window.agentstreamDemo.run.connections")
    assert opened == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_page_survives_connection_cuts_and_a_reload(
    page: Browser, proxy: TcpProxy, transport: str
) -> None:
    await start_from_form(page, proxy.url(), transport, tokens=150, delay_ms=15, ask=False)
    await page.wait(f"{EVENTS}.length > 10")
    proxy.cut()
    await page.wait(f"{EVENTS}.length > 40")
    proxy.cut()
    # events already read before the cut may take the count past 60 on the old
    # connection: wait for the reconnect itself, then for more events through it
    await page.wait("window.agentstreamDemo.run.connections >= 3")
    await page.wait(f"{EVENTS}.length > 60")
    await page.call("reload")  # the run id is in the URL: attach and replay, then live
    await page.wait("document.body.dataset.state === 'done'")
    events = await page.eval(EVENTS)
    done = assert_one_run(events)
    assert done["status"] == "completed"
    assert await page.eval("window.agentstreamDemo.run.complete") is True


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_page_resumes_across_a_server_restart(
    page: Browser, tmp_path: Path, transport: str
) -> None:
    server = ServerProcess(tmp_path / "browser-restart.db", port=free_port())
    await server.start()
    try:
        await start_from_form(page, server.base, transport, tokens=100000, delay_ms=10,
                              ask=False)
        await page.wait(f"{EVENTS}.length > 15")
        server.kill()
        await server.start()
        await page.wait("document.body.dataset.state === 'done'")
    finally:
        server.stop()
    events = await page.eval(EVENTS)
    done = assert_one_run(events)
    assert done["status"] == "interrupted" and done["error"]["code"] == "server_restarted"
    assert await page.eval("window.agentstreamDemo.run.connections") >= 2
