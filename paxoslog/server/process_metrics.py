"""The standard ``process_*`` series of Prometheus client libraries, read from /proc.

Same names, types and units as the official clients' process collector (so existing
dashboards and alerts work): CPU seconds, resident and virtual memory, open and maximum file
descriptors, start time.  Off Linux (no /proc) only what ``resource`` knows is given.
"""

from __future__ import annotations

import os
import resource

__all__ = ["process_samples"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


_BOOT = _boot_time()


def process_samples() -> list[tuple[str, str, str, float]]:
    """(name, type, help, value) of every series available here."""
    out = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.append(("process_cpu_seconds_total", "counter",
                "Total user and system CPU time spent in seconds.",
                usage.ru_utime + usage.ru_stime))
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        # fields[0] is field 3 (state) of proc(5): vsize is field 23, rss 24, starttime 22
        out.append(("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
                    float(fields[20])))
        out.append(("process_resident_memory_bytes", "gauge",
                    "Resident memory size in bytes.", float(fields[21]) * _PAGE))
        if _BOOT is not None:
            out.append(("process_start_time_seconds", "gauge",
                        "Start time of the process since unix epoch in seconds.",
                        _BOOT + float(fields[19]) / _TICKS))
    except (OSError, IndexError, ValueError):
        out.append(("process_resident_memory_bytes", "gauge",
                    "Resident memory size in bytes.", float(usage.ru_maxrss) * 1024))
    try:
        out.append(("process_open_fds", "gauge", "Number of open file descriptors.",
                    float(len(os.listdir("/proc/self/fd")))))
    except OSError:
        pass
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        out.append(("process_max_fds", "gauge", "Maximum number of open file descriptors.",
                    float(soft)))
    return out
