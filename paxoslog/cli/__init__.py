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
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import (EXIT_CAS_FAILED, EXIT_COMPACTED, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK,
                     EXIT_UNAVAILABLE, EXIT_USAGE, client_options, session_options,
                     stream_options)
from . import cluster, coordination, data, operations, serve

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_NOT_FOUND",
           "EXIT_UNAVAILABLE", "EXIT_CAS_FAILED", "EXIT_COMPACTED"]


def build_parser() -> argparse.ArgumentParser:
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
    client, session, stream = client_options(), session_options(), stream_options()
    for group in (serve, cluster, data, coordination, operations):
        group.register(commands, client, session, stream)
    return parser


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
