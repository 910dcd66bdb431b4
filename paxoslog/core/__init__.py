"""The sans-I/O consensus core: pure, deterministic, no clock, no sockets, no randomness
of its own.  See DESIGN.md section 2 for the contract."""

from .ballot import Ballot
from .errors import Busy, ConfigChangeInProgress, ConsensusError, MalformedMessage, NotLeader
from .limits import DEFAULT_LIMITS, Limits
from .log import ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry, HardState, SnapshotMeta
from .quorum import Config
from .ready import ConfigChanged, ProposalDropped, ReadState, Ready, Role, RoleChanged
from .replica import PROTOCOLS, create_replica
from .types import PeerProgress, Replica, ReplicaOptions, ReplicaStatus, Restored

__all__ = [
    "Ballot", "Busy", "ConfigChangeInProgress", "ConsensusError", "MalformedMessage",
    "NotLeader", "DEFAULT_LIMITS", "Limits", "ENTRY_CONFIG", "ENTRY_NOOP", "ENTRY_NORMAL",
    "Entry", "HardState", "SnapshotMeta", "Config", "ConfigChanged", "ProposalDropped",
    "ReadState", "Ready", "Role", "RoleChanged", "PROTOCOLS", "ReplicaOptions", "Restored",
    "create_replica", "PeerProgress", "Replica", "ReplicaStatus",
]
