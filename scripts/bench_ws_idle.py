"""Idle WebSockets: server RSS per connection and server CPU spent on heartbeats.

``--root`` picks the checkout whose server runs (e.g. an export of an older commit), so a
change to the WebSocket heartbeat can be measured against its parent on the same box:

    git archive <commit> | tar -x -C /tmp/before
    python3 scripts/bench_ws_idle.py --root /tmp/before; python3 scripts/bench_ws_idle.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def measure(server: Any, subs: list[Any], warm: list[Any], window: float) -> tuple[int, float,
                                                                                     float]:
    """(opened, RSS bytes per connection, % of a core over ``window``)."""
    from loadlib import ClientJob, ClientPool

    from scripts.bench import HOST

    with ClientPool(ClientJob(HOST, server.port, "ws", warm, idle=True, timeout=60), 1) as pool:
        pool.wait_ready(60)  # load every lazy code path before measuring
        time.sleep(0.5)
        pool.stop()
    time.sleep(1.0)
    rss0 = server.rss()
    job = ClientJob(HOST, server.port, "ws", subs, idle=True, timeout=600,
                    connect_concurrency=64)
    with ClientPool(job, 2) as pool:
        opened = pool.wait_ready(300)
        time.sleep(2.0)
        rss1 = server.rss()
        cpu0, t0 = server.cpu(), time.monotonic()
        time.sleep(window)
        cpu1, t1 = server.cpu(), time.monotonic()
        pool.stop()
    return opened, (rss1 - rss0) / max(1, opened), 100 * (cpu1 - cpu0) / (t1 - t0)


def main(root: Path, n: int, window: float, heartbeat: float) -> None:
    sys.path[:0] = [str(root), str(root / "scripts")]
    from loadlib import Sub

    from scripts.bench import setup_conversation
    from scripts.loadlib_servers import product_server, temp_workdir

    with temp_workdir() as tmp, \
            product_server(Path(tmp), "--heartbeat", str(heartbeat)) as server:
        server.start()
        after = setup_conversation(server.url, "c_idle")

        def sub(i: int) -> Any:
            return Sub("/v1/ws", ws_message={"type": "subscribe", "conversation_id": "c_idle",
                                             "after": after, "ref": f"s{i}"})

        opened, rss, cpu = measure(server, [sub(i) for i in range(n)],
                                   [sub(i) for i in range(20)], window)
    beats = n * window / heartbeat
    print(f"{root}: {opened}/{n} idle WebSockets, heartbeat {heartbeat:g} s: RSS "
          f"{rss / 1024:.2f} KiB/connection, server CPU {cpu:.1f} % core "
          f"({cpu / 100 * window / beats * 1e6:.0f} us per connection-heartbeat)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--heartbeat", type=float, default=1.0)
    a = p.parse_args()
    main(a.root.resolve(), a.n, a.window, a.heartbeat)
