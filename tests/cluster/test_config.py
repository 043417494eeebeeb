"""Cluster flags and their environment twins; refusals are one clear line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.config import load_settings


def test_flags_and_env_select_cluster_mode() -> None:
    s = load_settings(["--store", "postgresql://h/db", "--bus", "redis://h:6379/0",
                       "--lease-seconds", "5", "--workers", "3"], environ={})
    assert s.clustered and s.workers == 3 and s.lease_seconds == 5.0
    env = load_settings([], environ={"AGENTSTREAM_STORE": "postgresql://h/db",
                                     "AGENTSTREAM_BUS": "redis://h"})
    assert env.store == "postgresql://h/db" and env.bus == "redis://h"
    plain = load_settings([], environ={})
    assert not plain.clustered and plain.workers == 1  # nothing changes without the flags


@pytest.mark.parametrize("argv, message", [
    (["--store", "postgresql://h/db"], "--store and --bus go together"),
    (["--bus", "redis://h"], "--store and --bus go together"),
    (["--workers", "2"], "workers > 1 needs"),
    (["--store", "mysql://h/db", "--bus", "redis://h"], "postgresql:// URL"),
    (["--store", "postgresql://h/db", "--bus", "redis://h", "--lease-seconds", "0.1"],
     "--lease-seconds"),
])
def test_inconsistent_cluster_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(argv, environ={})


def test_the_process_exits_2_with_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "app", "--workers", "2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "workers > 1 needs" in out.stderr
