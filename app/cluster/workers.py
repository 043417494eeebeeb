"""``--workers N``: N server processes on one machine sharing one port (``SO_REUSEPORT``).

Each worker is a full cluster node (``python -m app ... --workers 1`` with the port shared),
so one machine's cores serve one deployment; the kernel spreads new connections over them.
This supervisor only starts them, passes SIGTERM/SIGINT on, and restarts a worker that exits
while the supervisor is not stopping (a crash, or a node that was fenced and left).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

REUSE_PORT_ENV = "AGENTSTREAM_REUSE_PORT"
RESTART_DELAY = 1.0


def supervise(argv: list[str], workers: int) -> int:
    stopping = False
    env = {**os.environ, REUSE_PORT_ENV: "1"}
    cmd = [sys.executable, "-m", "app", *argv, "--workers", "1"]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(workers)]

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        for i, p in enumerate(procs):
            if p.poll() is not None and not stopping:
                print(f"agentstream: worker {p.pid} exited ({p.returncode}); restarting",
                      file=sys.stderr)
                time.sleep(RESTART_DELAY)
                procs[i] = subprocess.Popen(cmd, env=env)
        if stopping and all(p.poll() is not None for p in procs):
            return max((p.returncode for p in procs if p.returncode > 0), default=0)
        time.sleep(0.2)
