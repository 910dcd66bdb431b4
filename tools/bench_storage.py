#!/usr/bin/env python3
"""Storage benchmark: durable WAL appends with group commit, and snapshot write/restore.

    python tools/bench_storage.py                      # everything, 1M keys (~1 GB state)
    python tools/bench_storage.py --keys 100000 --skip-wal
    python tools/bench_storage.py --skip-snapshot --records 500000 --batch 256

WAL: 128-byte records (one entry each, one WAL record each), ``--batch`` records per fsync,
``--runs`` runs; prints durable records/s (median) and the same through DiskStorage.save
(one Ready of ``--batch`` entries per fsync).  Target: >= 100,000 records/s.

Snapshot: a kv-like state of ``--keys`` keys x 1 KiB values (half random, half repetitive
text) streamed into a snapshot through DiskStorage.save_snapshot, then restored through
DiskStorage.load in a fresh process (which verifies the newest snapshot, then streams it
into a dict).  Each phase runs in its own interpreter so peak RSS (getrusage) is its own.
Targets for 1M keys: write <= 10 s, restore <= 10 s, peak RSS <= 2x the state.

A benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cbor2  # noqa: E402

from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta  # noqa: E402
from paxoslog.core.quorum import Config  # noqa: E402
from paxoslog.core.ready import Ready  # noqa: E402
from paxoslog.storage import DiskStorage, StorageOptions  # noqa: E402
from paxoslog.storage.wal import WriteAheadLog  # noqa: E402

VALUE_BYTES = 1024
ITEMS_PER_CHUNK = 4096          # ~4 MiB chunks
CONFIG = Config(frozenset({1, 2, 3}))


def progress(text: str) -> None:
    sys.stderr.write("\r" + text.ljust(78))
    sys.stderr.flush()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # Linux: KiB


# ---------------------------------------------------------------------- WAL

def bench_wal_run(directory: str, records: int, batch: int) -> tuple[float, list[float]]:
    """Durable records/s through WriteAheadLog, and the duration of every sync()."""
    wal = WriteAheadLog(directory)
    wal.open()
    payload = os.urandom(128)
    syncs = []
    start = time.perf_counter()
    for first in range(1, records + 1, batch):
        for index in range(first, min(first + batch, records + 1)):
            wal.append_entries([Entry(index, 1, ENTRY_NORMAL, (payload,))])
        before = time.perf_counter()
        wal.sync()
        syncs.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - start
    wal.close()
    return records / elapsed, syncs


def bench_save_run(directory: str, records: int, batch: int) -> tuple[float, list[float]]:
    """Durable records/s through DiskStorage.save, one Ready of ``batch`` entries each."""
    storage = DiskStorage(directory, "bench", 1, "raft", StorageOptions())
    storage.load()
    payload = os.urandom(128)
    syncs = []
    start = time.perf_counter()
    for first in range(1, records + 1, batch):
        last = min(first + batch, records + 1)
        ready = Ready(hard_state=HardState(1, 1, first - 1),
                      entries=[Entry(i, 1, ENTRY_NORMAL, (payload,)) for i in range(first, last)])
        storage.append(ready)
        before = time.perf_counter()
        storage.sync()
        syncs.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - start
    storage.close()
    return records / elapsed, syncs


def probe_fdatasync(directory: str, batch: int, count: int = 100) -> float:
    """Median latency of a bare write + fdatasync of one batch's bytes (~150 B a record)."""
    path = os.path.join(directory, "probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    times = []
    try:
        for _ in range(count):
            os.write(fd, bytes(batch * 150))
            before = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - before)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times)


def bench_wal(args) -> dict:
    results = {}
    for label, fn in (("WriteAheadLog.append + sync", bench_wal_run),
                      ("DiskStorage.append + sync (1 Ready/batch)", bench_save_run)):
        rates, cpu_rates, sync_medians = [], [], []
        for run in range(args.runs):
            directory = tempfile.mkdtemp(prefix="bench-wal-", dir=args.dir)
            try:
                progress(f"{label}: run {run + 1}/{args.runs} ...")
                rate, syncs = fn(os.path.join(directory, "d"), args.records, args.batch)
                rates.append(rate)
                cpu_rates.append(args.records / (args.records / rate - sum(syncs)))
                sync_medians.append(statistics.median(syncs))
                progress(f"{label}: run {run + 1}/{args.runs}: {rate:,.0f} records/s")
            finally:
                shutil.rmtree(directory)
        sys.stderr.write("\n")
        results[label] = (rates, cpu_rates, sync_medians)
    probe_dir = tempfile.mkdtemp(prefix="bench-fsync-", dir=args.dir)
    try:
        fsync_latency = probe_fdatasync(probe_dir, args.batch)
    finally:
        shutil.rmtree(probe_dir)
    print(f"\nWAL: {args.records:,} records of 128 bytes, {args.batch} per fsync, "
          f"{args.runs} runs (medians)")
    for label, (rates, cpu_rates, sync_medians) in results.items():
        print(f"  {label:<42} {statistics.median(rates):>9,.0f} durable records/s "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f}); sync {statistics.median(sync_medians) * 1e3:.2f} ms; "
              f"{statistics.median(cpu_rates):,.0f} records/s excluding fsync time")
    print(f"  bare write+fdatasync of one batch on this disk: {fsync_latency * 1e3:.2f} ms "
          f"-> ceiling {args.batch / fsync_latency:,.0f} records/s at {args.batch} per fsync")
    return results


# ---------------------------------------------------------------------- snapshot phases

def make_state(keys: int) -> dict[bytes, bytes]:
    text = (b"lorem ipsum dolor sit amet, consectetur adipiscing elit " * 10)[:VALUE_BYTES // 2]
    state = {}
    for i in range(keys):
        state[b"key-%010d" % i] = os.urandom(VALUE_BYTES // 2) + text
        if i % 100_000 == 0:
            progress(f"building state: {i:,}/{keys:,} keys")
    return state


def state_chunks(state: dict[bytes, bytes]):
    """The kv state as ~4 MiB CBOR chunks, produced one at a time."""
    batch = []
    for item in state.items():
        batch.append(item)
        if len(batch) == ITEMS_PER_CHUNK:
            yield cbor2.dumps(batch)
            batch = []
    if batch:
        yield cbor2.dumps(batch)


def phase_write(args) -> dict:
    state = make_state(args.keys)
    state_bytes = sum(len(k) + len(v) for k, v in state.items())
    storage = DiskStorage(args.data_dir, "bench", 1, "raft",
                          StorageOptions(snapshot_level=args.level, snapshot_threads=args.threads))
    storage.load()
    progress("writing snapshot ...")
    start = time.perf_counter()
    written = storage.save_snapshot(SnapshotMeta(args.keys, 1, CONFIG), [("kv", state_chunks(state))],
                                    sessions={"client-1": [1, b"ok"]})
    seconds = time.perf_counter() - start
    storage.close()
    return {"seconds": seconds, "state_bytes": state_bytes, "file_bytes": os.path.getsize(written.path),
            "peak_rss": peak_rss_bytes()}


def phase_restore(args) -> dict:
    start = time.perf_counter()
    storage = DiskStorage(args.data_dir, "bench", 1, "raft", StorageOptions())
    restored, reader = storage.load()
    verified = time.perf_counter() - start
    state: dict[bytes, bytes] = {}
    for name, chunks in reader.states():
        for chunk in chunks:
            for key, value in cbor2.loads(chunk):
                state[key] = value
    reader.close()
    seconds = time.perf_counter() - start
    storage.close()
    state_bytes = sum(len(k) + len(v) for k, v in state.items())
    return {"seconds": seconds, "verify_seconds": verified, "keys": len(state),
            "state_bytes": state_bytes, "peak_rss": peak_rss_bytes(),
            "index": restored.snapshot.index}


def run_phase(phase: str, args, data_dir: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--data-dir", data_dir,
               "--keys", str(args.keys), "--level", str(args.level), "--threads", str(args.threads)]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_snapshot(args) -> None:
    directory = tempfile.mkdtemp(prefix="bench-snap-", dir=args.dir)
    try:
        data_dir = os.path.join(directory, "node")
        write = run_phase("write", args, data_dir)
        sys.stderr.write("\n")
        restore = run_phase("restore", args, data_dir)
        sys.stderr.write("\n")
    finally:
        shutil.rmtree(directory)
    gib = 1 << 30
    state = write["state_bytes"]
    print(f"\nSnapshot: {args.keys:,} keys x {VALUE_BYTES} B = {state / gib:.2f} GiB of state, "
          f"zstd level {args.level}, threads {args.threads}")
    print(f"  file                {write['file_bytes'] / gib:.2f} GiB "
          f"(ratio {state / write['file_bytes']:.2f})")
    print(f"  write               {write['seconds']:.2f} s   peak RSS {write['peak_rss'] / gib:.2f} GiB "
          f"= {write['peak_rss'] / state:.2f}x state")
    print(f"  restore             {restore['seconds']:.2f} s   (verify pass {restore['verify_seconds']:.2f} s) "
          f"  peak RSS {restore['peak_rss'] / gib:.2f} GiB = {restore['peak_rss'] / state:.2f}x state")
    print(f"  restored            {restore['keys']:,} keys, {restore['state_bytes'] / gib:.2f} GiB, "
          f"index {restore['index']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000, help="WAL records per run")
    parser.add_argument("--batch", type=int, default=256, help="records per fsync")
    parser.add_argument("--runs", type=int, default=5, help="WAL runs (the median is reported)")
    parser.add_argument("--keys", type=int, default=1_000_000, help="snapshot keys (1 KiB values)")
    parser.add_argument("--level", type=int, default=StorageOptions().snapshot_level,
                        help="zstd level (default: the storage default)")
    parser.add_argument("--threads", type=int, default=0, help="zstd worker threads")
    parser.add_argument("--dir", default=None, help="where to put the temporary data dirs")
    parser.add_argument("--skip-wal", action="store_true")
    parser.add_argument("--skip-snapshot", action="store_true")
    parser.add_argument("--phase", choices=["write", "restore"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        result = (phase_write if args.phase == "write" else phase_restore)(args)
        print(json.dumps(result))
        return 0
    if not args.skip_wal:
        bench_wal(args)
    if not args.skip_snapshot:
        bench_snapshot(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
