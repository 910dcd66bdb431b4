"""``<data_dir>/hardstate``: a checksummed checkpoint of the replica's ``HardState``.

File layout: ``b"PXHS"`` magic, ``[len u32][crc32 u32]`` (little endian) and a CBOR map
``{"term", "vote", "commit"}``; the crc covers the length and the payload.

Design: the *per-Ready* hard state goes into the write-ahead log as a record, so a Ready
costs one fsync whatever it carries (group commit).  This file is only a checkpoint, written
(atomically: temp, fsync, rename, fsync dir) right before compaction deletes WAL segments
(which may hold the newest hard-state record).  Replay starts from it and lets any
hard-state record of the WAL override it; that is always right because compaction deletes
only a prefix of segments, so the WAL's last hard-state record, when one survives, is the
newest ever written.
"""

from __future__ import annotations

import os
import struct
import zlib

import cbor2

from paxoslog.core.log import HardState

from .durable import DATA_FILE_MODE, atomic_write
from .errors import CorruptLog

__all__ = ["HARDSTATE_FILE", "read_hardstate", "write_hardstate", "encode_hardstate",
           "decode_hardstate"]

HARDSTATE_FILE = "hardstate"
_MAGIC = b"PXHS"
_HEAD = struct.Struct("<4sII")


def encode_hardstate(hard_state: HardState) -> bytes:
    payload = cbor2.dumps({"term": hard_state.term, "vote": hard_state.vote,
                           "commit": hard_state.commit})
    length = struct.pack("<I", len(payload))
    return _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


def decode_hardstate(data: bytes, path: str) -> HardState:
    if len(data) < _HEAD.size:
        raise CorruptLog(path, 0, f"hard state file is {len(data)} bytes, shorter than its header")
    magic, length, crc = _HEAD.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptLog(path, 0, f"bad magic {magic!r}")
    payload = data[_HEAD.size:]
    if len(payload) != length or zlib.crc32(payload, zlib.crc32(struct.pack("<I", length))) != crc:
        raise CorruptLog(path, 0, "hard state checksum mismatch")
    try:
        fields = cbor2.loads(payload)
        state = HardState(fields["term"], fields["vote"], fields["commit"])
    except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptLog(path, 0, f"hard state undecodable: {exc}") from None
    if not all(type(v) is int and v >= 0 for v in state):
        raise CorruptLog(path, 0, f"hard state has invalid fields {state!r}")
    return state


def read_hardstate(path: str) -> HardState | None:
    """The checkpointed hard state, or None when the file does not exist yet."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return decode_hardstate(data, path)


def write_hardstate(path: str, hard_state: HardState) -> None:
    """Atomically replace the checkpoint (failpoints ``hardstate.before/after_rename``)."""
    atomic_write(path, encode_hardstate(hard_state), failpoint="hardstate", mode=DATA_FILE_MODE)


def remove_stale_temp(path: str) -> None:
    """Delete a temp file left by a crash before the rename (it was never the checkpoint)."""
    try:
        os.unlink(path + ".tmp")
    except FileNotFoundError:
        pass
