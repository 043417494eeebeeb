"""Chromium offers permessage-deflate on every WebSocket: with ``--compression true`` the
demo page's socket negotiates it, gets compressed event frames, and still sees the whole run
(one done, contiguous seq, done.data.events) and answers a question over it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.state import STATE
from tests.browser.driver import Browser, browser
from tests.browser.test_demo_page import EVENTS, assert_one_run, start_from_form
from tests.conftest import LiveServer, ServerFactory


@pytest.fixture
async def page() -> AsyncIterator[Browser]:
    async with browser() as b:
        yield b


@pytest.fixture
async def zserver(start_server: ServerFactory) -> LiveServer:
    return await start_server(compression=True)


async def test_chromium_negotiates_deflate_and_streams_the_run(
    page: Browser, zserver: LiveServer
) -> None:
    base = f"http://{zserver.host}:{zserver.port}"
    await start_from_form(page, base, "ws", tokens=30, delay_ms=5, ask=True)
    await page.wait("!document.querySelector('#question').hidden")
    # Mid-run (waiting for the answer): the socket is open and compressed on both ends.
    extensions = await page.eval("window.agentstreamDemo.run._socket.extensions")
    assert extensions.startswith("permessage-deflate"), extensions
    (sink,) = zserver.app[STATE].sinks
    assert sink.delivery.transport == "ws_deflate_batch"  # Chromium keeps its context
    await page.click("#choices button[data-answer='\"yes\"']")
    await page.wait("document.body.dataset.state === 'done'")
    done = assert_one_run(await page.eval(EVENTS))
    assert done["status"] == "completed"
