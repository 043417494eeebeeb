"""``python -m app`` as a real process for the fault harness.

Like ``tests.process.ServerProcess`` (which it extends) but with extra environment (the
``AGENTSTREAM_FAULTS`` hook), logs kept outside the database's filesystem (a full tmpfs must
not also swallow the log) and drained through a pipe by a thread of the harness, so a file
size limit put on the server never breaks its logging.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import aiohttp

from tests.process import ServerProcess


def _drain(pipe: IO[bytes], log: Path) -> None:
    with log.open("ab") as out:
        for line in iter(pipe.readline, b""):
            out.write(line)
            out.flush()
    pipe.close()


class IntegrityServer(ServerProcess):
    def __init__(self, db: Path, *args: str, log_dir: Path, env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        super().__init__(db, *args, port=port)
        self.env = env or {}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{db.stem}.{self.port}.log"
        self.starts = 0
        self._drainer: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"==== start {self.starts} {' '.join(self.args + extra)}\n".encode())
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(self.port), "--db", str(self.db),
             "--log-level", "warning", *self.args, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        assert proc.stdout is not None
        self._drainer = threading.Thread(target=_drain, args=(proc.stdout, self.log_path),
                                         daemon=True)
        self._drainer.start()
        return proc

    async def start(self, timeout: float = 20.0) -> None:
        self.proc = self.spawn()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}: "
                                       f"{self.log_tail()}")
                try:
                    async with http.get(self.base + "/readyz") as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"server did not become ready: {self.log_tail()}")

    def terminate_within(self, timeout: float) -> float | None:
        """SIGTERM; the seconds it took to exit, or None if it had to be SIGKILLed."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        return time.monotonic() - started

    def log_tail(self, lines: int = 15) -> str:
        if self._drainer is not None:
            self._drainer.join(2)
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def faults_supported(base: str) -> bool:
    """The lead's fault hook reports itself as ``agentstream_faults_enabled`` in /metrics or
    /readyz; without it the fault-injection tests skip."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for path in ("/metrics", "/readyz"):
            try:
                async with http.get(base + path) as r:
                    if "agentstream_faults_enabled" in await r.text():
                        return True
            except aiohttp.ClientError:
                pass
    return False
