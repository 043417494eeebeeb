"""What a new user meets first, through the real ``python -m app`` process: the listening
line after the bind, JSON logs into files and readable ones on a terminal (no ANSI codes in
files), configuration errors naming the flag, the demo page and client module (and the
opt-out)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.process import free_port


def run_app(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("flag", "value"), [("--log-format", "xml"), ("--port", "70000"),
                                             ("--heartbeat", "0"), ("--demo-page", "maybe")])
def test_config_errors_name_the_flag(flag: str, value: str) -> None:
    done = run_app(flag, value)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert flag in line and "$." not in line and "policy" not in line, line


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        assert proc.poll() is None, text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never logged")


@pytest.mark.parametrize("fmt", [None, "console"])
async def test_listening_line_and_plain_logs_in_a_file(tmp_path: Path, fmt: str | None) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    extra = ["--log-format", fmt] if fmt else []
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--db",
                                 str(tmp_path / "a.db"), *extra], stdout=out, stderr=out)
    try:
        text = wait_for_line(log, f"listening on http://127.0.0.1:{port}", proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/") as r:
                assert r.status == 200 and "agentstream" in await r.text()
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            async with http.get(f"http://127.0.0.1:{port}/client/agentstream.js") as r:
                assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
                assert "export class AgentstreamClient" in await r.text()
    finally:
        proc.kill()
        proc.wait(10)
    assert "\x1b[" not in text
    listening = next(line for line in text.splitlines() if "listening on" in line)
    if fmt is None:  # a file is not a terminal: JSON lines
        assert json.loads(listening)["event"] == f"listening on http://127.0.0.1:{port}"
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(listening)


def test_a_terminal_gets_readable_lines_and_demo_page_can_be_turned_off(tmp_path: Path) -> None:
    port = free_port()
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--db",
                             str(tmp_path / "t.db"), "--demo-page", "false"],
                            stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"listening on" not in seen and time.monotonic() < deadline:
            seen += os.read(leader, 4096)
        import urllib.error
        import urllib.request
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert info.value.code == 404
        info.value.close()  # the error holds the response's socket
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/client/agentstream.js",
                                    timeout=10) as r:
            assert r.status == 200
    finally:
        proc.kill()
        proc.wait(10)
        os.close(leader)
    line = next(x for x in seen.decode(errors="replace").splitlines() if "listening on" in x)
    assert not line.lstrip().startswith("{"), line  # not JSON on a terminal
