"""Smoke tests for the load-test and benchmark scripts: they run from a clean checkout and
print their table / summary. No timing assertions: the figures depend on the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run(script: str, *args: str, timeout: float = 110) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=SCRIPTS.parent,
    )


def test_bench_quick_p4_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run("bench.py", "--quick", "--only", "P4", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| scenario | metric | agentstream |" in proc.stdout
    assert "P4 store appends" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert rows and rows[0]["value"] > 0 and rows[0]["baselines"]


def test_loadtest_tiny_run_prints_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "lt.json"
    png = tmp_path / "lt.png"
    proc = run("loadtest.py", "-n", "4", "-m", "2", "--tokens", "10", "--delay-ms", "1",
               "--client-procs", "1", "--timeout", "60", "--json", str(out), "--plot", str(png))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "delivered:" in proc.stdout and "latency publish->receive" in proc.stdout
    result = json.loads(out.read_text())
    assert result["subscribers_complete"] == 4 and result["errors"] == 0
    assert result["delivered_events"] == 4 * 13  # run_started, 10 chunks, message, done
    assert png.stat().st_size > 0


def test_loadtest_ws_runs_or_skips_cleanly() -> None:
    proc = run("loadtest.py", "--transport", "ws", "-n", "2", "-m", "1", "--tokens", "5",
               "--delay-ms", "1", "--client-procs", "1", "--timeout", "60")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped" in proc.stdout or "delivered:" in proc.stdout


def test_bench_quick_p7_measures_the_product_beside_the_floor(tmp_path: Path) -> None:
    """The many-runs scenario runs both servers with the same client; every stream was
    checked (one done, its event count) or the scenario fails."""
    out = tmp_path / "bench.json"
    proc = run("bench.py", "--quick", "--only", "P7", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    metrics = {r["metric"] for r in rows}
    assert {"delivered events/s", "server CPU per event", "publish->receive p99"} <= metrics
    for row in rows:
        if row["metric"] != "publish->receive p50":
            assert row["value"] > 0 and row["baselines"]["floor"] > 0, row


def test_probe_idle_memory_reports_rss_and_sites_against_the_minimal_handler(
    tmp_path: Path,
) -> None:
    """``probe_idle_memory.py``: RSS per idle stream, the traced sites, the live objects
    (the pump's coroutine among them), and the difference from a saved run."""
    base = tmp_path / "base.json"
    proc = run("probe_idle_memory.py", "--baseline", "-n", "20", "--settle", "0.5",
               "--top", "5", "--save", str(base))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "baseline /idle: 20 idle streams, RSS" in proc.stdout and base.exists()
    proc = run("probe_idle_memory.py", "-n", "20", "--settle", "0.5", "--top", "5",
               "--against", str(base))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agentstream: 20 idle streams, RSS" in proc.stdout
    assert "B per connection in all" in proc.stdout and "coroutine run" in proc.stdout
    assert f"against {base}" in proc.stdout
