"""Node.js tooling for the browser and interop tests: ``npm ci`` into ``tests/js`` (the
lock file is committed, node_modules is not), and Debian's Chromium.

A test that needs them skips with the reason when they cannot be had, except under
``AGENTSTREAM_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).parent / "js"
CHROMIUM = "/usr/bin/chromium"


def _missing(reason: str) -> None:
    if os.environ.get("AGENTSTREAM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (AGENTSTREAM_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def node_modules() -> Path:
    """``tests/js/node_modules``, installed once with ``npm ci`` if absent."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("node/npm not found on PATH")
    modules = JS_DIR / "node_modules"
    if not (modules / "playwright-core").is_dir() or not (modules / "eventsource").is_dir():
        done = subprocess.run([str(npm), "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            _missing(f"npm ci failed: {done.stderr[-500:]}")
    return modules


def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    node_modules()
    return CHROMIUM
