"""The writer's statement ladder: every batch size lands whole, in order, with few statements,
on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.store.sqlite_writes import chunk_for, connect_writer, insert_events, statement_sizes


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 7, 64, 255, 4095, 4096, 4097, 12_345])
def test_statement_sizes_cover_the_rows_with_powers_of_two(rows: int) -> None:
    sizes = statement_sizes(rows, 4096)
    assert sum(sizes) == rows
    assert all(s & (s - 1) == 0 and 0 < s <= 4096 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    # Full chunks, then at most one statement per bit of the remainder.
    assert len(sizes) <= rows // 4096 + 12


def test_chunk_is_a_power_of_two_within_the_variable_limit(tmp_path: Path) -> None:
    db = connect_writer(str(tmp_path / "a.db"))
    try:
        chunk = chunk_for(db)
        assert chunk & (chunk - 1) == 0
        assert chunk * 7 <= db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        assert chunk_for(db) == 128  # 999 // 7 = 142, rounded down to a power of two
    finally:
        db.close()


@pytest.mark.parametrize("rows", [1, 5, 4096 + 4095])
def test_every_row_lands_once_in_order(tmp_path: Path, rows: int) -> None:
    db = connect_writer(str(tmp_path / "a.db"))
    try:
        flat: list[object] = []
        for seq in range(1, rows + 1):
            flat += (f"c_{seq % 3}", seq, "r_1", "message_chunk", None, 1, b"{}")
        db.execute("BEGIN")
        insert_events(db, flat, chunk_for(db))
        db.execute("COMMIT")
        got = [s for (s,) in db.execute("SELECT seq FROM events ORDER BY rowid")]
        assert got == list(range(1, rows + 1))
    finally:
        db.close()
