"""paxoslog: a replicated log service (Multi-Paxos or Raft) on Twisted."""

__version__ = "0.1.0"
