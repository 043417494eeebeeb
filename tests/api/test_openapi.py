"""``/openapi.json``: generated from the handlers' msgspec types, complete, and fuzzed.

The schemathesis run here is short (a fixed seed, a few examples per operation) so the suite
stays quick and reproducible; ``scripts/fuzz_api.sh`` runs the long, random one.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import aiohttp
import schemathesis

from app.api.openapi import OPERATIONS
from app.api.static import STATIC_PREFIX
from app.config import Settings
from app.server import create_app
from tests.conftest import ServerFactory, url
from tests.process import ServerProcess


def routes_of_the_app(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(Settings(db=str(tmp_path / "x.db")))
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if route.method in ("HEAD", "OPTIONS", "*") or path is None:
            continue
        if path == "/" or str(path).startswith(STATIC_PREFIX + "/"):
            continue  # the demo page and the browser client: files, not API
        out.add((route.method.lower(), str(path)))
    return out


def test_every_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert routes_of_the_app(tmp_path) == documented


async def test_the_document_is_this_deployments_openapi_31(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    async with http.get(url(server, "/openapi.json")) as r:
        assert r.status == 200 and r.content_type == "application/json"
        doc = await r.json()
    assert doc["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(doc)  # loads and validates the document
    assert len(list(schema.get_all_operations())) == len(OPERATIONS)
    start = doc["components"]["schemas"]["StartRunRequest"]
    assert start["properties"]["agent"] == {"enum": ["demo"]}
    assert start["required"] == ["agent"]
    assert {"RunInfo", "RunDetail"} <= set(doc["components"]["schemas"])
    responses = doc["paths"]["/v1/runs/{run_id}"]["get"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunDetail"}
    assert responses["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}


async def test_method_not_allowed_says_what_is_allowed(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """Found by schemathesis: the coded 405 had lost aiohttp's ``Allow`` header."""
    server = await start_server()
    async with http.request("TRACE", url(server, "/healthz")) as r:
        assert r.status == 405 and set(r.headers["Allow"].split(",")) == {"GET", "HEAD"}
        assert (await r.json())["error"]["code"] == "method_not_allowed"


async def test_schemathesis_finds_nothing_against_a_live_server(tmp_path: Path) -> None:
    """Every check schemathesis has (server errors, status and schema conformance, accepted
    invalid data, rejected valid data, methods, auth), over every HTTP operation but the
    WebSocket upgrade, against a real server process."""
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is in the test extra"
    server = ServerProcess(tmp_path / "fuzz.db", "--input-timeout", "1", "--run-timeout", "5")
    await server.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            st, "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run",
            server.base + "/openapi.json", "--checks", "all",
            "--exclude-path", "/v1/ws", "--max-examples", "10", "--seed", "1",
            "--request-timeout", "10", "--no-color",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
    finally:
        server.stop()
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-4000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    assert selected is not None, report[-2000:]
    # every operation but the WebSocket upgrade was tested
    assert int(selected[1]) == int(selected[2]) - 1 >= len(OPERATIONS) - 2, report[-2000:]
    assert f"Tested: {selected[1]}" in report, report[-2000:]
