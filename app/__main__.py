"""``python -m app``: serve agentstream. ``--help`` lists every flag and its env variable.

Start-up order, each step failing with one line and its own exit code, having written
nothing: configuration (2), the listening socket (3: address in use), the store's
exclusive lock (4: another process serves this database), opening the database (5: cannot
open or create it, e.g. a read-only or missing directory). Only then does recovery write.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys

import structlog
from aiohttp import web

from app.cluster.workers import REUSE_PORT_ENV, supervise
from app.config import Settings, load_settings
from app.logging import configure
from app.state import STATE
from app.store.base import StoreLocked, StoreUnavailable

EXIT_CONFIG = 2
EXIT_ADDRESS_IN_USE = 3
EXIT_STORE_LOCKED = 4
EXIT_STORE_UNAVAILABLE = 5


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket, bound before anything touches the database. ``reuse_port``:
    one of ``--workers`` processes sharing the port (the kernel balances connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    """Each start-up step in order (module docstring); a failed step is its exit code."""
    from app.server import create_app

    try:
        settings = load_settings(argv)
        if settings.workers > 1:
            if settings.port == 0:
                raise ValueError("workers > 1 needs a fixed --port to share")
            return supervise(sys.argv[1:] if argv is None else argv, settings.workers)
        app = create_app(settings)
    except ValueError as exc:
        print(f"agentstream: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.log_format, settings.log_level)
    sock = _listen(settings)
    if isinstance(sock, int):
        return sock
    try:
        app[STATE].store.take_lock()
    except (StoreLocked, StoreUnavailable) as exc:
        sock.close()
        return _store_failed(exc)
    return _serve(app, settings, sock)


def _listen(settings: Settings) -> socket.socket | int:
    """The bound socket, or the exit code when the address is taken."""
    try:
        sock = bind(settings.host, settings.port,
                    reuse_port=os.environ.get(REUSE_PORT_ENV) == "1" and settings.clustered)
    except OSError as exc:
        print(f"agentstream: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_ADDRESS_IN_USE
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        structlog.get_logger("app").warning("listening_beyond_loopback", host=settings.host,
                                            hint="no authentication is configured")
    return sock


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """The loop to serve on. uvloop (libuv, a maintained drop-in that aiohttp supports) cuts
    the loop's own share of each event (call_soon, socket writes, timers): the many-runs
    bench measured ~20 % less CPU per event. ``auto`` falls back to the standard loop where
    uvloop is not installed (it has no Windows build); ``uvloop`` insists on it."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _serve(app: web.Application, settings: Settings, sock: socket.socket) -> int:
    """Serve on the bound socket until a signal; opening the store (exit 5) happens in the
    app's startup, after the lock."""
    log = structlog.get_logger("app")
    port = sock.getsockname()[1]
    address = f"http://{settings.host}:{port}"
    loop = new_event_loop(settings.event_loop)
    log.info(f"listening on {address}", url=address, db=settings.db,
             event_loop=type(loop).__module__.split(".")[0])
    # Everything made so far (modules, the app, its routes) lives as long as the process:
    # out of the cyclic collector's sight, a full collection walks only what runs create.
    gc.freeze()
    try:
        web.run_app(
            app,
            sock=sock,
            access_log=None,
            print=None,
            shutdown_timeout=settings.shutdown_grace,
            handle_signals=True,
            loop=loop,
        )
    except (StoreLocked, StoreUnavailable) as exc:
        return _store_failed(exc)
    return 0


def _store_failed(exc: StoreLocked | StoreUnavailable) -> int:
    print(f"agentstream: {exc}", file=sys.stderr)
    return EXIT_STORE_LOCKED if isinstance(exc, StoreLocked) else EXIT_STORE_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
