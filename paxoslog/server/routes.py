"""The API's one routing table: every path and method, the ``Api`` method that serves it
and the role it needs.  api.py dispatches through it, access.py checks the roles,
openapi.py documents it (a test keeps the three equal)."""

from __future__ import annotations

from dataclasses import dataclass

from paxoslog.tokens import Role

__all__ = ["Route", "ROUTES", "SERVED_WHEN_REMOVED", "SM_PREFIX"]

SERVED_WHEN_REMOVED = frozenset({"/health", "/metrics", "/api/v1/cluster/status",
                                  "/api/v1/openapi.json"})
SM_PREFIX = "/api/v1/sm/"
@dataclass(frozen=True)
class Route:
    """One row of the API's table.  ``path`` may end in ``{name}`` (one path segment or
    more: the state machine's name); ``role``: what a request needs; ``read_role``: what
    a body that only reads needs on a route that also writes; ``param_roles``: a query
    parameter with a value that needs more (``status?hashes=1``: admin)."""

    path: str
    method: str
    handler: str
    role: Role
    summary: str
    read_role: Role | None = None
    param_roles: tuple[tuple[str, str, Role], ...] = ()

    @property
    def entry_role(self) -> Role:
        """The least a request needs to reach the handler."""
        return self.read_role if self.read_role is not None else self.role


ROUTES: tuple[Route, ...] = (
    Route("/api/v1/consensus/propose", "POST", "propose", Role.WRITE, "Write a key (kv)"),
    Route("/api/v1/consensus/query", "GET", "query", Role.READ, "Read a key or a prefix (kv)"),
    Route("/api/v1/consensus/batch", "POST", "batch", Role.WRITE,
          "Many writes as one log command, applied in order at one index"),
    Route("/api/v1/consensus/txn", "POST", "txn", Role.WRITE,
          "A transaction: compares, then one of two op lists, in one log entry"),
    Route("/api/v1/lease/grant", "POST", "lease_grant", Role.WRITE, "Grant a lease"),
    Route("/api/v1/lease/revoke", "POST", "lease_revoke", Role.WRITE,
          "Revoke a lease (its keys are deleted)"),
    Route("/api/v1/lease/keepalive", "POST", "lease_keepalive", Role.WRITE,
          "Renew a lease"),
    Route("/api/v1/lease/ttl", "GET", "lease_ttl", Role.READ,
          "A lease's remaining time (and keys)"),
    Route("/api/v1/ws", "GET", "websocket", Role.READ,
          "The WebSocket endpoint (an upgrade request); each request on it needs its "
          "route's role"),
    Route("/api/v1/cluster/status", "GET", "cluster_status", Role.READ,
          "This node's view of the cluster", param_roles=(("hashes", "1", Role.ADMIN),)),
    Route("/api/v1/cluster/members", "GET", "members", Role.READ,
          "Configuration, address book and cluster_members rows"),
    Route("/api/v1/cluster/add-node", "POST", "add_node", Role.ADMIN, "Add a node"),
    Route("/api/v1/cluster/remove-node", "POST", "remove_node", Role.ADMIN, "Remove a node"),
    Route("/api/v1/cluster/transfer-leader", "POST", "transfer_leader", Role.ADMIN,
          "Hand leadership to another voter"),
    Route("/api/v1/log/entries", "GET", "log_entries", Role.ADMIN,
          "Recently applied log entries (every client's session ids: admin only)"),
    Route(SM_PREFIX + "{name}", "POST", "state_machine_command", Role.WRITE,
          "A command for a state machine, or a read", read_role=Role.READ),
    Route(SM_PREFIX + "{name}", "GET", "state_machine_read", Role.READ,
          "A read of a state machine"),
    Route("/api/v1/cluster/overview", "GET", "cluster_overview", Role.READ,
          "Every member's status, metrics and recent events (the dashboard's data)"),
    Route("/api/v1/snapshot", "GET", "snapshot", Role.ADMIN,
          "A consistent backup of the whole replicated state, streamed"),
    Route("/api/v1/admin/reload", "POST", "reload", Role.ADMIN,
          "Re-read the conf file (as SIGHUP)"),
    Route("/dashboard", "GET", "dashboard_file", Role.NONE, "The live dashboard (HTML)"),
    Route("/dashboard/{file}", "GET", "dashboard_file", Role.NONE,
          "The dashboard's static files"),
    Route("/api/v1/openapi.json", "GET", "openapi", Role.NONE, "This API (OpenAPI 3.1)"),
    Route("/health", "GET", "health", Role.NONE, "Liveness and readiness"),
    Route("/metrics", "GET", "metrics", Role.READ, "Prometheus metrics"),
)
