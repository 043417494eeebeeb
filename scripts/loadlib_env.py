"""The bench box: its fd limit, its description, its load, and /proc sampling of a process.

Why: on a shared 2-core machine a figure means something only beside what else ran
(``busy_cores``, ``load_avg``) and what the process spent (``proc_cpu``, ``proc_rss``).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
HOST = "127.0.0.1"
Transport = Literal["sse", "ws"]


# ---- environment ----------------------------------------------------------------------------


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the servers and workers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def raise_nofile(want: int = 65_536) -> int:
    """Raise the soft fd limit toward the hard one; children (server, workers) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def machine() -> str:
    """One line describing the box, for the output: results only mean something beside it."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024 // 1024
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}"
    )


# ---- /proc ----------------------------------------------------------------------------------


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of CPU the whole machine used over ``seconds`` (/proc/stat):
    taken before a run, it says whether other work on the box will skew the figures."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields) - idle, sum(fields)

    (b0, t0), _ = sample(), time.sleep(seconds)
    b1, t1 = sample()
    return (os.cpu_count() or 1) * (b1 - b0) / max(1, t1 - t0)


def load_avg() -> str:
    """The 1-minute load average (``uptime``), to print next to a figure: the box is shared."""
    return f"{os.getloadavg()[0]:.2f}"


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    """Resident set size in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of the process (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def kernel_mem() -> int:
    """Kernel memory that grows with sockets: slab (sock, file, inode...) plus TCP buffer
    pages (``/proc/meminfo`` Slab + ``/proc/net/sockstat`` TCP mem). Not part of any RSS."""
    total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Slab:"):
                total += int(line.split()[1]) * 1024
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                parts = line.split()
                total += int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    return total
