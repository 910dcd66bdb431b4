"""Commands on keys and state machines: ``put``, ``get``, ``txn``, ``delete``,
``cas``, ``sm``, ``put-many`` (batches) and ``watch``."""

from __future__ import annotations

import json
import sys

from .common import (EXIT_CAS_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE,
                     add_prefix_arguments, parse_value, print_result, run_client, run_stream,
                     session_of, show_value)


def register(commands, client, session, stream) -> None:
    """Add this group's commands to the ``paxoslog`` parser."""
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

    watch = commands.add_parser(
        "watch", parents=[client, stream], help="kv events (put/delete) as they commit",
        description="Follow the puts and deletes of KEY (or of every key starting with KEY "
                    "with --prefix) from revision --from on, over the WebSocket endpoint; "
                    "resumes at another node by itself.  Ctrl-C stops.")
    watch.add_argument("key", help="the key, or the prefix with --prefix (\"\": every key)")
    watch.add_argument("--prefix", action="store_true", help="KEY is a prefix")
    watch.add_argument("--prev", action="store_true", help="show each key's previous value")
    watch.set_defaults(func=cmd_watch)


def cmd_put(args) -> int:
    value = parse_value(args.value, args.json_value)

    def action(client):
        extra = {"lease": args.lease} if args.lease is not None else {}
        body = client.put(args.key, value, **session_of(args), **extra)
        result = body.get("result") or {}
        print_result(args, body, f"OK index={body['index']} version={result.get('version')}")
        return EXIT_OK
    return run_client(args, action)


def cmd_get(args) -> int:
    def action(client):
        if args.prefix:
            return _get_prefix(args, client)
        body = client.get(args.key, args.consistency, min_revision=args.min_revision)
        print_result(args, body, show_value(body.get("value")))
        return EXIT_OK
    return run_client(args, action)


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
                          spec.get("failure", []), **session_of(args))
        result = body["result"]
        print_result(args, body, json.dumps(result, sort_keys=True))
        return EXIT_OK if result["succeeded"] else EXIT_CAS_FAILED
    return run_client(args, action)


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
                print(f"{record['key']}\t{show_value(record['value'])}")
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
    session = session_of(args)
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
        body = client.delete(args.key, **session_of(args))
        result = body.get("result") or {}
        if not result.get("deleted"):
            print_result(args, body, f"not found (index={body['index']})")
            return EXIT_NOT_FOUND
        print_result(args, body, f"deleted index={body['index']}")
        return EXIT_OK
    return run_client(args, action)


def cmd_cas(args) -> int:
    value = parse_value(args.value, args.json_value)
    kwargs = dict(session_of(args))
    if args.expected_version is not None:
        kwargs["expected_version"] = args.expected_version
    elif args.absent:
        kwargs["expected"] = None
    else:
        kwargs["expected"] = parse_value(args.expected, args.json_value)

    def action(client):
        body = client.cas(args.key, value, **kwargs)
        result = body.get("result") or {}
        if not result.get("succeeded"):
            print_result(args, body, f"precondition failed (current version "
                               f"{result.get('current_version')})")
            return EXIT_CAS_FAILED
        print_result(args, body, f"OK index={body['index']} version={result.get('version')}")
        return EXIT_OK
    return run_client(args, action)


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
                body = client.sm(args.name, {**command, **session_of(args)})
        print_result(args, body, show_value(body.get("result")))
        return EXIT_OK
    return run_client(args, action)


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
            yield key, parse_value(value, args.json_value)

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
        return run_client(args, action)
    finally:
        if source is not sys.stdin:
            source.close()


def cmd_watch(args) -> int:
    def make(client, subprotocol):
        key, prefix = (None, args.key) if args.prefix else (args.key, None)
        return client.watch(key, prefix=prefix, start=args.start, prev=args.prev,
                            subprotocol=subprotocol)

    def show(event) -> str:
        text = f"{event['mod_index']:>8}  {event['type']:6}  {event['key']}"
        if event["type"] == "put":
            text += f" = {show_value(event['value'])}  (version {event['version']})"
        if "prev" in event:
            text += f"  (was {show_value(event['prev']['value'])})"
        return text
    return run_stream(args, make, show)
