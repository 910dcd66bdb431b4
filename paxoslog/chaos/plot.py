"""The timeline picture of a run: operations, faults and leader changes on one time axis.

Three stacked panels share the x axis (seconds since the run started):

1. every operation as a bar from invocation to completion, one row per worker, coloured by
   outcome (ok write, ok read, failed, unknown: drawn to the end of its timeout);
2. acknowledged operations per second, with failed and unknown ones;
3. the leader (node id) as the live nodes reported it, a marker at every change.

Faults are shaded across all panels from start to heal, labelled with their kind.  PNG via
matplotlib when it is installed, else a self-contained HTML file with an SVG drawing.
"""

from __future__ import annotations

import html
import re

from .history import FAIL, OK, UNKNOWN, OpRecord

__all__ = ["render_timeline", "worker_of"]

_COLORS = {"write": "#2e7d32", "read": "#1565c0", FAIL: "#9e9e9e", UNKNOWN: "#ef6c00"}
_FAULT_COLORS = {"kill": "#e53935", "pause": "#8e24aa", "partition": "#1e88e5",
                 "flaky": "#fdd835", "lose": "#6d4c41", "member": "#00897b"}
_WORKER = re.compile(r"-w(\d+)-")


def worker_of(record: OpRecord) -> int:
    match = _WORKER.search(record.client_id or "")
    return int(match.group(1)) if match else -1


def _category(record: OpRecord) -> str:
    if record.status == OK:
        return "write" if record.is_write else "read"
    return record.status or UNKNOWN


def _end_of(record: OpRecord, end_s: float, unknown_span_s: float) -> float:
    if record.ret is not None:
        return record.ret
    if record.end is not None:
        return record.end
    return min(end_s, record.call + unknown_span_s)


def _fault_label(fault) -> str:
    """``number:kind``, and for a membership change what it added and removed."""
    label = f"{fault.number}:{fault.kind}"
    detail = fault.detail or {}
    if fault.kind == "member-change" and "added" in detail:
        label += f" +{detail['added']}"
        if detail.get("removed") is not None:
            label += f" -{detail['removed']}" + ("(L)" if detail.get("removed_was_leader")
                                                 else "")
    return label


def _fault_color(kind: str) -> str:
    return _FAULT_COLORS.get(kind.split("-")[0], "#757575")


def _rates(records: list[OpRecord], end: float, bin_s: float) -> tuple[list, dict]:
    bins = max(1, int(end / bin_s) + 1)
    counts = {OK: [0] * bins, FAIL: [0] * bins, UNKNOWN: [0] * bins}
    for r in records:
        t = r.ret if r.ret is not None else r.call
        i = min(bins - 1, max(0, int(t / bin_s)))
        counts.get(r.status or UNKNOWN, counts[UNKNOWN])[i] += 1
    xs = [i * bin_s for i in range(bins)]
    return xs, {k: [c / bin_s for c in v] for k, v in counts.items()}


def render_timeline(path_base: str, records: list[OpRecord], faults: list,
                    leader_changes: list, end_s: float, title: str,
                    unknown_span_s: float = 3.0, force_html: bool = False) -> str:
    """Write ``path_base + ".png"`` (or ``".html"``) and return the path written."""
    if not force_html:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
        except ImportError:
            pass
        else:
            path = path_base + ".png"
            _render_png(path, records, faults, leader_changes, end_s, title, unknown_span_s)
            return path
    path = path_base + ".html"
    _render_html(path, records, faults, leader_changes, end_s, title, unknown_span_s)
    return path


def _render_png(path, records, faults, leader_changes, end_s, title, unknown_span_s) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MaxNLocator

    width = min(60.0, max(12.0, end_s / 15.0))
    fig, (ax_ops, ax_rate, ax_leader) = plt.subplots(
        3, 1, sharex=True, figsize=(width, 9), gridspec_kw={"height_ratios": [3, 1.4, 1]})
    segments: dict[str, list] = {k: [] for k in _COLORS}
    for r in records:
        lane = worker_of(r)
        end = _end_of(r, end_s, unknown_span_s)
        end = max(end, r.call + 0.002)          # keep instant operations visible
        segments[_category(r)].append([(r.call, lane), (end, lane)])
    for category, segs in segments.items():
        if segs:
            ax_ops.add_collection(LineCollection(segs, colors=_COLORS[category],
                                                 linewidths=4 if category in (FAIL, UNKNOWN)
                                                 else 3, label=category))
    lanes = [worker_of(r) for r in records] or [0]
    ax_ops.set_ylim(min(lanes) - 1, max(lanes) + 1)
    ax_ops.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_ops.set_ylabel("worker (-1: probes)")
    ax_ops.legend(loc="upper right", fontsize=8, ncol=4)
    ax_ops.set_title(title)

    xs, rates = _rates(records, end_s, 0.5)
    ax_rate.plot(xs, rates[OK], color=_COLORS["write"], label="ok/s")
    ax_rate.plot(xs, rates[FAIL], color=_COLORS[FAIL], label="failed/s")
    ax_rate.plot(xs, rates[UNKNOWN], color=_COLORS[UNKNOWN], label="unknown/s")
    ax_rate.set_ylabel("ops/s")
    ax_rate.legend(loc="upper right", fontsize=8, ncol=3)

    if leader_changes:
        times = [t for t, _, _ in leader_changes] + [end_s]
        leaders = [(-0.0 if leader is None else leader) for _, leader, _ in leader_changes]
        ax_leader.step(times, leaders + leaders[-1:], where="post", color="black")
        ax_leader.plot([t for t, _, _ in leader_changes], leaders, "o", color="black",
                       markersize=3)
    ax_leader.set_ylabel("leader (0 = none)")
    ax_leader.set_xlabel("seconds since start")

    for fault in faults:
        if not fault.injected or fault.start is None:
            continue
        stop = fault.heal if fault.heal is not None else fault.start + 0.05
        for ax in (ax_ops, ax_rate, ax_leader):
            ax.axvspan(fault.start, max(stop, fault.start + 0.05), color=_fault_color(
                fault.kind), alpha=0.18, linewidth=0)
        ax_ops.text(fault.start, 1.0, _fault_label(fault), rotation=60,
                    fontsize=7, va="bottom", ha="left", transform=ax_ops.get_xaxis_transform())
    ax_leader.set_xlim(0, end_s)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _render_html(path, records, faults, leader_changes, end_s, title, unknown_span_s) -> None:
    width, lane_h, pad = 1400, 8, 40
    lanes = sorted({worker_of(r) for r in records}) or [0]
    lane_index = {lane: i for i, lane in enumerate(lanes)}
    ops_h = len(lanes) * lane_h
    rate_h, leader_h = 120, 80
    height = pad + ops_h + 20 + rate_h + 20 + leader_h + pad
    end_s = max(end_s, 1e-3)

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * min(max(t, 0.0), end_s) / end_s

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="10">']
    for fault in faults:
        if not fault.injected or fault.start is None:
            continue
        stop = fault.heal if fault.heal is not None else fault.start + 0.05
        parts.append(f'<rect x="{x(fault.start):.1f}" y="{pad}" '
                     f'width="{max(1.0, x(stop) - x(fault.start)):.1f}" height="{height - 2 * pad}" '
                     f'fill="{_fault_color(fault.kind)}" opacity="0.2">'
                     f'<title>{html.escape(f"{_fault_label(fault)} {fault.targets}")}'
                     '</title></rect>')
        parts.append(f'<text x="{x(fault.start):.1f}" y="{pad - 4}">'
                     f'{html.escape(_fault_label(fault).split(":", 1)[1])}</text>')
    for r in records:
        y = pad + lane_index[worker_of(r)] * lane_h + lane_h / 2
        end = _end_of(r, end_s, unknown_span_s)
        parts.append(f'<line x1="{x(r.call):.1f}" x2="{max(x(end), x(r.call) + 1):.1f}" '
                     f'y1="{y:.1f}" y2="{y:.1f}" stroke="{_COLORS[_category(r)]}" '
                     'stroke-width="5"/>')
    base = pad + ops_h + 20
    xs, rates = _rates(records, end_s, 0.5)
    top = max([1.0] + rates[OK] + rates[FAIL] + rates[UNKNOWN])
    for status, color in ((OK, _COLORS["write"]), (FAIL, _COLORS[FAIL]),
                          (UNKNOWN, _COLORS[UNKNOWN])):
        points = " ".join(f"{x(t):.1f},{base + rate_h * (1 - v / top):.1f}"
                          for t, v in zip(xs, rates[status]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}"/>')
    parts.append(f'<text x="4" y="{base + 10}">{top:.0f}/s</text>')
    base += rate_h + 20
    node_max = max([1] + [leader or 0 for _, leader, _ in leader_changes])
    for i, (t, leader, term) in enumerate(leader_changes):
        t_next = leader_changes[i + 1][0] if i + 1 < len(leader_changes) else end_s
        y = base + leader_h * (1 - (leader or 0) / node_max)
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t_next):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="black" stroke-width="2"><title>leader {leader} term {term} '
                     f'from {t:.2f}s</title></line>')
    parts.append(f'<text x="4" y="{base + 10}">leader</text></svg>')
    legend = " ".join(f'<span style="color:{c}">&#9632; {html.escape(k)}</span>'
                      for k, c in _COLORS.items())
    with open(path, "w") as f:
        f.write(f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
                f"<h3>{html.escape(title)}</h3><p>{legend}</p>{''.join(parts)}\n")
