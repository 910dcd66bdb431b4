#!/usr/bin/env python3
"""Core throughput: commands committed per CPU second, 3 replicas in one process, no I/O.

Drives the real replicas directly (no simulator, no network model): the leader gets
batches of commands, Readies are honoured immediately and messages delivered in order.
Prints the median of several runs per protocol, and the Raft/Paxos ratio.

    python tools/bench_core.py [--commands 200000] [--batch 64] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import deque

sys.path.insert(0, __file__.rsplit("/tools/", 1)[0])

from paxoslog.core import Config, ReplicaOptions, Role, create_replica  # noqa: E402
from paxoslog.core.limits import Limits  # noqa: E402


def run_once(protocol: str, commands: int, batch: int, window: int) -> float:
    options = ReplicaOptions(heartbeat_ticks=2, election_ticks=10,
                             limits=Limits(pipeline_window=window, batch_commands_max=batch))
    config = Config(frozenset({1, 2, 3}))
    nodes = {n: create_replica(protocol, n, config, options, random.Random(n)) for n in config.voters}
    inbox: deque = deque()
    applied = {n: 0 for n in nodes}

    def drain(node_id: int) -> None:
        replica = nodes[node_id]
        while True:
            ready = replica.ready()
            if ready is None:
                return
            inbox.extend(ready.messages)
            for entry in ready.committed:
                applied[node_id] += len(entry.payload)
            replica.advance(ready)

    def pump() -> None:
        for n in nodes:
            drain(n)
        while inbox:
            msg = inbox.popleft()
            nodes[msg.to].step(msg)
            drain(msg.to)

    # Elect node 1.
    for _ in range(200):
        nodes[1].tick()
        pump()
        if nodes[1].role == Role.LEADER:
            break
    assert nodes[1].role == Role.LEADER, "no leader"
    pump()
    leader = nodes[1]
    payload = [b"k%06d=%s" % (i, b"v" * 48) for i in range(batch)]
    base = applied[1]
    started = time.process_time()
    proposed = 0
    while applied[1] - base < commands:
        if proposed - (applied[1] - base) < batch * window:
            leader.propose(payload)
            proposed += batch
        drain(1)
        # deliver a round of messages
        for _ in range(len(inbox)):
            msg = inbox.popleft()
            nodes[msg.to].step(msg)
            drain(msg.to)
    elapsed = time.process_time() - started
    return (applied[1] - base) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--protocol", default="both", choices=["both", "multipaxos", "raft"])
    args = parser.parse_args()
    protocols = ["multipaxos", "raft"] if args.protocol == "both" else [args.protocol]
    medians = {}
    for protocol in protocols:
        rates = []
        for run in range(args.runs):
            rates.append(run_once(protocol, args.commands, args.batch, args.window))
            print(f"\r{protocol}: run {run + 1}/{args.runs} {rates[-1]:,.0f} cmd/s", end="",
                  flush=True)
        medians[protocol] = statistics.median(rates)
        print(f"\r{protocol:10s} median {medians[protocol]:>12,.0f} commands/CPU-s "
              f"(batch {args.batch}, window {args.window}, runs {args.runs}; "
              f"min {min(rates):,.0f} max {max(rates):,.0f})")
    if len(medians) == 2:
        print(f"raft / multipaxos = {medians['raft'] / medians['multipaxos']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
