#!/usr/bin/env python3
"""Multi-Paxos vs Raft on the same seeded workloads and fault schedules, in the simulator.

For each protocol, with identical seeds (so identical network draws, client choices and
nemesis decisions as far as the protocols let them coincide):

* fault-free run: throughput (committed client writes per virtual second), messages and
  bytes per committed command, commit latency in ticks (p50/p99);
* leader-loss runs, the leader killed (kill -9: its peers' connections are reset, fast
  failover) and, on the same seeds, powered off (nothing reset: the election timeout, the
  baseline): ticks from the loss to the next leader elected and to the next committed
  write, and elections started per fault (median and worst over many seeds);
* mixed-fault runs (crashes, partitions, pauses, drops): latency and elections per fault.

Prints a side-by-side table, writes JSON (--json) and, when matplotlib is installed, a PNG
of the commit-latency distributions (--plot).

    python tools/compare_modes.py [--seeds 40] [--json reports/compare.json]
                                  [--plot reports/compare.png]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paxoslog.sim.cluster import TICK_MS, SimOptions, Simulation  # noqa: E402
from paxoslog.sim.network import NetworkProfile  # noqa: E402

PROTOCOLS = ("multipaxos", "raft")


def _write_latencies(sim: Simulation) -> list[float]:
    return [(op.ret - op.call) / TICK_MS for op in sim.history.operations
            if op.ret is not None and op.kind != "get"]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def fault_free(protocol: str, seed: int, nodes: int) -> dict:
    options = SimOptions(protocol=protocol, nodes=nodes, clients=16, keys=8, think_ms=0.5,
                         duration_ms=3000.0, codec=True,
                         network=NetworkProfile(delay_min_ms=0.2, delay_max_ms=1.0))
    sim = Simulation(seed, options).run()
    writes = [op for op in sim.history.operations if op.ret is not None and op.kind != "get"]
    committed = len(writes)
    return {
        "throughput": committed / (options.duration_ms / 1000.0),
        "messages_per_command": sim.network.sent / max(committed, 1),
        "bytes_per_command": sim.network.bytes / max(committed, 1),
        "latency_ticks": _write_latencies(sim),
    }


def leader_crash(protocol: str, seed: int, nodes: int, how: str = "kill") -> dict:
    """The leader of a busy, fault-free cluster is killed (``how="kill"``) or loses power
    ("power-loss"): ticks to the next leader and to the next committed write."""
    options = SimOptions(protocol=protocol, nodes=nodes, clients=4, keys=4,
                         duration_ms=2500.0, client_timeout_ms=300.0,
                         network=NetworkProfile(delay_min_ms=0.2, delay_max_ms=2.0))
    sim = Simulation(seed, options)
    sim.start()
    sim.nemesis.active = False
    sim.run_until(800.0)
    leader = sim.leader()
    if leader is None:
        return {}
    elections_before = sim.stats["elections"]
    crashed_at = sim.now
    if how == "kill":
        sim.nodes[leader].kill()
    else:
        sim.nodes[leader].crash()
    sim.run_until(crashed_at + 2000.0)
    after = [op.ret for op in sim.history.operations
             if op.ret is not None and op.kind != "get" and op.ret > crashed_at]
    recovery = (min(after) - crashed_at) / TICK_MS if after else float("inf")
    elected = sim.failover_ticks[how][0] if sim.failover_ticks[how] else float("inf")
    return {"recovery_ticks": recovery, "elected_ticks": elected,
            "elections": sim.stats["elections"] - elections_before}


def mixed(protocol: str, seed: int, nodes: int) -> dict:
    options = SimOptions.random_for(seed, protocol, nodes)
    options.codec = True
    sim = Simulation(seed, options).run()
    faults = max(1, sum(1 for _, text in sim.faults
                        if text.split()[0] in ("crash", "kill", "pause", "partition")))
    writes = [op for op in sim.history.operations if op.ret is not None and op.kind != "get"]
    return {"elections_per_fault": sim.stats["elections"] / faults,
            "latency_ticks": _write_latencies(sim),
            "messages_per_command": sim.network.sent / max(len(writes), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=40, help="seeds for the fault runs")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--json", default="reports/compare_modes.json")
    parser.add_argument("--plot", default="reports/compare_modes.png")
    args = parser.parse_args()
    started = time.monotonic()
    results: dict[str, dict] = {}
    for protocol in PROTOCOLS:
        ff = [fault_free(protocol, seed, args.nodes) for seed in range(3)]
        crashes, outages, mixes = [], [], []
        for seed in range(args.seeds):
            crashes.append(leader_crash(protocol, 1000 + seed, args.nodes, "kill"))
            outages.append(leader_crash(protocol, 1000 + seed, args.nodes, "power-loss"))
            mixes.append(mixed(protocol, 2000 + seed, args.nodes))
            print(f"\r{protocol}: seed {seed + 1}/{args.seeds}", end="", flush=True)
        print("\r" + " " * 40 + "\r", end="")
        latencies = [x for run in ff for x in run["latency_ticks"]]
        fault_latencies = [x for run in mixes for x in run["latency_ticks"]]
        recoveries = [c["recovery_ticks"] for c in crashes if c]
        elected = [c["elected_ticks"] for c in crashes if c]
        outage_recoveries = [c["recovery_ticks"] for c in outages if c]
        outage_elected = [c["elected_ticks"] for c in outages if c]
        results[protocol] = {
            "throughput_cmd_per_s": statistics.median(r["throughput"] for r in ff),
            "messages_per_command": statistics.median(r["messages_per_command"] for r in ff),
            "bytes_per_command": statistics.median(r["bytes_per_command"] for r in ff),
            "commit_latency_p50_ticks": _pct(latencies, 0.50),
            "commit_latency_p99_ticks": _pct(latencies, 0.99),
            "faulty_latency_p50_ticks": _pct(fault_latencies, 0.50),
            "faulty_latency_p99_ticks": _pct(fault_latencies, 0.99),
            "leader_crash_to_commit_ticks_median": statistics.median(recoveries),
            "leader_crash_to_commit_ticks_max": max(recoveries),
            "leader_crash_to_leader_ticks_median": statistics.median(elected),
            "leader_crash_to_leader_ticks_max": max(elected),
            "leader_power_loss_to_leader_ticks_median": statistics.median(outage_elected),
            "leader_power_loss_to_leader_ticks_max": max(outage_elected),
            "leader_power_loss_to_commit_ticks_median": statistics.median(outage_recoveries),
            "leader_power_loss_to_commit_ticks_max": max(outage_recoveries),
            "elections_per_leader_crash_median": statistics.median(
                c["elections"] for c in crashes if c),
            "elections_per_fault_mean": statistics.mean(m["elections_per_fault"] for m in mixes),
            "_latencies": latencies,
            "_fault_latencies": fault_latencies,
        }
    rows = [
        ("throughput (cmd/s, fault-free, virtual)", "throughput_cmd_per_s", "{:,.0f}"),
        ("messages per committed command", "messages_per_command", "{:.2f}"),
        ("bytes per committed command", "bytes_per_command", "{:.0f}"),
        ("commit latency p50 (ticks)", "commit_latency_p50_ticks", "{:.2f}"),
        ("commit latency p99 (ticks)", "commit_latency_p99_ticks", "{:.2f}"),
        ("latency p50 under faults (ticks)", "faulty_latency_p50_ticks", "{:.2f}"),
        ("latency p99 under faults (ticks)", "faulty_latency_p99_ticks", "{:.2f}"),
        ("leader kill -> new leader, median (ticks)", "leader_crash_to_leader_ticks_median", "{:.1f}"),
        ("leader kill -> new leader, worst (ticks)", "leader_crash_to_leader_ticks_max", "{:.1f}"),
        ("leader kill -> next commit, median (ticks)", "leader_crash_to_commit_ticks_median", "{:.1f}"),
        ("leader kill -> next commit, worst (ticks)", "leader_crash_to_commit_ticks_max", "{:.1f}"),
        ("leader power loss -> new leader, median (ticks)", "leader_power_loss_to_leader_ticks_median", "{:.1f}"),
        ("leader power loss -> new leader, worst (ticks)", "leader_power_loss_to_leader_ticks_max", "{:.1f}"),
        ("leader power loss -> next commit, median (ticks)", "leader_power_loss_to_commit_ticks_median", "{:.1f}"),
        ("leader power loss -> next commit, worst (ticks)", "leader_power_loss_to_commit_ticks_max", "{:.1f}"),
        ("elections per leader crash (median)", "elections_per_leader_crash_median", "{:.1f}"),
        ("elections per fault (mixed faults, mean)", "elections_per_fault_mean", "{:.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'metric':{width}s} | multipaxos | raft | raft/paxos |")
    print(f"|{'-' * (width + 2)}|-----------:|-----:|-----------:|")
    for label, key, fmt in rows:
        a, b = results["multipaxos"][key], results["raft"][key]
        ratio = f"{b / a:.2f}" if a else "-"
        print(f"| {label:{width}s} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    print(f"\n{args.nodes} nodes, tick = {TICK_MS:.0f} ms virtual, {args.seeds} fault seeds, "
          f"{time.monotonic() - started:.0f}s")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({p: {k: v for k, v in r.items() if not k.startswith("_")}
                       for p, r in results.items()}, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no plot (pip install matplotlib)")
            return 0
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, title in ((axes[0], "_latencies", "fault-free"),
                               (axes[1], "_fault_latencies", "mixed faults")):
            for protocol in PROTOCOLS:
                values = sorted(results[protocol][key])
                if values:
                    ys = [i / len(values) for i in range(1, len(values) + 1)]
                    ax.plot(values, ys, label=protocol)
            ax.set_xscale("log")
            ax.set_xlabel("commit latency (ticks, log scale)")
            ax.set_ylabel("fraction of writes")
            ax.set_title(f"Write latency CDF, {title}")
            ax.legend()
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
