"""Coordination from the shell: ``lease``, ``lock NAME -- COMMAND`` and
``elect``."""

from __future__ import annotations

import os
import sys
import time

from .common import (EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE,
                     print_result, run_client, session_of, show_value)


def register(commands, client, session, stream) -> None:
    """Add this group's commands to the ``paxoslog`` parser."""
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


def cmd_lease(args) -> int:
    def action(client):
        if args.action == "grant":
            body = client.lease_grant(args.ttl_ms, **session_of(args))
            print_result(args, body, str(body["result"]["id"]))
        elif args.action == "revoke":
            body = client.lease_revoke(args.id)
            print_result(args, body, f"revoked; {body['result']['deleted']} keys deleted")
        else:
            body = (client.lease_keepalive(args.id) if args.action == "keepalive"
                    else client.lease_ttl(args.id, keys=True))
            text = f"ttl_ms={body['ttl_ms']} remaining_ms={body['remaining_ms']}"
            if "keys" in body:
                text += " keys=" + ",".join(body["keys"])
            print_result(args, body, text)
        return EXIT_OK
    return run_client(args, action)


def _hold_while(renew, ttl_ms: int, command: list[str], env: dict, *,
                clock=time.monotonic, sleep=time.sleep) -> int:
    """Run ``command`` (or, when empty, wait for SIGINT/SIGTERM) while ``renew(timeout_s)``
    keeps the lease alive every ttl/3; terminate it once the lease is lost or may have run
    out.  The lease lives at least a TTL from when the last acknowledged renewal was sent,
    so each renewal gets only the time left until then: a cluster that does not answer
    stops ``command`` when the lease may expire, not a whole client timeout later.  The
    exit code."""
    import signal
    import subprocess

    ttl_s = ttl_ms / 1000.0
    proc = subprocess.Popen(command, env=env) if command else None
    stop: list = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum)) \
        if proc is None else None
    try:
        return _hold(renew, ttl_s, proc, stop, clock, sleep)
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _hold(renew, ttl_s: float, proc, stop: list, clock, sleep) -> int:
    import subprocess

    from paxoslog.client import ClientError
    from paxoslog.recipes import LockLost
    interval = ttl_s / 3
    now = clock()
    # acquire renewed the lease at most a third of a TTL ago
    alive_until, next_renewal, why = now + ttl_s - interval, now + interval, "none sent"
    while True:
        now = clock()
        if now >= alive_until:
            lost = f"no renewal acknowledged for a whole TTL: {why}"
            break
        try:
            if proc is not None:
                return proc.wait(timeout=max(0.0, min(next_renewal, alive_until) - now))
            if stop:
                return EXIT_OK
            sleep(max(0.0, min(next_renewal, alive_until) - now))
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:
            if proc is not None:
                proc.terminate()
                proc.wait()
            return EXIT_ERROR
        sent = clock()
        if sent < next_renewal or sent >= alive_until:
            continue                                  # woke up to check the deadline
        try:
            renew(alive_until - sent)
        except LockLost as exc:
            lost = str(exc)
            break
        except ClientError as exc:
            why = str(exc)
            next_renewal = clock() + min(0.2, interval / 4)   # again soon, while time is left
            continue
        alive_until, next_renewal = sent + ttl_s, sent + interval
    print(f"paxoslog: lost the lease ({lost}); stopping", file=sys.stderr)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return EXIT_ERROR


def _within(client, call):
    """``call()`` made with the client's deadline cut to ``timeout_s`` (at least 0.1 s)."""
    def bounded(timeout_s: float):
        saved = client.timeout
        client.timeout = max(0.1, min(saved, timeout_s))
        try:
            return call()
        finally:
            client.timeout = saved
    return bounded


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
            return _hold_while(_within(client, lock.keepalive), args.ttl_ms, command, env)
        finally:
            try:
                lock.release()
            except Exception as exc:  # the lease expires on its own
                print(f"paxoslog: release failed ({exc}); the lock frees when its lease "
                      "expires", file=sys.stderr)
    return run_client(args, action)


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
                print_result(args, leader, show_value(leader["value"]))
                return EXIT_OK

            def show(leader) -> bool:
                print(show_value(leader["value"]) if leader else "(no leader)", flush=True)
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
            return _hold_while(_within(client, election.keepalive), args.ttl_ms, command,
                               env)
        finally:
            try:
                election.resign()
            except Exception:
                pass
    return run_client(args, action)
