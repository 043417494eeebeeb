"""Agents from a TOML file (``--agents-file``), added to the built-ins at start-up.

```toml
[[agents]]
name = "gpt"
kind = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"   # the key itself never sits in the file
description = "OpenAI via the relay"

[[agents]]
name = "far-demo"
kind = "remote"
url = "http://10.0.0.7:8080"
remote_agent = "demo"
```

Every problem (unreadable file, bad TOML, unknown kind or field, duplicate name, unset key
variable) is a ``ValueError`` naming the file and the agent, raised before the server
listens, so a typo never becomes a run that fails later.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from app.agents.base import Agent
from app.agents.demo import DemoAgent
from app.agents.openai_relay import OpenAIOptions, OpenAIRelayAgent
from app.agents.registry import AgentRegistry
from app.agents.remote import RemoteAgent
from app.agents.remote_http import RemoteOptions
from protocol.messages import AgentName


class OpenAIEntry(OpenAIOptions, tag="openai", tag_field="kind", kw_only=True,
                  forbid_unknown_fields=True):
    name: AgentName
    description: str = ""
    # Name of the environment variable holding the key (none: send no Authorization).
    api_key_env: str | None = None


class RemoteEntry(RemoteOptions, tag="remote", tag_field="kind", kw_only=True,
                  forbid_unknown_fields=True):
    name: AgentName
    description: str = ""


class AgentsFile(msgspec.Struct, forbid_unknown_fields=True):
    agents: list[OpenAIEntry | RemoteEntry] = msgspec.field(default_factory=list)


def builtin_agents() -> list[Agent]:
    return [DemoAgent()]


def load_agents(path: str | Path, environ: Mapping[str, str] | None = None) -> list[Agent]:
    """The file's agents, validated; raises ValueError saying what is wrong and where."""
    env = os.environ if environ is None else environ
    where = f"agents file {str(path)!r}"
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not valid TOML ({exc})") from None
    try:
        parsed = msgspec.convert(data, AgentsFile)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{where}: {exc}") from None
    taken = {a.name for a in builtin_agents()}
    agents: list[Agent] = []
    for entry in parsed.agents:
        if entry.name in taken:
            raise ValueError(f"{where}: agent name {entry.name!r} is used twice "
                             "(or is a built-in)")
        taken.add(entry.name)
        agents.append(_build(entry, env, f"{where}, agent {entry.name!r}"))
    return agents


def _build(entry: OpenAIEntry | RemoteEntry, env: Mapping[str, str], where: str) -> Agent:
    if isinstance(entry, RemoteEntry):
        _check_url(entry.url, "url", where)
        return RemoteAgent(entry.name, entry, description=entry.description)
    if entry.base_url is not None:
        _check_url(entry.base_url, "base_url", where)
    api_key = None
    if entry.api_key_env is not None:
        if entry.api_key_env not in env:
            raise ValueError(f"{where}: environment variable {entry.api_key_env!r} "
                             "(api_key_env) is not set")
        api_key = env[entry.api_key_env]
    return OpenAIRelayAgent(entry.name, entry, api_key=api_key, description=entry.description)


def _check_url(url: str, field: str, where: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{where}: {field} must be an http(s) URL, got {url!r}")


def registry_from_file(path: str, environ: Mapping[str, str] | None = None) -> AgentRegistry:
    """Built-ins, plus the file's agents when a path is configured."""
    extra = load_agents(path, environ) if path else []
    return AgentRegistry([*builtin_agents(), *extra])
