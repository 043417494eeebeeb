"""The layers' arrows point one way; this test keeps them so (a small AST check).

    api -> engine -> fanout / store -> protocol        (auth, sinks beside them)
    agentstream_client -> protocol                     (never app: a client of the wire)

Each rule names a package and the packages of ours it must not import (at any depth,
including under ``TYPE_CHECKING``: a type import is still a dependency to read).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "protocol": ("app",),
    "app.fanout": ("app.engine", "app.sinks", "app.api", "app.auth", "app.store", "app.server"),
    "app.store": ("app.engine", "app.fanout", "app.sinks", "app.api", "app.auth", "app.agents",
                  "app.server"),
    "app.engine": ("app.api", "app.sinks", "app.auth", "app.server", "app.schedules",
                   "app.webhooks", "app.cluster"),
    "app.bus": ("app.engine", "app.api", "app.sinks", "app.auth", "app.server", "app.cluster",
                "app.schedules"),
    "app.cluster": ("app.api", "app.sinks", "app.auth", "app.server"),
    "app.sinks": ("app.engine", "app.api", "app.auth", "app.server"),
    "app.auth": ("app.engine", "app.api", "app.sinks", "app.store", "app.server"),
    "app.agents": ("app.engine", "app.store", "app.api", "app.sinks", "app.server"),
    "app.errors": ("app.api", "aiohttp"),
    # Protocol views (issue 17) are pure mappings: no I/O, no engine, no transport.
    "app.compat": ("aiohttp", "asyncio", "app.engine", "app.api", "app.sinks", "app.fanout",
                   "app.store", "app.auth", "app.server", "app.agents"),
    # The client talks to the service over the wire only: the pure protocol, never app.
    "agentstream_client": ("app", "tests"),
    "app": ("agentstream_client",),
    # Webhooks: planned from store rows and events, delivered with aiohttp; the engine
    # reaches them only through the lifecycle's ``side_ops`` hook the server wires.
    "app.webhooks": ("app.engine", "app.api", "app.sinks", "app.auth", "app.server"),
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def violations() -> list[str]:
    out = []
    for path in sorted([*ROOT.glob("app/**/*.py"), *ROOT.glob("protocol/**/*.py"),
                        *ROOT.glob("agentstream_client/**/*.py")]):
        mod = module_name(path)
        for owner, banned in FORBIDDEN.items():
            if mod != owner and not mod.startswith(owner + "."):
                continue
            for imported in imports_of(path):
                for ban in banned:
                    if imported == ban or imported.startswith(ban + "."):
                        out.append(f"{mod} imports {imported} ({owner} must not use {ban})")
    return out


def test_layers_point_one_way() -> None:
    assert violations() == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The check itself can fail: a forbidden import is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from app.engine.engine import Engine\nimport app.api.http\n")
    assert imports_of(bad) == {"app.engine.engine", "app.api.http"}
