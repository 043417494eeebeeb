"""``python -m app``: serve agentstream. ``--help`` lists every flag and its env variable."""

from __future__ import annotations

import sys

import structlog
from aiohttp import web

from app.config import load_settings
from app.logging import configure


def main(argv: list[str] | None = None) -> int:
    from app.server import create_app

    try:
        settings = load_settings(argv)
        app = create_app(settings)
    except ValueError as exc:
        print(f"agentstream: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_format, settings.log_level)
    log = structlog.get_logger("app")
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening_beyond_loopback", host=settings.host,
                    hint="no authentication is configured")
    log.info("starting", host=settings.host, port=settings.port, db=settings.db)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.shutdown_grace,
        handle_signals=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
