"""META (identity of a data directory) and the hard-state checkpoint: creation, mismatch
messages, checksums and atomic replacement on real files."""

from __future__ import annotations

import os

import pytest

from paxoslog.core.log import HardState
from paxoslog.storage import failpoints
from paxoslog.storage.errors import CorruptLog, MetaMismatch, StorageError, UnsupportedFormat
from paxoslog.storage.failpoints import FailpointPanic
from paxoslog.storage.hardstate import read_hardstate, write_hardstate
from paxoslog.storage.meta import (FORMAT_VERSION, FORMAT_VERSION_MIN, Meta, ensure_meta,
                                   read_meta, write_meta)


@pytest.fixture(autouse=True)
def no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


def test_meta_is_created_on_first_start_and_accepted_after(tmp_path):
    """The first start writes META; the same identity is accepted on every later start."""
    data_dir = str(tmp_path / "n1")
    meta = ensure_meta(data_dir, "prod", 1, "raft")
    assert meta == Meta("prod", 1, "raft", FORMAT_VERSION)
    assert read_meta(os.path.join(data_dir, "META")) == meta
    assert ensure_meta(data_dir, "prod", 1, "raft") == meta
    assert b"protocol=\"raft\"" in open(os.path.join(data_dir, "META"), "rb").read()


@pytest.mark.parametrize("field, args, message", [
    ("protocol", ("prod", 1, "multipaxos"), "protocol is 'raft' but the conf says 'multipaxos'"),
    ("node id", ("prod", 2, "raft"), "node id is 1 but the conf says 2"),
    ("cluster id", ("test", 1, "raft"), "cluster id is 'prod' but the conf says 'test'"),
])
def test_meta_mismatch_names_the_file_and_both_values(tmp_path, field, args, message):
    """A data directory of another cluster, node or protocol is refused with a clear message."""
    data_dir = str(tmp_path / "data" / "n1")
    ensure_meta(data_dir, "prod", 1, "raft")
    with pytest.raises(MetaMismatch) as caught:
        ensure_meta(data_dir, *args)
    assert str(caught.value) == f"{data_dir}/META: {message}"
    assert caught.value.field == field


def test_newer_format_version_is_refused(tmp_path):
    """A META written by a newer on-disk format is refused, naming both versions."""
    data_dir = str(tmp_path)
    path = os.path.join(data_dir, "META")
    write_meta(path, Meta("prod", 1, "raft", FORMAT_VERSION + 1))
    with pytest.raises(UnsupportedFormat) as caught:
        ensure_meta(data_dir, "prod", 1, "raft")
    assert str(caught.value) == (
        f"{path}: data format {FORMAT_VERSION + 1} was written by a newer release of "
        f"paxoslog; this release reads formats {FORMAT_VERSION_MIN} to {FORMAT_VERSION}: "
        "upgrade paxoslog to open this data directory (nothing was changed)")
    assert isinstance(caught.value, MetaMismatch)
    assert read_meta(path).format_version == FORMAT_VERSION + 1      # untouched


def test_every_older_supported_format_is_read_and_left_as_is(tmp_path):
    """A directory of an older supported format opens, and its META is not rewritten."""
    for version in range(FORMAT_VERSION_MIN, FORMAT_VERSION + 1):
        data_dir = str(tmp_path / f"v{version}")
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "META")
        write_meta(path, Meta("prod", 1, "raft", version))
        assert ensure_meta(data_dir, "prod", 1, "raft").format_version == version
        assert read_meta(path).format_version == version


def test_format_older_than_supported_is_refused(tmp_path):
    """A format below FORMAT_VERSION_MIN is refused with the way out."""
    path = os.path.join(str(tmp_path), "META")
    write_meta(path, Meta("prod", 1, "raft", FORMAT_VERSION_MIN - 1))
    with pytest.raises(UnsupportedFormat, match="older than this release reads"):
        ensure_meta(str(tmp_path), "prod", 1, "raft")


def test_corrupt_meta_is_detected(tmp_path):
    """A flipped byte in META fails its crc32."""
    data_dir = str(tmp_path)
    ensure_meta(data_dir, "prod", 1, "raft")
    path = os.path.join(data_dir, "META")
    data = bytearray(open(path, "rb").read())
    data[data.index(b"prod")] = ord("q")
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptLog) as caught:
        ensure_meta(data_dir, "prod", 1, "raft")
    assert caught.value.path == path


def test_data_without_meta_is_refused(tmp_path):
    """A directory holding a WAL but no META belongs to nobody we know: refuse, don't guess."""
    os.makedirs(tmp_path / "wal")
    (tmp_path / "wal" / "0000000000000001.wal").write_bytes(b"x")
    with pytest.raises(StorageError, match="META is missing"):
        ensure_meta(str(tmp_path), "prod", 1, "raft")


def test_bad_identity_values_are_rejected(tmp_path):
    """An unknown protocol or a malformed id is a configuration error, not a new directory."""
    with pytest.raises(StorageError, match="unknown protocol"):
        ensure_meta(str(tmp_path), "prod", 1, "paxos")
    with pytest.raises(StorageError, match="node id"):
        ensure_meta(str(tmp_path), "prod", -1, "raft")
    assert not os.path.exists(tmp_path / "META")


def test_hard_state_round_trip(tmp_path):
    """The checkpoint reads back exactly; a missing file reads as None."""
    path = str(tmp_path / "hardstate")
    assert read_hardstate(path) is None
    write_hardstate(path, HardState(7, 3, 42))
    assert read_hardstate(path) == HardState(7, 3, 42)
    write_hardstate(path, HardState(8, 0, 50))
    assert read_hardstate(path) == HardState(8, 0, 50)
    assert not os.path.exists(path + ".tmp")


def test_hard_state_bit_flip_is_detected(tmp_path):
    """Any flipped bit in the checkpoint raises CorruptLog naming the file."""
    path = str(tmp_path / "hardstate")
    write_hardstate(path, HardState(7, 3, 42))
    original = open(path, "rb").read()
    for position in range(len(original)):
        damaged = bytearray(original)
        damaged[position] ^= 0x04
        open(path, "wb").write(bytes(damaged))
        with pytest.raises(CorruptLog) as caught:
            read_hardstate(path)
        assert caught.value.path == path


def test_hard_state_replace_is_atomic_around_the_rename(tmp_path):
    """A crash before the rename keeps the old checkpoint; after it, the new one."""
    path = str(tmp_path / "hardstate")
    write_hardstate(path, HardState(1, 1, 1))
    failpoints.enable("hardstate.before_rename", "panic")
    with pytest.raises(FailpointPanic):
        write_hardstate(path, HardState(2, 2, 2))
    assert read_hardstate(path) == HardState(1, 1, 1)
    failpoints.clear()
    failpoints.enable("hardstate.after_rename", "panic")
    with pytest.raises(FailpointPanic):
        write_hardstate(path, HardState(3, 3, 3))
    assert read_hardstate(path) == HardState(3, 3, 3)
