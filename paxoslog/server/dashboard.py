"""``DashboardFiles``: the live dashboard every node serves at ``/dashboard``.

Static files shipped inside the package (``paxoslog/server/dashboard/``: one HTML page, one
script, one style sheet; no build step, nothing fetched from elsewhere), read once when the
node starts and served from memory.  Only the files listed here are served (no path is ever
joined from a request).  The page reads ``GET /api/v1/cluster/overview`` and
``GET /api/v1/log/entries`` of the node that served it, so it works against any node: when
a log tail on the node's WebSocket endpoint (``/api/v1/ws``, same origin: the policy's
``connect-src 'self'`` covers ws/wss) reports committed entries, and every second as a
heartbeat (the only source while the WebSocket is down).  See the script's data layer.
"""

from __future__ import annotations

import os

__all__ = ["DashboardFiles", "DASHBOARD_DIR"]

DASHBOARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
_TYPES = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "app.css": b"text/css; charset=utf-8",
}
# Everything the page needs comes from this node: scripts, styles, data.
_HEADERS = ((b"Cache-Control", b"no-cache"),
            (b"X-Content-Type-Options", b"nosniff"),
            (b"Content-Security-Policy",
             b"default-src 'self'; img-src 'self' data:; style-src 'self'; "
             b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'"))


class DashboardFiles:
    def __init__(self, directory: str = DASHBOARD_DIR) -> None:
        self.files: dict[str, bytes] = {}
        for name in _TYPES:
            with open(os.path.join(directory, name), "rb") as f:
                self.files[name] = f.read()

    def response(self, path: str) -> tuple | None:
        """(status, body, content type, headers) for a path under /dashboard, or None."""
        if path in ("/dashboard", "/dashboard/"):
            name = "index.html"
        else:
            name = path[len("/dashboard/"):]
        body = self.files.get(name)
        if body is None:
            return None
        return (200, body, _TYPES[name], _HEADERS)
