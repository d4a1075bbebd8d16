"""Serve's metrics of requests (gen_jobs.core.metrics.serve), counted and timed where every answer passes.

    used by serving.http (MeasuredAnswers, the gateway app's outermost middleware) and serving.app
    (Gateway.model names the request's model; queue refusals)

MeasuredAnswers starts a record per request before anything else runs; the route names its
model into it (`name_model`), and the middleware counts and times the answer when its status
goes out, refusals of the other middleware (401, 411, 413) included. (A ContextVar holding a
mutable record: the route may run in a task of its own, which sees the record but could not
hand a new value back.)
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from starlette.routing import Match, Router

from gen_jobs.core import metrics

_REQUEST: ContextVar[dict | None] = ContextVar("raygen_request", default=None)


def start() -> dict:
    """A new request's record (its model "" until a route names one)."""
    record = {"model": ""}
    _REQUEST.set(record)
    return record


def name_model(name: str) -> None:
    """The current request asks for model `name` (a served one)."""
    record = _REQUEST.get()
    if record is not None:
        record["model"] = name


def answered(record: dict, route: str, status: int, seconds: float) -> None:
    served = metrics.serve()
    served.requests.inc(1, {"model": record["model"], "route": route, "status": str(status)})
    served.request_seconds.observe(seconds, {"model": record["model"], "route": route})


def refused_for_a_full_queue(model: str) -> None:
    metrics.serve().queue_refusals.inc(1, {"model": model})


def route_of(router: Router, scope: dict) -> str:
    """The route a request matched, as declared (`/v1/models/{name}`): a bounded label; "unmatched" for any other."""
    for route in router.routes:
        if route.matches(scope)[0] == Match.FULL:
            return route.path
    return "unmatched"


class MeasuredAnswers:
    """ASGI middleware: every HTTP answer counted and timed by model, route and status, when its status goes out."""

    def __init__(self, app, router: Router):
        self.app, self.router = app, router

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record, started = start(), time.perf_counter()

        async def measured(message) -> None:
            if message["type"] == "http.response.start":
                answered(record, route_of(self.router, scope), message["status"], time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, measured)
