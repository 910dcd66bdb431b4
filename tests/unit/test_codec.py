"""Peer message codec: round trips and malformed frames."""

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from paxoslog.core import messages as m
from paxoslog.core.ballot import Ballot
from paxoslog.core.errors import MalformedMessage
from paxoslog.core.log import ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry, config_entry
from paxoslog.core.quorum import Config

uints = st.integers(min_value=0, max_value=2**40)
ballots = st.builds(Ballot, uints, st.integers(min_value=0, max_value=2**31))
payloads = st.lists(st.binary(max_size=40), max_size=4).map(tuple)
entries = st.builds(Entry, uints, uints, st.sampled_from([ENTRY_NORMAL, ENTRY_NOOP]), payloads)
configs = st.builds(lambda v, l: Config(frozenset(v), frozenset(), frozenset(l) - frozenset(v)),
                    st.sets(st.integers(1, 9), min_size=1, max_size=5),
                    st.sets(st.integers(10, 12), max_size=2))

FIELD_STRATEGIES = {
    "int": uints, "bool": st.booleans(), "bytes": st.binary(max_size=64), "Ballot": ballots,
    "tuple[int, ...]": st.lists(uints, max_size=5).map(tuple),
    "tuple[Entry, ...]": st.lists(entries, max_size=4).map(tuple), "Config": configs,
}


def message_strategy():
    from dataclasses import fields
    options = []
    for cls in m.MESSAGE_TYPES.values():
        options.append(st.builds(cls, *(FIELD_STRATEGIES[f.type] for f in fields(cls))))
    return st.one_of(options)


@settings(max_examples=400)
@given(message_strategy())
def test_every_message_round_trips(msg):
    """encode then decode gives back an equal message, for every message type."""
    assert m.decode(m.encode(msg)) == msg


def test_tags_are_stable():
    """Wire tags never change (they are part of the wire format)."""
    expected = {"PreVote": 1, "Prepare": 3, "Promise": 4, "Accept": 6, "Accepted": 7,
                "Heartbeat": 8, "RequestVote": 20, "AppendEntries": 22, "TimeoutNow": 30,
                "InstallSnapshot": 31}
    for name, tag in expected.items():
        assert getattr(m, name).TAG == tag


def test_config_entry_round_trips():
    """A configuration entry carries a joint config through the codec."""
    config = Config(frozenset({1, 2, 4}), frozenset({1, 2, 3}), frozenset({5}))
    entry = config_entry(7, 3, config)
    msg = m.Accept(1, 2, Ballot(3, 1), (entry,), 6)
    back = m.decode(m.encode(msg))
    assert back.entries[0].kind == ENTRY_CONFIG
    from paxoslog.core.log import entry_config
    assert entry_config(back.entries[0]) == config


BAD_FRAMES = [
    b"",                                   # empty
    b"\xff\xff\xff",                       # not CBOR
    cbor2.dumps({"a": 1}),                 # not an array
    cbor2.dumps([]),                       # empty array
    cbor2.dumps([999, 1, 2]),              # unknown tag
    cbor2.dumps(["6", 1, 2]),              # tag of the wrong type
    cbor2.dumps([6, 1, 2]),                # too few fields
    cbor2.dumps([6, 1, 2, [1, 1], [], 0, 9]),          # too many fields
    cbor2.dumps([6, -1, 2, [1, 1], [], 0]),            # negative node id
    cbor2.dumps([6, 1, 2, [1], [], 0]),                # short ballot
    cbor2.dumps([6, 1, 2, [1, 1], [[1, 1, 0]], 0]),    # short entry
    cbor2.dumps([6, 1, 2, [1, 1], [[1, 1, 7, []]], 0]),  # unknown entry kind
    cbor2.dumps([6, 1, 2, [1, 1], [[1, 1, 0, ["x"]]], 0]),  # command not bytes
    cbor2.dumps([6, 1, 2, [1, 1], "entries", 0]),      # entries not an array
    cbor2.dumps([7, 1, 2, [1, 1], [1, "2"]]),          # slot not an integer
    cbor2.dumps([8, 1, 2, [1, 1], 0, [], True]),       # bool where an int is due
    cbor2.dumps([20, 1, 2, 3, 4, 5, 1, 0]),            # int where a bool is due
    cbor2.dumps([31, 1, 2, 3, 4, 5, [[], [], []], b""]),  # config without voters
    cbor2.dumps([31, 1, 2, 3, 4, 5, [[1], [], [1]], b""]),  # learner also a voter
    cbor2.dumps([31, 1, 2, 3, 4, 5, [[1], [], []], "s"]),  # str where bytes are due
    cbor2.dumps([6, 1, 2, [1, 1], [], 2**70]),         # bignum
]


@pytest.mark.parametrize("frame", BAD_FRAMES)
def test_malformed_frames_are_rejected_cleanly(frame):
    """A malformed frame raises MalformedMessage with a reason, never another exception."""
    with pytest.raises(MalformedMessage) as info:
        m.decode(frame)
    assert str(info.value)


def test_oversized_frame_is_rejected_before_decoding():
    """A frame over the configured maximum is refused by size."""
    frame = m.encode(m.Accept(1, 2, Ballot(1, 1), (Entry(1, 1, 0, (b"x" * 1000,)),), 0))
    with pytest.raises(MalformedMessage, match="exceeds"):
        m.decode(frame, frame_bytes_max=100)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(frame):
    """Arbitrary bytes either decode to a message or raise MalformedMessage."""
    try:
        msg = m.decode(frame)
    except MalformedMessage:
        return
    assert type(msg) in m.MESSAGE_TYPES.values()
