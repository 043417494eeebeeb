"""A live server on its own event loop in a thread, so that hypothesis (synchronous) can
throw requests at it from the test's thread over real sockets, one module-long server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from app.server import create_app
from tests.conftest import LiveServer, make_settings


class ThreadedServer:
    def __init__(self, db: Path, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server",
                                       daemon=True)
        self.thread.start()
        self.server = self.call(self._start(db, overrides))

    @staticmethod
    async def _start(db: Path, overrides: dict[str, Any]) -> LiveServer:
        server = LiveServer(create_app(make_settings(db, **overrides)))
        await server.start()
        return server

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    @property
    def port(self) -> int:
        return self.server.port

    def close(self) -> None:
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


@pytest.fixture(scope="module")
def threaded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    server = ThreadedServer(db, auth="token", api_keys=FUZZ_KEYS,
                            cors_origins="https://app.example", max_body=64 * 1024)
    try:
        yield server
    finally:
        server.close()


FUZZ_KEY = "fuzz-key-0123456789abcdef"
FUZZ_KEYS = f"{FUZZ_KEY}=fuzzer admin"
