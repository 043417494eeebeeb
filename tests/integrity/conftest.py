"""Seeds for the integrity tests: fixed unless INTEGRITY_SEED is set; always printed."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("INTEGRITY_SEED", "20251122"))
    print(f"INTEGRITY_SEED={value}")
    return value
