"""``paxoslog serve`` (one node) and ``paxoslog cluster up`` (every node of a local
conf as child processes)."""

from __future__ import annotations

import os
import signal
import sys

from .common import (EXIT_ERROR, EXIT_OK, EXIT_USAGE, add_token_arguments, load_conf,
                     resolve_token)


def register(commands, client, session, stream) -> None:
    """Add this group's commands to the ``paxoslog`` parser."""
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
    add_token_arguments(serve, " (--join only: an admin token)")
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    _tune_malloc()
    config = load_conf(args.config)
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
        for problem in logging.reopen():
            log.error("SIGHUP: {problem}; still writing to the old file", problem=problem)
        log.info("SIGHUP: log files reopened; reloading {path}", path=config.path)
        reload_for_systemd(node.reloader, systemd)

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


def reload_for_systemd(reloader, systemd) -> None:
    """The reload of a SIGHUP, between ``RELOADING=1`` and ``READY=1``.  ``READY=1`` is sent
    whatever the reload raised: after ``RELOADING=1`` without it, systemd shows the unit as
    "reloading" for good.  A refused conf is a status line; an unexpected exception still
    propagates afterwards (the reactor logs it with its traceback; the node keeps running)."""
    from paxoslog.server.reload import ReloadFailed
    systemd.reloading()
    status = "reload failed: see the log"
    try:
        result = reloader.reload()
        status = (f"reloaded: {len(result['applied'])} change(s) applied, "
                  f"{len(result['needs_restart'])} need a restart")
    except ReloadFailed as exc:
        status = f"reload refused: {exc}"[:200]
    finally:
        systemd.reloaded(status)


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
                            token=resolve_token(args))
    except JoinError as exc:
        print(f"paxoslog: {exc}", file=sys.stderr)
        return EXIT_ERROR
    log.info("added to cluster {cluster} as a {role} (voters {voters}); starting",
             cluster=info.get("cluster"), role=info.get("role"),
             voters=info.get("applied_config", {}).get("voters"))
    return EXIT_OK


def cmd_cluster_up(args) -> int:
    config = load_conf(args.conf)
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
