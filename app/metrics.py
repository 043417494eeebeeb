"""Prometheus metrics (prometheus-client: the standard exposition format, no hand-rolling).

Counters are updated where things happen; gauges that describe current state (queue depth,
lag, pending inputs, active runs) are refreshed from the live objects at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)


class Tally(Collector):
    """A labelled counter moved with a plain ``+=`` on a dict: for the fan-out's hot path,
    where prometheus-client's ``Counter.inc`` (a lock and a label lookup per call) profiled
    at ~9 % of fan-out CPU. Read at scrape time; the exposition is a normal counter."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.counts: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in sorted(self.counts.items()):
            family.add_metric([value], count)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=[self.label])


CONNECTIONS = Gauge(
    "agentstream_connections", "Open streaming connections", ["transport"], registry=REGISTRY
)
PUBLISHED = Counter(
    "agentstream_events_published", "Events committed and published", registry=REGISTRY
)
# ``DELIVERED.counts[transport] += n``: see ``Tally``.
DELIVERED = Tally("agentstream_events_delivered", "Event frames written to clients", "transport")
REGISTRY.register(DELIVERED)
CATCHUPS = Counter(
    "agentstream_sink_catchups", "Sinks that overflowed their queue and caught up from the store",
    ["transport"], registry=REGISTRY,
)
MERGED = Counter(
    "agentstream_chunks_merged", "Chunk events folded into another frame while catching up",
    ["transport"], registry=REGISTRY,
)
PEERS_DROPPED = Counter(
    "agentstream_peers_dropped", "Connections closed by policy", ["transport", "reason"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "agentstream_sink_queue_events", "Events queued in sinks", ["transport"], registry=REGISTRY
)
LAGGING = Gauge(
    "agentstream_sink_lagging_subscriptions", "Subscriptions reading from the store",
    ["transport"], registry=REGISTRY,
)
FANOUT_SECONDS = Histogram(
    "agentstream_fanout_seconds",
    "From a commit's publish to the end of its fan-out (parked subscribers written, busy ones "
    "queued), observed once per hub flush",
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
STORE_BATCH_OPS = Histogram(
    "agentstream_store_batch_ops", "Operations per committed store batch",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000), registry=REGISTRY,
)
STORE_BATCH_SECONDS = Histogram(
    "agentstream_store_batch_seconds", "Time to commit one store batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0), registry=REGISTRY,
)
STORE_PENDING = Gauge(
    "agentstream_store_pending_ops", "Operations queued for the store writer", registry=REGISTRY
)
RUNS_ENDED = Counter(
    "agentstream_runs_ended", "Runs that ended, by final status", ["status"], registry=REGISTRY
)
RUNS_ACTIVE = Gauge(
    "agentstream_runs_active", "Runs in progress, by status", ["status"], registry=REGISTRY
)
INPUT_PENDING = Gauge(
    "agentstream_input_requests_pending", "require_user_input requests awaiting an answer",
    registry=REGISTRY,
)
STORE_HEALTHY = Gauge(
    "agentstream_store_healthy", "1 while the store's last batch committed, 0 while failing",
    registry=REGISTRY,
)
STORE_FAILING_SECONDS = Gauge(
    "agentstream_store_failing_seconds", "How long the store has been failing (0: healthy)",
    registry=REGISTRY,
)
STORE_REJECTED = Gauge(
    "agentstream_store_rejected_units", "Units the database refused for good (since start)",
    registry=REGISTRY,
)
FAULTS_ENABLED = Gauge(
    "agentstream_faults_enabled", "1 when AGENTSTREAM_FAULTS injects store faults (tests only)",
    registry=REGISTRY,
)
LIMITED = Counter(
    "agentstream_requests_limited", "Requests refused by a limit", ["limit"], registry=REGISTRY
)


def observe_store_batch(ops: int, seconds: float) -> None:
    STORE_BATCH_OPS.observe(ops)
    STORE_BATCH_SECONDS.observe(seconds)
