"""``LearnerPromotion``: the leader's membership upkeep, every heartbeat.

* A learner whose log has caught up with what was committed one check earlier, that the
  leader heard from within an election timeout and is connected to, becomes a voter
  (joint consensus).  One promotion at a time.
* The initial members get their rows in the membership table (nodes added later got theirs
  from add-node), so the table lists every member.

Nothing happens while a membership operation runs on this leader (``admin.busy``).
"""

from __future__ import annotations

from twisted.logger import Logger

from paxoslog.core.errors import Busy, ConfigChangeInProgress, NotLeader
from paxoslog.core.ready import Role

from .periodic import PeriodicService

__all__ = ["LearnerPromotion"]

log = Logger(namespace="paxoslog.membership")


class LearnerPromotion(PeriodicService):
    name = "promotion"

    def __init__(self, port, book, admin, reactor, *, period_s: float,
                 election_ticks: int) -> None:
        self.port = port
        self.book = book
        self.admin = admin
        self.reactor = reactor
        self.period_s = period_s
        self.election_ticks = election_ticks
        self._marks: dict[int, int] = {}

    def periodic(self) -> None:
        self.check()

    def check(self) -> None:
        port = self.port
        if self.admin.busy or port.stopping() or port.role() != Role.LEADER:
            self._marks.clear()
            return
        try:
            self._promote_learners()
            self._fill_rows()
        except Exception:
            log.failure("membership upkeep failed")

    def _promote_learners(self) -> None:
        port = self.port
        config = port.config()
        if config.joint or not config.learners or config != port.applied_config():
            return
        progress = port.progress()
        commit = port.commit_index()
        for learner in sorted(config.learners):
            p = progress.get(learner)
            mark = self._marks.get(learner)
            self._marks[learner] = commit
            if (p is None or mark is None or p.match < mark
                    or p.last_heard_ticks >= self.election_ticks
                    or not port.connected(learner)):
                continue
            try:
                port.change_config(config.voters | {learner}, config.learners - {learner})
            except (ConfigChangeInProgress, Busy, NotLeader, ValueError):
                return
            log.info("promoting learner {learner} to voter (its log reached index {match}, "
                     "commit {commit})", learner=learner, match=p.match, commit=commit)
            self._marks.pop(learner, None)
            return

    def _fill_rows(self) -> None:
        port = self.port
        have = {row.get("node_id") for row in self.book.rows()}
        for member in sorted(port.applied_config().members):
            if member in self.admin.rows_asked or member in have:
                continue
            entry = self.book.book.get(member)
            if entry is None:
                continue
            self.admin.rows_asked.add(member)
            d = port.write_row({"op": "add", "node_id": member, "address": str(entry.peer),
                                **({"api": str(entry.api)} if entry.api else {})})
            d.addErrback(lambda _f, m=member: self.admin.rows_asked.discard(m))
