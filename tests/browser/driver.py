"""pytest's side of ``tests/js/drive.mjs``: a real Chromium page driven one JSON command at
a time, so a test can cut connections or restart the server between two steps."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.jsenv import JS_DIR, chromium


class BrowserError(AssertionError):
    pass


class Browser:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def call(self, cmd: str, within: float = 40.0, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        async with asyncio.timeout(within):
            line = await self.proc.stdout.readline()
        if not line:
            raise BrowserError(f"the driver exited: {await self._stderr()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise BrowserError(f"{cmd} failed: {reply['error']}\nconsole: {reply['console']}")
        return reply["value"]

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read())[-2000:].decode(errors="replace")

    async def open(self, url: str) -> None:
        await self.call("open", url=url)

    async def eval(self, js: str) -> Any:
        return await self.call("eval", js=js)

    async def wait(self, js: str, timeout_ms: int = 30000) -> Any:
        """Until the expression is truthy in the page (polled by Playwright)."""
        return await self.call("wait", within=timeout_ms / 1000 + 10, js=js, timeout=timeout_ms)

    async def click(self, selector: str) -> None:
        await self.call("click", selector=selector)


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    """A fresh Chromium (new profile) for one test; skips (or fails under
    AGENTSTREAM_REQUIRE_BROWSER=1) where Chromium or node cannot be had."""
    exe = chromium()
    proc = await asyncio.create_subprocess_exec(
        "node", str(JS_DIR / "drive.mjs"), cwd=JS_DIR, env={**os.environ, "CHROMIUM": exe},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    b = Browser(proc)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            first = await proc.stdout.readline()
        if not first:
            raise BrowserError(f"chromium did not start: {await b._stderr()}")
        yield b
        await b.call("close")
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
