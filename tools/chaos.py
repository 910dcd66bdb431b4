#!/usr/bin/env python3
"""Black-box fault injection on a real paxoslog cluster, with linearizability checking.

Starts ``paxoslog serve`` processes (peer traffic through a frame-aware proxy in this
process), runs concurrent HTTP clients that record every operation, injects a seeded
schedule of faults (kills, pauses, partitions, flaky links, lost unsynced writes,
membership changes: spare nodes join with ``serve --join`` and voters are removed), heals,
reads everything back and checks the history.  Writes ``reports/chaos-<timestamp>-<mode>/``
(see paxoslog/chaos/report.py and docs/chaos.md).

    python tools/chaos.py --duration 600 --mode raft              # long random mix
    python tools/chaos.py --duration 20 --nemesis kill-leader,partition-half --seed 7
    python tools/chaos.py --recheck reports/chaos-20260101-120000-raft   # saved report

Exit codes: 0 valid run, every check passed; 1 a check failed; 2 void run (no fault
injected, or < 100 acknowledged ops/s before the first fault); 3 harness error.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from paxoslog.chaos.nemesis import FAULT_KINDS  # noqa: E402
from paxoslog.chaos.run import EXIT_ERROR, ChaosRun, RunOptions  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chaos.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="nemesis kinds: " + ", ".join(FAULT_KINDS) + "\nexit codes: 0 pass, 1 fail, "
               "2 void, 3 harness error")
    d = RunOptions()
    p.add_argument("--duration", type=float, default=d.duration_s,
                   help="seconds of client traffic (default %(default)s)")
    p.add_argument("--mode", choices=("multipaxos", "raft"), default=d.mode)
    p.add_argument("--nodes", type=int, choices=(3, 5), default=None,
                   help="cluster size (default 5 with --nemesis all, else 3 unless a kind "
                        "needs 5)")
    p.add_argument("--nemesis", default=d.nemesis,
                   help='"all" (random mix) or comma-separated kinds (default %(default)s)')
    p.add_argument("--schedule", choices=("each", "random"), default=None,
                   help="each kind once in order, or random kinds until the time is up "
                        "(default: random for all, each for a list)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    p.add_argument("--reports", default=os.path.join(ROOT, "reports"),
                   help="folder for the report folders (default %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="client workers (default 4/node)")
    p.add_argument("--rate", type=float, default=d.rate,
                   help="target operations/s, all workers together (default %(default)s)")
    p.add_argument("--keys", type=int, default=d.key_slots, help="live keys at a time")
    p.add_argument("--ops-per-key", type=int, default=d.ops_per_key,
                   help="operations on a key before it is replaced by a fresh one")
    p.add_argument("--warmup", type=float, default=None, help="fault-free seconds first")
    p.add_argument("--tail", type=float, default=None,
                   help="seconds of traffic after the final heal (default 10 ET + 1 s)")
    p.add_argument("--checker-timeout", type=float, default=d.checker_timeout_s,
                   help="linearizability checker deadline in seconds; reaching it fails "
                        "the run (default %(default)s)")
    p.add_argument("--min-ok-rate", type=float, default=d.min_ok_rate,
                   help="acknowledged ops/s needed before the first fault (default "
                        "%(default)s); below it the run is void")
    p.add_argument("--tick-ms", type=int, default=d.tick_ms)
    p.add_argument("--heartbeat-ticks", type=int, default=d.heartbeat_ticks)
    p.add_argument("--election-ticks", type=int, default=d.election_ticks)
    p.add_argument("--request-timeout-ms", type=int, default=d.request_timeout_ms)
    p.add_argument("--snapshot-entries", type=int, default=d.snapshot_entries)
    p.add_argument("--plot", choices=("auto", "html", "none"), default=d.plot)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--complete", action="store_true",
                   help="inject every planned fault even if that runs past --duration "
                        "(a loaded machine is slower to restart nodes)")
    p.add_argument("--lock-workers", type=int, default=0,
                   help="also run N lock holders doing fenced writes; checks that the "
                        "lock never has two holders and fencing tokens stay ordered")
    p.add_argument("--lock-ttl-ms", type=int, default=2000)
    p.add_argument("--tls", action="store_true",
                   help="HTTPS API and mutual TLS between peers (certificates from paxoslog "
                        "certs init; the proxy terminates TLS)")
    p.add_argument("--recheck", metavar="REPORT_FOLDER", default=None,
                   help="check a saved report again from its files (history, verdict) and "
                        "write recheck.json; no cluster is started")
    return p


def options_from(args) -> RunOptions:
    nodes = args.nodes
    if nodes is None:
        nodes = 5 if args.nemesis in ("all", "random") or "partition-ring" in args.nemesis else 3
    return RunOptions(duration_s=args.duration, mode=args.mode, nodes=nodes,
                      nemesis=args.nemesis, schedule=args.schedule, seed=args.seed,
                      report_root=args.reports, workers=args.workers, rate=args.rate,
                      key_slots=args.keys, ops_per_key=args.ops_per_key, warmup_s=args.warmup,
                      tail_s=args.tail, checker_timeout_s=args.checker_timeout,
                      min_ok_rate=args.min_ok_rate, tick_ms=args.tick_ms,
                      heartbeat_ticks=args.heartbeat_ticks, election_ticks=args.election_ticks,
                      request_timeout_ms=args.request_timeout_ms,
                      snapshot_entries=args.snapshot_entries, progress=not args.quiet,
                      complete=args.complete,
                      plot=args.plot, tls=args.tls, lock_workers=args.lock_workers,
                      lock_ttl_ms=args.lock_ttl_ms)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.recheck:
        return recheck_report(args.recheck, args.checker_timeout)
    try:
        run_options = options_from(args)
        from twisted.internet import reactor
        run = ChaosRun(reactor, run_options, argv)
    except ValueError as exc:
        print(f"chaos.py: {exc}", file=sys.stderr)
        return 2
    from twisted.internet import defer
    from twisted.logger import globalLogBeginner, textFileLogObserver

    if not args.quiet:
        globalLogBeginner.beginLoggingTo([_errors_only(textFileLogObserver(sys.stderr))],
                                         redirectStandardIO=False)
    outcome = {"code": EXIT_ERROR}

    def finished(code):
        outcome["code"] = code

    def failed(failure):
        failure.printTraceback(file=sys.stderr)

    def go():
        d = defer.Deferred.fromCoroutine(run.run())
        d.addCallbacks(finished, failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    return outcome["code"]


def recheck_report(folder: str, checker_timeout_s: float) -> int:
    from paxoslog.chaos.recheck import recheck
    out = recheck(folder, checker_timeout_s)
    for check in out["checks"]:
        mark = "ok  " if check["ok"] is True else "FAIL"
        print(f"[{mark}] {check['name']}: {check['message']}")
    for kind, row in out["unavailability_by_kind"].items():
        print(f"{kind:<18} n={row['count']:<3} median={row['median_s']}s worst={row['worst_s']}s"
              f" interrupted={row['interrupted']} never={row['never']}")
    print(f"{'PASS' if out['passed'] else 'FAIL'}; wrote {folder}/recheck.json")
    return 0 if out["passed"] else 1


def _errors_only(observer):
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(LogLevel.warn)])


if __name__ == "__main__":
    sys.exit(main())
