"""PostgreSQL/Redis tests skip with a visible reason where the services are missing, and
fail instead under AGENTSTREAM_REQUIRE_SERVICES=1 (what .ci/run sets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_pytest(require: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTSTREAM_TEST_PG": "postgresql://postgres@127.0.0.1:9/test",
           "AGENTSTREAM_TEST_REDIS": "redis://127.0.0.1:9/0"}
    env.pop("AGENTSTREAM_REQUIRE_SERVICES", None)
    if require:
        env["AGENTSTREAM_REQUIRE_SERVICES"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/store/test_postgres.py::test_a_newer_schema_is_refused_with_one_clear_message",
         "tests/bus/test_redis_bus.py::test_commands_are_answered_and_a_missing_node_fails_fast"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("require", [False, True])
def test_unreachable_services_skip_visibly_or_fail_in_ci(require: bool) -> None:
    out = run_pytest(require)
    if require:
        assert out.returncode == 1, out.stdout[-2000:]
        assert "AGENTSTREAM_REQUIRE_SERVICES=1" in out.stdout
        assert "PostgreSQL unreachable" in out.stdout and "Redis unreachable" in out.stdout
    else:
        assert out.returncode == 0, out.stdout[-2000:]
        assert "2 skipped" in out.stdout
        assert "PostgreSQL unreachable" in out.stdout and "Redis unreachable" in out.stdout
