"""``GET /metrics``: Prometheus text, with state gauges refreshed at scrape time."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import metrics
from app.state import STATE

routes = web.RouteTableDef()


@routes.get("/metrics")
async def scrape(request: web.Request) -> web.Response:
    st = request.app[STATE]
    depth = {"sse": 0, "ws": 0}
    lagging = {"sse": 0, "ws": 0}
    for sink in st.sinks:
        depth[sink.transport] += sink.delivery.queue.events
        lagging[sink.transport] += len(sink.delivery.lagging())
    for transport in depth:
        metrics.QUEUE_DEPTH.labels(transport).set(depth[transport])
        metrics.LAGGING.labels(transport).set(lagging[transport])
    metrics.STORE_PENDING.set(st.store.pending)
    writer = st.store.writer
    metrics.STORE_HEALTHY.set(1 if writer.healthy else 0)
    metrics.STORE_FAILING_SECONDS.set(writer.failing_for())
    metrics.STORE_REJECTED.set(writer.rejected_units)
    metrics.FAULTS_ENABLED.set(1 if writer.faults.enabled else 0)
    st.engine.refresh_gauges()
    return web.Response(
        body=generate_latest(metrics.REGISTRY),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )
