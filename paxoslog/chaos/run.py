"""One chaos run from start to verdict (``tools/chaos.py`` is its command line).

1. Plan the fault schedule, make the report folder, start a proxy listener per node (the
   spare nodes that membership changes add included), write the conf (the initial members)
   and each spare's own conf, start the ``paxoslog serve`` processes, wait until every node
   answers and a leader is known.
2. Start the clients; after a fault-free warm-up the nemesis runs its schedule.
3. Heal everything; traffic goes on for a tail so liveness after the heal is measured.
4. Stop the clients; wait until every member applied the same index; read every key back
   through the API (linearizable, recorded in the history) and from each member's own state
   (stale reads of every key); ask every member for its state hashes at one applied index
   and for the configuration it applied; stop the cluster.  "Member" always means the
   current members: nodes that joined included, removed nodes excluded.
5. Check, write the report, return the exit code: 0 valid and every check passed,
   1 a check failed, 2 the run is void (no fault injected, or fewer than ``min_ok_rate``
   acknowledged operations per second before the first fault), 3 the harness itself failed.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace

from twisted.internet import defer, task
from twisted.logger import Logger

from paxoslog.retry import RetryPolicy

from . import checks
from .apiclient import ApiClient
from .cluster import (REMOVED, Cluster, ClusterSpec, NodePorts, allocate_ports,
                      reserve_ports, write_conf, write_spare_conf)
from .history import FAIL, OK, UNKNOWN, History
from .membership import MembershipDriver
from .nemesis import Nemesis, Timeline, parse_kinds, plan_schedule, spares_needed
from .observer import StatusObserver
from .plot import render_timeline
from .proxy import ProxyNetwork, ProxyTls
from .report import format_summary, report_dir_name, scan_logs, write_verdict
from .streams import StreamObservers
from .workload import Workload, WorkloadOptions

__all__ = ["RunOptions", "ChaosRun", "EXIT_PASS", "EXIT_FAIL", "EXIT_VOID", "EXIT_ERROR"]

log = Logger(namespace="paxoslog.chaos.run")

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_VOID = 2
EXIT_ERROR = 3

_STARTUP_TIMEOUT_S = 30.0
_CONVERGE_TIMEOUT_S = 30.0
_FINAL_READ_ATTEMPTS = 20
_FINAL_READS_S = 90.0        # all final reads together: an unavailable cluster fails faster
_HASH_ROUNDS = 10            # status?hashes=1 rounds until every node is at one index


@dataclass(frozen=True)
class RunOptions:
    duration_s: float = 60.0
    mode: str = "multipaxos"
    nodes: int = 3
    nemesis: str = "all"                 # "all"/"random" or comma-separated kinds
    schedule: str | None = None          # "each" (every kind once) | "random"; default by nemesis
    seed: int | None = None
    report_root: str = "reports"
    workers: int | None = None           # default 4 per node
    rate: float = 300.0
    key_slots: int = 6
    ops_per_key: int = 300
    warmup_s: float | None = None
    tail_s: float | None = None
    checker_timeout_s: float = 300.0
    min_ok_rate: float = 100.0
    tick_ms: int = 10
    heartbeat_ticks: int = 3
    election_ticks: int = 30
    request_timeout_ms: int = 2000
    snapshot_entries: int = 5000
    progress: bool = True
    plot: str = "auto"                   # auto (PNG if matplotlib) | html | none
    complete: bool = False               # run every planned fault, even past the duration
    auth: bool = False                   # client tokens required (admin + bound write token)
    tls: bool = False                    # HTTPS API, mutual TLS between peers
    lock_workers: int = 0                # lock holders with fenced writes (locks.py)
    lock_ttl_ms: int = 2000

    def resolved(self) -> "RunOptions":
        seed = self.seed if self.seed is not None else random.SystemRandom().randrange(1 << 31)
        schedule = self.schedule or ("random" if self.nemesis in ("all", "random") else "each")
        workers = self.workers or 4 * self.nodes
        et = self.election_ticks * self.tick_ms / 1000.0
        warmup = self.warmup_s if self.warmup_s is not None else min(5.0, max(2.0, 0.1 *
                                                                              self.duration_s))
        tail = self.tail_s if self.tail_s is not None else max(10 * et + 1.0, 3.0)
        return replace(self, seed=seed, schedule=schedule, workers=workers, warmup_s=warmup,
                       tail_s=tail)


class ChaosRun:
    def __init__(self, reactor, options: RunOptions, argv: list[str] | None = None) -> None:
        self.reactor = reactor
        self.options = options = options.resolved()
        self.argv = argv
        if options.mode not in ("multipaxos", "raft"):
            raise ValueError(f"mode must be multipaxos or raft, got {options.mode!r}")
        if options.nodes not in (3, 5):
            raise ValueError("nodes must be 3 or 5")
        self.kinds = parse_kinds(options.nemesis, options.nodes)
        et = options.election_ticks * options.tick_ms / 1000.0
        self.plans = plan_schedule(self.kinds, seed=options.seed, duration_s=options.duration_s,
                                   warmup_s=options.warmup_s, tail_s=options.tail_s,
                                   election_timeout_s=et,
                                   random_mix=options.schedule == "random")
        self.spec = ClusterSpec(nodes=options.nodes, protocol=options.mode,
                                tick_ms=options.tick_ms, heartbeat_ticks=options.heartbeat_ticks,
                                election_ticks=options.election_ticks,
                                request_timeout_ms=options.request_timeout_ms,
                                snapshot_entries=options.snapshot_entries,
                                spares=spares_needed(self.plans), tls=options.tls)
        self.et = self.spec.election_timeout_s
        self._t0 = time.monotonic()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.folder = os.path.abspath(report_dir_name(options.report_root, stamp, options.mode))
        self.notes: list[str] = []
        self.cluster: Cluster | None = None
        self.proxy: ProxyNetwork | None = None
        self.client: ApiClient | None = None
        self.workload_client: ApiClient | None = None
        self.observer: StatusObserver | None = None
        self.nemesis: Nemesis | None = None
        self.workload: Workload | None = None
        self.history: History | None = None
        self.timeline: Timeline | None = None
        self.membership: MembershipDriver | None = None
        self.streams: StreamObservers | None = None
        self.traffic_start: float | None = None
        self.final_heal: float | None = None
        self._progress_loop = None
        self._last_progress = 0.0
        self.locks = None
        self.cafile: str | None = None

    def clock(self) -> float:
        return time.monotonic() - self._t0

    def say(self, text: str) -> None:
        if self.options.progress:
            sys.stderr.write(f"[chaos {self.clock():7.2f}s] {text}\n")
            sys.stderr.flush()

    # ================================================================== the run

    @staticmethod
    def _make_certs(conf_path: str, spare_confs: dict[int, str], proxy_tls) -> str:
        """``paxoslog certs init`` for the conf and each spare's conf (one CA); every
        node's material goes to the proxy, which terminates TLS.  Returns the CA file."""
        from paxoslog.certs import init_certs
        from paxoslog.config import load_config
        from paxoslog.server.tls import load_node_tls
        config = load_config(conf_path)
        init_certs(config)
        for node in config.node_ids:
            proxy_tls.add(load_node_tls(config, node))
        for node, path in sorted(spare_confs.items()):
            spare = load_config(path)
            init_certs(spare)
            proxy_tls.add(load_node_tls(spare, node))
        return config.tls.ca_file

    async def run(self) -> int:
        o = self.options
        os.makedirs(self.folder)
        data_root = os.path.join(self.folder, "data")
        os.makedirs(data_root)
        self.timeline = Timeline(os.path.join(self.folder, "nemesis.jsonl"), self.clock)
        self.history = History(os.path.join(self.folder, "history.jsonl"), self.clock)
        proxy_tls = ProxyTls() if self.spec.tls else None
        self.proxy = ProxyNetwork(self.reactor, random.Random(f"{o.seed}-proxy"),
                                  secret=self.spec.secret.encode(), tls=proxy_tls)
        ids = self.spec.all_ids
        free = allocate_ports(2 * len(self.spec.node_ids))
        # A spare binds its ports much later: they stay reserved until it starts.
        held, sockets = reserve_ports(2 * len(self.spec.spare_ids))
        free += held
        reserved = {node: sockets[2 * i:2 * i + 2]
                    for i, node in enumerate(self.spec.spare_ids)}
        tokens = self._make_tokens() if o.auth else None
        self.admin_token = tokens and tokens["admin"]
        if tokens is not None:
            self.spec = replace(self.spec, tokens_file=tokens["file"])
        ports = {}
        for i, node in enumerate(ids):
            peer_bind, api = free[2 * i], free[2 * i + 1]
            proxy_port = self.proxy.add_node(node, "127.0.0.1", peer_bind)
            ports[node] = NodePorts(proxy_port, peer_bind, api)
        conf_path = os.path.join(self.folder, "conf.toml")
        conf_text = write_conf(conf_path, self.spec, ports, data_root, f"chaos-{o.seed}")
        spare_confs = {}
        for node in self.spec.spare_ids:
            spare_confs[node] = os.path.join(self.folder, f"conf-n{node}.toml")
            write_spare_conf(spare_confs[node], conf_text, node, ports[node], data_root)
        cafile = None
        if self.spec.tls:
            cafile = self._make_certs(conf_path, spare_confs, proxy_tls)
        self.cafile = cafile
        self.api_urls = [f"{'https' if cafile else 'http'}://127.0.0.1:{p.api}"
                         for n, p in sorted(ports.items()) if n in self.spec.node_ids]
        self.cluster = Cluster(self.reactor, self.spec, conf_path,
                               os.path.join(self.folder, "logs"), data_root,
                               lambda kind, **f: self.timeline.add(kind, **f), self.clock,
                               spare_confs=spare_confs, reserved=reserved)
        endpoints = {n: f"127.0.0.1:{p.api}" for n, p in ports.items()}
        self.client = ApiClient(self.reactor, endpoints,
                                connections_per_node=max(16, 2 * o.workers),
                                token=tokens and tokens["admin"], cafile=cafile)
        # The workload writes with a token bound to its client ids (chaos<seed>-*).
        self.workload_client = self.client if tokens is None else ApiClient(
            self.reactor, endpoints, connections_per_node=max(16, 2 * o.workers),
            token=tokens["write"], cafile=cafile)
        if tokens is not None:
            self.cluster.child_env["PAXOSLOG_TOKEN"] = tokens["admin"]
        self.observer = StatusObserver(self.reactor, self.client, self.cluster, self.clock,
                                       os.path.join(self.folder, "status.jsonl"))
        scheme = "https" if cafile else "http"
        self.streams = StreamObservers(self.reactor, [f"{scheme}://127.0.0.1:{p.api}"
                                                      for p in ports.values()], self.clock,
                                       prefix="k0.", give_up_s=o.duration_s + 60,
                                       cafile=cafile,
                                       token=tokens and tokens["admin"])
        self.membership = MembershipDriver(
            self.reactor, self.cluster, self.client, self.observer, self.timeline, self.clock,
            {n: (f"127.0.0.1:{p.peer_proxy}", f"127.0.0.1:{p.api}") for n, p in ports.items()},
            on_change=self._members_changed)
        self.nemesis = Nemesis(self.reactor, self.cluster, self.proxy, self.observer,
                               self.client, self.timeline, self.clock, self.et,
                               membership=self.membership,
                               acked_since=self.history.acked_since)
        self.say(f"report folder {self.folder}")
        self.say(f"{o.mode}, {o.nodes} nodes, seed {o.seed}, nemesis {o.nemesis} "
                 f"({o.schedule}), {o.duration_s:.0f}s, election timeout {self.et * 1000:.0f}ms"
                 + (f", spare nodes {self.spec.spare_ids}" if self.spec.spares else "")
                 + (", TLS (the proxy terminates it)" if self.spec.tls else
                    ", frame MACs (the proxy re-MACs)"))
        try:
            return await self._run_phases()
        except Exception as exc:  # a harness failure must still leave a report
            log.failure("the chaos run failed")
            return self._abort(f"harness error: {exc!r}", EXIT_ERROR)
        finally:
            await self._teardown()

    async def _run_phases(self) -> int:
        o = self.options
        for node in self.spec.node_ids:
            self.cluster.start(node)
        self.observer.start()
        if not await self.nemesis.wait_healthy(self.spec.node_ids, _STARTUP_TIMEOUT_S):
            return self._abort("not every node answered /health after start (see logs/)")
        if not await self._wait_leader(_STARTUP_TIMEOUT_S):
            return self._abort("no leader was elected after start (see logs/)")

        rng = random.Random(f"{o.seed}-workload")
        self.workload = Workload(self.reactor, self.workload_client, self.history,
                                 self.cluster.members(),
                                 WorkloadOptions(workers=o.workers, rate=o.rate,
                                                 key_slots=o.key_slots,
                                                 ops_per_key=o.ops_per_key,
                                                 timeout_s=o.request_timeout_ms / 1000.0 + 1.0,
                                                 run_tag=f"chaos{o.seed}"), rng)
        self.traffic_start = self.clock()
        self.timeline.add("traffic-start")
        self.streams.start()
        self.workload.start()
        if o.lock_workers:
            from .locks import LockWorkload
            self.locks = LockWorkload(self.reactor, self.api_urls, self.clock,
                                      holders=o.lock_workers, ttl_ms=o.lock_ttl_ms,
                                      cafile=self.cafile, token=self.admin_token,
                                      rng=random.Random(f"{o.seed}-locks"))
            self.locks.start()
        self._start_progress()

        stop_at = self.traffic_start + o.duration_s - o.tail_s
        # --complete: a slow machine (restarts that take seconds) must not skip the
        # faults planned last; the traffic then runs past the duration until they are done.
        await self.nemesis.run(self.plans, self.traffic_start,
                               float("inf") if o.complete else stop_at)
        wait = stop_at - self.clock()
        if wait > 0:
            await task.deferLater(self.reactor, wait, lambda: None)
        await self.nemesis.heal_everything()
        self.final_heal = self.clock()
        self.timeline.add("final-heal")
        self.say("healed everything; traffic continues for the liveness check")
        end = max(self.traffic_start + o.duration_s, self.final_heal + 10 * self.et + 1.0)
        await task.deferLater(self.reactor, max(0.0, end - self.clock()), lambda: None)
        await self.workload.stop()
        if self.locks is not None:
            await self.locks.stop()
        self.timeline.add("traffic-stop")
        self._stop_progress()
        self.say("traffic stopped; waiting for the replicas to converge")

        converged = await self._converge()
        final = await self._final_reads()
        final_index = max([i for i in converged["applied"].values() if i] or [0]) or None
        await self.streams.catch_up(final_index or 0, max(_CONVERGE_TIMEOUT_S, 20 * self.et))
        self.streams.stop()
        states = await self._replica_states()
        states["hash_reports"] = await self._state_hash_reports()
        states["member_reports"] = await self._member_reports()
        states["final_index"] = final_index
        self.membership.finish()
        self.observer.stop()
        await self.cluster.shutdown()
        self.timeline.add("cluster-stopped")
        return self._judge(converged, final, states)

    def _abort(self, reason: str, code: int = EXIT_VOID) -> int:
        self.say(f"ABORT: {reason}")
        self.notes.append(reason)
        if self.history is not None:
            self.history.close()
        verdict = self._base_verdict()
        verdict.update(valid=False, passed=False, void_reasons=[reason], exit_code=code,
                       unexpected_exits=self.cluster.unexpected_exits() if self.cluster else [])
        with open(os.path.join(self.folder, "verdict.json"), "w") as f:
            json.dump(verdict, f, indent=2, default=str)
        return code

    async def _teardown(self) -> None:
        self._stop_progress()
        if self.streams is not None:
            self.streams.stop()
        if self.membership is not None:
            self.membership.finish()
        if self.workload is not None and not self.workload.stopping:
            await self.workload.stop()
        if self.locks is not None and not self.locks.stopping:
            await self.locks.stop()
        if self.observer is not None:
            self.observer.stop()
        if self.cluster is not None:
            await self.cluster.shutdown()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.client is not None:
            await self.client.close()
            if self.workload_client is not self.client:
                await self.workload_client.close()
        if self.timeline is not None:
            self.timeline.close()

    # ================================================================== helpers

    def _make_tokens(self) -> dict:
        """--auth: a tokens file in the report folder with an admin token (observer,
        nemesis, membership, spares' --join) and a write token bound to the workload's
        client ids.  The tokens themselves stay in memory (and the children's environment)."""
        from paxoslog.tokens import ClientIdRule, Role, TokensFile, new_token, write_tokens
        path = os.path.join(self.folder, "tokens.json")
        admin, admin_record = new_token(TokensFile(), Role.ADMIN, "chaos-admin")
        write, write_record = new_token(TokensFile((admin_record,)), Role.WRITE,
                                        "chaos-workload",
                                        ClientIdRule.parse(f"chaos{self.options.seed}-*"))
        write_tokens(path, TokensFile((admin_record, write_record)))
        return {"file": path, "admin": admin, "write": write}

    async def _wait_leader(self, timeout_s: float) -> bool:
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            if self.observer.leader() is not None:
                return True
            await task.deferLater(self.reactor, 0.05, lambda: None)
        return False

    def _members_changed(self) -> None:
        """A membership step completed: clients use the current members from now on."""
        members = self.cluster.members()
        if self.workload is not None:
            self.workload.set_nodes(members)
        self.say(f"members now {members}")

    def _start_progress(self) -> None:
        if not self.options.progress:
            return
        self._progress_loop = task.LoopingCall(self._progress)
        self._progress_loop.clock = self.reactor
        self._progress_loop.start(1.0, now=False)

    def _stop_progress(self) -> None:
        if self._progress_loop is not None and self._progress_loop.running:
            self._progress_loop.stop()
        if self.options.progress and sys.stderr.isatty():
            sys.stderr.write("\n")

    def _progress(self) -> None:
        counts = self.history.counts()
        now = self.clock()
        elapsed = now - self.traffic_start
        recent = self.history.ok_rate(now - 2.0, now)
        leader = self.observer.leader()
        current = self.nemesis.current
        fault = f"{current.kind} {current.targets}" if current is not None else "-"
        injected = sum(1 for r in self.nemesis.records if r.injected)
        line = (f"[chaos {self.options.mode} {elapsed:6.1f}/{self.options.duration_s:.0f}s] "
                f"ops {sum(counts.values())} ok {counts[OK]} fail {counts[FAIL]} "
                f"unk {counts[UNKNOWN]} | {recent:4.0f} ok/s | leader "
                f"{'n%d' % leader if leader else '-'} | faults {injected} | now: {fault}")
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line[:160].ljust(160))
        elif now - self._last_progress >= 5.0:
            self._last_progress = now
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    async def _converge(self) -> dict:
        """Wait until every node reports the same applied index, at least the highest commit
        index any node reported, twice in a row."""
        deadline = self.clock() + max(_CONVERGE_TIMEOUT_S, 20 * self.et)
        stable = 0
        last = None
        statuses: dict = {}
        while self.clock() < deadline:
            statuses = await self.observer.fetch_all(timeout_s=1.0)
            applied = {n: s.get("applied_index") for n, s in statuses.items()}
            commit = max([s.get("commit_index") or 0 for s in statuses.values()] or [0])
            members = self.cluster.members()
            statuses = {n: s for n, s in statuses.items() if n in members}
            applied = {n: s.get("applied_index") for n, s in statuses.items()}
            commit = max([s.get("commit_index") or 0 for s in statuses.values()] or [0])
            if (len(statuses) == len(members) and len(set(applied.values())) == 1
                    and next(iter(applied.values())) >= commit):
                stable = stable + 1 if applied == last else 1
                last = applied
                if stable >= 2:
                    return {"converged": True, "applied": applied,
                            "at_s": round(self.clock(), 3)}
            else:
                stable = 0
            await task.deferLater(self.reactor, 0.2, lambda: None)
        applied = {n: s.get("applied_index") for n, s in statuses.items()}
        return {"converged": False, "applied": applied, "at_s": round(self.clock(), 3)}

    async def _final_reads(self) -> dict:
        """Read every written key back (linearizable), one history operation per key, run
        by the retry planner like the workload's reads: at most ``_FINAL_READ_ATTEMPTS``
        attempts, and none after ``_FINAL_READS_S`` for all keys together (a cluster that
        lost its leader for good would otherwise hold the run for minutes); the keys not
        read leave the lost-writes check undecided."""
        deadline = self.clock() + _FINAL_READS_S
        keys = sorted({r.key for r in self.history.records if r.is_write})
        process = self.history.new_process()
        client_id = f"chaos{self.options.seed}-final-p{process}"
        values: dict[str, object] = {}
        failed: list[str] = []
        nodes = self.cluster.members()
        self.workload.set_nodes(nodes)
        sem = defer.DeferredSemaphore(8)

        async def read(key: str, position: int) -> None:
            remaining = deadline - self.clock()
            if remaining <= 0:
                failed.append(key)
                return
            record = self.history.invoke(process, client_id, nodes[position % len(nodes)],
                                         "get", key)
            policy = RetryPolicy(timeout_s=remaining, attempt_timeout_s=3.0, backoff_s=(0.1,),
                                 attempts_max=_FINAL_READ_ATTEMPTS)
            if await self.workload.do_get(record, policy) == OK:
                values[key] = record.output
            else:
                failed.append(key)

        await defer.gatherResults([
            sem.run(lambda k=key, i=i: defer.Deferred.fromCoroutine(read(k, i)))
            for i, key in enumerate(keys)])
        return {"values": values, "failed": failed}

    async def _until_one_index(self, read, settled):
        """``await read()`` again, 0.2 s apart and at most ``_HASH_ROUNDS`` times, until
        ``settled(result)`` (every node answered at one applied index); the last result.
        After the convergence an entry may still commit (a new leader's no-op after an
        election on a loaded machine): readings across it are not comparable."""
        result = None
        for round_number in range(_HASH_ROUNDS):
            if round_number:
                await task.deferLater(self.reactor, 0.2, lambda: None)
            result = await read()
            if settled(result):
                break
        return result

    async def _state_hash_reports(self) -> dict:
        """Each node's status with ``state_hashes`` (``?hashes=1``), asked again until every
        node answers at the same applied index, so the digests are comparable.  {node:
        status body}; nodes that did not answer are left out."""
        async def read() -> dict:
            nodes = self.cluster.members()
            results = await defer.DeferredList(
                [self.client.status(n, timeout_s=5.0, hashes=True) for n in nodes],
                consumeErrors=True)
            return {node: response.body for node, (ok, response) in zip(nodes, results)
                    if ok and response.status == 200 and isinstance(response.body, dict)}

        def settled(reports: dict) -> bool:
            return (len(reports) == len(self.cluster.members())
                    and len({r.get("applied_index") for r in reports.values()}) == 1)
        return await self._until_one_index(read, settled)

    async def _replica_states(self) -> dict:
        """Each node's own state of every key (stale reads: no quorum round) and its
        applied index, read again until every node answers at the same index."""
        return await self._until_one_index(
            self._replica_states_once,
            lambda r: not r["problems"] and len(set(r["applied"].values())) == 1)

    async def _replica_states_once(self) -> dict:
        states, applied, problems = {}, {}, []
        for node in self.cluster.members():
            try:
                response = await self.client.query_prefix(node, "", timeout_s=5.0)
            except Exception as exc:  # noted; the agreement check then cannot pass
                problems.append(f"node {node}: {exc!r}")
                continue
            if response.status != 200 or not isinstance(response.body, dict):
                problems.append(f"node {node}: prefix read answered {response.status}")
                continue
            if response.field("more"):
                problems.append(f"node {node}: more keys than one prefix read returns")
            states[node] = {kv["key"]: (kv.get("value"), kv.get("create_index"),
                                        kv.get("mod_index"), kv.get("version"))
                            for kv in response.field("kvs") or []}
            applied[node] = response.field("index")
        return {"states": states, "applied": applied, "problems": problems}

    async def _member_reports(self) -> dict:
        """Each member's ``GET /api/v1/cluster/members`` (its applied configuration and its
        membership table): {node: body}; nodes that did not answer are left out."""
        nodes = self.cluster.members()
        results = await defer.DeferredList(
            [self.client.call("GET", n, "/api/v1/cluster/members", None, timeout_s=5.0)
             for n in nodes], consumeErrors=True)
        return {node: response.body for node, (ok, response) in zip(nodes, results)
                if ok and response.status == 200 and isinstance(response.body, dict)}

    def _removed_nodes(self) -> list[int]:
        return sorted(n for n in self.cluster.nodes if self.cluster.status_of(n) == REMOVED)

    def _membership_summary(self) -> dict:
        initial = self.spec.node_ids
        started = set(self.cluster.started_nodes())
        return {"initial": initial, "final": self.cluster.members(),
                "joined": sorted(n for n in self.spec.spare_ids if n in started),
                "removed": self._removed_nodes(),
                "spares_allocated": self.spec.spare_ids,
                "spares_unused": self.cluster.spares()}

    # ================================================================== verdict

    def _base_verdict(self) -> dict:
        o = self.options
        return {"folder": self.folder, "mode": o.mode, "nodes": o.nodes, "seed": o.seed,
                "duration_s": o.duration_s, "nemesis": o.nemesis, "schedule": o.schedule,
                "election_timeout_s": self.et, "options": asdict(o),
                "replay": self.replay_command(), "notes": self.notes}

    def replay_command(self) -> str:
        o = self.options
        args = ["tools/chaos.py", "--duration", f"{o.duration_s:g}", "--mode", o.mode,
                "--nodes", str(o.nodes), "--nemesis", o.nemesis, "--schedule", o.schedule,
                "--seed", str(o.seed)] + (["--complete"] if o.complete else []) + (
            ["--tls"] if o.tls else []) + (["--auth"] if o.auth else []) + (
            ["--lock-workers", str(o.lock_workers), "--lock-ttl-ms", str(o.lock_ttl_ms)]
            if o.lock_workers else [])
        return "python " + " ".join(shlex.quote(a) for a in args)

    def _judge(self, converged: dict, final: dict, states: dict) -> int:
        o = self.options
        self.history.close()
        records = self.history.records
        faults = self.nemesis.records
        injected = [f for f in faults if f.injected]
        first_fault = min((f.start for f in injected), default=None)
        rate_window_end = first_fault if first_fault is not None else self.clock()
        rate_before = checks.ok_rate(records, self.traffic_start, rate_window_end)
        void = []
        if not injected:
            void.append("no fault was injected")
        if rate_before < o.min_ok_rate:
            void.append(f"only {rate_before:.0f} acknowledged operations/s before the first "
                        f"fault (< {o.min_ok_rate:.0f}): the run says nothing")

        self.say(f"checking linearizability of {len(records)} operations "
                 f"(timeout {o.checker_timeout_s:.0f}s)")
        results = [checks.check_linearizable(records, o.checker_timeout_s),
                   checks.check_lost_writes(records, final["values"], final["failed"])]
        agree = checks.check_replicas_agree(states["states"], states["applied"],
                                            expected_nodes=self.cluster.members())
        if not converged["converged"]:
            agree = checks.CheckOutcome(
                "replicas-agree", False, f"replicas did not converge within "
                f"{max(_CONVERGE_TIMEOUT_S, 20 * self.et):.0f}s: applied {converged['applied']}",
                {"converged": converged, "states": agree.as_dict()})
        if states["problems"]:
            agree.data["problems"] = states["problems"]
        results.append(agree)
        results.append(checks.check_state_hashes(states["hash_reports"], self.cluster.members()))
        results.append(checks.check_streams(self.streams.records(), records,
                                            states.get("final_index")))
        results.append(checks.check_membership(states["member_reports"], self.cluster.members(),
                                               self._removed_nodes()))
        leader_seen = next((t for t, leader, _ in self.observer.leader_changes
                            if t >= self.final_heal and leader is not None), None)
        if leader_seen is None and self.observer.leader_changes and \
                self.observer.leader_changes[-1][1] is not None:
            leader_seen = self.final_heal       # a leader was already there at the heal
        results.append(checks.check_liveness(records, self.final_heal, self.et, leader_seen))
        if self.locks is not None:
            from .locks import check_lock_fencing
            results.append(check_lock_fencing(
                self.locks.holds, self.locks.writes, o.lock_ttl_ms / 1000.0,
                max(1, o.election_ticks // 10) / o.election_ticks))
        exits = self.cluster.unexpected_exits()
        results.append(checks.CheckOutcome(
            "no-unexpected-exits", not exits,
            "every process exit was caused by the nemesis" if not exits else
            f"{len(exits)} process exits the nemesis did not cause", {"exits": exits}))

        rows = checks.unavailability(faults, records)
        counts = self.history.counts()
        by_kind: dict[str, int] = {}
        for f in injected:
            by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        passed = not void and all(r.passed for r in results)
        verdict = self._base_verdict()
        traffic_s = (self.clock() if not records else max(
            (r.ret or r.call) for r in records)) - self.traffic_start
        verdict.update(
            valid=not void, void_reasons=void, passed=passed,
            exit_code=EXIT_PASS if passed else (EXIT_VOID if void else EXIT_FAIL),
            checks=[r.as_dict() for r in results],
            ops={"total": len(records), "ok": counts[OK], "fail": counts[FAIL],
                 "unknown": counts[UNKNOWN],
                 "ok_rate_before_first_fault": round(rate_before, 1),
                 "ok_rate_overall": round(counts[OK] / max(traffic_s, 1e-9), 1),
                 "by_kind": _ops_by_kind(records), "keys": len({r.key for r in records})},
            faults_injected=len(injected), faults_by_kind=by_kind,
            faults=[f.as_dict() for f in faults],
            plans=[asdict(p) for p in self.plans],
            unavailability=rows, unavailability_by_kind=checks.summarize_unavailability(rows),
            leader_changes=self.observer.leader_changes,
            traffic_start_s=self.traffic_start, final_heal_s=self.final_heal,
            converged=converged, unexpected_exits=exits,
            membership=self._membership_summary(),
            log_problems=scan_logs({n: self.cluster.log_path(n)
                                    for n in self.cluster.started_nodes()}),
            http_statuses=self.workload.statuses, proxy=self.proxy.stats())
        timeline = None
        if o.plot != "none":
            try:
                timeline = render_timeline(
                    os.path.join(self.folder, "timeline"), records, faults,
                    self.observer.leader_changes, self.clock(),
                    f"{o.mode} {o.nodes} nodes seed {o.seed}: "
                    f"{'PASS' if passed else 'VOID' if void else 'FAIL'}",
                    unknown_span_s=o.request_timeout_ms / 1000.0 + 1.0,
                    force_html=o.plot == "html")
            except Exception as exc:  # the picture must never hide the verdict
                self.notes.append(f"timeline plot failed: {exc!r}")
        verdict["timeline"] = timeline
        write_verdict(self.folder, verdict)
        if o.progress:
            sys.stderr.write("\n" + format_summary(verdict))
        return verdict["exit_code"]


def _ops_by_kind(records) -> dict:
    out: dict[str, dict[str, int]] = {}
    for r in records:
        row = out.setdefault(r.kind, {OK: 0, FAIL: 0, UNKNOWN: 0})
        row[r.status or UNKNOWN] = row.get(r.status or UNKNOWN, 0) + 1
    return out
