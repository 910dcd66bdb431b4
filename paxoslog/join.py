"""``paxoslog serve --join``: ask a running cluster to add this node, before it starts.

Blocking (the CLI calls it before the reactor runs): the node's members.json is written
from the answer (the cluster's bootstrap voters and address book) before its data
directory is created, so its log starts from the same initial configuration as every
member's and it never believes it is a voter before the log says so.
"""

from __future__ import annotations

from paxoslog.server.members_file import MembersFile, NodeAddresses

__all__ = ["join_cluster", "JoinError"]


class JoinError(Exception):
    """Joining failed: the message says why (for the CLI)."""


def join_cluster(config, node_id: int, endpoints: list[str], timeout: float = 60.0,
                 token: str | None = None) -> dict:
    """Ask a member (any of ``endpoints``) to add this node, then write members.json in its
    data directory.  Blocking (the CLI calls it before the reactor runs).  Idempotent: a
    node that crashed half way through joining asks again and gets the same answer.
    ``token``: an admin token, where the cluster requires tokens."""
    from paxoslog.client import ClientError, SyncClient
    me = config.node(node_id)
    members = MembersFile(me.data_dir)
    # "joining": the node itself asks, on an empty data directory (admin.py refuses it
    # for an id that already holds entries: that node lost its data).
    body = {"node_id": node_id, "peer": str(me.peer), "api": str(me.api), "joining": True}
    where = ", ".join(endpoints)
    cafile = config.tls.ca_file if config.tls is not None else None   # https join URLs
    with SyncClient(endpoints, timeout=timeout, attempt_timeout=min(10.0, timeout),
                    token=token, cafile=cafile) as client:
        try:
            # Check that we are joining the right cluster before asking to be added.
            _check_cluster(client.members(), config, where)
            info = client.request("POST", "/api/v1/cluster/add-node", body, write=True)
        except ClientError as exc:
            raise JoinError(f"cannot join through {where}: {exc}") from None
    _check_cluster(info, config, where)
    try:
        bootstrap = frozenset(int(n) for n in info["bootstrap_voters"])
        book = {int(n): NodeAddresses.from_json(a) for n, a in info["nodes"].items()}
        origin = info.get("origin")
        if origin is not None and not isinstance(origin, str):
            raise ValueError(f"origin {origin!r:.40} is not a string")
    except (KeyError, TypeError, ValueError) as exc:
        raise JoinError(f"unexpected answer to add-node: {exc}") from None
    if node_id in bootstrap:
        raise JoinError(f"node {node_id} is one of the cluster's initial voters: it starts "
                        "without --join")
    book[node_id] = NodeAddresses(me.peer, me.api)
    members.write(config.name, bootstrap, book, origin=origin)
    return info


def _check_cluster(info: dict, config, where: str) -> None:
    if info.get("cluster") != config.name:
        raise JoinError(f"the cluster at {where} is {info.get('cluster')!r}; "
                        f"{config.path} says cluster = {config.name!r}")
    if info.get("protocol") != config.protocol:
        raise JoinError(f"the cluster at {where} runs {info.get('protocol')!r}; "
                        f"{config.path} says protocol = {config.protocol!r}")
