"""Prometheus text exposition (format 0.0.4) for the few series a node exports.

Deliberately tiny: counters and gauges are plain attributes the node updates; the one
histogram (fsync latency) is a bucket array.  ``render`` writes them all.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["Histogram", "render_metric", "escape_label"]


class Histogram:
    """Cumulative-bucket histogram in seconds."""

    DEFAULT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                       0.25, 0.5, 1.0, 2.5)

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def to_json(self) -> dict:
        """Bucket bounds (seconds) and per-bucket counts (the last one: above every bound),
        for clients that compute quantiles over the difference of two readings."""
        return {"buckets": list(self.buckets), "counts": list(self.counts),
                "sum": round(self.sum, 6), "count": self.count}

    def lines(self, name: str, labels: str = "") -> list[str]:
        out = []
        running = 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{suffix} {self.sum:.6f}")
        out.append(f"{name}_count{suffix} {self.count}")
        return out


def escape_label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metric(name: str, kind: str, help_text: str, samples) -> list[str]:
    """``samples``: iterable of (labels dict or None, value)."""
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        if labels:
            inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{inner}}} {value}")
        else:
            out.append(f"{name} {value}")
    return out
