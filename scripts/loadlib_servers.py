"""Servers under test, each in its own process and always stopped, and the few control-plane
requests the parent makes (start a run, wait for it, scrape /metrics).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loadlib_env import HOST, ROOT, SCRIPTS, free_port, proc_cpu, proc_rss

# Demo input for a run that only creates its conversation (a subscriber needs one to exist).
SETUP_INPUT: dict[str, Any] = {
    "text": "setup", "tokens": 0, "delay_ms": 0, "reasoning": False, "tool_call": False,
}


# ---- servers under test ---------------------------------------------------------------------


class ServerProc:
    """A server in its own process; ``stop`` sends TERM, then KILL, and is always called."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServerProc:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def rss(self) -> int:
        return proc_rss(self.pid)

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> ServerProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def product_server(workdir: Path, *flags: str, name: str = "agentstream") -> ServerProc:
    """``python -m app`` on a free port with a fresh SQLite file in ``workdir``."""
    port = free_port()
    db = workdir / f"{name}-{port}.db"
    argv = [sys.executable, "-m", "app", "--port", str(port), "--db", str(db),
            "--log-level", "warning", *flags]
    return ServerProc(name, argv, port, workdir / f"{name}-{port}.log")


def baseline_server(workdir: Path, *flags: str, name: str = "baseline") -> ServerProc:
    port = free_port()
    argv = [sys.executable, str(SCRIPTS / "baseline_server.py"), "--port", str(port), *flags]
    return ServerProc(name, argv, port, workdir / f"{name}-{port}.log")


def floor_server(workdir: Path, *flags: str, name: str = "floor") -> ServerProc:
    """``scripts/floor_server.py``: the lean many-runs floor, with its own SQLite file."""
    port = free_port()
    argv = [sys.executable, str(SCRIPTS / "floor_server.py"), "--port", str(port),
            "--db", str(workdir / f"{name}-{port}.db"), *flags]
    return ServerProc(name, argv, port, workdir / f"{name}-{port}.log")


def temp_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="agentstream-bench-")


# ---- control-plane HTTP (parent process; a handful of requests) ----------------------------


def http_json(
    method: str, url: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """A small JSON request with urllib; returns (status, parsed body or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = int(exc.code)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def start_run(base: str, input: dict[str, Any], conversation_id: str | None = None) -> Any:
    body: dict[str, Any] = {"agent": "demo", "input": input}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    status, doc = http_json("POST", base + "/v1/runs", body)
    if status != 202:
        raise RuntimeError(f"POST /v1/runs -> {status} {doc}")
    return doc


def wait_run(base: str, run_id: str, timeout: float = 120.0) -> Any:
    """Poll until the run has ended; returns its info (``done_seq``, ``events``...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, doc = http_json("GET", f"{base}/v1/runs/{run_id}")
        if status == 200 and doc.get("done_seq") is not None:
            return doc
        time.sleep(0.02)
    raise TimeoutError(f"run {run_id} did not end in {timeout}s")


def setup_conversation(base: str, conversation_id: str) -> int:
    """Create the conversation with an empty run; returns its last seq (the ``after``)."""
    run = start_run(base, SETUP_INPUT, conversation_id)
    return int(wait_run(base, run["run_id"])["done_seq"])


def ws_available(base: str) -> bool:
    """False when the server answers 404 on /v1/ws (the endpoint has not landed yet)."""
    req = urllib.request.Request(base + "/v1/ws")
    try:
        with urllib.request.urlopen(req, timeout=5):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code != 404
    except OSError:
        return False


WS_SKIP = "skipped: the server answers 404 on GET /v1/ws (WebSocket endpoint not there yet)"


def scrape_metrics(base: str) -> dict[str, float]:
    """Sum each Prometheus sample name over its labels (enough for a report line)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError, urllib.error.URLError):
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            key = name.split("{", 1)[0]
            with contextlib.suppress(ValueError):
                out[key] = out.get(key, 0.0) + float(value)
    return out


def scrape_histogram(base: str, name: str) -> list[tuple[float, float]]:
    """A Prometheus histogram's cumulative buckets ``(le, count)``, summed over labels."""
    out: dict[float, float] = {}
    prefix = name + "_bucket{"
    with contextlib.suppress(OSError, urllib.error.URLError):
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if not line.startswith(prefix):
                continue
            labels, _, value = line.rpartition(" ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(value)
    return sorted(out.items())
