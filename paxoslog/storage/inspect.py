"""Offline and live inspection: ``paxoslog log dump``, ``log verify``, ``snapshot inspect``.

Strictly read-only: no lock is taken and nothing is written, so it runs next to a live node
(whose last segment may end in a record being appended: reported as a torn tail, which is
not an error).  Exit status: 0 healthy, 1 corruption or an inconsistent log, 2 unusable
arguments (no such directory/file).

Wire into the CLI with ``add_arguments(subparsers)``; every subcommand sets ``func`` (call
``args.func(args)`` and exit with its return value).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import time
import zlib

import cbor2

from paxoslog.core.log import ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry, entry_config
from paxoslog.terms import describe_term, term_fields

from .errors import CorruptLog, CorruptSnapshot, StorageError
from .hardstate import HARDSTATE_FILE, read_hardstate
from .meta import check_format, meta_path, read_meta
from .snapshot import SnapshotStore, verify_snapshot
from .wal import Replay
from .walscan import (REC_ENTRIES, REC_HARDSTATE, REC_HEADER, REC_SNAPSHOT, REC_SYNC,
                      REC_TRUNCATE, RECORD_NAMES, SegmentScan, list_segments, scan_segment)

__all__ = ["add_arguments", "main_log_dump", "main_log_verify", "main_snapshot_inspect",
           "read_wal", "verify_data_dir"]

EXIT_OK = 0
EXIT_CORRUPT = 1
EXIT_USAGE = 2
_KIND_NAMES = {ENTRY_NORMAL: "normal", ENTRY_NOOP: "noop", ENTRY_CONFIG: "config"}


def add_arguments(subparsers) -> None:
    """Register ``log dump``, ``log verify`` and ``snapshot inspect`` on an argparse
    subparsers object (each sets ``func``)."""
    log = subparsers.add_parser("log", help="inspect a node's write-ahead log (read-only)")
    log_commands = log.add_subparsers(dest="log_command", metavar="COMMAND", required=True)
    dump = log_commands.add_parser("dump", help="print the WAL records")
    dump.add_argument("--data-dir", required=True, help="the node's data directory")
    dump.add_argument("--from", dest="from_index", type=int, default=None, metavar="N",
                      help="first entry index to show")
    dump.add_argument("--to", dest="to_index", type=int, default=None, metavar="M",
                      help="last entry index to show")
    dump.add_argument("--json", action="store_true", help="one JSON object per line")
    dump.add_argument("--all-records", action="store_true",
                      help="also show segment headers and SYNC records")
    dump.set_defaults(func=main_log_dump)
    verify = log_commands.add_parser("verify", help="check checksums, continuity, snapshots")
    verify.add_argument("--data-dir", required=True, help="the node's data directory")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--skip-snapshots", action="store_true",
                        help="do not decompress the snapshot files")
    verify.set_defaults(func=main_log_verify)
    snap = subparsers.add_parser("snapshot", help="inspect snapshot files (read-only)")
    snap_commands = snap.add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    inspect = snap_commands.add_parser("inspect", help="metadata, sizes, ratio, checksum")
    inspect.add_argument("file", help="a .snap.zst file")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(func=main_snapshot_inspect)


# ---------------------------------------------------------------------- reading

def read_wal(data_dir: str) -> tuple[list[SegmentScan], list[str]]:
    """Scan every segment read-only and without stopping at damage.  Returns the scans and
    the problems of the directory itself (missing segments)."""
    wal_dir = os.path.join(data_dir, "wal")
    found = list_segments(wal_dir, strict=False)
    problems = []
    for (prev, _), (seq, _) in zip(found, found[1:]):
        if seq != prev + 1:
            problems.append(f"{wal_dir}: segments {prev + 1}..{seq - 1} are missing")
    scans = []
    for position, (seq, path) in enumerate(found):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue        # compacted away by a running node while we listed
        scans.append(scan_segment(path, seq, data, last=position == len(found) - 1, strict=False))
    return scans, problems


def _command_preview(command: bytes) -> str:
    """A short readable rendering: the CBOR value if the whole command is one, else the
    bytes if printable, else hex."""
    text = None
    try:
        stream = io.BytesIO(command)
        value = cbor2.CBORDecoder(stream).decode()
        if stream.tell() == len(command):
            text = repr(value)
    except Exception:
        pass
    if text is None:
        if command.isascii() and command.decode().isprintable():
            text = repr(command)
        else:
            text = command[:24].hex() + ("..." if len(command) > 24 else "")
    return text if len(text) <= 80 else text[:77] + "..."


def _term_text(stored: int, protocol: str | None) -> str:
    """``term=2 ballot=2.1`` (Multi-Paxos) or ``term=5`` (Raft): paxoslog/terms.py."""
    return " ".join(f"{k}={v}" for k, v in term_fields(stored, protocol).items())


def _entry_text(entry: Entry, protocol: str | None = None) -> str:
    kind = _KIND_NAMES.get(entry.kind, str(entry.kind))
    size = sum(len(c) for c in entry.payload)
    text = f"entry index={entry.index} {_term_text(entry.term, protocol)} kind={kind}"
    if entry.kind == ENTRY_CONFIG:
        try:
            return text + f" config={entry_config(entry).describe()}"
        except Exception as exc:
            return text + f" config=<undecodable: {exc}>"
    if entry.payload:
        text += (f" commands={len(entry.payload)} bytes={size} "
                 f"first={_command_preview(entry.payload[0])}")
    return text


def _entry_json(entry: Entry, protocol: str | None = None) -> dict:
    return {"type": "entry", "index": entry.index, **term_fields(entry.term, protocol),
            "kind": _KIND_NAMES.get(entry.kind, entry.kind),
            "commands": [base64.b64encode(c).decode() for c in entry.payload]}


def _record_json(rtype: int, value, protocol: str | None = None) -> dict:
    if rtype == REC_HARDSTATE:
        return {"type": "hardstate", **term_fields(value.term, protocol), "vote": value.vote,
                "commit": value.commit}
    if rtype == REC_TRUNCATE:
        return {"type": "truncate", "from": value}
    if rtype == REC_SNAPSHOT:
        return {"type": "snapshot", "index": value[0], **term_fields(value[1], protocol)}
    if rtype == REC_SYNC:
        return {"type": "sync", "synced": value}
    if rtype == REC_HEADER:
        return {"type": "header", **value}
    return {"type": RECORD_NAMES.get(rtype, str(rtype))}


def _record_text(rtype: int, value, protocol: str | None = None) -> str:
    fields = _record_json(rtype, value, protocol)
    name = fields.pop("type")
    return name + " " + " ".join(f"{k}={v}" for k, v in fields.items())


def _missing(path: str, what: str) -> int:
    print(f"error: {path}: no such {what}", file=sys.stderr)
    return EXIT_USAGE


# ---------------------------------------------------------------------- log dump

def _protocol_of(data_dir: str) -> str | None:
    """The protocol META names (None: unreadable; terms.py then tells by magnitude)."""
    try:
        return read_meta(meta_path(data_dir)).protocol
    except (OSError, StorageError, ValueError):
        return None


def main_log_dump(args) -> int:
    data_dir = args.data_dir
    if not os.path.isdir(data_dir):
        return _missing(data_dir, "data directory")
    low = args.from_index if args.from_index is not None else 0
    high = args.to_index if args.to_index is not None else float("inf")
    ranged = args.from_index is not None or args.to_index is not None
    out = sys.stdout
    status = EXIT_OK
    protocol = _protocol_of(data_dir)
    try:
        scans, problems = read_wal(data_dir)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for problem in problems:
        print(f"# CORRUPT: {problem}", file=out)
        status = EXIT_CORRUPT
    for scan in scans:
        name = os.path.basename(scan.path)
        for record in scan.records:
            where = f"{name}@{record.offset}"
            if record.rtype == REC_ENTRIES:
                for entry in record.value:
                    if low <= entry.index <= high:
                        if args.json:
                            out.write(json.dumps({"segment": name, "offset": record.offset,
                                                  **_entry_json(entry, protocol)}) + "\n")
                        else:
                            out.write(f"{where:<28} {_entry_text(entry, protocol)}\n")
                continue
            if record.rtype in (REC_HEADER, REC_SYNC) and not args.all_records:
                continue
            if ranged and not (record.rtype == REC_TRUNCATE and record.value <= high):
                continue        # a range shows its entries and the truncations reaching them
            if args.json:
                out.write(json.dumps({"segment": name, "offset": record.offset,
                                      **_record_json(record.rtype, record.value,
                                                     protocol)}) + "\n")
            else:
                out.write(f"{where:<28} "
                          f"{_record_text(record.rtype, record.value, protocol)}\n")
        if scan.torn is not None:
            note = {"segment": name, "offset": scan.torn.offset, "type": "torn-tail",
                    "bytes": scan.torn.dropped_bytes, "reason": scan.torn.reason}
            out.write(json.dumps(note) + "\n" if args.json else
                      f"# torn tail at {name}@{scan.torn.offset} ({scan.torn.dropped_bytes} bytes, "
                      f"{scan.torn.reason}); a restart cuts it\n")
        if scan.corruption is not None:
            status = EXIT_CORRUPT
            error = scan.corruption
            note = {"segment": name, "offset": error.offset, "type": "corrupt",
                    "reason": error.reason}
            out.write(json.dumps(note) + "\n" if args.json else f"# CORRUPT: {error}\n")
    return status


# ---------------------------------------------------------------------- log verify

def _ranges(numbers: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    for n in numbers:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return spans


def verify_data_dir(data_dir: str, check_snapshots: bool = True) -> dict:
    """Everything ``log verify`` checks, as a report dict with ``errors`` (corruption or an
    inconsistent log: exit 1), ``warnings`` and facts."""
    report: dict = {"data_dir": data_dir, "errors": [], "warnings": []}
    errors, warnings = report["errors"], report["warnings"]
    protocol = None
    try:
        meta = read_meta(meta_path(data_dir))
        protocol = meta.protocol
        report["meta"] = {"cluster_id": meta.cluster_id, "node_id": meta.node_id,
                          "protocol": meta.protocol, "format_version": meta.format_version}
        check_format(meta_path(data_dir), meta)
    except StorageError as exc:
        if not isinstance(exc, CorruptLog):       # an unsupported format: say so, stop
            errors.append(str(exc))
            report["ok"] = False
            return report
        errors.append(str(exc))
    except FileNotFoundError:
        errors.append(f"{meta_path(data_dir)}: missing")
    checkpoint = None
    try:
        checkpoint = read_hardstate(os.path.join(data_dir, HARDSTATE_FILE))
    except CorruptLog as exc:
        errors.append(str(exc))
    scans, problems = read_wal(data_dir)
    errors.extend(problems)
    replay = Replay()
    records = 0
    for scan in scans:
        for record in scan.records:
            replay.apply(record.rtype, record.value)
            records += 1
        if scan.corruption is not None:
            errors.append(str(scan.corruption))
        if scan.torn is not None:
            warnings.append(f"torn tail at {scan.torn.path} offset {scan.torn.offset} "
                            f"({scan.torn.dropped_bytes} bytes: {scan.torn.reason}); a restart "
                            "cuts it (normal on a running node or after a crash)")
    report["segments"] = len(scans)
    report["records"] = records
    hard_state = replay.hard_state or checkpoint
    if hard_state is not None:
        report["hard_state"] = {**dict(hard_state._asdict()),
                                **term_fields(hard_state.term, protocol)}
    floor = replay.floor[0] if replay.floor else 0
    report["floor"] = floor

    snapshots = []
    newest_valid = None
    store = SnapshotStore(os.path.join(data_dir, "snap"), read_only=True)
    for snap in store.list():
        item = {"path": snap.path, "index": snap.index, **term_fields(snap.term, protocol)}
        if check_snapshots:
            try:
                info = verify_snapshot(snap.path)
                item["ok"] = True
                if (info.meta.index, info.meta.term) != (snap.index, snap.term):
                    item["ok"] = False
                    errors.append(f"{snap.path}: header says index {info.meta.index}, "
                                  f"{describe_term(info.meta.term, protocol)}")
                else:
                    newest_valid = snap
            except CorruptSnapshot as exc:
                item["ok"] = False
                item["error"] = exc.reason
                warnings.append(f"{exc}; a restart falls back to an older snapshot")
        else:
            newest_valid = snap
        snapshots.append(item)
    report["snapshots"] = snapshots
    snap_index = newest_valid.index if newest_valid else 0
    if snap_index < floor:
        errors.append(f"no valid snapshot reaches index {floor}, below which the log is gone: "
                      "the node cannot restart without a snapshot from a peer")

    indexes = list(replay.entries.irange(snap_index + 1))
    report["first_index"] = indexes[0] if indexes else None
    report["last_index"] = indexes[-1] if indexes else snap_index
    expected = range(max(snap_index, floor) + 1, (indexes[-1] + 1) if indexes else 0)
    missing = sorted(set(expected) - set(indexes)) if indexes else []
    if protocol == "multipaxos":
        report["holes"] = _ranges(missing)
        if missing:
            warnings.append(f"{len(missing)} slots never accepted here (holes): " + ", ".join(
                f"{a}" if a == b else f"{a}-{b}" for a, b in report["holes"][:20]))
    elif missing:
        spans = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in _ranges(missing)[:20])
        errors.append(f"log not contiguous above snapshot {snap_index}: missing {spans}")
    if protocol == "raft":
        terms = [replay.entries[i].term for i in indexes]
        for i in range(1, len(terms)):
            if terms[i] < terms[i - 1]:
                errors.append(f"term goes backwards at index {indexes[i]} "
                              f"({terms[i - 1]} -> {terms[i]})")
                break
    if hard_state is not None and hard_state.commit > report["last_index"]:
        errors.append(f"hard state commit {hard_state.commit} is beyond the log's last index "
                      f"{report['last_index']}: acknowledged entries were lost")
    report["ok"] = not errors
    return report


def main_log_verify(args) -> int:
    data_dir = args.data_dir
    if not os.path.isdir(data_dir):
        return _missing(data_dir, "data directory")
    try:
        report = verify_data_dir(data_dir, check_snapshots=not args.skip_snapshots)
    except (OSError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    out = sys.stdout
    if args.json:
        out.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        meta = report.get("meta", {})
        out.write(f"data dir     {data_dir}\n")
        if meta:
            out.write(f"node         {meta['node_id']} of cluster {meta['cluster_id']!r}, "
                      f"protocol {meta['protocol']}, format {meta['format_version']}\n")
        if "segments" not in report:                # not read: an unsupported format
            for error in report["errors"]:
                out.write(f"error: {error}\n")
            out.write("FAILED\n")
            return EXIT_CORRUPT
        out.write(f"wal          {report['segments']} segments, {report['records']} records\n")
        out.write(f"log          first {report['first_index']} last {report['last_index']} "
                  f"(log compacted through {report['floor']})\n")
        if "hard_state" in report:
            hs = report["hard_state"]
            ballot = f" (ballot {hs['ballot']}) promised" if "ballot" in hs else \
                f" vote {hs['vote']}"
            out.write(f"hard state   term {hs['term']}{ballot} commit {hs['commit']}\n")
        for snap in report["snapshots"]:
            state = {True: "ok", False: f"CORRUPT ({snap.get('error', '')})"}.get(
                snap.get("ok"), "not checked")
            ballot = f" (ballot {snap['ballot']})" if "ballot" in snap else ""
            out.write(f"snapshot     index {snap['index']} term {snap['term']}{ballot}: "
                      f"{state}\n")
        for warning in report["warnings"]:
            out.write(f"warning: {warning}\n")
        for error in report["errors"]:
            out.write(f"CORRUPT: {error}\n")
        out.write("OK\n" if report["ok"] else "FAILED\n")
    return EXIT_OK if report["ok"] else EXIT_CORRUPT


# ---------------------------------------------------------------------- snapshot inspect

def main_snapshot_inspect(args) -> int:
    path = args.file
    if not os.path.isfile(path):
        return _missing(path, "file")
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    out = sys.stdout
    try:
        info = verify_snapshot(path)
    except CorruptSnapshot as exc:
        if args.json:
            out.write(json.dumps({"file": path, "ok": False, "error": exc.reason,
                                  "file_crc32": f"{crc:08x}"}) + "\n")
        else:
            out.write(f"CORRUPT: {exc}\n")
        return EXIT_CORRUPT
    report = {
        "file": path, "ok": True, "index": info.meta.index,
        **term_fields(info.meta.term, _snapshot_protocol(path, info)),
        "config": info.meta.config.describe(), "state_machines": info.sizes,
        "chunks": info.chunks, "sessions_bytes": info.sessions_bytes,
        "uncompressed_bytes": info.uncompressed_bytes, "compressed_bytes": info.compressed_bytes,
        "compression_ratio": round(info.ratio, 3), "zstd_content_checksum": info.checksum,
        "file_crc32": f"{crc:08x}",
    }
    if info.backup is not None:
        report["backup"] = info.backup
    if args.json:
        out.write(json.dumps(report) + "\n")
        return EXIT_OK
    out.write(f"file               {path}\n")
    term = describe_term(info.meta.term, _snapshot_protocol(path, info))
    out.write(f"covers             index {info.meta.index} {term}\n")
    if info.backup is not None:
        origin = info.backup
        out.write(f"backup of          cluster {origin.get('cluster')!r} "
                  f"({origin.get('protocol')}), taken on node {origin.get('node')} at "
                  f"{_utc(origin.get('taken_at'))}\n")
    out.write(f"config             {info.meta.config.describe()}\n")
    for name in info.names:
        out.write(f"state machine      {name}: {info.sizes[name]} bytes "
                  f"in {info.chunks[name]} chunks\n")
    out.write(f"sessions           {info.sessions_bytes} bytes\n")
    out.write(f"size               {info.uncompressed_bytes} bytes, {info.compressed_bytes} "
              f"compressed (ratio {info.ratio:.2f})\n")
    out.write(f"checksum           zstd content checksum {info.checksum} verified; "
              f"file crc32 {crc:08x}\n")
    return EXIT_OK


def _snapshot_protocol(path: str, info) -> str | None:
    """A backup names its protocol; a snapshot in a data dir's snap/ has META beside it."""
    protocol = (info.backup or {}).get("protocol")
    if protocol in ("multipaxos", "raft"):
        return protocol
    return _protocol_of(os.path.dirname(os.path.dirname(os.path.abspath(path))))


def _utc(stamp) -> str:
    if not isinstance(stamp, (int, float)):
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def _main(argv=None) -> int:
    """``python -m paxoslog.storage.inspect log verify --data-dir D`` (until the CLI wires it)."""
    parser = argparse.ArgumentParser(prog="paxoslog")
    add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(_main())
