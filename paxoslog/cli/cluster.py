"""Commands about the cluster itself: membership (``cluster add-node``,
``remove-node``, ``transfer-leader``, ``members``), ``status``, ``endpoint health`` and
``reload``."""

from __future__ import annotations

import json
import sys

from .common import (EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, cacert_of, client_of,
                     endpoint_ids, endpoints_of, print_result, report_error, resolve_token,
                     run_client)
from .serve import cmd_cluster_up


def register(commands, client, session, stream) -> None:
    """Add this group's commands to the ``paxoslog`` parser."""
    cluster = commands.add_parser("cluster", help="run a local cluster")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND",
                                              required=True)
    up = cluster_commands.add_parser("up", help="start every node of a local conf; Ctrl-C "
                                                "stops them all")
    up.add_argument("conf", help="cluster conf file (every node on this machine)")
    up.add_argument("--no-color", action="store_true", help="plain log prefixes")
    up.add_argument("--log-level", default="info", choices=("debug", "info", "warn", "error"))
    up.add_argument("--wait", type=float, default=30.0,
                    help="seconds to wait for a leader (default 30)")
    up.set_defaults(func=cmd_cluster_up)

    add = cluster_commands.add_parser(
        "add-node", parents=[client], help="add a node (as a learner, promoted once caught up)",
        description="Add node ID, reachable by its peers at --peer, to the running cluster.  "
                    "It joins as a learner, receives the log or a snapshot, and the leader "
                    "makes it a voter once it has caught up (joint consensus).  Start the "
                    "node itself with `paxoslog serve --join URL` (which also calls this).")
    add.add_argument("node_id", type=int, metavar="ID")
    add.add_argument("--peer", required=True, metavar="HOST:PORT",
                     help="the new node's peer address")
    add.add_argument("--api", default=None, metavar="HOST:PORT",
                     help="the new node's API address")
    add.add_argument("--no-wait", action="store_true",
                     help="return once it is a learner (default: wait until it is a voter)")
    add.set_defaults(func=cmd_cluster_add_node)
    remove = cluster_commands.add_parser(
        "remove-node", parents=[client], help="remove a node (the leader hands over first)")
    remove.add_argument("node_id", type=int, metavar="ID")
    remove.set_defaults(func=cmd_cluster_remove_node)
    transfer = cluster_commands.add_parser("transfer-leader", parents=[client],
                                           help="hand leadership to node ID (default: the "
                                                "most up-to-date voter)")
    transfer.add_argument("node_id", type=int, nargs="?", default=None, metavar="ID")
    transfer.set_defaults(func=cmd_cluster_transfer_leader)
    members = cluster_commands.add_parser("members", parents=[client],
                                          help="configuration and cluster_members table")
    members.set_defaults(func=cmd_cluster_members)

    status = commands.add_parser("status", parents=[client], help="one row per node")
    status.set_defaults(func=cmd_status)

    endpoint = commands.add_parser("endpoint", help="per-endpoint checks")
    endpoint_commands = endpoint.add_subparsers(dest="endpoint_command", metavar="COMMAND",
                                                required=True)
    health = endpoint_commands.add_parser(
        "health", parents=[client], help="GET /health of every live member",
        description="Ask every current member (the live membership, from any endpoint that "
                    "answers; else the given endpoints) whether it is healthy: running, "
                    "not failed, and knowing a leader.  Exit 0 when all are, 4 otherwise.")
    health.set_defaults(func=cmd_endpoint_health)

    reload = commands.add_parser(
        "reload", parents=[client], help="have nodes re-read the conf file (as SIGHUP)",
        description="POST /api/v1/admin/reload on every endpoint: each node re-reads its conf "
                    "file and applies what can change without a restart ([log] level); "
                    "what needs a restart is listed.")
    reload.set_defaults(func=cmd_reload)


def cmd_status(args) -> int:
    """One row per current member (the live membership; the conf's or --endpoints' nodes
    when no endpoint answers).  Row fields are the HTTP status's names (node_id, role,
    term, leader, commit_index, applied_index, last_heartbeat in ms) plus endpoint and lag.
    Exit 0 when every member answers and one leads; 4 otherwise."""
    from paxoslog.client import ClientError, Forbidden, Unauthorized
    from paxoslog.members import live_endpoints
    with client_of(args) as client:
        members, live = live_endpoints(client, endpoint_ids(args),
                                       timeout_s=min(2.0, args.timeout))
        views = {}
        for member in members:
            try:
                views[member] = client.status_of(member.endpoint,
                                                 timeout=min(2.0, args.timeout))
            except (Unauthorized, Forbidden) as exc:     # up, but it will not tell us
                report_error(args, exc, "error")
                return EXIT_ERROR
            except (OSError, ClientError, ValueError):
                views[member] = None
    leader_view = None
    for view in views.values():
        if view and view.get("role") == "leader":
            if leader_view is None or view["term"] > leader_view["term"]:
                leader_view = view
    leader_nodes = {n["id"]: n for n in (leader_view or {}).get("nodes", [])}
    top_commit = max((v["commit_index"] for v in views.values() if v), default=0)
    rows = []
    for member, view in views.items():
        if view is None:
            rows.append({"endpoint": member.endpoint, "node_id": member.node_id,
                         "role": "down"})
            continue
        node_id = view["node_id"]
        heard = leader_nodes.get(node_id, {}).get("last_heartbeat")
        if view.get("role") == "leader":
            heard = 0
        elif heard is None:
            me = next((n for n in view["nodes"] if n["id"] == node_id), {})
            heard = me.get("last_heartbeat")
        rows.append({"endpoint": member.endpoint, "node_id": node_id, "role": view["role"],
                     "term": view["term"], "leader": view["leader"],
                     "commit_index": view["commit_index"], "applied_index": view["applied_index"],
                     "lag": max(0, top_commit - view["applied_index"]),
                     "last_heartbeat": heard, "protocol": view.get("protocol")})
    down = [row for row in rows if row["role"] == "down"]
    if args.json:
        print(json.dumps({"leader": leader_view and leader_view["node_id"], "nodes": rows,
                          "live_membership": live}, sort_keys=True))
    else:
        header = ("NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "LAST HEARTBEAT", "API")
        table = [header]
        for row in rows:
            if row["role"] == "down":
                table.append((str(row["node_id"] or "?"), "down", "-", "-", "-", "-", "-",
                              row["endpoint"].split("://")[-1]))
                continue
            heard = row["last_heartbeat"]
            heard_text = "-" if row["role"] == "leader" else (
                "never" if heard is None else f"{heard} ms ago")
            table.append((str(row["node_id"]), row["role"], str(row["term"]),
                          str(row["commit_index"]), str(row["applied_index"]), str(row["lag"]),
                          heard_text, row["endpoint"].split("://")[-1]))
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        protocol = next((r["protocol"] for r in rows if r.get("protocol")), None)
        if protocol:
            print(f"protocol {protocol}; leader: "
                  f"{'node ' + str(leader_view['node_id']) if leader_view else 'none'}"
                  + (f"; {len(down)} member(s) down" if down else ""))
        if not live:
            print("(no endpoint answered: these are the configured nodes, not the live "
                  "membership)", file=sys.stderr)
    if not any(views.values()) or leader_view is None or down:
        return EXIT_UNAVAILABLE
    return EXIT_OK


def cmd_endpoint_health(args) -> int:
    from paxoslog.members import check_health, live_endpoints
    with client_of(args) as client:
        members, live = live_endpoints(client, endpoint_ids(args),
                                       timeout_s=min(2.0, args.timeout))
        results = check_health(client, members, timeout_s=min(2.0, args.timeout))
    if args.json:
        print(json.dumps([r.to_json() for r in results], sort_keys=True))
    else:
        for r in results:
            node = f"node {r.node_id}" if r.node_id is not None else "node ?"
            if r.healthy:
                print(f"{r.endpoint} ({node}) is healthy: took {r.took_s * 1000:.1f} ms")
            else:
                print(f"{r.endpoint} ({node}) is unhealthy: {r.error}")
        if not live:
            print("(no endpoint answered: checked the configured nodes)", file=sys.stderr)
    return EXIT_OK if results and all(r.healthy for r in results) else EXIT_UNAVAILABLE


def cmd_reload(args) -> int:
    from paxoslog.client import ClientError, SyncClient
    failed = 0
    for endpoint in endpoints_of(args):
        with SyncClient([endpoint], timeout=args.timeout, token=resolve_token(args),
                        cafile=cacert_of(args)) as client:
            try:
                body = client.request("POST", "/api/v1/admin/reload", {})
            except ClientError as exc:
                failed += 1
                print(f"{endpoint}: {exc}", file=sys.stderr)
                continue
        if args.json:
            print(json.dumps({"endpoint": endpoint, **body}, sort_keys=True))
            continue
        changes = body.get("applied") or ["nothing changed"]
        print(f"{endpoint}: " + "; ".join(changes))
        for note in body.get("needs_restart", []) + body.get("errors", []):
            print(f"{endpoint}:   {note}")
    return EXIT_ERROR if failed else EXIT_OK


def cmd_cluster_add_node(args) -> int:
    def action(client):
        body = client.add_node(args.node_id, args.peer, args.api,
                               wait="learner" if args.no_wait else "voter")
        print_result(args, body, f"node {args.node_id} added: {body.get('role')} "
                           f"(voters {body['applied_config']['voters']}, learners "
                           f"{body['applied_config']['learners']})")
        return EXIT_OK
    return run_client(args, action)


def cmd_cluster_remove_node(args) -> int:
    def action(client):
        body = client.remove_node(args.node_id)
        print_result(args, body, f"node {args.node_id} removed (voters "
                           f"{body['applied_config']['voters']})")
        return EXIT_OK
    return run_client(args, action)


def cmd_cluster_transfer_leader(args) -> int:
    def action(client):
        body = client.transfer_leader(args.node_id)
        print_result(args, body, f"leader: node {body['leader']} (term {body['term']})")
        return EXIT_OK
    return run_client(args, action)


def cmd_cluster_members(args) -> int:
    def action(client):
        body = client.members()
        if args.json:
            print(json.dumps(body, sort_keys=True))
            return EXIT_OK
        config = body["applied_config"]
        print(f"cluster {body['cluster']} ({body['protocol']}), leader "
              f"{body['leader'] if body['leader'] is not None else 'none'}")
        print(f"voters {config['voters']}" + (f" outgoing {config['outgoing']}"
                                              if config['outgoing'] else "")
              + (f" learners {config['learners']}" if config['learners'] else ""))
        rows = [("NODE", "STATUS", "PEER", "API", "ADDED AT", "REMOVED AT")]
        for row in body["members"]:
            rows.append((str(row["node_id"]), row["status"], row["address"], row.get("api") or "-",
                         str(row["added_at_index"]), str(row["removed_at_index"] or "-")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        return EXIT_OK
    return run_client(args, action)
