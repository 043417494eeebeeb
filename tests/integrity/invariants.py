"""The invariant checker: reads the SQLite file directly (read-only) and the clients' logs.

Two families of invariants:

* **committed-state** invariants hold for *every* committed state of the file, because any
  committed state may be the one a SIGKILL leaves behind (``check_store``): seq contiguous
  from 1 per conversation; per run at most one ``done``, it is the run's last event, its
  ``data.events`` counts the run's stored events; a run row with a final status has its
  ``done`` (same seq, status and count); a stored ``done`` has a final run row; every run
  with events has a run row and a conversation row; envelope fields match the columns.
* **recovery** invariants, once a restarted server has recovered (``check_recovered``) or
  stopped gracefully (``check_store(..., quiescent=True)``): no run left open without ``done``.

Client logs (``StreamLog``) are checked against a snapshot (``check_streams``): every event a
client was sent is stored with identical bytes; each stream (across all its reconnects and
the restarts between them) is gap-free and duplicate-free by seq; a ``message_chunk`` or
``reasoning`` frame with ``data.merged = N`` counts as the N stored events it folds.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

FINAL = frozenset({"completed", "failed", "cancelled", "interrupted"})
UNFINISHED = frozenset({"queued", "running", "waiting_input"})
MERGEABLE = frozenset({"message_chunk", "reasoning"})


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str
    conversation_id: str | None = None
    seq: int | None = None
    run_id: str | None = None
    where: str = ""  # which check point (e.g. "round 3 after kill")

    def __str__(self) -> str:
        ids = " ".join(
            f"{k}={v}" for k, v in (("conversation", self.conversation_id), ("seq", self.seq),
                                     ("run", self.run_id)) if v is not None
        )
        at = f"[{self.where}] " if self.where else ""
        return f"{at}{self.invariant}: {ids} {self.detail}".rstrip()


def at(where: str, violations: Iterable[Violation]) -> list[Violation]:
    """Stamp violations with the check point they were found at."""
    return [Violation(v.invariant, v.detail, v.conversation_id, v.seq, v.run_id, where)
            for v in violations]


# ---- the stored state --------------------------------------------------------------------


@dataclass(frozen=True)
class StoredEvent:
    conversation_id: str
    seq: int
    run_id: str | None
    type: str
    item_id: str | None
    body: bytes


@dataclass
class RunRow:
    run_id: str
    conversation_id: str
    status: str
    record: dict[str, Any]


@dataclass
class Snapshot:
    """One consistent read of the whole file (one read transaction)."""

    events: dict[str, list[StoredEvent]]  # conversation -> events by seq
    runs: dict[str, RunRow]
    conversations: set[str]
    expired: set[str]  # conversation and run ids retention removed

    def run_events(self, conversation_id: str, run_id: str) -> list[StoredEvent]:
        return [e for e in self.events.get(conversation_id, ()) if e.run_id == run_id]

    def event_count(self) -> int:
        return sum(len(v) for v in self.events.values())


def _ro_uri(path: Path) -> str:
    return f"file:{quote(str(path.resolve()))}?mode=ro"


def read_snapshot(path: Path, timeout: float = 10.0) -> Snapshot:
    """Read the file read-only (``mode=ro``), all tables in one snapshot."""
    db = sqlite3.connect(_ro_uri(path), uri=True, timeout=timeout, isolation_level=None)
    try:
        db.execute("BEGIN")
        events: dict[str, list[StoredEvent]] = defaultdict(list)
        for cid, seq, rid, typ, item, body in db.execute(
            "SELECT conversation_id, seq, run_id, type, item_id, body FROM events "
            "ORDER BY conversation_id, seq"
        ):
            events[cid].append(StoredEvent(cid, int(seq), rid, typ, item, bytes(body)))
        runs: dict[str, RunRow] = {}
        for rid, cid, status, record in db.execute(
            "SELECT id, conversation_id, status, record FROM runs"
        ):
            runs[rid] = RunRow(rid, cid, status, dict(msgspec.json.decode(bytes(record))))
        conversations = {str(r[0]) for r in db.execute("SELECT id FROM conversations")}
        try:
            expired = {str(r[0]) for r in db.execute("SELECT id FROM expired")}
        except sqlite3.OperationalError:
            expired = set()
        db.execute("COMMIT")
    finally:
        db.close()
    return Snapshot(dict(events), runs, conversations, expired)


# ---- committed-state and recovery invariants --------------------------------------------


def _done_data(ev: StoredEvent) -> dict[str, Any]:
    data = msgspec.json.decode(ev.body).get("data") or {}
    return dict(data)


def check_store(snap: Snapshot, *, quiescent: bool = False) -> list[Violation]:
    """Invariants of any committed state; with ``quiescent`` also: no run is left open."""
    out: list[Violation] = []
    runs_seen: dict[str, list[StoredEvent]] = defaultdict(list)
    for cid, evs in snap.events.items():
        seqs = [e.seq for e in evs]
        if seqs != list(range(1, len(seqs) + 1)):
            missing = sorted(set(range(1, (seqs[-1] if seqs else 0) + 1)) - set(seqs))
            dup = len(seqs) - len(set(seqs))
            out.append(Violation(
                "seq_contiguous",
                f"seqs not 1..N: {len(seqs)} events, last {seqs[-1] if seqs else 0}, "
                f"missing {_ranges(missing)}" + (f", {dup} duplicates" if dup else ""),
                cid, missing[0] if missing else None))
        if cid not in snap.conversations:
            out.append(Violation("conversation_row", f"{len(evs)} events but no conversation row",
                                 cid))
        if cid in snap.expired:
            out.append(Violation("expired_but_present",
                                 f"conversation is marked expired yet has {len(evs)} events", cid))
        for e in evs:
            env = msgspec.json.decode(e.body)
            if (env.get("seq"), env.get("conversation_id"), env.get("run_id"),
                    env.get("type")) != (e.seq, cid, e.run_id, e.type):
                out.append(Violation("envelope_matches_columns",
                                     f"body says seq={env.get('seq')} type={env.get('type')} "
                                     f"run={env.get('run_id')}, row says type={e.type}",
                                     cid, e.seq, e.run_id))
            if e.run_id is not None:
                runs_seen[e.run_id].append(e)
    for rid, evs in runs_seen.items():
        cid = evs[0].conversation_id
        if any(e.conversation_id != cid for e in evs):
            out.append(Violation("run_in_one_conversation", "events in several conversations",
                                 cid, None, rid))
        dones = [e for e in evs if e.type == "done"]
        row = snap.runs.get(rid)
        if row is None:
            out.append(Violation(
                "run_row", f"{len(evs)} stored events (seq {evs[0].seq}..{evs[-1].seq}) but no "
                "run row: a restart cannot find this run to end it", cid, evs[0].seq, rid))
        if len(dones) > 1:
            out.append(Violation(
                "one_done", f"{len(dones)} done events at seqs {[d.seq for d in dones]} "
                f"(statuses {[_done_data(d).get('status') for d in dones]})",
                cid, dones[1].seq, rid))
        if dones:
            first = dones[0]
            later = [e for e in evs if e.seq > first.seq and e.type != "done"]
            if later:
                out.append(Violation(
                    "done_last", f"{len(later)} events after done (first {later[0].type} at "
                    f"{later[0].seq})", cid, first.seq, rid))
            data = _done_data(first)
            if data.get("events") != len(evs):
                out.append(Violation(
                    "done_counts_events", f"done.data.events={data.get('events')} but "
                    f"{len(evs)} events of this run are stored", cid, first.seq, rid))
            if row is not None and row.status not in FINAL:
                out.append(Violation(
                    "done_has_final_row", f"done stored (status {data.get('status')}) but the "
                    f"run row says {row.status!r}: a restart would write a second done",
                    cid, first.seq, rid))
        elif quiescent:
            out.append(Violation(
                "run_ends_with_done", f"no done after recovery/shutdown; row status "
                f"{row.status if row else None!r}, last event {evs[-1].type}@{evs[-1].seq}",
                cid, evs[-1].seq, rid))
    for rid, row in snap.runs.items():
        if row.record.get("status") != row.status:
            out.append(Violation("row_status_matches_record",
                                 f"column {row.status!r}, record {row.record.get('status')!r}",
                                 row.conversation_id, None, rid))
        evs = runs_seen.get(rid, [])
        dones = [e for e in evs if e.type == "done"]
        if row.status in FINAL:
            if not dones:
                out.append(Violation(
                    "final_row_has_done", f"run row final ({row.status}, done_seq "
                    f"{row.record.get('done_seq')}) but no done is stored "
                    f"({len(evs)} events stored)", row.conversation_id,
                    row.record.get("done_seq"), rid))
            else:
                d = dones[0]
                data = _done_data(d)
                if (row.record.get("done_seq") != d.seq or data.get("status") != row.status
                        or row.record.get("events") != data.get("events")):
                    out.append(Violation(
                        "final_row_matches_done",
                        f"row (status {row.status}, done_seq {row.record.get('done_seq')}, "
                        f"events {row.record.get('events')}) vs done (seq {d.seq}, status "
                        f"{data.get('status')}, events {data.get('events')})",
                        row.conversation_id, d.seq, rid))
        elif quiescent and not dones:
            out.append(Violation(
                "run_ends_with_done", f"run row left {row.status!r} with no done "
                f"({len(evs)} events stored)", row.conversation_id, None, rid))
    return out


def open_runs(snap: Snapshot) -> dict[str, str]:
    """Runs a restart must end: run id -> conversation, for rows unfinished or without done."""
    out: dict[str, str] = {}
    done_runs = {e.run_id for evs in snap.events.values() for e in evs if e.type == "done"}
    for rid, row in snap.runs.items():
        if row.status in UNFINISHED and rid not in done_runs:
            out[rid] = row.conversation_id
    for cid, evs in snap.events.items():
        for e in evs:
            if e.run_id is not None and e.run_id not in done_runs:
                out.setdefault(e.run_id, cid)
    return out


def check_recovered(snap: Snapshot, were_open: dict[str, str]) -> list[Violation]:
    """After a restart: every run the crash left open has ended with exactly one ``done``."""
    out: list[Violation] = []
    for rid, cid in were_open.items():
        if cid in snap.expired or rid in snap.expired:
            continue
        evs = snap.run_events(cid, rid)
        if not any(e.type == "done" for e in evs):
            row = snap.runs.get(rid)
            out.append(Violation(
                "restart_ends_open_runs", f"open at the crash, still no done after restart "
                f"(row {row.status if row else None!r}, {len(evs)} events)", cid, None, rid))
    return out


# ---- client streams ------------------------------------------------------------------------


@dataclass
class Frame:
    seq: int
    type: str
    conversation_id: str
    run_id: str | None
    item_id: str | None
    body: bytes
    merged: int
    delta: str | None
    connect: int  # which connection of the stream delivered it (1-based)

    @classmethod
    def parse(cls, body: bytes, connect: int) -> Frame:
        env = msgspec.json.decode(body)
        data = env.get("data") or {}
        merged = int(data.get("merged", 1)) if env["type"] in MERGEABLE else 1
        return cls(int(env["seq"]), str(env["type"]), str(env["conversation_id"]),
                   env.get("run_id"), env.get("item_id"), body, merged, data.get("delta"),
                   connect)


@dataclass
class StreamLog:
    """Everything one logical client stream received, over all its connections."""

    name: str
    transport: str  # "sse" or "ws"
    run_id: str | None = None  # run-scoped stream; None: the whole conversation
    conversation_id: str | None = None
    start_after: int = 0
    frames: list[Frame] = field(default_factory=list)
    connects: int = 0
    must_complete: bool = False  # a run stream the client read until done
    outcome: str = ""  # how it ended, for the report
    resumes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def last_seq(self) -> int:
        return self.frames[-1].seq if self.frames else self.start_after

    @property
    def done(self) -> Frame | None:
        return self.frames[-1] if self.frames and self.frames[-1].type == "done" else None

    def add(self, body: bytes) -> Frame:
        f = Frame.parse(body, self.connects)
        if self.conversation_id is None:
            self.conversation_id = f.conversation_id
        self.frames.append(f)
        return f


def check_streams(snap: Snapshot, streams: Iterable[StreamLog]) -> tuple[list[Violation], int]:
    """Check each client stream against the snapshot. Returns (violations, frames checked)."""
    out: list[Violation] = []
    checked = 0
    for s in streams:
        v, n = _check_stream(snap, s)
        out += v
        checked += n
    return out, checked


def _check_stream(snap: Snapshot, s: StreamLog) -> tuple[list[Violation], int]:
    out: list[Violation] = []
    name = f"{s.name} ({s.transport}, {s.connects} connects)"
    prev = s.start_after
    for f in s.frames:
        if f.seq <= prev:
            out.append(Violation("client_no_duplicate",
                                 f"{name}: seq {f.seq} after {prev} (connect {f.connect})",
                                 f.conversation_id, f.seq, f.run_id))
        prev = max(prev, f.seq)
        if f.conversation_id != s.conversation_id or (s.run_id and f.run_id != s.run_id):
            out.append(Violation("client_scope", f"{name}: frame of another stream",
                                 f.conversation_id, f.seq, f.run_id))
    cid = s.conversation_id
    if s.must_complete and s.done is None:
        out.append(Violation("client_sees_done", f"{name}: never got done ({s.outcome})",
                             cid, s.last_seq, s.run_id))
    if cid is None or not s.frames:
        return out, 0
    if cid in snap.expired or (s.run_id is not None and s.run_id in snap.expired):
        return out, 0  # retention removed it: nothing left to compare with
    scope = [e for e in snap.events.get(cid, ()) if s.run_id is None or e.run_id == s.run_id]
    seqs = [e.seq for e in scope]
    i = bisect.bisect_right(seqs, s.start_after)
    prev = s.start_after
    for f in s.frames:
        if f.seq <= prev:
            continue  # reported above
        prev = f.seq
        idx = bisect.bisect_left(seqs, f.seq)
        if idx >= len(seqs) or seqs[idx] != f.seq:
            out.append(Violation(
                "client_event_stored", f"{name}: client was sent {f.type} (connect "
                f"{f.connect}) but the store has no such event"
                + (f" (store's last seq in scope {seqs[-1]})" if seqs else " (scope empty)"),
                cid, f.seq, f.run_id))
            continue
        first = idx - f.merged + 1
        if first > i:
            missing = seqs[i:first]
            out.append(Violation(
                "client_no_gap", f"{name}: stored seqs {_ranges(missing)} never delivered "
                f"before {f.type}@{f.seq} (connect {f.connect})", cid, missing[0], f.run_id))
        elif first < i:
            out.append(Violation(
                "client_no_duplicate", f"{name}: frame {f.type}@{f.seq} merged={f.merged} "
                f"covers seqs already delivered (connect {f.connect})", cid, f.seq, f.run_id))
        if f.merged == 1:
            if scope[idx].body != f.body:
                out.append(Violation(
                    "client_bytes_match", f"{name}: frame differs from stored body "
                    f"(sent {f.body[:120]!r}, stored {scope[idx].body[:120]!r})",
                    cid, f.seq, f.run_id))
        else:
            group = scope[max(first, 0):idx + 1]
            deltas = []
            for g in group:
                env = msgspec.json.decode(g.body)
                deltas.append((env.get("data") or {}).get("delta", ""))
            if (any((g.type, g.item_id, g.run_id) != (f.type, f.item_id, f.run_id)
                    for g in group) or "".join(deltas) != f.delta):
                out.append(Violation(
                    "client_merge_matches", f"{name}: merged frame of {f.merged} does not "
                    "equal the stored chunks it claims to fold", cid, f.seq, f.run_id))
        i = max(i, idx + 1)
    done = s.done
    if done is not None and s.run_id is not None and s.start_after == 0:
        got = sum(f.merged for f in s.frames)
        want = (msgspec.json.decode(done.body).get("data") or {}).get("events")
        if got != want:
            out.append(Violation(
                "client_count_matches_done", f"{name}: received {got} events (merged counted) "
                f"but done.data.events={want}", cid, done.seq, s.run_id))
    return out, len(s.frames)


def _ranges(nums: list[int], limit: int = 6) -> str:
    if not nums:
        return "[]"
    parts: list[str] = []
    start = prev = nums[0]
    tail: list[int | None] = [*nums[1:], None]
    for n in tail:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    more = f" (+{len(parts) - limit} more ranges)" if len(parts) > limit else ""
    return "[" + ", ".join(parts[:limit]) + "]" + more
