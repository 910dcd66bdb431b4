"""``HttpStats``: what the HTTP server tells about each answered request: a latency
histogram per method and route (``paxoslog_http_request_duration_seconds``), and a line in
the access log when one is configured (``paxoslog serve --access-log FILE``).

Routes, not paths, label the histogram: ``/api/v1/sm/{name}`` for every state machine, and
``other`` for anything the API does not know (a scanner walking 10,000 random paths must not
create 10,000 series).
"""

from __future__ import annotations

import time
from typing import Callable

from .metrics import Histogram

__all__ = ["HttpStats", "HTTP_BUCKETS"]

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0)
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))


class HttpStats:
    """``route_of(path)``: the API's route for a path (api.Api.route_of); ``access``: an
    ``AccessLog`` or None; ``wall()``: the wall clock (seconds) for access-log lines."""

    def __init__(self, route_of: Callable[[str], str], access=None,
                 wall: Callable[[], float] = time.time) -> None:
        self.route_of = route_of
        self.access = access
        self.wall = wall
        self.latency: dict[tuple[str, str], Histogram] = {}

    def responded(self, host: str | None, method: str, path: str, status: int, length: int,
                  seconds: float) -> None:
        key = (method if method in _METHODS else "other", self.route_of(path))
        histogram = self.latency.get(key)
        if histogram is None:
            histogram = self.latency[key] = Histogram(HTTP_BUCKETS)
        histogram.observe(seconds)
        if self.access is not None:
            self.access.record(host, method, path, status, length, seconds, self.wall())
