"""Operating a cluster: the log (``log entries``, ``tail``, ``export``, the
offline inspectors), backups (``snapshot save``, ``restore``), ``recover``, client tokens
(``auth``), TLS certificates (``certs init``) and ``completion``."""

from __future__ import annotations

import argparse
import json
import sys

from .common import (DEFAULT_CONFIG, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE,
                     add_token_arguments, cacert_of, endpoints_of, load_conf, resolve_token,
                     run_client, run_stream)


def register(commands, client, session, stream) -> None:
    """Add this group's commands to the ``paxoslog`` parser."""
    from paxoslog.storage.inspect import add_arguments as add_inspect_arguments

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

    tail = log_sub.add_parser("tail", parents=[client, stream],
                              help="committed entries over the WebSocket endpoint",
                              description="Print committed log entries from --from N "
                                          "(default: the next one) up to the newest; with "
                                          "-f, keep following (resuming at another node "
                                          "by itself).")
    tail.add_argument("-f", "--follow", action="store_true", help="keep following")
    tail.set_defaults(func=cmd_log_tail)

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
    save.add_argument("--timeout", type=_timeout_seconds, default=120.0,
                      help="seconds to get a node to serve the backup (default 120; finite, "
                           "> 0, at most a week)")
    save.add_argument("--force", action="store_true", help="replace FILE if it exists")
    save.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_token_arguments(save, " (an admin token)")
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

    completion = commands.add_parser(
        "completion", help="print a shell completion script",
        description="Print a completion script for bash or zsh.  bash: "
                    "`source <(paxoslog completion bash)` (or save it in "
                    "/etc/bash_completion.d/paxoslog); zsh: `source <(paxoslog completion "
                    "zsh)`.")
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(func=cmd_completion)


def _timeout_seconds(text: str) -> float:
    """argparse type of ``--timeout``: a finite number of seconds > 0 (inf and 1e300 made
    an OverflowError in the socket layer, nan never ended)."""
    from paxoslog.operate.backup import check_timeout
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    try:
        return check_timeout(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace(repr(value), repr(text))) from None


def cmd_completion(args) -> int:
    from paxoslog.completion import completion_script
    from paxoslog.cli import build_parser
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
    return run_client(args, action)


def _operate(args, work) -> int:
    """Run an operator command; ``OperateError`` -> its message and exit code."""
    from paxoslog.operate.datadir import Interrupted, OperateError
    try:
        return work()
    except OperateError as exc:
        print(f"paxoslog: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        print(f"paxoslog: interrupted by {exc.name}", file=sys.stderr)
        return exc.exit_code


def cmd_snapshot_save(args) -> int:
    from paxoslog.client import SyncClient
    from paxoslog.operate.backup import save_backup
    from paxoslog.operate.progress import human_bytes

    def work() -> int:
        endpoints = endpoints_of(args)
        with SyncClient(endpoints, timeout=args.timeout, token=resolve_token(args),
                        cafile=cacert_of(args)) as client:
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
    config = load_conf(args.config)
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
    config = load_conf(args.config)
    from paxoslog.operate.recover import recover_node

    def work() -> int:
        lines: list[str] = []

        def show(line: str) -> None:
            print(line, flush=True)          # the hints must survive a crash of this process
        out = lines.append if args.json else show
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
    config = load_conf(args.config) if args.config else None
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


def cmd_log_tail(args) -> int:
    def make(client, subprotocol):
        return client.tail(args.start, follow=args.follow, subprotocol=subprotocol)

    def show(entry) -> str:
        command = entry.get("command")
        kind = entry["kind"] + (" (hole)" if entry.get("hole") else "")
        text = "" if command is None else json.dumps(command, sort_keys=True)
        return f"{entry['index']:>8}  {entry['term']:>6}  {kind:12}  {text}"
    return run_stream(args, make, show)


def cmd_certs_init(args) -> int:
    config = load_conf(args.config)
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


def _tokens_path(args) -> str:
    config = load_conf(args.config)
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
