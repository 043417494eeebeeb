"""The checker itself, on hand-made files: it must see each kind of damage (a harness that
never fails proves nothing)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from tests.integrity.invariants import (
    StreamLog,
    check_recovered,
    check_store,
    check_streams,
    open_runs,
    read_snapshot,
)

SCHEMA = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, owner TEXT, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, record BLOB NOT NULL);
CREATE TABLE runs (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, status TEXT NOT NULL,
    record BLOB NOT NULL);
CREATE TABLE events (conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, run_id TEXT,
    type TEXT NOT NULL, item_id TEXT, ts INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE expired (id TEXT PRIMARY KEY, kind TEXT NOT NULL, expired_at INTEGER NOT NULL);
"""


def body(cid: str, seq: int, typ: str, run: str | None, **data: object) -> bytes:
    return msgspec.json.encode({"seq": seq, "conversation_id": cid, "run_id": run,
                                "agent": "demo" if run else None, "type": typ, "ts": 1,
                                "item_id": data.pop("item_id", None), "data": data})


class Db:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.executescript(SCHEMA)

    def event(self, cid: str, seq: int, typ: str, run: str | None, **data: object) -> bytes:
        b = body(cid, seq, typ, run, **data)
        item = data.get("item_id")
        self.conn.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?)",
                          (cid, seq, run, typ, item, 1, b))
        if not self.conn.execute("SELECT 1 FROM conversations WHERE id=?", (cid,)).fetchone():
            self.conn.execute("INSERT INTO conversations VALUES (?,NULL,1,1,'{}')", (cid,))
        return b

    def run(self, rid: str, cid: str, status: str, **rec: object) -> None:
        record = msgspec.json.encode({"run_id": rid, "conversation_id": cid, "status": status,
                                      **rec})
        self.conn.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?)",
                          (rid, cid, status, record))


def good_run(db: Db, cid: str, rid: str, start: int) -> list[bytes]:
    out = [db.event(cid, start, "run_started", rid),
           db.event(cid, start + 1, "message_chunk", rid, delta="a", item_id="m1"),
           db.event(cid, start + 2, "message_chunk", rid, delta="b", item_id="m1"),
           db.event(cid, start + 3, "done", rid, status="completed", events=4)]
    db.run(rid, cid, "completed", done_seq=start + 3, events=4)
    return out


def invariants(db: Db, quiescent: bool = False) -> set[str]:
    return {v.invariant for v in check_store(read_snapshot(db.path), quiescent=quiescent)}


def test_a_clean_file_passes(tmp_path: Path) -> None:
    db = Db(tmp_path / "a.db")
    db.event("c", 1, "conversation_started", None)
    good_run(db, "c", "r1", 2)
    good_run(db, "c", "r2", 6)
    assert invariants(db, quiescent=True) == set()


def test_each_kind_of_store_damage_is_named(tmp_path: Path) -> None:
    db = Db(tmp_path / "b.db")
    db.event("c", 1, "conversation_started", None)
    good_run(db, "c", "r1", 2)
    db.event("c", 7, "run_started", "r2")  # seq 6 missing
    db.event("c", 8, "done", "r2", status="interrupted", events=5)  # count wrong
    db.event("c", 9, "done", "r2", status="interrupted", events=3)  # second done
    db.run("r2", "c", "running")  # row not final although done stored
    db.run("r3", "c", "completed", done_seq=20, events=2)  # final row, no done
    db.event("d", 1, "run_started", "r4")  # no run row; never ends
    found = invariants(db, quiescent=True)
    assert {"seq_contiguous", "one_done", "done_counts_events", "done_has_final_row",
            "final_row_has_done", "run_row", "run_ends_with_done"} <= found


def test_runs_open_at_a_crash_must_end_after_restart(tmp_path: Path) -> None:
    db = Db(tmp_path / "c.db")
    db.event("c", 1, "conversation_started", None)
    db.event("c", 2, "run_started", "r1")
    db.run("r1", "c", "running")
    were_open = open_runs(read_snapshot(db.path))
    assert were_open == {"r1": "c"}
    assert [v.invariant for v in check_recovered(read_snapshot(db.path), were_open)] == [
        "restart_ends_open_runs"]
    db.event("c", 3, "done", "r1", status="interrupted", events=2)
    db.run("r1", "c", "interrupted", done_seq=3, events=2)
    assert check_recovered(read_snapshot(db.path), were_open) == []


def test_client_streams_gap_duplicate_bytes_and_merged_frames(tmp_path: Path) -> None:
    db = Db(tmp_path / "d.db")
    db.event("c", 1, "conversation_started", None)
    run = good_run(db, "c", "r1", 2)
    snap = read_snapshot(db.path)

    def stream(*bodies: bytes) -> StreamLog:
        s = StreamLog("t", "sse", run_id="r1")
        for b in bodies:
            s.add(b)
        return s

    ok, n = check_streams(snap, [stream(*run)])
    assert ok == [] and n == 4
    merged = body("c", 4, "message_chunk", "r1", delta="ab", item_id="m1", merged=2)
    assert check_streams(snap, [stream(run[0], merged, run[3])])[0] == []
    names = {v.invariant for v in check_streams(snap, [
        stream(run[0], run[2], run[3]),  # gap
        stream(run[0], run[1], run[1], run[2], run[3]),  # duplicate
        stream(run[0], body("c", 3, "message_chunk", "r1", delta="X", item_id="m1")),
        stream(run[0], body("c", 9, "message_chunk", "r1", delta="z", item_id="m1")),
    ])[0]}
    # the gap stream also received fewer events than its done counts
    assert names == {"client_no_gap", "client_no_duplicate", "client_bytes_match",
                     "client_event_stored", "client_count_matches_done"}
