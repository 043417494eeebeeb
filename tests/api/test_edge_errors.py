"""aiohttp's own refusals also answer ``{"error": {code, message}}`` with a specific code
(the fuzzing pass found them as ``http_error``)."""

from __future__ import annotations

import aiohttp

from tests.conftest import LiveServer, ServerFactory, url


async def test_plain_get_of_the_websocket_path_is_426_upgrade_required(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(url(server, "/v1/ws")) as r:
        assert r.status == 426 and r.headers.get("Upgrade", "").lower() == "websocket"
        error = (await r.json())["error"]
        assert error["code"] == "upgrade_required" and "upgrade" in error["message"].lower()


async def test_cors_preflight_from_an_unlisted_origin_is_403_forbidden(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(cors_origins="https://app.example")
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    async with http.options(url(server, "/v1/runs"), headers=headers) as r:
        assert r.status == 403
        assert (await r.json())["error"]["code"] == "forbidden"
    headers["Origin"] = "https://app.example"
    async with http.options(url(server, "/v1/runs"), headers=headers) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
