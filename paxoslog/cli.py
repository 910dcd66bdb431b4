"""The ``paxoslog`` command.

::

    paxoslog serve --config F --node ID [--join URL]   run one node (SIGTERM/SIGINT: graceful
                                               stop; --join: a new node asks a member to add it)
    paxoslog cluster up F                      every node of a local conf as child processes
    paxoslog cluster add-node ID --peer H:P [--api H:P] [--no-wait]
    paxoslog cluster remove-node ID | transfer-leader [ID] | members
    paxoslog put KEY VALUE | get KEY | delete KEY | cas KEY VALUE --expected E
    paxoslog get PREFIX --prefix [--all] | delete PREFIX --prefix   pages with a cursor
    paxoslog status                            one row per live member: role, term, lag
    paxoslog endpoint health                   /health of every live member (exit 4: one
                                               is not healthy)
    paxoslog completion bash|zsh               a shell completion script
    paxoslog put-many [FILE] [--batch N]       one "key value" per line (stdin: -), in batches
    paxoslog watch KEY [--prefix] [--from REV] [--prev]   kv events as they commit
    paxoslog log tail [-f] [--from N]          committed entries (WebSocket), resumable
    paxoslog log entries [--from N] [--to M]   entries from the running cluster
    paxoslog log dump|verify --data-dir D      offline/live WAL inspection (read-only)
    paxoslog log export --sqlite OUT.db --data-dir D   the data as SQL tables (read-only)
    paxoslog snapshot inspect FILE
    paxoslog snapshot save FILE                a consistent backup of the running cluster
    paxoslog snapshot restore FILE --config F  the data directories of a new cluster from it
    paxoslog recover --config F --node N [--force-new-cluster]   after losing a majority
    paxoslog reload                            nodes re-read their conf (as SIGHUP)
    paxoslog auth add-token --config F --role read|write|admin [--name N] [--client-id C]
    paxoslog auth list --config F | auth revoke NAME --config F
    paxoslog certs init --config F [--out DIR]  a cluster CA and node certificates (TLS)

Client commands find the cluster with ``--endpoints http://h:p,...``, ``--config F``,
``$PAXOSLOG_ENDPOINTS``, ``$PAXOSLOG_CONFIG``, else ``conf/local-3.toml`` (first found);
``-w json`` (anywhere on the line; ``--json`` is the same) prints JSON, ``-w table`` (the
default) text.  While a command retries (no leader yet, a node down) it says so on stderr.
A cluster that requires tokens needs one: ``--token-file F``, ``$PAXOSLOG_TOKEN`` or
``--token T`` (visible to other users in ``ps``: prefer the file or the variable).
HTTPS endpoints are verified against ``--cacert`` (default ``$PAXOSLOG_CACERT``, else the
conf's ``[tls] ca_file``).

Exit codes (for scripts)::

    0  success
    1  error: the request was refused (bad input) or the node failed
    2  usage error, or a bad conf file
    3  not found (get/delete of an absent key)
    4  unavailable or outcome unknown (no leader, timeout; a write may still commit:
       retry with the same --client-id/--sequence)
    5  compare-and-swap precondition failed (cas only)
    6  compacted: a tail or watch start no node still has (read the state instead)

Size: one argparse tree and one short function per command (about 40 commands); not
split yet.  The next split is by command group (client, cluster and membership,
operations, coordination), each registering its subparsers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_CAS_FAILED = 5
EXIT_COMPACTED = 6

DEFAULT_CONFIG = "conf/local-3.toml"

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_NOT_FOUND",
           "EXIT_UNAVAILABLE", "EXIT_CAS_FAILED", "EXIT_COMPACTED"]


# ====================================================================== parser

def build_parser() -> argparse.ArgumentParser:
    from paxoslog.storage.inspect import add_arguments as add_inspect_arguments

    parser = argparse.ArgumentParser(
        prog="paxoslog", description="A replicated log (Multi-Paxos or Raft) with a KV store.",
        epilog="exit codes: 0 ok, 1 error, 2 usage/conf error, 3 not found, "
               "4 unavailable or outcome unknown, 5 cas precondition failed, "
               "6 compacted (a stream start no node still has)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from paxoslog import __version__
    parser.add_argument("--version", action="version", version=f"paxoslog {__version__}")
    parser.add_argument("-w", "--write-out", dest="write_out_global", default=None,
                        choices=("table", "json"), help="output format of every command "
                        "(json: the same as --json)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("-w", "--write-out", dest="write_out", default=None,
                        choices=("table", "json"), help="output format (json: as --json)")
    client.add_argument("-c", "--config", default=None,
                        help=f"cluster conf file (default: $PAXOSLOG_CONFIG or {DEFAULT_CONFIG})")
    client.add_argument("--endpoints", default=None,
                        help="comma-separated API endpoints (instead of --config; default "
                             "$PAXOSLOG_ENDPOINTS)")
    client.add_argument("--timeout", type=float, default=10.0,
                        help="overall deadline in seconds, retries included (default 10)")
    client.add_argument("--json", action="store_true", help="print the JSON response")
    _add_token_arguments(client)
    client.add_argument("--cacert", default=None, metavar="FILE",
                        help="CA certificate to verify https endpoints with (default: "
                             "$PAXOSLOG_CACERT, else the conf's [tls] ca_file)")

    serve = commands.add_parser("serve", help="run one node")
    serve.add_argument("--config", "-c", required=True, help="cluster conf file")
    serve.add_argument("--node", type=int, required=True, help="this node's id in the conf")
    serve.add_argument("--log-level", default=None, choices=("debug", "info", "warn", "error"),
                       help="log level at start (default: the conf's [log] level, else info; "
                            "SIGHUP applies the conf's [log] level)")
    serve.add_argument("--log-format", default="text", choices=("text", "json"),
                       help="text lines (default) or one JSON object per line")
    serve.add_argument("--log-file", default=None, metavar="FILE",
                       help="append the log to FILE instead of stderr (SIGHUP reopens it)")
    serve.add_argument("--access-log", default=None, metavar="FILE",
                       help="one line per HTTP request to FILE (SIGHUP reopens it)")
    serve.add_argument("--join", default=None, metavar="URL[,URL...]",
                       help="first start of a node added to a running cluster: ask this member "
                            "(any; its API address) to add this node, then join as a learner "
                            "(promoted to voter once caught up).  Ignored once joined.")
    serve.add_argument("--join-timeout", type=float, default=60.0,
                       help="seconds to keep asking to join (default 60)")
    _add_token_arguments(serve, " (--join only: an admin token)")
    serve.set_defaults(func=cmd_serve)

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

    session = argparse.ArgumentParser(add_help=False)
    session.add_argument("--client-id", default=None,
                         help="client id for exactly-once retries (with --sequence)")
    session.add_argument("--sequence", type=int, default=None,
                         help="sequence number for exactly-once retries (with --client-id)")

    put = commands.add_parser("put", parents=[client, session], help="set KEY to VALUE")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("-j", "--json-value", action="store_true",
                     help="parse VALUE as JSON (number, object, ...) instead of a string")
    put.add_argument("--lease", type=int, default=None, metavar="ID",
                     help="attach KEY to lease ID (deleted when the lease ends)")
    put.set_defaults(func=cmd_put)

    get = commands.add_parser("get", parents=[client], help="read KEY (or the keys under a "
                                                            "prefix: --prefix)")
    get.add_argument("key")
    get.add_argument("--consistency", default="linearizable",
                     choices=("linearizable", "lease", "stale"))
    get.add_argument("--min-revision", type=int, default=None, metavar="R",
                     help="refuse to be served below revision R (read your writes from a "
                          "follower with --consistency stale)")
    add_prefix_arguments(get, "the keys starting with KEY, a page at a time")
    get.set_defaults(func=cmd_get)


    txn = commands.add_parser(
        "txn", parents=[client, session], help="a transaction from a JSON file (- for stdin)",
        description='The file holds {"compare": [...], "success": [...], "failure": [...]} '
                    "(docs/coordination.md); prints the result, exit 5 when the compares "
                    "failed (the failure branch ran).")
    txn.add_argument("file")
    txn.set_defaults(func=cmd_txn)

    lease = commands.add_parser("lease", help="grant, keep alive, revoke or inspect a lease")
    lease_sub = lease.add_subparsers(dest="lease_command", metavar="ACTION", required=True)
    grant = lease_sub.add_parser("grant", parents=[client, session], help="a new lease")
    grant.add_argument("ttl_ms", type=int)
    grant.set_defaults(func=cmd_lease, action="grant")
    for action, text in (("keepalive", "renew once"), ("revoke", "revoke (deletes its keys)"),
                         ("ttl", "remaining time and keys")):
        sub = lease_sub.add_parser(action, parents=[client], help=text)
        sub.add_argument("id", type=int)
        sub.set_defaults(func=cmd_lease, action=action, client_id=None, sequence=None)

    lock = commands.add_parser(
        "lock", parents=[client], help="run COMMAND while holding the lock NAME",
        usage="paxoslog lock [options] NAME -- COMMAND [ARG ...]",
        description="Acquire the distributed lock NAME (fair: first come, first served), "
                    "run COMMAND with PAXOSLOG_LOCK_TOKEN (the fencing token: pass it to "
                    "what the lock protects) and PAXOSLOG_LOCK_KEY in its environment, keep "
                    "the lock alive while it runs, release it when it ends.  If the lock is "
                    "lost (the lease expired) COMMAND is terminated and the exit code is 1; "
                    "else it is COMMAND's.",
        epilog="example: paxoslog lock backups -- ./backup.sh")
    lock.add_argument("name")
    lock.add_argument("--ttl-ms", type=int, default=10_000,
                      help="lease TTL: how long a dead holder keeps the lock (default 10000)")
    lock.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                      help="give up (exit 4) when not acquired within SECONDS")
    lock.set_defaults(func=cmd_lock, command=[])

    elect = commands.add_parser(
        "elect", parents=[client], help="campaign for leadership of NAME, or observe it",
        usage="paxoslog elect [options] NAME [VALUE] [-- COMMAND [ARG ...]]",
        description="With VALUE: campaign; once elected print 'leader NAME VALUE', then run "
                    "COMMAND while leading (or, without COMMAND, lead until interrupted), "
                    "then resign.  With --observe: print the leader's value at every change.",
        epilog="examples: paxoslog elect scheduler host-a -- ./scheduler; "
               "paxoslog elect scheduler --observe")
    elect.add_argument("name")
    elect.add_argument("value", nargs="?")
    elect.add_argument("--observe", action="store_true", help="print leader changes")
    elect.add_argument("--once", action="store_true", help="with --observe: print the "
                       "current leader and exit (3 when there is none)")
    elect.add_argument("--ttl-ms", type=int, default=10_000)
    elect.add_argument("--wait", type=float, default=None, metavar="SECONDS")
    elect.set_defaults(func=cmd_elect, command=[])

    delete = commands.add_parser("delete", parents=[client, session],
                                 help="delete KEY (or the keys under a prefix: --prefix)")
    delete.add_argument("key")
    add_prefix_arguments(delete, "delete the keys starting with KEY, LIMIT per log entry")
    delete.set_defaults(func=cmd_delete)
    delete_range = commands.add_parser(
        "delete-range", parents=[client], help="delete every key starting with PREFIX "
        "(as delete --prefix --all)")
    delete_range.add_argument("key", metavar="PREFIX")
    delete_range.add_argument("--limit", type=int, default=None,
                              help="keys per log entry (default 1000)")
    delete_range.set_defaults(func=cmd_delete, prefix=True, all=True, after=None,
                              client_id=None, sequence=None)

    endpoint = commands.add_parser("endpoint", help="per-endpoint checks")
    endpoint_commands = endpoint.add_subparsers(dest="endpoint_command", metavar="COMMAND",
                                                required=True)
    health = endpoint_commands.add_parser(
        "health", parents=[client], help="GET /health of every live member",
        description="Ask every current member (the live membership, from any endpoint that "
                    "answers; else the given endpoints) whether it is healthy: running, "
                    "not failed, and knowing a leader.  Exit 0 when all are, 4 otherwise.")
    health.set_defaults(func=cmd_endpoint_health)

    completion = commands.add_parser(
        "completion", help="print a shell completion script",
        description="Print a completion script for bash or zsh.  bash: "
                    "`source <(paxoslog completion bash)` (or save it in "
                    "/etc/bash_completion.d/paxoslog); zsh: `source <(paxoslog completion "
                    "zsh)`.")
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(func=cmd_completion)

    cas = commands.add_parser("cas", parents=[client, session],
                              help="set KEY to VALUE if it currently holds EXPECTED")
    cas.add_argument("key")
    cas.add_argument("value")
    which = cas.add_mutually_exclusive_group(required=True)
    which.add_argument("--expected", help="the value KEY must hold now")
    which.add_argument("--expected-version", type=int, help="the version KEY must have (0: absent)")
    which.add_argument("--absent", action="store_true", help="KEY must not exist")
    cas.add_argument("-j", "--json-value", action="store_true",
                     help="parse VALUE and EXPECTED as JSON")
    cas.set_defaults(func=cmd_cas)

    sm = commands.add_parser(
        "sm", parents=[client, session], help="a command or read for any state machine",
        description="Send {\"op\": OP, FIELD: VALUE, ...} to state machine NAME (POST "
                    "/api/v1/sm/NAME).  VALUE is parsed as JSON when it is valid JSON (5, "
                    "true, [1], \"5\"), else taken as a string.  OP \"query\" sends the "
                    "fields as a read ({\"query\": {...}}); ops the state machine serves as "
                    "reads (counter: get) are reads too.",
        epilog="examples: paxoslog sm counter add name=hits delta=5; "
               "paxoslog sm counter get name=hits; paxoslog sm kv put key=a value=1")
    sm.add_argument("name", help="state machine name (as enabled in the conf)")
    sm.add_argument("op", help="the operation, or \"query\" for a read")
    sm.add_argument("fields", nargs="*", metavar="FIELD=VALUE")
    sm.add_argument("--consistency", default=None, choices=("linearizable", "lease", "stale"),
                    help="for reads (default linearizable)")
    sm.set_defaults(func=cmd_sm)

    status = commands.add_parser("status", parents=[client], help="one row per node")
    status.set_defaults(func=cmd_status)

    put_many = commands.add_parser(
        "put-many", parents=[client], help="put many keys in batches (one log command each)",
        description="Read one \"key value\" per line (the value is the rest of the line; "
                    "blank lines and lines starting with # are skipped) from FILE or stdin "
                    "and write them with POST /api/v1/consensus/batch, BATCH keys per "
                    "request, each batch exactly once (a retried batch keeps its "
                    "client_id/sequence).")
    put_many.add_argument("file", nargs="?", default="-", help="input file (default: stdin)")
    put_many.add_argument("--batch", type=int, default=1000, metavar="N",
                          help="operations per batch (default 1000)")
    put_many.add_argument("-j", "--json-value", action="store_true",
                          help="parse each value as JSON")
    put_many.set_defaults(func=cmd_put_many)

    stream = argparse.ArgumentParser(add_help=False)
    stream.add_argument("--from", dest="start", type=int, default=None, metavar="N",
                        help="first index/revision (default: from the next one committed)")
    stream.add_argument("--cbor", action="store_true",
                        help="use the CBOR subprotocol (default JSON)")

    watch = commands.add_parser(
        "watch", parents=[client, stream], help="kv events (put/delete) as they commit",
        description="Follow the puts and deletes of KEY (or of every key starting with KEY "
                    "with --prefix) from revision --from on, over the WebSocket endpoint; "
                    "resumes at another node by itself.  Ctrl-C stops.")
    watch.add_argument("key", help="the key, or the prefix with --prefix (\"\": every key)")
    watch.add_argument("--prefix", action="store_true", help="KEY is a prefix")
    watch.add_argument("--prev", action="store_true", help="show each key's previous value")
    watch.set_defaults(func=cmd_watch)
    auth = commands.add_parser("auth", help="client bearer tokens (the conf's [auth] "
                                            "tokens_file)")
    auth_commands = auth.add_subparsers(dest="auth_command", metavar="COMMAND", required=True)
    add_token = auth_commands.add_parser(
        "add-token", help="make a token and add its hash to the tokens file",
        description="Make a random token with ROLE, add its salted scrypt hash to the "
                    "tokens file the conf names ([auth] tokens_file; created if absent) and "
                    "print the token on stdout: it is shown only this once.  Running nodes "
                    "pick it up within a second.")
    add_token.add_argument("--config", "-c", required=True, help="cluster conf file")
    add_token.add_argument("--role", required=True, choices=("read", "write", "admin"))
    add_token.add_argument("--name", default=None,
                           help="a name for the token (default: ROLE-<id>); used by revoke")
    add_token.add_argument("--client-id", default=None, metavar="C",
                           help="bind the token to client id C, or to a prefix with a "
                                "trailing '*' (\"app-*\"): its writes must use such an id, "
                                "and no other token may")
    add_token.set_defaults(func=cmd_auth_add_token)
    auth_list = auth_commands.add_parser("list", help="the tokens (names, roles; never the "
                                                      "tokens themselves)")
    auth_list.add_argument("--config", "-c", required=True, help="cluster conf file")
    auth_list.add_argument("--json", action="store_true")
    auth_list.set_defaults(func=cmd_auth_list)
    revoke = auth_commands.add_parser("revoke", help="remove a token (nodes drop it within a "
                                                     "second)")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--config", "-c", required=True, help="cluster conf file")
    revoke.set_defaults(func=cmd_auth_revoke)

    certs = commands.add_parser("certs", help="TLS certificates for a cluster")
    certs_commands = certs.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)
    certs_init = certs_commands.add_parser(
        "init", help="create a cluster CA and one certificate per node of a conf",
        description="Create a cluster CA and a certificate (and key) for every node of the "
                    "conf, for local use and tests.  Files go to --out DIR (default: the paths "
                    "the conf's [tls] names, else <conf dir>/certs).  An existing CA is reused "
                    "and valid node certificates are kept, so run it again after adding a "
                    "node.  Prints the [tls] table to put in the conf.")
    certs_init.add_argument("--config", "-c", required=True, help="cluster conf file")
    certs_init.add_argument("--out", default=None, metavar="DIR", help="output folder")
    certs_init.set_defaults(func=cmd_certs_init)

    add_inspect_arguments(commands)
    log_parser = commands.choices["log"]
    log_sub = next(a for a in log_parser._actions if isinstance(a, argparse._SubParsersAction))
    entries = log_sub.add_parser("entries", parents=[client],
                                 help="entries from the running cluster (holes marked)")
    entries.add_argument("--from", dest="start", type=int, default=None, metavar="N")
    entries.add_argument("--to", dest="end", type=int, default=None, metavar="M")
    entries.set_defaults(func=cmd_log_entries)
    export = log_sub.add_parser(
        "export", help="a data directory as SQL tables (read-only, works on a live node)",
        description="Write one node's data directory into a new SQLite database with the "
                    "design's tables (raft_state, log_entries, snapshots, cluster_members, "
                    "kv_store) and export_info.  Read-only and lock-free: it runs beside a "
                    "live node.  See docs/operating.md for the columns and example queries.")
    export.add_argument("--sqlite", required=True, metavar="OUT.db", help="the database to "
                        "write (built in a temporary file, then renamed)")
    export.add_argument("--data-dir", required=True, help="the node's data directory")
    export.add_argument("--config", "-c", default=None,
                        help="the cluster's conf (optional: its state machines and session "
                             "bounds, for an exact replay of a non-default deployment)")
    export.add_argument("--force", action="store_true", help="replace OUT.db if it exists")
    export.add_argument("--json", action="store_true", help="print the summary as JSON")
    export.add_argument("--quiet", action="store_true", help="no progress lines")
    export.set_defaults(func=cmd_log_export)

    snap_parser = commands.choices["snapshot"]
    snap_sub = next(a for a in snap_parser._actions
                    if isinstance(a, argparse._SubParsersAction))
    save = snap_sub.add_parser(
        "save", help="a consistent backup of the running cluster",
        description="Ask a node of the running cluster (the endpoints in order, until one "
                    "serves it) for a snapshot of every state machine and the session table "
                    "at one index, taken at a linearizable read point: it holds every write "
                    "acknowledged before the command started.  The file is verified "
                    "(checksum, sizes) before it is renamed to FILE.")
    save.add_argument("file", metavar="FILE", help="where to write the backup (.snap.zst)")
    save.add_argument("-c", "--config", default=None,
                      help=f"cluster conf file (default: $PAXOSLOG_CONFIG or {DEFAULT_CONFIG})")
    save.add_argument("--endpoints", default=None,
                      help="comma-separated API endpoints (instead of --config)")
    save.add_argument("--timeout", type=float, default=120.0,
                      help="seconds to get a node to serve the backup (default 120)")
    save.add_argument("--force", action="store_true", help="replace FILE if it exists")
    save.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_token_arguments(save, " (an admin token)")
    save.add_argument("--quiet", action="store_true", help="no progress lines")
    save.add_argument("--cacert", default=None, metavar="FILE",
                      help="CA certificate for https endpoints (default: $PAXOSLOG_CACERT, "
                           "else the conf's [tls] ca_file)")
    save.set_defaults(func=cmd_snapshot_save)
    restore = snap_sub.add_parser(
        "restore", help="the data directories of a NEW cluster from a backup",
        description="Verify FILE, then build the data directory of every node of the conf "
                    "(or of --node ones) from it: a new cluster (its own log origin) whose "
                    "members are the conf's nodes, starting at the backup's index.  Target "
                    "directories must be absent or empty; nothing is half-written.")
    restore.add_argument("file", metavar="FILE", help="a backup (or any snapshot file)")
    restore.add_argument("-c", "--config", required=True, help="the NEW cluster's conf file")
    restore.add_argument("--node", type=int, action="append", default=None, metavar="ID",
                         help="only this node's data directory (repeatable; default: all "
                              "nodes of the conf, e.g. each host restores its own)")
    restore.add_argument("--json", action="store_true", help="print the summary as JSON")
    restore.add_argument("--quiet", action="store_true", help="no progress lines")
    restore.set_defaults(func=cmd_snapshot_restore)

    recover = commands.add_parser(
        "recover", help="disaster recovery: one surviving node as a one-node cluster",
        description="After a majority of the cluster was lost for good: turn node N's data "
                    "into a one-node cluster that keeps every entry N holds, and print what "
                    "may have been lost.  Without --force-new-cluster it only prints the "
                    "report (dry run).  Refuses while node N runs.  The other nodes are "
                    "then re-added with `paxoslog serve --join` on wiped data directories.")
    recover.add_argument("-c", "--config", required=True, help="cluster conf file")
    recover.add_argument("--node", type=int, required=True, help="the surviving node's id")
    recover.add_argument("--force-new-cluster", action="store_true",
                         help="do it (without: report only, nothing changes)")
    recover.add_argument("--json", action="store_true", help="print the report as JSON")
    recover.add_argument("--quiet", action="store_true", help="no progress lines")
    recover.set_defaults(func=cmd_recover)

    reload = commands.add_parser(
        "reload", parents=[client], help="have nodes re-read the conf file (as SIGHUP)",
        description="POST /api/v1/admin/reload on every endpoint: each node re-reads its conf "
                    "file and applies what can change without a restart ([log] level); "
                    "what needs a restart is listed.")
    reload.set_defaults(func=cmd_reload)
    tail = log_sub.add_parser("tail", parents=[client, stream],
                              help="committed entries over the WebSocket endpoint",
                              description="Print committed log entries from --from N "
                                          "(default: the next one) up to the newest; with "
                                          "-f, keep following (resuming at another node "
                                          "by itself).")
    tail.add_argument("-f", "--follow", action="store_true", help="keep following")
    tail.set_defaults(func=cmd_log_tail)
    return parser


def add_prefix_arguments(parser, what: str) -> None:
    parser.add_argument("--prefix", action="store_true", help=what)
    parser.add_argument("--limit", type=int, default=None,
                        help="keys per page (--prefix; default 1000, at most 10000)")
    parser.add_argument("--after", default=None, metavar="CURSOR",
                        help="continue after this key: the \"cursor\" of the previous page")
    parser.add_argument("--all", action="store_true",
                        help="follow the cursor until the last page")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    if argv and argv[0] in ("lock", "elect") and "--" in argv:
        # everything after the first "--" is the COMMAND to run, options included
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if command is not None:
        args.command = command
    if "json" in (getattr(args, "write_out", None), args.write_out_global) \
            and hasattr(args, "json"):
        args.json = True
    if (hasattr(args, "endpoints") and not args.endpoints and not getattr(args, "config", None)
            and os.environ.get("PAXOSLOG_ENDPOINTS")):
        args.endpoints = os.environ["PAXOSLOG_ENDPOINTS"]
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK


# ====================================================================== helpers

def _add_token_arguments(parser, note: str = "") -> None:
    parser.add_argument("--token", default=None, metavar="TOKEN",
                        help="bearer token" + note + " (visible in ps: prefer --token-file "
                             "or $PAXOSLOG_TOKEN)")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help="read the bearer token from FILE" + note)


def _token(args) -> str | None:
    """The bearer token: --token, else --token-file, else $PAXOSLOG_TOKEN, else None."""
    if getattr(args, "token", None):
        return args.token.strip()
    path = getattr(args, "token_file", None)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            print(f"paxoslog: --token-file {path}: cannot read: {reason}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        if not token or "\n" in token:
            print(f"paxoslog: --token-file {path}: expected one token on one line",
                  file=sys.stderr)
            raise SystemExit(EXIT_USAGE)
        return token
    return os.environ.get("PAXOSLOG_TOKEN", "").strip() or None


def _load_config(path: str):
    from paxoslog.config import ConfigError, load_config
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"paxoslog: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _endpoints(args) -> list[str]:
    return list(_endpoint_ids(args))


def _endpoint_ids(args) -> dict[str, int | None]:
    """Endpoint -> node id (None when only --endpoints was given)."""
    if args.endpoints:
        return {e.strip(): None for e in args.endpoints.split(",") if e.strip()}
    path = args.config or os.environ.get("PAXOSLOG_CONFIG") or DEFAULT_CONFIG
    config = _load_config(path)
    return {node.api_url: node.id for node in config.nodes}


def _cacert(args) -> str | None:
    """The CA file for https endpoints: --cacert, $PAXOSLOG_CACERT, the conf's ca_file."""
    if getattr(args, "cacert", None):
        return args.cacert
    if os.environ.get("PAXOSLOG_CACERT"):
        return os.environ["PAXOSLOG_CACERT"]
    if args.endpoints:
        return None
    config = _load_config(args.config or os.environ.get("PAXOSLOG_CONFIG") or DEFAULT_CONFIG)
    return config.tls.ca_file if config.tls is not None else None


def _client(args):
    from paxoslog.client import SyncClient
    client = SyncClient(_endpoints(args), timeout=args.timeout,
                        attempt_timeout=min(3.0, max(0.5, args.timeout / 3)),
                        client_id=getattr(args, "client_id", None), token=_token(args),
                        cafile=_cacert(args))
    client.on_retry = _RetryProgress()
    return client


class _RetryProgress:
    """Says on stderr why the command is still waiting (at most one line a second)."""

    def __init__(self, clock=None) -> None:
        import time
        self.clock = clock or time.monotonic
        self.last = None

    def __call__(self, endpoint: str, why: str, left_s: float) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < 1.0:
            return
        self.last = now
        print(f"paxoslog: {endpoint}: {why}; retrying ({left_s:.1f} s left)",
              file=sys.stderr, flush=True)


def _session(args) -> dict:
    if args.client_id is not None and args.client_id.endswith("*") and args.sequence is None:
        return {}          # a prefix (a token bound to "app-*"): the client picks the id
    if (args.client_id is None) != (args.sequence is None):
        print("paxoslog: --client-id and --sequence go together", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    if args.client_id is None:
        return {}
    return {"client_id": args.client_id, "sequence": args.sequence}


def _value(text: str, as_json: bool):
    if not as_json:
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        print(f"paxoslog: not valid JSON: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _run_client(args, action) -> int:
    from paxoslog.client import (ClientError, NotFound, RequestFailed, Unavailable,
                                 UnknownOutcome)
    with _client(args) as client:
        try:
            return action(client)
        except NotFound as exc:
            _report_error(args, exc, "not found")
            return EXIT_NOT_FOUND
        except UnknownOutcome as exc:
            _report_error(args, exc, "outcome unknown")
            return EXIT_UNAVAILABLE
        except Unavailable as exc:
            _report_error(args, exc, "unavailable")
            return EXIT_UNAVAILABLE
        except (RequestFailed, ClientError) as exc:
            _report_error(args, exc, "error")
            return EXIT_ERROR


def _report_error(args, exc, label: str) -> None:
    if args.json and isinstance(getattr(exc, "body", None), dict):
        print(json.dumps(exc.body))
    print(f"paxoslog: {label}: {exc}", file=sys.stderr)


def _print(args, body: dict, text: str) -> None:
    if args.json:
        print(json.dumps(body, sort_keys=True))
    else:
        print(text)


def _show(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ====================================================================== client commands

def cmd_put(args) -> int:
    value = _value(args.value, args.json_value)

    def action(client):
        extra = {"lease": args.lease} if args.lease is not None else {}
        body = client.put(args.key, value, **_session(args), **extra)
        result = body.get("result") or {}
        _print(args, body, f"OK index={body['index']} version={result.get('version')}")
        return EXIT_OK
    return _run_client(args, action)


def cmd_get(args) -> int:
    def action(client):
        if args.prefix:
            return _get_prefix(args, client)
        body = client.get(args.key, args.consistency, min_revision=args.min_revision)
        _print(args, body, _show(body.get("value")))
        return EXIT_OK
    return _run_client(args, action)


def cmd_txn(args) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file).read()
        spec = json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"paxoslog: cannot read the transaction: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(spec, dict):
        print("paxoslog: the transaction must be a JSON object", file=sys.stderr)
        return EXIT_USAGE

    def action(client):
        body = client.txn(spec.get("compare", []), spec.get("success", []),
                          spec.get("failure", []), **_session(args))
        result = body["result"]
        _print(args, body, json.dumps(result, sort_keys=True))
        return EXIT_OK if result["succeeded"] else EXIT_CAS_FAILED
    return _run_client(args, action)


def cmd_lease(args) -> int:
    def action(client):
        if args.action == "grant":
            body = client.lease_grant(args.ttl_ms, **_session(args))
            _print(args, body, str(body["result"]["id"]))
        elif args.action == "revoke":
            body = client.lease_revoke(args.id)
            _print(args, body, f"revoked; {body['result']['deleted']} keys deleted")
        else:
            body = (client.lease_keepalive(args.id) if args.action == "keepalive"
                    else client.lease_ttl(args.id, keys=True))
            text = f"ttl_ms={body['ttl_ms']} remaining_ms={body['remaining_ms']}"
            if "keys" in body:
                text += " keys=" + ",".join(body["keys"])
            _print(args, body, text)
        return EXIT_OK
    return _run_client(args, action)


def _hold_while(renew, ttl_ms: int, command: list[str], env: dict) -> int:
    """Run ``command`` (or, when empty, wait for SIGINT/SIGTERM) while ``renew()`` keeps
    the lease alive every ttl/3; terminate it if the lease is lost.  The exit code."""
    import signal
    import subprocess

    from paxoslog.client import ClientError
    from paxoslog.recipes import LockLost
    interval = ttl_ms / 3000.0
    proc = subprocess.Popen(command, env=env) if command else None
    stop = []
    if proc is None:
        def on_signal(signum, frame):
            stop.append(signum)
        signal.signal(signal.SIGTERM, on_signal)
    last_ok = time.monotonic()
    while True:
        try:
            if proc is not None:
                return proc.wait(timeout=interval)
            if stop:
                return EXIT_OK
            time.sleep(interval)                  # idle holder: wake up to renew
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:
            if proc is not None:
                proc.terminate()
                proc.wait()
            return EXIT_ERROR
        try:
            renew()
            last_ok = time.monotonic()
        except LockLost as exc:
            lost = str(exc)
        except ClientError as exc:
            if time.monotonic() - last_ok < ttl_ms / 1000.0:
                continue                          # the lease may still be alive: retry
            lost = f"no renewal for a whole TTL: {exc}"
        else:
            continue
        print(f"paxoslog: lost the lease ({lost}); stopping", file=sys.stderr)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return EXIT_ERROR


def cmd_lock(args) -> int:
    from paxoslog.recipes import Lock, LockTimeout
    command = list(args.command)
    if not command:
        print("paxoslog: lock needs a COMMAND after --", file=sys.stderr)
        return EXIT_USAGE

    def action(client):
        lock = Lock(client, args.name, ttl_ms=args.ttl_ms)
        try:
            token = lock.acquire(timeout_s=args.wait)
        except LockTimeout as exc:
            print(f"paxoslog: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        env = dict(os.environ, PAXOSLOG_LOCK_TOKEN=str(token), PAXOSLOG_LOCK_KEY=lock.key)
        try:
            return _hold_while(lock.keepalive, args.ttl_ms, command, env)
        finally:
            try:
                lock.release()
            except Exception as exc:  # the lease expires on its own
                print(f"paxoslog: release failed ({exc}); the lock frees when its lease "
                      "expires", file=sys.stderr)
    return _run_client(args, action)


def cmd_elect(args) -> int:
    from paxoslog.recipes import Election, LockTimeout
    command = list(args.command)

    def action(client):
        election = Election(client, args.name, ttl_ms=args.ttl_ms)
        if args.observe:
            if args.once:
                leader = election.leader()
                if leader is None:
                    print("no leader", file=sys.stderr)
                    return EXIT_NOT_FOUND
                _print(args, leader, _show(leader["value"]))
                return EXIT_OK

            def show(leader) -> bool:
                print(_show(leader["value"]) if leader else "(no leader)", flush=True)
                return True
            election.observe(show, timeout_s=args.wait)
            return EXIT_OK
        if args.value is None:
            print("paxoslog: elect needs a VALUE to campaign with (or --observe)",
                  file=sys.stderr)
            return EXIT_USAGE
        try:
            revision = election.campaign(args.value, timeout_s=args.wait)
        except LockTimeout as exc:
            print(f"paxoslog: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"leader {args.name} {args.value} revision={revision}", flush=True)
        env = dict(os.environ, PAXOSLOG_ELECTION_REVISION=str(revision))
        try:
            return _hold_while(election.keepalive, args.ttl_ms, command, env)
        finally:
            try:
                election.resign()
            except Exception:
                pass
    return _run_client(args, action)


def _get_prefix(args, client) -> int:
    """Pages of the keys under ``args.key``; ``--all`` follows the cursor."""
    after, kvs, body, pages = args.after, [], {}, 0
    while True:
        body = client.range(args.key, args.limit, args.consistency,
                            min_revision=args.min_revision, after=after)
        result = body
        pages += 1
        page = result.get("kvs", [])
        kvs.extend(page)
        if not args.json:
            for record in page:
                print(f"{record['key']}\t{_show(record['value'])}")
        if not (args.all and result.get("more")):
            break
        after = result["cursor"]
    if args.json:
        print(json.dumps({**body, "kvs": kvs, "pages": pages}, sort_keys=True))
    elif body.get("more"):
        print(f"(more: continue with --after {json.dumps(body['cursor'])}, or --all)",
              file=sys.stderr)
    return EXIT_OK


def _delete_prefix(args, client) -> int:
    """delete_range commands under ``args.key``; ``--all`` until nothing is left."""
    after, deleted, body, entries = args.after, 0, {}, 0
    session = _session(args)
    while True:
        body = client.delete_range(args.key, args.limit, after, **session)
        session = {}                      # a retried --sequence covers the first entry only
        result = body.get("result") or {}
        deleted += result.get("deleted", 0)
        entries += 1
        if not (args.all and result.get("more")):
            break
        after = result["cursor"]
    more = bool((body.get("result") or {}).get("more"))
    if args.json:
        print(json.dumps({**body, "result": {**(body.get("result") or {}), "deleted": deleted,
                                             "entries": entries}}, sort_keys=True))
    else:
        print(f"deleted {deleted} key(s) in {entries} log entr{'y' if entries == 1 else 'ies'}"
              f" (last index={body.get('index')})"
              + (f"; more: continue with --after {json.dumps(body['result']['cursor'])}"
                 if more else ""))
    return EXIT_OK


def cmd_delete(args) -> int:
    def action(client):
        if args.prefix:
            return _delete_prefix(args, client)
        body = client.delete(args.key, **_session(args))
        result = body.get("result") or {}
        if not result.get("deleted"):
            _print(args, body, f"not found (index={body['index']})")
            return EXIT_NOT_FOUND
        _print(args, body, f"deleted index={body['index']}")
        return EXIT_OK
    return _run_client(args, action)


def cmd_cas(args) -> int:
    value = _value(args.value, args.json_value)
    kwargs = dict(_session(args))
    if args.expected_version is not None:
        kwargs["expected_version"] = args.expected_version
    elif args.absent:
        kwargs["expected"] = None
    else:
        kwargs["expected"] = _value(args.expected, args.json_value)

    def action(client):
        body = client.cas(args.key, value, **kwargs)
        result = body.get("result") or {}
        if not result.get("succeeded"):
            _print(args, body, f"precondition failed (current version "
                               f"{result.get('current_version')})")
            return EXIT_CAS_FAILED
        _print(args, body, f"OK index={body['index']} version={result.get('version')}")
        return EXIT_OK
    return _run_client(args, action)


def _fields(pairs: list[str]) -> dict:
    fields = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            print(f"paxoslog: expected FIELD=VALUE, got {pair!r}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)
        try:
            fields[name] = json.loads(text)
        except ValueError:
            fields[name] = text
    return fields


def cmd_sm(args) -> int:
    fields = _fields(args.fields)

    def action(client):
        if args.op == "query":
            body = client.sm_query(args.name, fields, args.consistency or "linearizable")
        else:
            command = {"op": args.op, **fields}
            if args.consistency is not None:
                command["consistency"] = args.consistency
                body = client.request("POST", f"/api/v1/sm/{args.name}", command)
            else:
                body = client.sm(args.name, {**command, **_session(args)})
        _print(args, body, _show(body.get("result")))
        return EXIT_OK
    return _run_client(args, action)


def cmd_status(args) -> int:
    """One row per current member (the live membership; the conf's or --endpoints' nodes
    when no endpoint answers).  Row fields are the HTTP status's names (node_id, role,
    term, leader, commit_index, applied_index, last_heartbeat in ms) plus endpoint and lag.
    Exit 0 when every member answers and one leads; 4 otherwise."""
    from paxoslog.client import ClientError, Forbidden, Unauthorized
    from paxoslog.members import live_endpoints
    with _client(args) as client:
        members, live = live_endpoints(client, _endpoint_ids(args),
                                       timeout_s=min(2.0, args.timeout))
        views = {}
        for member in members:
            try:
                views[member] = client.status_of(member.endpoint,
                                                 timeout=min(2.0, args.timeout))
            except (Unauthorized, Forbidden) as exc:     # up, but it will not tell us
                _report_error(args, exc, "error")
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
    with _client(args) as client:
        members, live = live_endpoints(client, _endpoint_ids(args),
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


def cmd_completion(args) -> int:
    from paxoslog.completion import completion_script
    print(completion_script(build_parser(), args.shell))
    return EXIT_OK


def cmd_log_entries(args) -> int:
    def action(client):
        body = client.entries(args.start, args.end)
        if args.json:
            print(json.dumps(body, sort_keys=True))
            return EXIT_OK
        for entry in body["entries"]:
            state = entry.get("state")
            if state != "applied":
                print(f"{entry['index']:>8}  {'-':>6}  {state}")
                continue
            command = entry.get("command")
            kind = entry["kind"] + (" (hole)" if entry.get("hole") else "")
            text = "" if command is None else json.dumps(command, sort_keys=True)
            print(f"{entry['index']:>8}  {entry['term']:>6}  {kind:12}  {text}")
        if body.get("compacted_below"):
            print(f"(entries below {body['compacted_below']} are compacted or no longer kept)")
        return EXIT_OK
    return _run_client(args, action)


# ====================================================================== operate

def _operate(args, work) -> int:
    """Run an operator command; ``OperateError`` -> its message and exit code."""
    from paxoslog.operate.datadir import OperateError
    try:
        return work()
    except OperateError as exc:
        print(f"paxoslog: {exc}", file=sys.stderr)
        return exc.exit_code


def cmd_snapshot_save(args) -> int:
    from paxoslog.client import SyncClient
    from paxoslog.operate.backup import save_backup
    from paxoslog.operate.progress import human_bytes

    def work() -> int:
        endpoints = _endpoints(args)
        with SyncClient(endpoints, timeout=args.timeout, token=_token(args),
                        cafile=_cacert(args)) as client:
            saved = save_backup(client, endpoints, args.file, timeout_s=args.timeout,
                                force=args.force, quiet=args.quiet)
        info = saved.info
        origin = info.backup or {}
        from paxoslog.terms import term_fields
        summary = {"file": saved.path, "index": info.meta.index,
                   **term_fields(info.meta.term, origin.get("protocol")),
                   "bytes": saved.bytes, "sha256": saved.sha256,
                   "zstd_content_checksum": info.checksum, "state_machines": info.sizes,
                   "cluster": origin.get("cluster"), "protocol": origin.get("protocol"),
                   "node": origin.get("node"), "read_index": origin.get("read_index"),
                   "endpoint": saved.endpoint, "seconds": round(saved.seconds, 3)}
        if args.json:
            print(json.dumps(summary, sort_keys=True))
        else:
            print(f"saved {saved.path}: cluster {origin.get('cluster')!r} "
                  f"({origin.get('protocol')}) at index {info.meta.index}, taken on node "
                  f"{origin.get('node')}; {human_bytes(saved.bytes)} "
                  f"({human_bytes(info.uncompressed_bytes)} uncompressed) in "
                  f"{saved.seconds:.1f}s")
            print(f"sha256 {saved.sha256}  (zstd content checksum {info.checksum} verified)")
        return EXIT_OK
    return _operate(args, work)


def cmd_snapshot_restore(args) -> int:
    config = _load_config(args.config)
    from paxoslog.operate.restore import restore_cluster

    def work() -> int:
        lines = []
        result = restore_cluster(args.file, config, args.node,
                                 out=(lines.append if args.json else print), quiet=args.quiet)
        info = result.info
        if args.json:
            from paxoslog.terms import term_fields
            print(json.dumps({"file": args.file, "index": info.meta.index,
                              **term_fields(info.meta.term, (info.backup or {}).get("protocol")),
                              "sha256": result.sha256,
                              "origin": result.origin,
                              "data_dirs": {str(k): v for k, v in result.data_dirs.items()},
                              "seconds": round(result.seconds, 3)}, sort_keys=True))
        else:
            print(f"restored cluster {config.name!r} ({config.protocol}) at index "
                  f"{info.meta.index} from {args.file} (sha256 {result.sha256[:16]}...; log "
                  f"origin {result.origin}) in {result.seconds:.1f}s")
            print(f"start every node as usual: paxoslog serve --config {config.path} "
                  f"--node ID")
        return EXIT_OK
    return _operate(args, work)


def cmd_recover(args) -> int:
    config = _load_config(args.config)
    from paxoslog.operate.recover import recover_node

    def work() -> int:
        lines: list[str] = []
        out = lines.append if args.json else print
        if not args.json:
            print("=" * 78, file=sys.stderr)
            print("paxoslog recover: DISASTER RECOVERY of a cluster that lost a majority.",
                  file=sys.stderr)
            print(f"Node {args.node} will become a ONE-node cluster keeping every entry it "
                  "holds;" if args.force_new_cluster else
                  "Dry run (no --force-new-cluster): nothing will change.", file=sys.stderr)
            print("=" * 78, file=sys.stderr)
        report = recover_node(config, args.node, force=args.force_new_cluster, out=out,
                              quiet=args.quiet)
        if args.json:
            print(json.dumps(report.to_json(), sort_keys=True, default=str))
        return EXIT_OK
    return _operate(args, work)


def cmd_log_export(args) -> int:
    config = _load_config(args.config) if args.config else None
    from paxoslog.operate.sqlexport import export_sqlite

    def work() -> int:
        result = export_sqlite(args.data_dir, args.sqlite, config=config, force=args.force,
                               quiet=args.quiet)
        if args.json:
            print(json.dumps(result, sort_keys=True))
            return EXIT_OK
        print(f"exported node {result['node_id']} of {result['cluster']!r} "
              f"({result['protocol']}) to {args.sqlite}: {result['log_entries']} log rows "
              f"({result['first_log_index']}..{result['last_log_index']}, {result['holes']} "
              f"holes), {result['keys']} keys at index {result['exported_index']} in "
              f"{result['seconds']:.1f}s")
        if result["torn_tail"]:
            print(f"note: the WAL ends in a torn tail, left out: {result['torn_tail']}",
                  file=sys.stderr)
        if result["unknown_state_machines"]:
            print(f"note: state machines not installed here were skipped: "
                  f"{', '.join(result['unknown_state_machines'])}", file=sys.stderr)
        return EXIT_OK
    return _operate(args, work)


def cmd_reload(args) -> int:
    from paxoslog.client import ClientError, SyncClient
    failed = 0
    for endpoint in _endpoints(args):
        with SyncClient([endpoint], timeout=args.timeout, token=_token(args),
                        cafile=_cacert(args)) as client:
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


# ====================================================================== streams, batches

def cmd_put_many(args) -> int:
    if args.batch < 1:
        print("paxoslog: --batch must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    source = sys.stdin if args.file == "-" else None
    try:
        if source is None:
            source = open(args.file, encoding="utf-8")
    except OSError as exc:
        print(f"paxoslog: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE

    def pairs():
        for number, line in enumerate(source, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, value = line.partition(" ")
            if not sep:
                print(f"paxoslog: line {number}: expected \"key value\"", file=sys.stderr)
                raise SystemExit(EXIT_USAGE)
            yield key, _value(value, args.json_value)

    def action(client):
        total = 0
        batch = []

        def send():
            nonlocal total
            body = client.batch([{"op": "put", "key": k, "value": v} for k, v in batch])
            total += len(body["results"])
            if args.json:
                print(json.dumps(body, sort_keys=True))
            batch.clear()
        for pair in pairs():
            batch.append(pair)
            if len(batch) >= args.batch:
                send()
        if batch:
            send()
        if not args.json:
            print(f"OK {total} keys")
        return EXIT_OK
    try:
        return _run_client(args, action)
    finally:
        if source is not sys.stdin:
            source.close()


def _run_stream(args, make_stream, show) -> int:
    from paxoslog.wsclient import CBOR, JSON, Compacted, StreamError
    subprotocol = CBOR if args.cbor else JSON
    with _client(args) as client:
        try:
            for item in make_stream(client, subprotocol):
                if args.json:
                    print(json.dumps(item, sort_keys=True), flush=True)
                else:
                    print(show(item), flush=True)
        except Compacted as exc:
            _report_error(args, exc, "compacted")
            if exc.first is not None:
                print(f"paxoslog: the first available is {exc.first}", file=sys.stderr)
            return EXIT_COMPACTED
        except StreamError as exc:
            _report_error(args, exc, "stream failed")
            return EXIT_UNAVAILABLE
        except KeyboardInterrupt:
            return EXIT_OK              # Ctrl-C is how a followed stream is stopped
    return EXIT_OK


def cmd_watch(args) -> int:
    def make(client, subprotocol):
        key, prefix = (None, args.key) if args.prefix else (args.key, None)
        return client.watch(key, prefix=prefix, start=args.start, prev=args.prev,
                            subprotocol=subprotocol)

    def show(event) -> str:
        text = f"{event['mod_index']:>8}  {event['type']:6}  {event['key']}"
        if event["type"] == "put":
            text += f" = {_show(event['value'])}  (version {event['version']})"
        if "prev" in event:
            text += f"  (was {_show(event['prev']['value'])})"
        return text
    return _run_stream(args, make, show)


def cmd_log_tail(args) -> int:
    def make(client, subprotocol):
        return client.tail(args.start, follow=args.follow, subprotocol=subprotocol)

    def show(entry) -> str:
        command = entry.get("command")
        kind = entry["kind"] + (" (hole)" if entry.get("hole") else "")
        text = "" if command is None else json.dumps(command, sort_keys=True)
        return f"{entry['index']:>8}  {entry['term']:>6}  {kind:12}  {text}"
    return _run_stream(args, make, show)


# ====================================================================== certs

def cmd_certs_init(args) -> int:
    config = _load_config(args.config)
    from paxoslog.certs import init_certs, tls_section
    try:
        files, done = init_certs(config, args.out)
    except ValueError as exc:
        print(f"paxoslog: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"paxoslog: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    for path, action in done:
        print(f"{action:9} {path}")
    print(f"{'':9} {files.ca_key}  (the CA's private key: keep it off the nodes in production)")
    if config.tls is None or args.out is not None:
        print("\nAdd to the conf (paths relative to it):\n")
        print(tls_section(config, files))
    return EXIT_OK


# ====================================================================== serve

def cmd_serve(args) -> int:
    _tune_malloc()
    config = _load_config(args.config)
    from paxoslog.config import ConfigError
    try:
        config.node(args.node)
    except ConfigError as exc:
        print(f"paxoslog: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from paxoslog.server.logs import AccessLog, LogFile, start_logging
    try:
        logging = start_logging(f"n{args.node}", args.log_level or config.log.level or "info",
                                fmt=args.log_format, path=args.log_file)
        access = LogFile(args.access_log) if args.access_log else None
    except OSError as exc:
        print(f"paxoslog: cannot open log file {exc.filename}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_USAGE
    if access is not None:
        logging.files.append(access)
    if "twisted.internet.reactor" not in sys.modules:
        from paxoslog.server import reactor as lean_reactor
        lean_reactor.install()
    from twisted.internet import reactor
    from twisted.logger import Logger
    from paxoslog.server import NodeService
    from paxoslog.server.systemd import SystemdNotifier
    log = Logger(namespace="paxoslog.serve")
    systemd = SystemdNotifier(reactor)
    if args.join:
        code = _join(config, args, log)
        if code != EXIT_OK:
            return code
    try:
        node = NodeService(config, args.node, reactor)
    except ConfigError as exc:          # e.g. an unreadable [auth] tokens_file, an
        print(f"paxoslog: {exc}", file=sys.stderr)   # unusable TLS certificate or key
        return EXIT_USAGE
    if access is not None:
        node.http_requests.access = AccessLog(access)
    outcome = {"code": EXIT_OK, "signals": set()}

    def reload_log_level(new_config) -> list[str]:
        level = new_config.log.level
        before = logging.level
        if level is not None and logging.set_level(level):
            return [f"log level {before} -> {level}"]
        return []
    node.reloader.register("log level", reload_log_level)

    def on_hangup() -> None:
        """SIGHUP: reopen the log files (logrotate), then reload the conf.  Never fatal."""
        from paxoslog.server.reload import ReloadFailed
        for problem in logging.reopen():
            log.error("SIGHUP: {problem}; still writing to the old file", problem=problem)
        log.info("SIGHUP: log files reopened; reloading {path}", path=config.path)
        systemd.reloading()
        try:
            result = node.reloader.reload()
        except ReloadFailed as exc:
            systemd.reloaded(f"reload refused: {exc}"[:200])
            return
        systemd.reloaded(f"reloaded: {len(result['applied'])} change(s) applied, "
                         f"{len(result['needs_restart'])} need a restart")

    def stop(code: int | None = None) -> None:
        if code is not None:
            outcome["code"] = code
        if reactor.running and not getattr(reactor, "_paxoslog_stopping", False):
            reactor._paxoslog_stopping = True
            systemd.stopping()
            reactor.stop()

    def on_signal(signum, frame) -> None:
        # The same signal twice (Ctrl-C again): do not wait any longer.  A different one
        # is not a second request: Ctrl-C under `paxoslog run` reaches the node (SIGINT to
        # the terminal's process group) just before the supervisor's own SIGTERM.
        if signum in outcome["signals"]:
            os._exit(EXIT_ERROR)
        outcome["signals"].add(signum)
        reactor.callFromThread(stop)

    # The WAL writer thread needs the GIL back as soon as its fsync returns: with the
    # default 5 ms switch interval a busy reactor thread could hold a commit that long.
    sys.setswitchinterval(float(os.environ.get("PAXOSLOG_SWITCH_INTERVAL", "0.001")))
    node.on_fatal = lambda exc: stop(EXIT_ERROR)

    def removed(index: int) -> None:
        print(f"paxoslog: node {args.node} was removed from the cluster at index {index}; "
              f"exiting", file=sys.stderr)
        stop(EXIT_OK)
    node.on_removed = removed
    try:
        node.startService()
    except Exception as exc:
        log.critical("cannot start node {node}: {error}", node=args.node, error=exc)
        print(f"paxoslog: cannot start node {args.node}: {exc}", file=sys.stderr)
        node.close_storage()              # writer threads would keep the process alive
        return EXIT_ERROR
    reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
    _tune_gc()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # SIGHUP: reload what can change without a restart; never fatal (server/reload.py).
    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(on_hangup))
    me = config.node(args.node)
    reactor.callWhenRunning(systemd.ready, f"node {args.node} of cluster {config.name} "
                                           f"({config.protocol}): API {me.api}, peers {me.peer}")
    profile_path = os.environ.get("PAXOSLOG_PROFILE")   # developer aid: cProfile the node
    if profile_path:
        import cProfile
        profiler = cProfile.Profile()
        profiler.runcall(reactor.run, installSignalHandlers=False)
        profiler.dump_stats(f"{profile_path}.n{args.node}")
    else:
        reactor.run(installSignalHandlers=False)
    return outcome["code"]


def _tune_malloc() -> None:
    """glibc only: allocations of 128 KiB and more always get their own mapping, returned
    to the system when freed.  By default glibc raises that threshold after each such
    free, so a node that handles megabyte requests, entries and peer frames ends up
    serving them from its heap, where they fragment it and its RSS never shrinks
    (measured with tools/bench_memory.py; docs/design-notes.md, "Memory")."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return                          # not glibc (musl has no mallopt): nothing to tune
    M_MMAP_THRESHOLD = -3
    mallopt(M_MMAP_THRESHOLD, 128 << 10)


def _tune_gc() -> None:
    """After start: move everything allocated so far (modules, the restored state) out of
    the collector's reach (``gc.freeze``), and collect less often.  Measured at 64
    connections (issue 17): full collections walked the whole startup heap, 45-170 ms each
    and several per second on the leader, which made the p99; the young generation ran
    several times per Ready.  Cycles are still collected, only later."""
    import gc
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 2000), gen1, max(gen2, 100))


def _join(config, args, log) -> int:
    """``serve --join``: ask a member to add this node unless it joined before."""
    from paxoslog.join import JoinError, join_cluster
    from paxoslog.server.members_file import MembersFile
    from paxoslog.storage.meta import meta_path
    me = config.node(args.node)
    if MembersFile(me.data_dir).exists():
        log.info("already joined (members.json present): --join ignored")
        return EXIT_OK
    if os.path.exists(meta_path(me.data_dir)):
        print(f"paxoslog: {me.data_dir} already holds the data of a node that did not join "
              f"with --join; a joining node needs an empty data directory", file=sys.stderr)
        return EXIT_USAGE
    endpoints = [e.strip() for e in args.join.split(",") if e.strip()]
    log.info("joining the cluster through {endpoints}", endpoints=", ".join(endpoints))
    try:
        info = join_cluster(config, args.node, endpoints, timeout=args.join_timeout,
                            token=_token(args))
    except JoinError as exc:
        print(f"paxoslog: {exc}", file=sys.stderr)
        return EXIT_ERROR
    log.info("added to cluster {cluster} as a {role} (voters {voters}); starting",
             cluster=info.get("cluster"), role=info.get("role"),
             voters=info.get("applied_config", {}).get("voters"))
    return EXIT_OK


# ====================================================================== auth

def _tokens_path(args) -> str:
    config = _load_config(args.config)
    path = config.auth.tokens_file
    if path is None:
        print(f"paxoslog: {args.config}: auth.tokens_file: not set; add\n\n    [auth]\n"
              f"    tokens_file = \"tokens.json\"   # relative to the conf file\n"
              f"    required = true\n\nto the conf first", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return path


def _read_tokens(path: str, missing_ok: bool = False):
    from paxoslog.tokens import TokensFileError, read_tokens
    try:
        return read_tokens(path, missing_ok=missing_ok)
    except TokensFileError as exc:
        print(f"paxoslog: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _write_tokens(path: str, tokens) -> None:
    from paxoslog.tokens import write_tokens
    try:
        write_tokens(path, tokens)
    except OSError as exc:
        print(f"paxoslog: {path}: cannot write: {exc.strerror}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None


def cmd_auth_add_token(args) -> int:
    from paxoslog.tokens import ClientIdRule, Role, TokensFile, locked_tokens, new_token
    path = _tokens_path(args)
    try:
        rule = ClientIdRule.parse(args.client_id) if args.client_id is not None else None
    except ValueError as exc:
        print(f"paxoslog: --client-id: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with locked_tokens(path):
            tokens = _read_tokens(path, missing_ok=True)
            try:
                token, record = new_token(tokens, Role.parse(args.role), args.name, rule)
            except ValueError as exc:
                print(f"paxoslog: {exc}", file=sys.stderr)
                return EXIT_USAGE
            _write_tokens(path, TokensFile(tokens.tokens + (record,)))
    except OSError as exc:                    # the lock file's folder
        print(f"paxoslog: {path}: cannot lock: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    print(token)
    bound = f", client id {record.client_id}" if record.client_id is not None else ""
    print(f"paxoslog: token {record.name!r} ({record.role.label}{bound}) added to {path}; "
          f"it is shown only this once.  Running nodes accept it within a second.",
          file=sys.stderr)
    return EXIT_OK


def cmd_auth_list(args) -> int:
    import time as _time
    path = _tokens_path(args)
    tokens = _read_tokens(path, missing_ok=True)
    rows = [{"name": t.name, "role": t.role.label, "id": t.id,
             "client_id": None if t.client_id is None else str(t.client_id),
             "created_ms": t.created_ms} for t in tokens.tokens]
    if args.json:
        print(json.dumps({"tokens_file": path, "tokens": rows}, sort_keys=True))
        return EXIT_OK
    table = [("NAME", "ROLE", "CLIENT ID", "ID", "CREATED (UTC)")]
    for row in rows:
        created = _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(row["created_ms"] / 1000))
        table.append((row["name"], row["role"], row["client_id"] or "-", row["id"], created))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return EXIT_OK


def cmd_auth_revoke(args) -> int:
    from paxoslog.tokens import TokensFile, locked_tokens
    path = _tokens_path(args)
    try:
        with locked_tokens(path):
            tokens = _read_tokens(path)
            record = tokens.by_name(args.name)
            if record is None:
                names = ", ".join(t.name for t in tokens.tokens) or "none"
                print(f"paxoslog: {path}: no token named {args.name!r} (tokens: {names})",
                      file=sys.stderr)
                return EXIT_NOT_FOUND
            _write_tokens(path, TokensFile(tuple(t for t in tokens.tokens if t is not record)))
    except OSError as exc:
        print(f"paxoslog: {path}: cannot lock: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    print(f"revoked {record.name} ({record.role.label}); running nodes refuse it within a "
          f"second")
    return EXIT_OK


# ====================================================================== membership

def cmd_cluster_add_node(args) -> int:
    def action(client):
        body = client.add_node(args.node_id, args.peer, args.api,
                               wait="learner" if args.no_wait else "voter")
        _print(args, body, f"node {args.node_id} added: {body.get('role')} "
                           f"(voters {body['applied_config']['voters']}, learners "
                           f"{body['applied_config']['learners']})")
        return EXIT_OK
    return _run_client(args, action)


def cmd_cluster_remove_node(args) -> int:
    def action(client):
        body = client.remove_node(args.node_id)
        _print(args, body, f"node {args.node_id} removed (voters "
                           f"{body['applied_config']['voters']})")
        return EXIT_OK
    return _run_client(args, action)


def cmd_cluster_transfer_leader(args) -> int:
    def action(client):
        body = client.transfer_leader(args.node_id)
        _print(args, body, f"leader: node {body['leader']} (term {body['term']})")
        return EXIT_OK
    return _run_client(args, action)


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
    return _run_client(args, action)


# ====================================================================== cluster up

def cmd_cluster_up(args) -> int:
    config = _load_config(args.conf)
    from twisted.internet import reactor
    from paxoslog.server.cluster import LocalCluster
    color = not args.no_color and sys.stdout.isatty()
    cluster = LocalCluster(config, args.conf, reactor, color=color, log_level=args.log_level,
                           wait_s=args.wait)
    outcome = {"signals": 0}

    def on_signal(signum, frame) -> None:
        outcome["signals"] += 1
        if outcome["signals"] > 2:
            os._exit(EXIT_ERROR)
        reactor.callFromThread(cluster.shutdown)

    def install() -> None:
        # After Twisted's own handlers (its SIGCHLD handler reaps the children): ours
        # replace only SIGTERM/SIGINT, so that stopping means "stop the children first".
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        cluster.start()

    reactor.callWhenRunning(install)
    reactor.run()
    return cluster.exit_code


if __name__ == "__main__":
    sys.exit(main())
