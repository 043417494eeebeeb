"""Agents from a TOML file: cards over HTTP, a configured remote agent that runs, and a clear
error for every kind of bad file (also from ``python -m app``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from app.agents.config_file import load_agents
from app.agents.openai_relay import OpenAIRelayAgent
from app.agents.remote import RemoteAgent
from app.config import load_settings
from tests.conftest import LiveServer, ServerFactory, url
from tests.run_client import done_of, stream_run

GOOD = """
[[agents]]
name = "gpt"
kind = "openai"
base_url = "https://api.example.com/v1"
model = "gpt-4o-mini"
api_key_env = "TEST_OPENAI_KEY"
description = "A relayed chat model"
idle_timeout = 30

[[agents]]
name = "far"
kind = "remote"
url = "{far}"
remote_agent = "demo"
description = "The demo agent of another server"
backoff = 0.02
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    return path


def test_good_file_builds_both_kinds(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.format(far="http://127.0.0.1:9"))
    gpt, far = load_agents(path, {"TEST_OPENAI_KEY": "sk-test"})
    assert isinstance(gpt, OpenAIRelayAgent) and isinstance(far, RemoteAgent)
    assert (gpt.name, gpt.card.description, gpt.options.idle_timeout) == (
        "gpt", "A relayed chat model", 30)
    assert far.options.remote_agent == "demo" and far.card.can_request_input


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[[agents]\nname=", "not valid TOML"),
        ('[[agents]]\nname = "x"\nkind = "llm"', "Invalid value 'llm' - at `$.agents[0].kind`"),
        ('[[agents]]\nname = "x"\nkind = "remote"\nurl = "http://h:1"',
         "missing required field `remote_agent`"),
        ('[[agents]]\nname = "x"\nkind = "remote"\nurl = "http://h:1"\nremote_agent = "d"\n'
         "retry = 3", "unknown field `retry`"),
        ('[[agents]]\nname = "demo"\nkind = "remote"\nurl = "http://h:1"\nremote_agent = "d"',
         "'demo' is used twice (or is a built-in)"),
        ('[[agents]]\nname = "x"\nkind = "remote"\nurl = "h:1"\nremote_agent = "d"',
         "url must be an http(s) URL"),
        ('[[agents]]\nname = "x"\nkind = "openai"\napi_key_env = "NOT_SET_ANYWHERE"',
         "'NOT_SET_ANYWHERE' (api_key_env) is not set"),
        ('[[agents]]\nname = "x y"\nkind = "openai"', "`$.agents[0].name`"),
        ('[[agents]]\nname = "x"\nkind = "openai"\nretries = -1', "`$.agents[0].retries`"),
    ],
)
def test_bad_file_is_a_clear_value_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_agents(path, {})
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read it"):
        load_agents(tmp_path / "nope.toml", {})


def test_flag_and_env_set_the_agents_file() -> None:
    assert load_settings(["--agents-file", "a.toml"], {}).agents_file == "a.toml"
    assert load_settings([], {"AGENTSTREAM_AGENTS_FILE": "b.toml"}).agents_file == "b.toml"
    assert load_settings([], {}).agents_file == ""


def test_python_m_app_refuses_a_bad_agents_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[agents]]\nname = "x"\nkind = "llm"')
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--agents-file", str(path), "--port", "0",
         "--db", str(tmp_path / "x.db")],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "invalid configuration" in proc.stderr and "Invalid value 'llm'" in proc.stderr


async def test_server_lists_file_agents_and_runs_the_remote_one(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test")
    far = await start_server(db=tmp_path / "far.db")
    path = write(tmp_path, GOOD.format(far=far.make_url("")))
    near: LiveServer = await start_server(db=tmp_path / "near.db", agents_file=str(path))
    async with http.get(url(near, "/v1/agents")) as resp:
        cards = {c["name"]: c for c in (await resp.json())["agents"]}
    assert sorted(cards) == ["demo", "far", "gpt"]
    assert cards["gpt"]["description"] == "A relayed chat model"
    assert cards["gpt"].get("can_request_input", False) is False  # omitted when false
    assert "input_schema" in cards["gpt"]
    assert cards["far"]["can_request_input"] is True
    events = await stream_run(http, near, {"agent": "far", "input": {"tokens": 3,
                                                                      "delay_ms": 1}})
    assert done_of(events)["status"] == "completed"
    async with http.post(url(near, "/v1/runs"), json={"agent": "nope"}) as resp:
        assert resp.status == 422
        assert (await resp.json())["error"]["code"] == "unknown_agent"
