"""The Twisted shell: node service, peer transport, HTTP API (see node.py for the loop)."""

from .node import FatalNodeError, NodeService

__all__ = ["NodeService", "FatalNodeError"]
