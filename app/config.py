"""One settings Struct, read from flags and environment (``AGENTSTREAM_<FLAG>``), validated
at start. argparse is enough for a flat flag list; every flag doubles as an env variable.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from app.sinks.policy import SinkPolicy

ENV_PREFIX = "AGENTSTREAM_"


class Settings(msgspec.Struct, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    db: str = "agentstream.db"
    # auto: human-readable when stderr is a terminal, JSON lines otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"
    # The asyncio event loop: uvloop (libuv; ~20 % less server CPU per event in the
    # many-runs bench) when installed, else the standard one; ``asyncio`` forces the latter.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    # Seconds a require_user_input waits when the agent gave no deadline.
    input_timeout: float = 300.0
    # Longest a run may take before it ends ``failed {run_timeout}``.
    run_timeout: float = 3600.0
    # Seconds given to open streams and runs on SIGTERM before the process exits.
    shutdown_grace: float = 10.0
    # Bytes allowed in one HTTP request body.
    max_body: int = 1024 * 1024
    # Bytes allowed in one WebSocket message.
    max_ws_message: int = 1024 * 1024
    # Store batching: operations per transaction, producer pause/resume marks. The cap is
    # the high-water mark: once a backlog exists the writer commits all of it at once, so
    # commit overhead and subscriber writes are paid per backlog, not per 1-2 events of
    # each of hundreds of interleaved runs (P7: 2,000 capped 1,000 runs at 0.40x the floor).
    store_batch: int = 20_000
    store_high_water: int = 20_000
    store_low_water: int = 5_000
    # Seconds the store may fail (disk full, read-only, I/O errors) before open runs end
    # ``failed {store_unavailable}``; new runs get 503 from the first failure.
    store_fail_timeout: float = 10.0
    # Seconds a start, answer or cancel waits for its events to commit before a 503.
    ack_timeout: float = 10.0
    # Finished conversations idle longer than this are deleted (0: keep forever).
    retention: float = 0.0
    retention_sweep: float = 60.0
    # Idle conversations kept in memory (seq counters); beyond it they reload from the store.
    max_conversations: int = 100_000
    # Bytes of recently published events kept in memory for catch-ups (0: always the store).
    replay_cache_bytes: int = 64 * 1024 * 1024
    # Access control: none (local use), token (static API keys) or jwt (HS256/RS256).
    auth: Literal["none", "token", "jwt"] = "none"
    api_keys: str = ""
    api_keys_file: str = ""
    jwt_secret: str = ""
    jwt_public_key_file: str = ""
    jwt_audience: str = ""
    stream_token_secret: str = ""
    stream_token_ttl: float = 300.0
    # Comma-separated allowed origins for browsers on other origins (empty: no CORS).
    cors_origins: str = ""
    cors_credentials: bool = False
    # Limits (0: unlimited).
    max_subscriptions: int = 1000
    max_connections_per_user: int = 0
    runs_per_minute: int = 0
    # TOML file of extra agents (openai relays, remote agents); empty: built-ins only.
    agents_file: str = ""
    # Shortest interval a recurring schedule may have, in seconds.
    schedule_min_interval: float = 1.0
    # Serve the demo page at ``/`` (the client module under /client/ is always served).
    demo_page: bool = True
    # Webhooks (on with a secret): the deployment's URL (a run may name its own), the HMAC
    # secret, the hosts deliveries may go to (empty: any public host), private addresses.
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_allow_hosts: str = ""
    webhook_allow_private: bool = False
    webhook_max_attempts: int = 8
    # Cluster mode (README, Running a cluster): PostgreSQL is the truth, Redis the bus.
    # Both or neither; with neither, the SQLite file above and one process.
    store: str = ""
    bus: str = ""
    # Processes sharing the port (SO_REUSEPORT); more than one needs store and bus.
    workers: int = 1
    # Seconds a node's lease lasts without a heartbeat before a survivor takes over.
    lease_seconds: float = 10.0
    # Prefix of the bus channels: deployments sharing one Redis use different names.
    cluster_name: str = "agentstream"
    policy: SinkPolicy = msgspec.field(default_factory=SinkPolicy)

    @property
    def clustered(self) -> bool:
        return bool(self.store)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0..65535")
        for name in ("input_timeout", "run_timeout", "shutdown_grace", "retention_sweep",
                     "schedule_min_interval", "store_fail_timeout", "ack_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_conversations < 1:
            raise ValueError("max_conversations must be >= 1")
        if self.replay_cache_bytes < 0:
            raise ValueError("replay_cache_bytes must be >= 0")
        if self.retention < 0:
            raise ValueError("retention must be >= 0")
        if self.max_body < 1024 or self.max_ws_message < 1024:
            raise ValueError("max_body and max_ws_message must be >= 1024")
        if not 0 < self.store_low_water < self.store_high_water:
            raise ValueError("need 0 < store_low_water < store_high_water")
        self.policy.validate()
        if self.stream_token_ttl <= 0:
            raise ValueError("stream_token_ttl must be > 0")
        for name in ("max_subscriptions", "max_connections_per_user", "runs_per_minute"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.webhook_max_attempts < 1:
            raise ValueError("webhook_max_attempts must be >= 1")
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("webhook_url needs webhook_secret (deliveries are signed)")
        if self.cors_credentials and "*" in self.cors_origin_list:
            raise ValueError("cors_origins '*' cannot be combined with cors_credentials")
        self._validate_cluster()
        if self.store_batch < 1:
            raise ValueError("store_batch must be >= 1")
        # No tie between store_batch and queue_events: a committed batch within a sink's
        # queue bound reaches a parked (keeping-up) sink as one direct write; a larger one
        # overflows it (sinks/delivery.py ``SendQueue.fits``), and the sink catches up page
        # by page from the replay cache or the store, so a stalled reader never holds more
        # than its bound. The hub groups what one flush hands a sink per conversation.

    def _validate_cluster(self) -> None:
        if self.store and not self.store.startswith(("postgresql://", "postgres://")):
            raise ValueError("store must be a postgresql:// URL (the SQLite file is --db)")
        if self.bus and not self.bus.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("bus must be a redis:// URL")
        if bool(self.store) != bool(self.bus):
            raise ValueError("store and bus go together: a PostgreSQL store needs a Redis "
                             "bus (and the other way round)")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.workers > 1 and not self.clustered:
            raise ValueError("workers > 1 needs --store postgresql://... and --bus redis://...")
        if not 1.0 <= self.lease_seconds <= 300.0:
            raise ValueError("lease_seconds must be within 1..300")
        if not self.cluster_name or ":" in self.cluster_name:
            raise ValueError("cluster_name must be non-empty, without ':'")


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean")


# flag name -> (help, parser); policy fields are flattened as top-level flags.
_FLAGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "host": ("interface to bind", str),
    "port": ("TCP port", int),
    "db": ("SQLite file (':memory:' for none)", str),
    "log_format": ("auto (console on a terminal, else json), json or console", str),
    "log_level": ("debug, info, warning, error", str),
    "event_loop": ("auto (uvloop when installed), uvloop or asyncio", str),
    "input_timeout": ("default seconds a require_user_input waits", float),
    "run_timeout": ("seconds before a run fails with run_timeout", float),
    "shutdown_grace": ("seconds to drain on SIGTERM", float),
    "max_body": ("max HTTP request body bytes", int),
    "max_ws_message": ("max WebSocket message bytes", int),
    "store_batch": ("max operations per store transaction", int),
    "store_high_water": ("pending store ops at which producers pause", int),
    "store_low_water": ("pending store ops at which producers resume", int),
    "store_fail_timeout": ("seconds the store may fail before open runs end failed", float),
    "ack_timeout": ("seconds a start/answer/cancel waits for its commit before 503", float),
    "retention": ("seconds a finished conversation is kept (0: forever)", float),
    "retention_sweep": ("seconds between retention sweeps", float),
    "max_conversations": ("idle conversations kept in memory", int),
    "replay_cache_bytes": ("bytes of recent events kept for catch-ups (0: none)", int),
    "agents_file": ("TOML file of extra agents (kind openai or remote)", str),
    "schedule_min_interval": ("shortest interval_seconds a schedule may have", float),
    "demo_page": ("serve the demo page at / (true/false)", _parse_bool),
    "heartbeat": ("seconds between SSE pings / WebSocket pings", float),
    "queue_events": ("per-connection queue bound, events", int),
    "queue_bytes": ("per-connection queue bound, bytes", int),
    "write_timeout": ("seconds a write may take before the peer is dropped", float),
    "idle_timeout": ("close connections idle this long (0: never)", float),
    "max_lifetime": ("close streams after this long with a retry hint (0: never)", float),
    "retry_ms": ("SSE retry hint in ms", int),
    "catchup_page": ("events per store read while catching up", int),
    "compression": ("gzip SSE / WebSocket permessage-deflate when the client asks (true/false)",
                    _parse_bool),
    "auth": ("none, token or jwt", str),
    "api_keys": ("API keys as 'key=user,key2=user2 admin'", str),
    "api_keys_file": ("file of '<key> <user> [admin]' lines", str),
    "jwt_secret": ("HS256 secret (auth=jwt)", str),
    "jwt_public_key_file": ("RS256 public key PEM file (auth=jwt)", str),
    "jwt_audience": ("required JWT audience (optional)", str),
    "stream_token_secret": ("secret signing EventSource stream tokens", str),
    "stream_token_ttl": ("seconds a stream token lives", float),
    "cors_origins": ("comma-separated allowed browser origins", str),
    "cors_credentials": ("allow credentials cross-origin (true/false)", _parse_bool),
    "max_subscriptions": ("subscriptions per WebSocket", int),
    "max_connections_per_user": ("concurrent streams per user (0: unlimited)", int),
    "runs_per_minute": ("runs a user may start per minute (0: unlimited)", int),
    "webhook_url": ("URL POSTed on every run's done / require_user_input", str),
    "webhook_secret": ("HMAC-SHA256 secret signing webhooks (empty: webhooks off)", str),
    "webhook_allow_hosts": ("comma-separated hosts webhooks may go to (empty: any)", str),
    "webhook_allow_private": ("allow webhooks to private/loopback addresses", _parse_bool),
    "webhook_max_attempts": ("delivery attempts before a webhook is failed", int),
    "store": ("cluster mode: postgresql:// URL of the shared store", str),
    "bus": ("cluster mode: redis:// URL of the bus between nodes", str),
    "workers": ("processes sharing the port (cluster mode only)", int),
    "lease_seconds": ("cluster mode: seconds before a silent node is taken over", float),
    "cluster_name": ("cluster mode: prefix of the bus channels", str),
}
_SECRET_FLAGS = frozenset(
    {"api_keys", "jwt_secret", "stream_token_secret", "webhook_secret", "store", "bus"}
)

_POLICY_FIELDS = set(SinkPolicy.__struct_fields__)


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="agentstream: stream AI-agent runs over SSE and WebSocket. "
        f"Every flag can also be set as {ENV_PREFIX}<FLAG> in the environment.",
    )
    defaults = Settings()
    for flag, (text, typ) in _FLAGS.items():
        default = getattr(defaults.policy if flag in _POLICY_FIELDS else defaults, flag)
        parser.add_argument(
            "--" + flag.replace("_", "-"),
            dest=flag,
            type=typ,
            default=None,
            help=f"{text} (env {_env_name(flag)}"
            + ("" if flag in _SECRET_FLAGS else f", default {default!r}") + ")",
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags win over environment, environment over defaults. Raises ValueError if invalid."""
    env = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    top: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    for flag, (_, typ) in _FLAGS.items():
        value = args.get(flag)
        if value is None and _env_name(flag) in env:
            raw = env[_env_name(flag)]
            try:
                value = typ(raw)
            except ValueError:
                raise ValueError(
                    f"{_env_name(flag)}={raw!r} is not a valid {typ.__name__}"
                ) from None
        if value is not None:
            (policy if flag in _POLICY_FIELDS else top)[flag] = value
    try:
        settings = msgspec.convert({**top, "policy": policy}, Settings)
        settings.validate()
    except (msgspec.ValidationError, ValueError) as exc:
        raise ValueError(flag_names(str(exc))) from None
    return settings


_PATH = re.compile(r"`\$\.(?:policy\.)?([a-z_]+)`")
_FIELD = re.compile(r"\b(" + "|".join(sorted(_FLAGS, key=len, reverse=True)) + r")\b")


def flag_names(message: str) -> str:
    """A settings error as a user reads it: ``--log-format``, not ``$.log_format``."""
    message = _PATH.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)
    return _FIELD.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)
