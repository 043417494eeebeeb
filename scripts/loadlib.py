"""Shared machinery of ``loadtest.py`` and ``bench.py``, split by job; this module re-exports it.

- ``loadlib_env``: the box (fd limit, description, load) and /proc sampling of a process;
- ``loadlib_servers``: servers under test in their own processes, and control-plane HTTP;
- ``loadlib_stats``: latency histograms and quantiles;
- ``loadlib_conn``: one load-client connection (raw asyncio, counts events by scanning bytes);
- ``loadlib_pool``: worker processes holding the connections, and the pool that merges them.

Why it looks like this: the machine has 2 cores shared by the server and its clients, so the
clients run in worker processes (multiprocessing, spawn), speak HTTP/1.1 and WebSocket over
raw asyncio protocols, and count events by scanning bytes instead of parsing JSON. Servers
run as subprocesses and are sampled through ``/proc/<pid>``; every one is stopped in a
``finally``.
"""

from __future__ import annotations

from loadlib_conn import SSE_DONE, WS_DONE, WS_EVENT, ClientJob, ConnResult, Sub
from loadlib_env import (
    HOST,
    ROOT,
    SCRIPTS,
    Transport,
    busy_cores,
    exit_on_sigterm,
    free_port,
    kernel_mem,
    load_avg,
    machine,
    proc_cpu,
    proc_rss,
    raise_nofile,
)
from loadlib_pool import ClientPool, PoolResult
from loadlib_servers import (
    SETUP_INPUT,
    WS_SKIP,
    ServerProc,
    baseline_server,
    floor_server,
    http_json,
    product_server,
    scrape_histogram,
    scrape_metrics,
    setup_conversation,
    start_run,
    temp_workdir,
    wait_run,
    ws_available,
)
from loadlib_stats import bucket_quantile, merge_hist, percentile, summarize_hist

__all__ = [
    "HOST", "ROOT", "SCRIPTS", "SETUP_INPUT", "SSE_DONE", "WS_DONE", "WS_EVENT", "WS_SKIP",
    "ClientJob", "ClientPool", "ConnResult", "PoolResult", "ServerProc", "Sub", "Transport",
    "baseline_server", "bucket_quantile", "busy_cores", "exit_on_sigterm", "floor_server",
    "free_port", "http_json", "kernel_mem", "load_avg", "machine", "merge_hist", "percentile",
    "proc_cpu", "proc_rss", "product_server", "raise_nofile", "scrape_histogram",
    "scrape_metrics", "setup_conversation", "start_run", "summarize_hist", "temp_workdir",
    "wait_run", "ws_available",
]
