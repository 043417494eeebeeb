"""Re-record ``tests/compat/recorded/*.jsonl`` from a real demo-agent run (native SSE).

    python -m tests.compat.record   # starts its own server on a free port, then stops it

The files are the input of the mapping unit tests; the mapping tests assert exact frames,
so re-recording means re-reading those expectations (ids and timestamps change).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from tests.process import ServerProcess

OUT = Path(__file__).parent / "recorded"


async def events_of(http: aiohttp.ClientSession, base: str, run_id: str) -> list[Any]:
    out = []
    async with http.get(f"{base}/v1/runs/{run_id}/events") as r:
        async for line in r.content:
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
    return out


async def record() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "rec.db")
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                base = server.base
                common = {"text": "hi", "tokens": 3, "delay_ms": 1}
                runs = {"ask": {**common, "ask": "Proceed?", "choices": ["yes", "no"]},
                        "fail": {**common, "fail": True}}
                for name, inp in runs.items():
                    async with http.post(f"{base}/v1/runs",
                                         json={"agent": "demo", "input": inp}) as r:
                        run = await r.json()
                    if name == "ask":
                        while True:
                            async with http.get(f"{base}/v1/runs/{run['run_id']}") as r:
                                info = await r.json()
                            if info["status"] == "waiting_input":
                                break
                            await asyncio.sleep(0.05)
                        req = info["pending_input"]["request_id"]
                        async with http.post(f"{base}/v1/runs/{run['run_id']}/input",
                                             json={"request_id": req, "value": "yes"}):
                            pass
                    events = await events_of(http, base, run["run_id"])
                    (OUT / f"{name}.jsonl").write_text(
                        "".join(json.dumps(e) + "\n" for e in events))
        finally:
            server.kill()


if __name__ == "__main__":
    asyncio.run(record())
