"""Store faults beyond SIGKILL: a full disk, a read-only database file, a second instance on
the same file, and (through the product's ``AGENTSTREAM_FAULTS`` hook) injected commit
failures. Each scenario runs the mixed workload, injects the fault, checks the expected
behaviour, lifts the fault, restarts and checks every invariant.

Expected behaviour (issue 10): a second instance exits at once, nonzero, with one clear line,
having written nothing; on a full disk or a read-only file new runs get ``503
store_unavailable``, running runs end ``failed`` within a bounded time, no client is told an
uncommitted state, SIGTERM exits within its grace; after a restart the invariants hold.

How the faults are made on this machine (root in a container, ext4 ``/tmp``):

* full disk: the file on a small ``tmpfs`` (``mount -t tmpfs -o size=...``) that a ballast
  file fills up (real ENOSPC); where mounting is not allowed, ``RLIMIT_FSIZE`` set on the
  running server (``resource.prlimit``, like ``prlimit --fsize``): writes past the limit
  fail with EFBIG (Python ignores SIGXFSZ, so they raise rather than kill).
* read-only file: root ignores ``chmod 0444``; ``chattr +i`` (immutable) on the database
  and its WAL does stop root, even on descriptors already open (writes fail with EPERM),
  and is lifted with ``chattr -i``. Needs a filesystem with inode flags (ext4 here).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import resource
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.integrity.invariants import Violation, open_runs
from tests.integrity.scenarios import (
    BASE_ARGS,
    Report,
    Round,
    check_point,
    crash_loop,
    new_round,
    resume_all,
    run_live,
    settle,
)
from tests.integrity.server import IntegrityServer, faults_supported
from tests.integrity.workload import CLIENT_TIMEOUT, RunClient, RunPlan

GRACE = 3.0  # --shutdown-grace in BASE_ARGS
FAULT_BOUND = 20.0  # seconds the product has to show the expected behaviour under a fault
SECOND_INSTANCE_WAIT = 5.0  # "exits at once": generous


class FaultsUnsupported(Exception):
    """The product does not report ``agentstream_faults_enabled``."""


# ---- fault makers ---------------------------------------------------------------------------


def can_mount_tmpfs(probe_dir: Path) -> bool:
    probe_dir.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe_dir)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", "-l", str(probe_dir)], capture_output=True)
    return ok


def can_chattr(probe: Path) -> bool:
    probe.write_bytes(b"x")
    try:
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
            return False
        try:
            with probe.open("ab") as f:
                f.write(b"y")
            return False  # immutable did not stop us
        except OSError:
            return True
    except FileNotFoundError:
        return False
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.unlink(missing_ok=True)


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                   check=True, capture_output=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def fill_disk(ballast: Path) -> int:
    """Write until the filesystem is full (ENOSPC); returns the bytes written."""
    written = 0
    chunk = 1 << 20
    with ballast.open("wb", buffering=0) as f:
        while chunk >= 512:
            try:
                f.write(b"\0" * chunk)
                written += chunk
            except OSError:
                chunk //= 2
    return written


def db_files(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-journal")) if p.exists()]


def set_immutable(paths: list[Path], on: bool) -> None:
    for p in paths:
        subprocess.run(["chattr", "+i" if on else "-i", str(p)], check=True,
                       capture_output=True)


def table_digest(db: Path) -> dict[str, str]:
    """A digest of every table's rows (read-only), to prove a process wrote nothing."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        out: dict[str, str] = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                    "ORDER BY name"):
            h = hashlib.sha256()
            n = 0
            for row in conn.execute(f'SELECT * FROM "{name}" ORDER BY 1, 2'):
                h.update(repr(row).encode())
                n += 1
            out[name] = f"{n} rows {h.hexdigest()[:12]}"
        conn.execute("COMMIT")
        return out
    finally:
        conn.close()


# ---- shared pieces -------------------------------------------------------------------------


def long_round(rng: random.Random, tag: str, runs: int, pool: list[str]) -> Round:
    """A round whose runs are still streaming when the fault comes (about 3-6 s each)."""
    rnd = new_round(rng, tag, runs, pool)
    for c in rnd.clients:
        if rng.random() < 0.7:
            c.plan.input.update(tokens=rng.choice([1500, 3000]), delay_ms=2)
            c.plan.input.pop("fail", None)
        c.plan.cancel_after = None if rng.random() < 0.8 else c.plan.cancel_after
    return rnd


async def post_run(http: aiohttp.ClientSession, base: str, cid: str) -> tuple[int, str, Any]:
    body = {"agent": "demo", "conversation_id": cid,
            "input": {"text": "during fault", "tokens": 5, "delay_ms": 0}}
    try:
        async with asyncio.timeout(10), http.post(base + "/v1/runs", json=body) as r:
            data = await r.json(content_type=None)
            code = (data.get("error") or {}).get("code", "") if isinstance(data, dict) else ""
            return r.status, str(code), data
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return 0, type(exc).__name__, None


async def run_status(http: aiohttp.ClientSession, base: str, run_id: str) -> str:
    try:
        async with asyncio.timeout(5), http.get(f"{base}/v1/runs/{run_id}") as r:
            return str((await r.json()).get("status")) if r.status == 200 else f"http {r.status}"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return type(exc).__name__


async def expect_store_unavailable(report: Report, http: aiohttp.ClientSession, base: str,
                                   rnd: Round, tag: str, late: list[RunClient]) -> None:
    """Under the fault: new runs get 503 store_unavailable; running runs end failed."""
    running = [c.run_id for c in rnd.clients if c.run_id and not c.finished]
    report.observe(f"{tag}: {len(running)} runs streaming when the fault was injected")
    deadline = time.monotonic() + FAULT_BOUND
    seen: list[str] = []
    refused = False
    i = 0
    while time.monotonic() < deadline:
        status, code, data = await post_run(http, base, f"{tag}-late-{i}")
        seen.append(f"{status} {code}".strip())
        if status == 202 and isinstance(data, dict):
            # accepted during the fault: its client must not be told an uncommitted state
            c = RunClient(RunPlan(f"{tag}-late-{i}", "sse_get", f"{tag}-late-{i}", {},
                                  False, None, None, 0.0))
            c.run_id = c.stream.run_id = str(data["run_id"])
            c.stream.connects = 1
            late.append(c)
        i += 1
        if status == 503 and code == "store_unavailable":
            refused = True
            break
        await asyncio.sleep(0.5)
    report.observe(f"{tag}: new runs under the fault answered {summarize(seen)}")
    if not refused:
        report.add(tag, [_v("new_runs_503_store_unavailable",
                             f"no 503 store_unavailable within {FAULT_BOUND:g}s; "
                             f"answers: {summarize(seen)}")])
    # The runs must stop (their agents end, ``done{failed}`` queued) within the bound. Their
    # *committed* status stays as it was until the disk is back: no client is told a state the
    # store does not hold, so the API cannot say "failed" yet. What shows it is the engine's
    # gauge of active runs; the final invariants (after the fault is lifted) then require
    # each run's committed ``done``.
    active = -1.0
    while running and time.monotonic() < deadline + FAULT_BOUND:
        active = await runs_active(http, base)
        if active == 0:
            break
        await asyncio.sleep(0.5)
    statuses = {rid: await run_status(http, base, rid) for rid in running}
    report.observe(f"{tag}: runs streaming at the fault: active runs after up to "
                   f"{2 * FAULT_BOUND:g}s: {active:g}; API (committed) status: "
                   f"{summarize(list(statuses.values()))}")
    if running and active != 0:
        report.add(tag, [_v("running_runs_end_failed",
                            f"{active:g} runs still active {2 * FAULT_BOUND:g}s into the "
                            f"store fault")])


async def runs_active(http: aiohttp.ClientSession, base: str) -> float:
    """Sum of ``agentstream_runs_active`` over statuses, from /metrics."""
    async with http.get(base + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("agentstream_runs_active{"))


def summarize(items: list[str]) -> str:
    counts: dict[str, int] = {}
    for s in items:
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in counts.items()) or "nothing"


def _v(invariant: str, detail: str, run_id: str | None = None) -> Violation:
    return Violation(invariant, detail, run_id=run_id)


async def sigterm_within_grace(report: Report, server: IntegrityServer, tag: str) -> None:
    took = server.terminate_within(GRACE + 15)
    report.observe(f"{tag}: SIGTERM exit after "
                   + (f"{took:.1f} s" if took is not None else f"> {GRACE + 15:g} s (killed)")
                   + f", code {server.proc.returncode if server.proc else None}")
    if took is None or took > GRACE + 2:
        report.add(tag, [_v("sigterm_within_grace",
                            f"SIGTERM with --shutdown-grace {GRACE:g} took "
                            + (f"{took:.1f} s" if took is not None else "forever (SIGKILLed)"))])


async def restart_and_verify(report: Report, server: IntegrityServer, db: Path,
                             http: aiohttp.ClientSession, rnd: Round, late: list[RunClient],
                             tag: str) -> None:
    """File as the fault left it; restart; resume everyone; recovered; graceful stop."""
    streams = [*rnd.streams, *(c.stream for c in late)]
    snap = check_point(report, f"{tag}: file after the fault", db, streams)
    were_open = open_runs(snap)
    await server.start()
    rnd.clients += late
    await resume_all(http, server.base, rnd, 60)
    check_point(report, f"{tag}: after restart", db, streams, were_open=were_open)
    lost = [c for c in late if "acked run lost" in c.stream.outcome]
    if lost:
        report.add(f"{tag}: after restart", [_v(
            "no_uncommitted_ack", f"{len(lost)} runs accepted (202) under the store fault are "
            f"unknown after restart (404), e.g. {lost[0].run_id}", run_id=lost[0].run_id)])
    took = server.terminate_within(20)
    check_point(report, f"{tag}: after graceful stop", db, streams, quiescent=took is not None)
    report.frames_checked += sum(len(s.frames) for s in streams)
    report.runs_started += sum(1 for c in rnd.clients if c.run_id)
    report.notes.update(rnd.notes())


# ---- scenarios -----------------------------------------------------------------------------


async def store_fault(workdir: Path, seed: int, kind: str, runs: int = 16) -> Report:
    """``kind``: ``tmpfs`` (full disk, ENOSPC), ``fsize`` (full disk via RLIMIT_FSIZE) or
    ``readonly`` (``chattr +i`` on the database file and its WAL, mid-run)."""
    rng = random.Random(seed)
    report = Report(f"store fault: {kind}", seed)
    async with _fault_env(workdir, kind) as (db, inject, lift):
        server = IntegrityServer(db, *BASE_ARGS, log_dir=workdir / "logs")
        await server.start()
        try:
            async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
                rnd = long_round(rng, f"{kind}", runs, [])
                report.runs_planned += len(rnd.clients)
                stop = asyncio.Event()
                tasks = await run_live(http, server.base, rnd, stop.is_set)
                await asyncio.sleep(1.5)
                report.observe(f"{kind}: fault injected: {inject(server)}")
                late: list[RunClient] = []
                await expect_store_unavailable(report, http, server.base, rnd, kind, late)
                await sigterm_within_grace(report, server, kind)
                stop.set()
                await settle(tasks, 20)
                report.observe(f"{kind}: fault lifted: {lift()}")
                await restart_and_verify(report, server, db, http, rnd, late, kind)
        finally:
            server.stop()
            lift()
    return report


@contextlib.asynccontextmanager
async def _fault_env(workdir: Path, kind: str) -> AsyncIterator[tuple[Path, Any, Any]]:
    os.makedirs(workdir, exist_ok=True)
    if kind == "tmpfs":
        with tmpfs(workdir / "disk", "48m") as mnt:
            db = mnt / "full.db"
            ballast = mnt / "ballast"

            def inject(_: IntegrityServer) -> str:
                return f"tmpfs 48m filled by a {fill_disk(ballast) >> 20} MiB ballast"

            def lift() -> str:
                ballast.unlink(missing_ok=True)
                return "ballast removed"

            yield db, inject, lift
        return
    if kind == "fsize":
        db = workdir / "fsize.db"

        def inject_fsize(server: IntegrityServer) -> str:
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (1, 1))
            return f"RLIMIT_FSIZE=1 byte on pid {server.pid}"

        yield db, inject_fsize, lambda: "limit ends with the process"
        return
    if kind == "readonly":
        db = workdir / "ro.db"
        frozen: list[Path] = []

        def inject_ro(_: IntegrityServer) -> str:
            frozen[:] = db_files(db)
            set_immutable(frozen, True)
            return "chattr +i " + " ".join(p.name for p in frozen)

        def lift_ro() -> str:
            set_immutable(frozen, False)
            names = " ".join(p.name for p in frozen)
            frozen.clear()
            return "chattr -i " + names if names else "nothing frozen"

        try:
            yield db, inject_ro, lift_ro
        finally:
            lift_ro()
        return
    raise ValueError(kind)


async def readonly_at_start(workdir: Path, seed: int) -> Report:
    """The database file is read-only (immutable) when the server starts: it either refuses
    to start (nonzero exit, a clear line) or starts and refuses runs with 503."""
    report = Report("store fault: read-only at start", seed)
    db = workdir / "ro-start.db"
    server = IntegrityServer(db, *BASE_ARGS, log_dir=workdir / "logs")
    await server.start()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        status, code, _ = await post_run(http, server.base, "ro-before")
        report.observe(f"before: a run answered {status}")
    server.terminate_within(20)
    frozen = db_files(db)
    set_immutable(frozen, True)
    try:
        try:
            await server.start()
        except RuntimeError as exc:
            report.observe(f"refused to start on a read-only file: {str(exc)[-300:]}")
            return report
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
            deadline = time.monotonic() + FAULT_BOUND
            seen: list[str] = []
            while time.monotonic() < deadline:
                status, code, _ = await post_run(http, server.base, f"ro-{len(seen)}")
                seen.append(f"{status} {code}".strip())
                if status == 503 and code == "store_unavailable":
                    break
                await asyncio.sleep(0.5)
            report.observe(f"started on a read-only file; new runs answered {summarize(seen)}")
            if not seen or seen[-1] != "503 store_unavailable":
                report.add("read-only at start", [_v(
                    "new_runs_503_store_unavailable",
                    f"server started on a read-only file and answered {summarize(seen)}")])
        await sigterm_within_grace(report, server, "read-only at start")
    finally:
        server.stop()
        set_immutable(frozen, False)
    await server.start()
    server.terminate_within(20)
    check_point(report, "read-only at start: after restart on a writable file", db, [],
                quiescent=True)
    return report


@dataclass
class SecondRun:
    code: int | None  # None: still running after the wait (it served on the same file)
    output: str
    seconds: float


def second_instance(db: Path, log_dir: Path, wait: float = SECOND_INSTANCE_WAIT) -> SecondRun:
    other = IntegrityServer(db, *BASE_ARGS, log_dir=log_dir)
    started = time.monotonic()
    proc = other.spawn()
    try:
        code: int | None = proc.wait(wait)
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
        proc.wait(10)
    took = time.monotonic() - started
    other.proc = proc
    out = other.log_tail(20)
    lines = [ln for ln in out.splitlines() if not ln.startswith("==== start")]
    return SecondRun(code, "\n".join(lines), took)


async def second_instance_scenario(workdir: Path, seed: int, runs: int = 16) -> Report:
    rng = random.Random(seed)
    report = Report("second instance on the same file", seed)
    os.makedirs(workdir, exist_ok=True)
    db = workdir / "shared.db"
    first = IntegrityServer(db, *BASE_ARGS, log_dir=workdir / "logs")
    await first.start()
    try:
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
            rnd = long_round(rng, "dup", runs, [])
            report.runs_planned += len(rnd.clients)
            stop = asyncio.Event()
            tasks = await run_live(http, first.base, rnd, stop.is_set)
            await asyncio.sleep(1.5)
            # 1. The first instance paused (SIGSTOP), so any row that changes is the second's.
            os.kill(first.pid, signal.SIGSTOP)
            try:
                before = table_digest(db)
                b = second_instance(db, workdir / "logs")
                after = table_digest(db)
            finally:
                os.kill(first.pid, signal.SIGCONT)
            _judge_second(report, b, "while the first was paused")
            changed = {t: (before.get(t), after.get(t)) for t in set(before) | set(after)
                       if before.get(t) != after.get(t)}
            if changed:
                report.add("second instance (first paused)", [_v(
                    "second_instance_writes_nothing",
                    "tables changed by the second instance: " + "; ".join(
                        f"{t}: {a} -> {z}" for t, (a, z) in sorted(changed.items())))])
            # 2. The first instance serving its workload meanwhile.
            b = second_instance(db, workdir / "logs")
            _judge_second(report, b, "while the first served")
            # The first instance's runs all finish, on its own process (never restarted).
            await settle(tasks, 30)
            for c in rnd.clients:
                if c.run_id and not c.finished:
                    c.stream.must_complete = True
                    c.stream.outcome = c.stream.outcome or "unfinished on the first instance"
            stop.set()
            snap = check_point(report, "second instance: first still serving", db,
                               rnd.streams)
            restarted = [e for evs in snap.events.values() for e in evs if e.type == "done"
                         and b"server_restarted" in e.body]
            if restarted:
                e = restarted[0]
                report.add("second instance", [_v(
                    "second_instance_leaves_runs_alone",
                    f"{len(restarted)} done(interrupted, server_restarted) written although "
                    f"the serving instance never restarted (e.g. {e.conversation_id}#{e.seq})",
                    run_id=e.run_id)])
            took = first.terminate_within(20)
            report.observe(f"first instance SIGTERM: {took}")
            check_point(report, "second instance: after the first's graceful stop", db,
                        rnd.streams, quiescent=took is not None)
            report.frames_checked += sum(len(s.frames) for s in rnd.streams)
            report.runs_started += sum(1 for c in rnd.clients if c.run_id)
            report.notes.update(rnd.notes())
    finally:
        first.stop()
    return report


def _judge_second(report: Report, b: SecondRun, when: str) -> None:
    lines = [ln for ln in b.output.splitlines() if ln.strip()]
    report.observe(f"second instance {when}: exit code {b.code} after {b.seconds:.1f} s, "
                   f"{len(lines)} output lines: {lines[:3]!r}")
    if b.code is None:
        report.add(f"second instance {when}", [_v(
            "second_instance_exits", f"still running {b.seconds:.0f} s after start on a file "
            "another instance serves (killed by the harness)")])
    elif b.code == 0:
        report.add(f"second instance {when}", [_v(
            "second_instance_exits", "exited 0 (expected nonzero)")])
    elif len(lines) != 1:
        report.add(f"second instance {when}", [_v(
            "second_instance_one_line", f"{len(lines)} output lines: {lines[:5]!r}")])


async def commit_faults(workdir: Path, seed: int, faults: str, *, kills: int,
                        runs_per_round: int, poison: str | None = None) -> Report:
    """The crash loop with ``AGENTSTREAM_FAULTS`` set (the product's commit-failure hook)."""
    os.makedirs(workdir, exist_ok=True)
    probe = IntegrityServer(workdir / "probe.db", log_dir=workdir / "logs",
                            env={"AGENTSTREAM_FAULTS": faults})
    await probe.start()
    try:
        supported = await faults_supported(probe.base)
    finally:
        probe.stop()
    if not supported:
        raise FaultsUnsupported("fault hook not in this build")
    return await crash_loop(workdir, kills=kills, runs_per_round=runs_per_round, seed=seed,
                            env={"AGENTSTREAM_FAULTS": faults}, poison=poison,
                            name=f"commit faults {faults}")
