"""The pure half of tools/bench_compare.py: results of one run (wrk's ``done()`` lines or a
list of latencies), medians over rounds, issue 17's goals, the markdown report and the plot.
Kept apart so that tests/unit/test_bench_compare.py can check it without starting anything."""

from __future__ import annotations

import math
import os
import statistics

KEYS = 1000
# Points of the latency CDF each run reports (percent); the first four are the table's.
PERCENTILES = tuple(sorted({float(p) for p in range(1, 100)} | {99.5, 99.9, 99.95, 99.99}))
# (name, kind, connections), in the order they run.
WORKLOADS = (("puts, 1 connection", "put", 1), ("puts, 64 connections", "put", 64),
             ("puts, 256 connections", "put", 256),
             ("linearizable gets, 64 connections", "get", 64))
ETCD = "etcd"
# (key in a system's results, what is timed), in the order they alternate.
FAULTS = (("kill", "kill -9 of the leader to the next acknowledged write"),
          ("pause", "SIGSTOP of the leader to the next acknowledged write"))


def parse_wrk(output: str) -> dict:
    """The result of one wrk run from the ``BENCH`` lines its ``done()`` printed."""
    requests = duration_us = None
    errors = {}
    cdf = {}
    for line in output.splitlines():
        fields = line.split()
        if not fields or fields[0] != "BENCH":
            continue
        if fields[1] == "requests":
            requests = int(fields[2])
        elif fields[1] == "duration_us":
            duration_us = int(fields[2])
        elif fields[1] == "errors":
            errors = dict(zip(("connect", "read", "write", "status", "timeout"),
                              map(int, fields[2:7])))
        elif fields[1] == "latency_us":
            cdf[float(fields[2])] = int(fields[3]) / 1000.0
    if requests is None or not duration_us or not cdf:
        raise ValueError(f"no BENCH summary in wrk's output: {output[-1000:]!r}")
    ok = requests - errors.get("status", 0)
    return result_of(ok / (duration_us / 1e6), sum(errors.values()), cdf)


def result_of(rate: float, errors: int, cdf: dict[float, float]) -> dict:
    """One run's result: rate (answered 200/s), errors, p50..p99.9 and the CDF points."""
    return {"rate": rate, "errors": errors,
            "p50_ms": cdf[50.0], "p90_ms": cdf[90.0], "p99_ms": cdf[99.0], "p999_ms": cdf[99.9],
            "cdf": sorted(cdf.items())}


def percentiles_of(latencies_ms: list[float]) -> dict[float, float]:
    """Nearest-rank percentiles (as wrk reports them) of a list of latencies."""
    ordered = sorted(latencies_ms)
    if not ordered:
        return {p: float("nan") for p in PERCENTILES}
    return {p: ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * p / 100) - 1))]
            for p in PERCENTILES}


def median_result(runs: list[dict]) -> dict:
    """Medians over repeated runs of one workload: each figure separately, the CDF point by
    point (the median of each percentile)."""
    out = {key: statistics.median(r[key] for r in runs)
           for key in ("rate", "p50_ms", "p90_ms", "p99_ms", "p999_ms")}
    out["errors"] = sum(r["errors"] for r in runs)
    out["rates"] = [r["rate"] for r in runs]
    out["rounds"] = [{key: r[key] for key in ("rate", "p50_ms", "p99_ms")} for r in runs]
    points = [dict(r["cdf"]) for r in runs]
    out["cdf"] = [(p, statistics.median(pts[p] for pts in points)) for p in sorted(points[0])]
    return out


def round_ratios(ours: dict, theirs: dict, key: str) -> list[float]:
    """Each round's own ``ours[key] / theirs[key]`` (bench_compare.py runs a workload on
    every system in turn, so round k of each was measured seconds apart); empty when
    either result lacks its rounds."""
    a, b = ours.get("rounds"), theirs.get("rounds")
    if a and b and len(a) == len(b):
        return [x[key] / y[key] for x, y in zip(a, b)]
    return []


def paired_ratio(ours: dict, theirs: dict, key: str) -> float:
    """``ours[key] / theirs[key]``: the median of the rounds' own ratios when both carry
    their rounds (the machine's drift between rounds cancels), else the ratio of the
    medians."""
    ratios = round_ratios(ours, theirs, key)
    return statistics.median(ratios) if ratios else ours[key] / theirs[key]


def _shown(ratio: float, meets) -> str:
    """Two decimals, or three where two would round across the goal's line (1.003x is
    not met by "<= 1x", and "1.00x, not met" reads like a mistake)."""
    two = f"{ratio:.2f}"
    return two if meets(float(two)) == meets(ratio) else f"{ratio:.3f}"


def goals(mode: dict, etcd: dict | None) -> list[tuple[str, str, bool | None]]:
    """Issue 17's goals for one paxoslog mode: (goal, measured, met: True/False/None when
    it cannot be judged from this run).  ``mode``/``etcd``: workload name -> median result,
    plus ``"kill"`` and ``"pause"`` -> {"median_ms", "worst_ms", "each_ms"}."""
    rows = []

    def ratio_goal(label, workload, measured_key, factor, higher):
        ours = mode.get(workload)
        theirs = (etcd or {}).get(workload)
        if not ours or not theirs:
            rows.append((label, "no etcd in this run" if ours else "not measured", None))
            return
        def meets(ratio: float) -> bool:
            return ratio >= factor if higher else ratio <= factor

        ratio = paired_ratio(ours, theirs, measured_key)
        rounds = round_ratios(ours, theirs, measured_key)
        # The rounds' spread says how far one run's verdict can be trusted.
        spread = (f"; rounds {min(rounds):.2f}-{max(rounds):.2f}x, "
                  f"{sum(map(meets, rounds))} of {len(rounds)} meet it"
                  if len(rounds) > 1 else "")
        rows.append((label, f"{_shown(ratio, meets)}x{spread}", meets(ratio)))

    one, w64, w256, gets = (w[0] for w in WORKLOADS)
    ratio_goal("1 connection: p50 <= etcd's", one, "p50_ms", 1.0, False)
    if one in mode:
        r = mode[one]["p99_ms"] / mode[one]["p50_ms"]
        rows.append(("1 connection: p99 <= 2x own p50", f"{r:.2f}x", r <= 2.0))
    for workload in (w64, w256):
        ratio_goal(f"{workload}: writes/s >= 1.5x etcd's", workload, "rate", 1.5, True)
        ratio_goal(f"{workload}: p99 <= etcd's", workload, "p99_ms", 1.0, False)
    ratio_goal(f"{gets}: reads/s >= 3x etcd's", gets, "rate", 3.0, True)
    ratio_goal(f"{gets}: p99 <= etcd's", gets, "p99_ms", 1.0, False)
    kill = mode.get("kill")
    for label, key, limit in (("median <= 150 ms", "median_ms", 150),
                              ("worst <= 400 ms", "worst_ms", 400)):
        rows.append((f"kill -9 of the leader to the next write: {label}",
                     f"{kill[key]:.0f} ms" if kill else "not measured",
                     kill[key] <= limit if kill else None))
    pause = mode.get("pause")
    # A partition is not measured: the verdict stands for pauses alone.
    rows.append(("pause/partition to the next write: median <= 0.6 s",
                 f"pause only: {pause['median_ms']:.0f} ms" if pause else "not measured",
                 pause["median_ms"] <= 600 if pause else None))
    rows.append(("RSS per node with 1 M keys of 1 KiB < 2x raw data",
                 "see tools/bench_memory.py", None))
    return rows


def _cell(result: dict | None, one_connection: bool) -> str:
    if not result:
        return "-"
    tail = f"p50 {result['p50_ms']:.2f} ms" if one_connection else f"p99 {result['p99_ms']:.1f} ms"
    errors = f", {result['errors']} errors" if result["errors"] else ""
    return f"{result['rate']:,.0f}/s, {tail}{errors}"


def render_report(results: dict[str, dict], meta: dict) -> str:
    """The markdown report.  ``results``: system name -> workload -> median result (and
    ``"failover"``)."""
    systems = list(results)
    paxos = [s for s in systems if s != ETCD]
    etcd = results.get(ETCD)
    command = f"python tools/bench_compare.py {meta['argv']}".strip()
    lines = [f"# paxoslog against etcd, {meta['started']}", "",
             f"`{command}` at {meta['commit']}; "
             f"generator: {meta['generator']}; {meta['repeat']} round(s) of "
             f"{meta['duration']:g} s (+{meta['warmup']:g} s warm-up) per workload, medians; "
             f"{meta['kills_total']} kill(s) and {meta['pauses_total']} pause(s) of the "
             f"leader per system.  3 nodes each on 127.0.0.1, "
             f"128-byte values over {KEYS:,} keys, requests to the leader, fsync on; paxoslog "
             f"with `conf/local-3.toml` timings; {meta['etcd']}.", "",
             f"Load average (1, 5, 15 min) at the start: {meta['load_start']}, at the end: "
             f"{meta['load_end']} ({os.cpu_count()} cores, shared by the generator and "
             f"the nodes).", "",
             "Failover, the same prober for every system: from the kill -9 (or SIGSTOP) of the "
             "leader, a new put every 50 ms through the other members in turn (a new "
             "connection each, 5 s timeout), the first acknowledgement counting.  A put sent "
             "to a follower of the dead or stalled leader may wait out the server's own "
             "request timeout, so a sequential client would time itself; this is the earliest "
             "moment a client could have had a write acknowledged.  Kills and pauses "
             "alternate; a killed leader is restarted, a paused one resumed (SIGCONT), and "
             "each waits until all members name one leader and it has caught up.", "",
             "| workload | " + " | ".join(systems) + " |",
             "|---|" + "---|" * len(systems)]
    for name, _, connections in WORKLOADS:
        lines.append(f"| {name} | " + " | ".join(
            _cell(results[s].get(name), connections == 1) for s in systems) + " |")
    lines.append("| p50 / p90 / p99 / p99.9 (ms), puts at 64 | " + " | ".join(
        _percentile_cell(results[s].get(WORKLOADS[1][0])) for s in systems) + " |")
    for kind, label in FAULTS:
        lines.append(f"| {label} | " + " | ".join(
            _failover_cell(results[s].get(kind)) for s in systems) + " |")
    if etcd:
        lines += ["", "Ratios to etcd in this run (throughput: higher is better; latency: lower "
                  "is better), each the median over the rounds of that round's own ratio "
                  "(a round runs each workload on every system in turn, seconds apart); "
                  "the goals below are judged on them:", "",
                  "| workload | " + " | ".join(
                      f"{s}: rate / p50 / p99" for s in paxos) + " |",
                  "|---|" + "---|" * len(paxos)]
        for name, _, _ in WORKLOADS:
            cells = []
            for s in paxos:
                ours, theirs = results[s].get(name), etcd.get(name)
                cells.append("-" if not ours or not theirs else " / ".join(
                    f"{paired_ratio(ours, theirs, key):.2f}x"
                    for key in ("rate", "p50_ms", "p99_ms")))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    else:
        lines += ["", "etcd was not measured (not installed: `apt-get install -y etcd-server`), "
                  "so the goals relative to etcd cannot be judged."]
    lines += ["", "Issue 17's goals:", "", "| goal | " + " | ".join(paxos) + " |",
              "|---|" + "---|" * len(paxos)]
    per_mode = {s: goals(results[s], etcd) for s in paxos}
    for i, (label, _, _) in enumerate(per_mode[paxos[0]] if paxos else []):
        cells = []
        for s in paxos:
            _, measured, met = per_mode[s][i]
            verdict = {True: "met", False: "**not met**", None: "n/a"}[met]
            cells.append(f"{verdict} ({measured})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Throughput of each round (requests/s), to judge the spread:", "",
              "| workload | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
    for name, _, _ in WORKLOADS:
        lines.append(f"| {name} | " + " | ".join(
            ", ".join(f"{r:,.0f}" for r in results[s][name]["rates"]) if name in results[s]
            else "-" for s in systems) + " |")
    if meta.get("plot"):
        lines += ["", f"![latency CDFs and throughput]({meta['plot']})"]
    return "\n".join(lines) + "\n"


def _percentile_cell(result: dict | None) -> str:
    if not result:
        return "-"
    return " / ".join(f"{result[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"))


def _failover_cell(failover: dict | None) -> str:
    if not failover:
        return "-"
    return (f"median {failover['median_ms']:.0f} ms, worst {failover['worst_ms']:.0f} ms "
            f"(of {len(failover['each_ms'])})")


def plot(results: dict[str, dict], path: str) -> bool:
    """Latency CDFs per workload and throughput against connections; False without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, NullLocator, ScalarFormatter
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    panels = list(axes.flat)
    for ax, (name, _, _) in zip(panels, WORKLOADS):
        for system, per_workload in results.items():
            result = per_workload.get(name)
            if result:
                # y = 1 / (1 - p) on a log axis spreads the tail: 90, 99, 99.9 evenly
                ax.plot([ms for _, ms in result["cdf"]],
                        [100 / (100 - p) for p, _ in result["cdf"]], label=system)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = (0, 50, 90, 99, 99.9, 99.99)
        ax.set_yticks([100 / (100 - p) for p in ticks], [f"{p:g}" for p in ticks])
        ax.yaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("percentile")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = panels[len(WORKLOADS)]
    for system, per_workload in results.items():
        points = [(c, per_workload[n]["rate"]) for n, kind, c in WORKLOADS
                  if kind == "put" and n in per_workload]
        if points:
            ax.plot(*zip(*points), marker="o", label=system)
    ax.set_xscale("log")
    ax.set_xticks([c for _, kind, c in WORKLOADS if kind == "put"],
                  [str(c) for _, kind, c in WORKLOADS if kind == "put"])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("connections")
    ax.set_ylabel("puts/s (median)")
    ax.set_title("put throughput against connections")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = panels[len(WORKLOADS) + 1]
    names = [s for s in results if any(results[s].get(kind) for kind, _ in FAULTS)]
    for k, (kind, _) in enumerate(FAULTS):
        x0 = (k - (len(FAULTS) - 1) / 2) * 0.3       # each fault beside the other
        label = {"kill": "kill -9", "pause": "SIGSTOP"}[kind]
        for i, system in enumerate(names):
            fault = results[system].get(kind)
            if not fault:
                continue
            ax.scatter([i + x0] * len(fault["each_ms"]), fault["each_ms"], alpha=0.6,
                       color=f"C{k}", label=label)
            label = None                              # one legend entry per fault
            ax.plot([i + x0 - 0.12, i + x0 + 0.12], [fault["median_ms"]] * 2, color="k")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("ms (bar: median)")
    ax.set_title("leader killed / paused to the next write")
    ax.grid(True, axis="y", alpha=0.3)
    if names:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
