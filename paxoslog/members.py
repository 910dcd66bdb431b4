"""The cluster's live membership as the CLI sees it: which API endpoints the members have
now (not what a conf file said when it was written), and whether each is healthy.

``live_endpoints`` asks any reachable endpoint for ``GET /api/v1/cluster/members`` and maps
every current member (joined later ones included, removed ones left out) to its API URL;
when no endpoint answers it falls back to the endpoints given (the conf's, or
``--endpoints``), so the commands still say which nodes are down.  ``check_health`` asks
each endpoint's ``GET /health?ready=1`` once, without retries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Member", "live_endpoints", "check_health", "Health"]


@dataclass(frozen=True)
class Member:
    endpoint: str                 # http(s)://host:port
    node_id: int | None           # None: only an endpoint was given, nobody answered


@dataclass(frozen=True)
class Health:
    endpoint: str
    node_id: int | None
    healthy: bool
    took_s: float
    error: str | None
    body: dict | None

    def to_json(self) -> dict:
        return {"endpoint": self.endpoint, "node_id": self.node_id, "healthy": self.healthy,
                "took_s": round(self.took_s, 4), "error": self.error,
                "version": (self.body or {}).get("version"),
                "role": (self.body or {}).get("role"),
                "leader": (self.body or {}).get("leader"),
                "term": (self.body or {}).get("term")}


def live_endpoints(client, given: dict[str, int | None],
                   timeout_s: float = 2.0) -> tuple[list[Member], bool]:
    """(members, live): ``live`` is False when no endpoint answered and ``given`` is used."""
    from paxoslog.client import ClientError
    scheme = urlsplit(next(iter(given), "http://x")).scheme or "http"
    for endpoint in given:
        try:
            body = client.members_of(endpoint, timeout=timeout_s)
        except (OSError, ClientError, ValueError):
            continue
        members = []
        for node_id, addresses in sorted(body.get("nodes", {}).items(),
                                         key=lambda item: int(item[0])):
            api = addresses.get("api")
            if api:
                members.append(Member(f"{scheme}://{api}", int(node_id)))
        if members:
            return members, True
    return [Member(endpoint, node_id) for endpoint, node_id in given.items()], False


def check_health(client, members: list[Member], timeout_s: float = 2.0,
                 clock=time.monotonic) -> list[Health]:
    """One ``/health?ready=1`` per member: healthy = answered 200 (running, not failed,
    knows a leader, not stopping)."""
    out = []
    for member in members:
        started = clock()
        try:
            status, body = client.health_of(member.endpoint, timeout=timeout_s)
        except OSError as exc:
            out.append(Health(member.endpoint, member.node_id, False, clock() - started,
                              f"unreachable: {exc.strerror or exc}", None))
            continue
        took = clock() - started
        body = body if isinstance(body, dict) else {}
        node_id = body.get("node_id", member.node_id)
        if status == 200:
            out.append(Health(member.endpoint, node_id, True, took, None, body))
        else:
            why = ("no leader known" if body.get("leader") is None else
                   f"status {body.get('status')}" if body.get("status") != "ok" else
                   "stopping")
            out.append(Health(member.endpoint, node_id, False, took,
                              f"unhealthy ({status}): {why}", body))
    return out
