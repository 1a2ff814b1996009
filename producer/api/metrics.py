"""The API's Prometheus metrics: requests counted and timed by route template (never by raw
path: ids and paths stay out of label values), and ``/metrics`` itself, which adds the queue
and job gauges read from Redis (:class:`ris.common.metrics.QueueCollector`). ``/metrics``
asks for the API's bearer token unless ``RIS_API_METRICS_PUBLIC`` is set."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ris.common.metrics import API, HTTP_REQUESTS, HTTP_SECONDS, QueueCollector
from ris.producer.api.deps import ProducerDep, SettingsDep
from ris.producer.api.security import bearer_matches, unauthorized

router = APIRouter()


class RequestMetrics:
    """Counts and times every HTTP request by the template of the route that answered it
    (``/api/jobs/{job_id}``); requests no route answered count as ``unmatched``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = _template(scope)
            method = scope["method"]
            HTTP_REQUESTS.labels(route, method, str(status[0])).inc()
            HTTP_SECONDS.labels(route, method).observe(time.perf_counter() - started)


def _template(scope: Scope) -> str:
    """The path template of the route that answered (``/api/jobs/{job_id}``), or
    ``unmatched``. A route inside an included router knows only its own part of the path
    (``/jobs/{job_id}``); the segments in front of it are the routers' fixed prefixes."""
    template = getattr(scope.get("route"), "path_format", None)
    if not template:
        return "unmatched"
    own = template.strip("/").split("/")
    path = scope["path"].strip("/").split("/")
    prefix = path[: max(0, len(path) - len(own))]
    return "/" + "/".join(p for p in (*prefix, *own) if p)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, settings: SettingsDep, producer: ProducerDep) -> Response:
    """Prometheus text format: this process's metrics, then the queue and job gauges."""
    if settings.api_token is not None and not settings.api_metrics_public:
        header = request.headers.get("authorization", "").encode()
        if not bearer_matches(header, settings.api_token.get_secret_value().encode()):
            raise unauthorized()
    gauges = CollectorRegistry()
    gauges.register(QueueCollector(producer.tracker.r, settings))
    body = generate_latest(API) + generate_latest(gauges)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
