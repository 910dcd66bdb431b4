"""What every command group shares: exit codes, the client options, the
token and endpoint lookup, the client with its retry progress, output helpers."""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_CAS_FAILED = 5
EXIT_COMPACTED = 6

DEFAULT_CONFIG = "conf/local-3.toml"


def client_options():
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
    add_token_arguments(client)
    client.add_argument("--cacert", default=None, metavar="FILE",
                        help="CA certificate to verify https endpoints with (default: "
                             "$PAXOSLOG_CACERT, else the conf's [tls] ca_file)")
    return client


def session_options():
    session = argparse.ArgumentParser(add_help=False)
    session.add_argument("--client-id", default=None,
                         help="client id for exactly-once retries (with --sequence)")
    session.add_argument("--sequence", type=int, default=None,
                         help="sequence number for exactly-once retries (with --client-id)")
    return session


def stream_options():
    stream = argparse.ArgumentParser(add_help=False)
    stream.add_argument("--from", dest="start", type=int, default=None, metavar="N",
                        help="first index/revision (default: from the next one committed)")
    stream.add_argument("--cbor", action="store_true",
                        help="use the CBOR subprotocol (default JSON)")
    return stream


def add_prefix_arguments(parser, what: str) -> None:
    parser.add_argument("--prefix", action="store_true", help=what)
    parser.add_argument("--limit", type=int, default=None,
                        help="keys per page (--prefix; default 1000, at most 10000)")
    parser.add_argument("--after", default=None, metavar="CURSOR",
                        help="continue after this key: the \"cursor\" of the previous page")
    parser.add_argument("--all", action="store_true",
                        help="follow the cursor until the last page")


def add_token_arguments(parser, note: str = "") -> None:
    parser.add_argument("--token", default=None, metavar="TOKEN",
                        help="bearer token" + note + " (visible in ps: prefer --token-file "
                             "or $PAXOSLOG_TOKEN)")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help="read the bearer token from FILE" + note)


def resolve_token(args) -> str | None:
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


def load_conf(path: str):
    from paxoslog.config import ConfigError, load_config
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"paxoslog: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def endpoints_of(args) -> list[str]:
    return list(endpoint_ids(args))


def endpoint_ids(args) -> dict[str, int | None]:
    """Endpoint -> node id (None when only --endpoints was given)."""
    if args.endpoints:
        return {e.strip(): None for e in args.endpoints.split(",") if e.strip()}
    path = args.config or os.environ.get("PAXOSLOG_CONFIG") or DEFAULT_CONFIG
    config = load_conf(path)
    return {node.api_url: node.id for node in config.nodes}


def cacert_of(args) -> str | None:
    """The CA file for https endpoints: --cacert, $PAXOSLOG_CACERT, the conf's ca_file."""
    if getattr(args, "cacert", None):
        return args.cacert
    if os.environ.get("PAXOSLOG_CACERT"):
        return os.environ["PAXOSLOG_CACERT"]
    if args.endpoints:
        return None
    config = load_conf(args.config or os.environ.get("PAXOSLOG_CONFIG") or DEFAULT_CONFIG)
    return config.tls.ca_file if config.tls is not None else None


def client_of(args):
    from paxoslog.client import SyncClient
    client = SyncClient(endpoints_of(args), timeout=args.timeout,
                        attempt_timeout=min(3.0, max(0.5, args.timeout / 3)),
                        client_id=getattr(args, "client_id", None), token=resolve_token(args),
                        cafile=cacert_of(args))
    client.on_retry = RetryProgress()
    return client


class RetryProgress:
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


def session_of(args) -> dict:
    if args.client_id is not None and args.client_id.endswith("*") and args.sequence is None:
        return {}          # a prefix (a token bound to "app-*"): the client picks the id
    if (args.client_id is None) != (args.sequence is None):
        print("paxoslog: --client-id and --sequence go together", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    if args.client_id is None:
        return {}
    return {"client_id": args.client_id, "sequence": args.sequence}


def parse_value(text: str, as_json: bool):
    if not as_json:
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        print(f"paxoslog: not valid JSON: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def run_client(args, action) -> int:
    from paxoslog.client import (ClientError, NotFound, RequestFailed, Unavailable,
                                 UnknownOutcome)
    with client_of(args) as client:
        try:
            return action(client)
        except NotFound as exc:
            report_error(args, exc, "not found")
            return EXIT_NOT_FOUND
        except UnknownOutcome as exc:
            report_error(args, exc, "outcome unknown")
            return EXIT_UNAVAILABLE
        except Unavailable as exc:
            report_error(args, exc, "unavailable")
            return EXIT_UNAVAILABLE
        except (RequestFailed, ClientError) as exc:
            report_error(args, exc, "error")
            return EXIT_ERROR


def report_error(args, exc, label: str) -> None:
    if args.json and isinstance(getattr(exc, "body", None), dict):
        print(json.dumps(exc.body))
    print(f"paxoslog: {label}: {exc}", file=sys.stderr)


def print_result(args, body: dict, text: str) -> None:
    if args.json:
        print(json.dumps(body, sort_keys=True))
    else:
        print(text)


def show_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_stream(args, make_stream, show) -> int:
    from paxoslog.wsclient import CBOR, JSON, Compacted, StreamError
    subprotocol = CBOR if args.cbor else JSON
    with client_of(args) as client:
        try:
            for item in make_stream(client, subprotocol):
                if args.json:
                    print(json.dumps(item, sort_keys=True), flush=True)
                else:
                    print(show(item), flush=True)
        except Compacted as exc:
            report_error(args, exc, "compacted")
            if exc.first is not None:
                print(f"paxoslog: the first available is {exc.first}", file=sys.stderr)
            return EXIT_COMPACTED
        except StreamError as exc:
            report_error(args, exc, "stream failed")
            return EXIT_UNAVAILABLE
        except KeyboardInterrupt:
            return EXIT_OK              # Ctrl-C is how a followed stream is stopped
    return EXIT_OK
