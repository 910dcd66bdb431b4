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
    factory = _DialFactory(owner=None, peer_id=2)
    factory.clock = clock
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
