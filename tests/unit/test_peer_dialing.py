"""How soon a node redials a peer (paxoslog/server/peers.py): only the lower id dials, so a
restarted peer is reconnected only when the redial comes."""

from __future__ import annotations

import random

from twisted.internet import task

from paxoslog.server.peers import _DialFactory


class Connector:
    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.attempts: list[float] = []

    def connect(self) -> None:
        self.attempts.append(self.clock.seconds())


def test_a_peer_down_for_a_long_time_is_redialed_about_every_quarter_second():
    random.seed(17)                       # the factory's jitter draws from ``random``
    clock = task.Clock()
    factory = _DialFactory(owner=None, peer_id=2, clock=clock)
    connector = Connector(clock)
    for _ in range(200):                  # 200 refused dials in a row: the peer is down
        factory.clientConnectionFailed(connector, None)
        clock.advance(1.0)
    gaps = []
    for _ in range(200):
        failed_at = clock.seconds()
        factory.clientConnectionFailed(connector, None)
        clock.pump([0.01] * 200)          # 2 s in 10 ms steps
        gaps.append(connector.attempts[-1] - failed_at)
    gaps.sort()
    assert gaps[len(gaps) // 2] <= 0.3, gaps[len(gaps) // 2]      # 0.25 s with jitter
    assert gaps[-1] <= 0.5, gaps[-1]
    assert gaps[0] >= 0.05                # still backed off, not a busy loop


def _lost_after(factory, connector, clock, lived_s: float) -> float:
    """The handshake succeeds, the connection is dropped ``lived_s`` later: the time from
    the drop to the next dial."""
    factory.connected()
    clock.advance(lived_s)
    lost_at = clock.seconds()
    factory.clientConnectionLost(connector, None)
    clock.pump([0.005] * 200)             # 1 s in 5 ms steps
    return connector.attempts[-1] - lost_at


def test_a_peer_that_hangs_up_at_once_is_redialed_with_backoff_a_stable_one_at_once():
    """A removed node's former peers accept its handshake and hang up: it used to redial
    every 20 ms (the handshake reset the backoff).  Now only a connection that lasted a
    second starts the redials over; quick drops back off to the 0.25 s cap."""
    random.seed(5)
    clock = task.Clock()
    factory = _DialFactory(owner=None, peer_id=2, clock=clock)
    connector = Connector(clock)
    quick = [_lost_after(factory, connector, clock, 0.001) for _ in range(12)]
    assert quick[0] <= 0.05                   # the first redial still comes soon
    later = sorted(quick[-6:])
    assert later[3] >= 0.19, quick            # then about every 0.25 s (20 % jitter)
    assert _lost_after(factory, connector, clock, 1.5) <= 0.06   # a stable one: from 20 ms


def _transport(tmp_path, node_id):
    from twisted.internet.testing import MemoryReactorClock

    from paxoslog.config import load_config
    from paxoslog.server.peers import PeerTransport
    conf = tmp_path / "c.toml"
    conf.write_text('cluster = "t"\nprotocol = "raft"\nsecret = "s3cret-s3cret"\ndata_dir = "'
                    + str(tmp_path) + '/{node}"\n' + "".join(
                        f'\n[[nodes]]\nid = {i}\npeer = "127.0.0.1:700{i}"\n'
                        f'api = "127.0.0.1:800{i}"\n' for i in (1, 2, 3)))
    reactor = MemoryReactorClock()
    transport = PeerTransport(load_config(str(conf)), node_id, handler=None, reactor=reactor)
    transport.startService()
    return transport, reactor


def test_a_removed_peer_is_redialed_at_most_every_five_seconds(tmp_path):
    """Members tell a removed node so on every connection and hang up; one that waits for a
    majority of the new voters (addressbook.py) was dialed, and each dial logged, about
    four times a second by every member.  A removed peer's redials back off to 5 s; a
    member's stay at the 0.25 s cap."""
    from paxoslog.server.peers import _REMOVED_REDIAL_S
    transport, reactor = _transport(tmp_path, 1)
    peers = {n.id: n for n in transport.config.nodes if n.id != 1}
    assert {p: d[0].maxDelay for p, d in transport._dialers.items()} == {2: 0.25, 3: 0.25}
    transport.set_peers(peers, removed=frozenset({3}))
    assert {p: d[0].maxDelay for p, d in transport._dialers.items()} == {
        2: 0.25, 3: _REMOVED_REDIAL_S}
    random.seed(3)
    factory, connector = transport._dialers[3][0], Connector(reactor)
    gaps = []
    for _ in range(12):                   # told, hung up at once, again and again
        factory.connected()
        lost_at = reactor.seconds()
        factory.clientConnectionLost(connector, None)
        reactor.pump([0.05] * 200)        # 10 s in 50 ms steps
        gaps.append(connector.attempts[-1] - lost_at)
    assert gaps[0] <= 0.1                 # the first redial still comes soon
    assert min(gaps[-4:]) >= 0.8 * _REMOVED_REDIAL_S, gaps
    transport.stopService()


class _Connected:
    """An established connection, as far as the transport's ping loop is concerned."""

    def send_frame(self, frame) -> bool:
        return True


def test_a_lower_id_peer_that_stays_apart_is_dialed_once_per_period(tmp_path):
    """Only the lower id dials: node 3, removed while it was down and back after its members
    stopped dialing it, heard from nobody and never learnt it was removed.  A lower-id peer
    not connected for _APART_DIAL_S is dialed once (no redials), and again each period
    while it stays apart; a connected one is not."""
    from paxoslog.server.peers import _APART_DIAL_S
    transport, reactor = _transport(tmp_path, 3)
    assert reactor.tcpClients == []                   # nobody above node 3 to dial
    reactor.pump([1.0] * int(_APART_DIAL_S - 1))
    assert reactor.tcpClients == []                   # not apart for long enough yet
    reactor.pump([1.0] * 2)
    dials = [(port, factory.peer_id, factory.once)
             for _, port, factory, _, _ in reactor.tcpClients]
    assert dials == [(7001, 1, True), (7002, 2, True)]     # once each, no redials
    transport.connections[1] = _Connected()           # node 1 dialed us: connected
    reactor.pump([1.0] * int(2 * _APART_DIAL_S))
    assert [port for _, port, *_ in reactor.tcpClients] == [7001, 7002, 7002, 7002]
    assert 1 not in transport._apart_since
    transport.connections.clear()
    transport.stopService()


def test_a_one_shot_dial_never_redials_and_a_stopped_transport_drops_it(tmp_path):
    """A one-shot dial whose connection lasted (the base class's ``resetDelay`` turns
    ``continueTrying`` back on) and then dropped, or that failed, is not redialed: it
    would have become a second permanent dialer for the pair.  The transport forgets it
    when it ends, and drops one in flight when it stops."""
    from paxoslog.server.peers import _APART_DIAL_S
    transport, reactor = _transport(tmp_path, 3)
    reactor.pump([1.0] * int(_APART_DIAL_S + 1))
    (_, _, lasted, _, _), (_, _, refused, _, _) = reactor.tcpClients
    connectors = list(transport._once)
    assert sorted(transport._once.values()) == [1, 2]
    lasted.connected()
    reactor.advance(5.0)                              # longer than stable_s
    lasted.clientConnectionLost(connectors[0], None)
    refused.clientConnectionFailed(connectors[1], None)
    reactor.pump([0.05] * 100)                        # 5 s: any redial would have come
    assert len(reactor.tcpClients) == 2
    assert transport._once == {}
    reactor.pump([1.0] * int(_APART_DIAL_S))          # the next period dials again
    assert len(reactor.tcpClients) == 4
    in_flight = list(transport._once)
    transport.stopService()
    assert transport._once == {}
    assert all(c._disconnected for c in in_flight)


def test_the_lowest_id_only_ever_dials_up(tmp_path):
    from paxoslog.server.peers import _APART_DIAL_S
    transport, reactor = _transport(tmp_path, 1)
    assert [port for _, port, *_ in reactor.tcpClients] == [7002, 7003]
    reactor.pump([1.0] * int(3 * _APART_DIAL_S))
    assert [port for _, port, *_ in reactor.tcpClients] == [7002, 7003]
    transport.stopService()


def test_a_node_waiting_for_the_word_redials_slowly_and_skips_an_undialable_peer(tmp_path):
    """A removed node waiting for the members' word (addressbook.py, ``waiting``) is hung up
    on by every member that tells it, so it redials each peer at most _REMOVED_REDIAL_S
    apart, not four times a second.  A peer address the resolver refuses at once (the real
    reactor's ``connectTCP`` raises, e.g. for an IPv6 zone this host lacks) is logged and
    skipped: the other peers are still dialed."""
    from paxoslog.config import parse_address
    from paxoslog.server.members_file import NodeAddresses
    from paxoslog.server.peers import _REMOVED_REDIAL_S
    transport, reactor = _transport(tmp_path, 1)
    peers = {n.id: n for n in transport.config.nodes if n.id != 1}
    transport.set_peers(peers, waiting=True)
    assert {p: d[0].maxDelay for p, d in transport._dialers.items()} == {
        2: _REMOVED_REDIAL_S, 3: _REMOVED_REDIAL_S}
    transport.set_peers(peers)
    assert {p: d[0].maxDelay for p, d in transport._dialers.items()} == {2: 0.25, 3: 0.25}
    connect = reactor.connectTCP

    def refusing(host, port, factory, timeout=30, bindAddress=None):
        if host == "fe80::1%nosuchif":
            raise OSError("[Errno -2] Name or service not known")
        return connect(host, port, factory, timeout, bindAddress)
    reactor.connectTCP = refusing
    peers[4] = NodeAddresses(parse_address("[fe80::1%nosuchif]:7004"), None)
    peers[5] = NodeAddresses(parse_address("127.0.0.1:7005"), None)
    transport.set_peers(peers)
    assert sorted(transport._dialers) == [2, 3, 5]
    assert [port for _, port, *_ in reactor.tcpClients] == [7002, 7003, 7005]
    transport.stopService()
    # The same for the dial down to a lower-id peer that stayed apart (_dial_down).
    from paxoslog.server.peers import _APART_DIAL_S
    transport, reactor = _transport(tmp_path, 3)
    connect = reactor.connectTCP
    reactor.connectTCP = refusing
    peers = {n.id: n for n in transport.config.nodes if n.id != 3}
    peers[1] = NodeAddresses(parse_address("[fe80::1%nosuchif]:7001"), None)
    transport.set_peers(peers)
    reactor.pump([1.0] * int(_APART_DIAL_S + 1))
    assert [port for _, port, *_ in reactor.tcpClients] == [7002]
    assert sorted(transport._once.values()) == [2]
    transport.stopService()
