"""How big the SQLite writer's INSERT statements should be, with a busy event loop beside it.

Why: the sqlite3 module drops the GIL while a statement steps and must take it back after;
while another thread (the event loop) is busy, each take-back waits up to the interpreter's
switch interval (5 ms). So the writer's wall time per event depends on how many statements a
batch needs, not only on SQLite. This script inserts the same rows (the product's schema and
``sqlite_writes.insert_events``; 1,000 interleaved conversations) with several statement
sizes, first alone, then beside a thread spinning in pure Python (a stand-in for a busy loop),
and prints wall and writer-thread CPU microseconds per event, and how much the spinning thread
slowed down (the GIL the writer took from it).

    python scripts/bench_writer_statements.py [--events 60000] [--sizes 256,1024,4096]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.sqlite_writes import connect_writer, insert_events

BODY = (b'{"seq":1,"type":"message_chunk","conversation_id":"c_0123456789abcdef","run_id":'
        b'"r_0123456789abcdef","agent":"demo","ts":1763800000000,"item_id":"m_0123456789ab",'
        b'"data":{"delta":"token "}}')


class Spinner:
    """A thread that runs pure Python flat out and counts its rounds."""

    def __init__(self) -> None:
        self.rounds = 0
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        while not self._stop:
            x = 0
            for i in range(1000):
                x += i
            self.rounds += 1

    def __enter__(self) -> Spinner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()


def batches(events: int, batch: int, conversations: int) -> list[list[object]]:
    seqs = [0] * conversations
    out = []
    for start in range(0, events, batch):
        flat: list[object] = []
        for i in range(start, min(events, start + batch)):
            c = i % conversations
            seqs[c] += 1
            flat += (f"c_{c:016x}", seqs[c], "r_0123456789abcdef", "message_chunk",
                     "m_0123456789ab", 1763800000000, BODY)
        out.append(flat)
    return out


def insert_all(path: Path, data: list[list[object]], chunk: int) -> tuple[float, float]:
    """Wall and this thread's CPU seconds to commit every batch, ``chunk`` rows a statement."""
    db = connect_writer(str(path))
    try:
        wall, cpu = time.perf_counter(), time.thread_time()
        for flat in data:
            db.execute("BEGIN")
            insert_events(db, flat, chunk)
            db.execute("COMMIT")
        return time.perf_counter() - wall, time.thread_time() - cpu
    finally:
        db.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--batch", type=int, default=20_000, help="events per transaction")
    p.add_argument("--conversations", type=int, default=1_000)
    p.add_argument("--sizes", default="256,1024,4096", help="rows per statement (powers of 2)")
    args = p.parse_args()
    data = batches(args.events, args.batch, args.conversations)
    print(f"{args.events:,} events, {args.batch:,} per transaction, "
          f"{args.conversations:,} conversations")
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (False, True):
            for size in (int(s) for s in args.sizes.split(",")):
                path = Path(tmp) / f"w{size}{busy}.db"
                if busy:
                    with Spinner() as spin:
                        alone = time.perf_counter()
                        time.sleep(0.5)
                        rate = spin.rounds / (time.perf_counter() - alone)
                        before = spin.rounds
                        wall, cpu = insert_all(path, data, size)
                        beside = (spin.rounds - before) / wall
                    slowed = f"; the busy thread ran at {beside / rate:.2f}x its speed alone"
                else:
                    wall, cpu = insert_all(path, data, size)
                    slowed = ""
                print(f"{'busy loop' if busy else 'alone':9s} {size:5d} rows/statement: "
                      f"wall {wall / args.events * 1e6:6.2f} us/event, writer CPU "
                      f"{cpu / args.events * 1e6:5.2f} us/event{slowed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
