"""``<data_dir>/META``: which cluster, node, protocol and on-disk format a data directory holds.

Written once, on first start, atomically.  Every later start compares it with the conf and
refuses a mismatch (a node pointed at another node's directory, a Raft log opened by the
Multi-Paxos replica, a newer on-disk format).  The file is text so an operator can read it::

    # paxoslog data directory; do not edit
    format_version=1
    cluster_id="prod-eu"
    node_id=3
    protocol="raft"
    crc32=5f0c1a2b

Values are JSON; ``crc32`` covers every byte before its line.

**Data format versions.**  ``format_version`` names the layout of the whole directory (META,
hard state, WAL records, snapshots, members.json).  A release reads every format from
``FORMAT_VERSION_MIN`` to its own ``FORMAT_VERSION`` and writes its own into new
directories; it refuses a directory of a newer format (``UnsupportedFormat``, naming both
versions: upgrade paxoslog) and never rewrites an older one, so going back to the release
that wrote it stays possible.  History:

1. the first layout.
2. members.json may name the cluster's *log origin* (a cluster built by ``paxoslog
   snapshot restore`` or ``paxoslog recover``; peers with another origin are refused at the
   handshake) and a snapshot header may carry a ``backup`` map.  A format-1 release would
   ignore the origin and let a node of the old cluster vote in the new one, so it must
   refuse these directories: hence the new number.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass

from .durable import DATA_DIR_MODE, DATA_FILE_MODE, atomic_write, make_dirs
from .errors import CorruptLog, MetaMismatch, StorageError, UnsupportedFormat

__all__ = ["Meta", "FORMAT_VERSION", "FORMAT_VERSION_MIN", "META_FILE", "PROTOCOLS",
           "read_meta", "write_meta", "ensure_meta", "meta_path", "check_format"]

FORMAT_VERSION = 2
FORMAT_VERSION_MIN = 1
META_FILE = "META"
PROTOCOLS = ("multipaxos", "raft")
_HEADER = "# paxoslog data directory; do not edit\n"
_FIELDS = ("format_version", "cluster_id", "node_id", "protocol")


@dataclass(frozen=True)
class Meta:
    cluster_id: str
    node_id: int
    protocol: str
    format_version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        body = _HEADER + "".join(f"{name}={json.dumps(getattr(self, name))}\n" for name in _FIELDS)
        data = body.encode()
        return data + f"crc32={zlib.crc32(data):08x}\n".encode()


def meta_path(data_dir: str) -> str:
    return os.path.join(data_dir, META_FILE)


def read_meta(path: str) -> Meta:
    """Parse and checksum-verify a META file; ``CorruptLog`` (offset 0) when it is damaged."""
    with open(path, "rb") as f:
        data = f.read()
    cut = data.rfind(b"crc32=")
    if cut < 0 or not data.endswith(b"\n"):
        raise CorruptLog(path, 0, "META has no crc32 line")
    try:
        stored = int(data[cut + 6:].strip(), 16)
    except ValueError:
        raise CorruptLog(path, cut, "META crc32 line is not hexadecimal") from None
    if zlib.crc32(data[:cut]) != stored:
        raise CorruptLog(path, 0, "META checksum mismatch")
    values: dict[str, object] = {}
    for line in data[:cut].decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, raw = line.partition("=")
        try:
            values[name] = json.loads(raw)
        except ValueError:
            raise CorruptLog(path, 0, f"META line {line!r} is not name=json") from None
    try:
        meta = Meta(cluster_id=values["cluster_id"], node_id=values["node_id"],
                    protocol=values["protocol"], format_version=values["format_version"])
    except KeyError as missing:
        raise CorruptLog(path, 0, f"META lacks {missing}") from None
    if not (isinstance(meta.cluster_id, str) and type(meta.node_id) is int
            and isinstance(meta.protocol, str) and type(meta.format_version) is int):
        raise CorruptLog(path, 0, "META field of the wrong type")
    return meta


def check_format(path: str, meta: Meta) -> None:
    """Raise ``UnsupportedFormat`` unless this release reads ``meta.format_version``."""
    version = meta.format_version
    if version > FORMAT_VERSION:
        raise UnsupportedFormat(
            path, version, FORMAT_VERSION,
            f"{path}: data format {version} was written by a newer release of paxoslog; "
            f"this release reads formats {FORMAT_VERSION_MIN} to {FORMAT_VERSION}: upgrade "
            "paxoslog to open this data directory (nothing was changed)")
    if version < FORMAT_VERSION_MIN:
        raise UnsupportedFormat(
            path, version, FORMAT_VERSION,
            f"{path}: data format {version} is older than this release reads (formats "
            f"{FORMAT_VERSION_MIN} to {FORMAT_VERSION}); open it with an older release and "
            "move the data with `paxoslog snapshot save` / `snapshot restore`")


def write_meta(path: str, meta: Meta) -> None:
    atomic_write(path, meta.encode(), failpoint="meta", mode=DATA_FILE_MODE)


def _holds_data(data_dir: str) -> list[str]:
    found = []
    for sub, suffix in (("wal", ".wal"), ("snap", ".snap.zst")):
        directory = os.path.join(data_dir, sub)
        if os.path.isdir(directory) and any(n.endswith(suffix) for n in os.listdir(directory)):
            found.append(sub)
    if os.path.exists(os.path.join(data_dir, "hardstate")):
        found.append("hardstate")
    return found


def ensure_meta(data_dir: str, cluster_id: str, node_id: int, protocol: str) -> Meta:
    """Create META on first start, else check it against the conf (``MetaMismatch``).

    A directory that holds a log or snapshots but no META is refused: its owner is unknown.
    """
    if protocol not in PROTOCOLS:
        raise StorageError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if not isinstance(cluster_id, str) or not cluster_id or "\n" in cluster_id:
        raise StorageError(f"cluster id must be a non-empty one-line string, not {cluster_id!r}")
    if type(node_id) is not int or node_id < 0:
        raise StorageError(f"node id must be a non-negative integer, not {node_id!r}")
    path = meta_path(data_dir)
    expected = Meta(cluster_id, node_id, protocol)
    if not os.path.exists(path):
        holding = _holds_data(data_dir)
        if holding:
            raise StorageError(f"{path} is missing but {data_dir} holds {', '.join(holding)}; "
                               "refusing to guess which node this data belongs to")
        make_dirs(data_dir, DATA_DIR_MODE)
        write_meta(path, expected)
        return expected
    meta = read_meta(path)
    check_format(path, meta)
    for field, label in (("cluster_id", "cluster id"), ("node_id", "node id"),
                         ("protocol", "protocol")):
        if getattr(meta, field) != getattr(expected, field):
            raise MetaMismatch(path, label, getattr(meta, field), getattr(expected, field))
    return meta
