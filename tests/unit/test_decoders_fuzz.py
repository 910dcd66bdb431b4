"""Property tests (hypothesis) of the decoders that read bytes someone else wrote: peer
frames (the splitter, frame MACs, bounded CBOR, the message codec), WAL records and
segments, and snapshot files.  Random bytes and mutations of valid inputs (bit flips,
truncations, insertions, replaced ranges) may only raise each decoder's documented errors:

* peer frames: ``FrameTooLarge``, ``ForgedFrame``, ``MalformedFrame``, ``MalformedMessage``
* WAL: ``BadRecord`` (``decode_record``), ``CorruptLog`` (``scan_segment``; a torn tail is a
  result, not an error)
* snapshots: ``CorruptSnapshot`` (``SnapshotReader``, ``verify_snapshot``,
  ``read_snapshot_meta``)
"""

from __future__ import annotations

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paxoslog.core.errors import MalformedMessage
from paxoslog.core.log import Entry, HardState, SnapshotMeta
from paxoslog.core.messages import AppendEntries, RequestVote, from_wire, to_wire
from paxoslog.core.quorum import Config
from paxoslog.server import frames as F
from paxoslog.storage.errors import CorruptLog, CorruptSnapshot
from paxoslog.storage.snapshot import (SnapshotReader, encode_snapshot_bytes,
                                       read_snapshot_meta, verify_snapshot)
from paxoslog.storage.walscan import (REC_ENTRIES, REC_HARDSTATE, REC_HEADER, REC_SNAPSHOT,
                                      REC_SYNC, REC_TRUNCATE, BadRecord, decode_record,
                                      encode_record, scan_segment)

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KEY = b"k" * 32


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """``valid`` with a few random edits: flips, truncation, insertion, a replaced range."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(("flip", "truncate", "insert", "replace", "zero")))
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        pos = draw(st.integers(0, len(data) - 1))
        if edit == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif edit == "truncate":
            del data[pos:]
        elif edit == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "replace":
            piece = draw(st.binary(min_size=1, max_size=16))
            data[pos:pos + len(piece)] = piece
        else:
            data[pos:pos + draw(st.integers(1, 600))] = b"\0" * min(600, len(data) - pos)
    return bytes(data)


# ---------------------------------------------------------------------- peer frames

_entries = st.lists(st.builds(lambda i, t, c: Entry(i, t, 0, tuple(c)),
                              st.integers(1, 10**6), st.integers(0, 10**6),
                              st.lists(st.binary(max_size=40), max_size=3)), max_size=4)
_messages = st.one_of(
    st.builds(lambda t, i, lt: RequestVote(1, 2, t, i, lt, False, False),
              st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40)),
    st.builds(lambda t, e: AppendEntries(1, 2, t, 0, 0, tuple(e), 0, 0),
              st.integers(0, 2**40), _entries))


def _open_frames(stream: bytes, sealed: bool) -> None:
    """Everything a peer connection does with received bytes, up to the core messages."""
    decoder = F.FrameDecoder(1 << 16)
    opener = F.FrameOpener(KEY) if sealed else None
    for frame in decoder.feed(stream):
        if opener is not None:
            frame = opener.open(frame)
        try:
            payload = F.decode_payload(frame, depth_max=48)
        except F.MalformedFrame:
            continue
        if payload[0] == F.MESSAGES and len(payload) == 2 and type(payload[1]) is list:
            for item in payload[1]:
                try:
                    from_wire(item)
                except MalformedMessage:
                    pass


_FRAME_ERRORS = (F.FrameTooLarge, F.ForgedFrame)


@FUZZ
@given(st.binary(max_size=2048), st.booleans())
def test_random_bytes_on_a_peer_connection_raise_only_frame_errors(data, sealed):
    """Random bytes: the splitter, the MAC check, the bounded decoder and the message
    codec raise nothing but their documented errors."""
    try:
        _open_frames(data, sealed)
    except _FRAME_ERRORS:
        pass


@FUZZ
@given(st.data(), st.lists(_messages, min_size=1, max_size=4), st.booleans())
def test_mutated_peer_frames_raise_only_frame_errors(data, messages, sealed):
    """Valid MESSAGES frames (MAC'd or not), then mutated: same guarantee."""
    payload = cbor2.dumps([F.MESSAGES, [to_wire(m) for m in messages]])
    frames = F.FrameSealer(KEY).seal(payload) if sealed else F.encode_frame(
        [F.MESSAGES, [to_wire(m) for m in messages]])
    _open_frames(frames, sealed)                               # the valid one passes
    try:
        _open_frames(data.draw(mutated(frames)), sealed)
    except _FRAME_ERRORS:
        pass


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() |
                    st.text(max_size=8) | st.binary(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=30))
def test_any_decoded_value_is_a_message_or_malformed(value):
    """from_wire on any CBOR-decodable value: a message or MalformedMessage."""
    for candidate in (value, [value], [30, value], [1, 2, 3, value]):
        try:
            from_wire(candidate)
        except MalformedMessage:
            pass


# ---------------------------------------------------------------------- WAL

_wal_records = st.one_of(
    st.builds(lambda e: encode_record(REC_ENTRIES, [[x.index, x.term, x.kind,
                                                     list(x.payload)] for x in e]), _entries),
    st.builds(lambda n: encode_record(REC_TRUNCATE, n), st.integers(0, 2**40)),
    st.builds(lambda n: encode_record(REC_SYNC, n), st.integers(0, 2**40)),
    st.builds(lambda a, b, c: encode_record(REC_HARDSTATE, list(HardState(a, b, c))),
              st.integers(0, 99), st.integers(0, 9), st.integers(0, 99)),
    st.builds(lambda i, t: encode_record(REC_SNAPSHOT, [i, t]), st.integers(0, 99),
              st.integers(0, 99)))


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_are_bad_records(data):
    """decode_record on random bytes: a (type, value) or BadRecord."""
    try:
        decode_record(data)
    except BadRecord:
        pass


@FUZZ
@given(st.data(), _wal_records)
def test_mutated_records_are_bad_records(data, record):
    """A valid record decodes; mutated, it decodes or raises BadRecord only."""
    decode_record(record)
    try:
        decode_record(data.draw(mutated(record)))
    except BadRecord:
        pass


@FUZZ
@given(st.data(), st.lists(_wal_records, max_size=6), st.booleans())
def test_mutated_segments_are_corrupt_or_torn(data, records, last):
    """A segment (header + records) scans; mutated, the scan returns (maybe with a torn
    tail) or raises CorruptLog only; random bytes too."""
    segment = encode_record(REC_HEADER, {"format": 1, "seq": 3}) + b"".join(records)
    assert scan_segment("seg", 3, segment, last=last).torn is None
    for candidate in (data.draw(mutated(segment)), data.draw(st.binary(max_size=600))):
        try:
            scan_segment("seg", 3, candidate, last=last)
        except CorruptLog:
            pass


# ---------------------------------------------------------------------- snapshots

def _snapshot(states: dict, sessions) -> bytes:
    meta = SnapshotMeta(7, 2, Config(frozenset({1, 2, 3})))
    return encode_snapshot_bytes(meta, [(name, [chunk]) for name, chunk in states.items()],
                                 sessions, level=1)


_states = st.dictionaries(st.sampled_from(["kv", "counter", "x"]), st.binary(max_size=300),
                          max_size=3)


def _read_whole(data: bytes) -> None:
    with SnapshotReader(data) as reader:
        for _name, chunks in reader.states():
            for _ in chunks:
                pass


@FUZZ
@given(st.data(), _states, st.lists(st.integers(), max_size=5))
def test_mutated_snapshots_are_corrupt(data, states, sessions):
    """A valid snapshot reads whole; mutated, or random bytes, or a compressed stream of
    random CBOR items, raise CorruptSnapshot only."""
    valid = _snapshot(states, sessions)
    _read_whole(valid)
    import zstandard
    junk = zstandard.ZstdCompressor(write_checksum=True).compress(
        data.draw(st.binary(max_size=200)))
    for candidate in (data.draw(mutated(valid)), data.draw(st.binary(max_size=300)), junk):
        for read in (_read_whole, verify_snapshot):
            try:
                read(candidate)
            except CorruptSnapshot:
                pass


@settings(max_examples=100, deadline=None)
@given(st.data(), _states)
def test_mutated_snapshot_headers_are_corrupt(tmp_path_factory, data, states):
    """read_snapshot_meta (the header only, from a file) raises CorruptSnapshot only."""
    path = tmp_path_factory.mktemp("snap") / "s.snap.zst"
    path.write_bytes(data.draw(mutated(_snapshot(states, None))))
    try:
        read_snapshot_meta(str(path))
    except CorruptSnapshot:
        pass
