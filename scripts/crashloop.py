"""The long crash-and-fault loop (issue 10); the test suite runs a short version of it.

Rounds of a mixed workload against a real ``python -m app`` (demo runs over SSE and
WebSocket, questions answered or left to time out, cancels, voluntary disconnects and
resumes, conversation watchers, retention and a schedule on), each ended by a SIGKILL at a
random moment; the file is checked as the crash left it, the server restarts on it, every
client resumes from its last seq and everything is checked again. Optional fault scenarios
(full disk, read-only file, second instance, injected commit failures) run after it.

    python3 scripts/crashloop.py --kills 500 --runs-per-round 30
    python3 scripts/crashloop.py --kills 20 --scenarios crash,disk,readonly,second,commit

Prints e.g. "500 SIGKILLs, 12,000 runs, 0 violations" and every violation found (invariant,
conversation, seq, run, check point). Exit code 1 when any invariant was violated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integrity import faults
from tests.integrity.scenarios import Report, crash_loop

SCENARIOS = ("crash", "disk", "readonly", "second", "commit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=500, help="SIGKILL rounds (default 500)")
    p.add_argument("--runs-per-round", type=int, default=30)
    p.add_argument("--seed", type=int, default=None, help="default: from the clock, printed")
    p.add_argument("--max-minutes", type=float, default=0,
                   help="stop the crash loop after this long (0: run all rounds)")
    p.add_argument("--scenarios", default="crash",
                   help=f"comma-separated, of {','.join(SCENARIOS)} (default crash)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where files and server logs go (default: a temp dir, kept on failure)")
    p.add_argument("--json", type=Path, default=None, help="write the reports here")
    p.add_argument("--show", type=int, default=60, help="violations listed per scenario")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, workdir: Path) -> list[Report]:
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"seed {seed}, workdir {workdir}", flush=True)
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    reports: list[Report] = []
    deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else None

    def progress(r: Report, k: int) -> None:
        if k % 10 == 9 or k == args.kills - 1:
            print(f"  round {k + 1}/{args.kills}: {r.runs_started:,} runs, "
                  f"{len(r.violations)} violations, {r.elapsed:.0f} s", flush=True)

    for name in wanted:
        sub = workdir / name
        if name == "crash":
            reports.append(await crash_loop(
                sub, kills=args.kills, runs_per_round=args.runs_per_round, seed=seed,
                progress=progress, stop_at=deadline))
        elif name == "disk":
            kind = "tmpfs" if faults.can_mount_tmpfs(sub / "probe") else "fsize"
            reports.append(await faults.store_fault(sub / kind, seed, kind))
            if kind == "tmpfs":
                reports.append(await faults.store_fault(sub / "fsize", seed, "fsize"))
        elif name == "readonly":
            if faults.can_chattr(workdir / "probe"):
                reports.append(await faults.store_fault(sub, seed, "readonly"))
                reports.append(await faults.readonly_at_start(sub / "start", seed))
            else:
                print("readonly: skipped (chattr +i does not stop writes here)")
        elif name == "second":
            reports.append(await faults.second_instance_scenario(sub, seed))
        elif name == "commit":
            for spec, poison in (("commit_fail_every=7", None), ("commit_fail=0.1", None),
                                 ("commit_fail_permanent=POISON", "POISON")):
                try:
                    reports.append(await faults.commit_faults(
                        sub / spec.split("=")[0], seed, spec, kills=max(1, args.kills // 10),
                        runs_per_round=args.runs_per_round, poison=poison))
                except faults.FaultsUnsupported as exc:
                    print(f"commit {spec}: skipped ({exc})")
        else:
            raise SystemExit(f"unknown scenario {name!r}; choose from {SCENARIOS}")
        print(reports[-1].details(args.show) if reports else "", flush=True)
    return reports


def main() -> int:
    args = parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crashloop-"))
    reports = asyncio.run(run(args, workdir))
    total = sum(len(r.violations) for r in reports)
    print()
    for r in reports:
        print(r.summary())
    kills = sum(r.kills for r in reports)
    runs = sum(r.runs_started for r in reports)
    print(f"TOTAL: {kills:,} SIGKILLs, {runs:,} runs, {total:,} violations")
    if args.json:
        args.json.write_text(json.dumps([{
            "name": r.name, "seed": r.seed, "kills": r.kills, "runs": r.runs_started,
            "frames_checked": r.frames_checked, "seconds": round(r.elapsed, 1),
            "violations": [str(v) for v in r.violations], "observations": r.observations,
            "notes": dict(r.notes)} for r in reports], indent=2))
    if total == 0 and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif total:
        print(f"files and server logs kept in {workdir}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
