"""Helpers for tests that damage WAL segment files by hand."""

from __future__ import annotations

import os

from paxoslog.storage.walscan import scan_segment


def written_end(path: str) -> int:
    """Where the records of a last segment end (its preallocated zeros follow)."""
    with open(path, "rb") as f:
        data = f.read()
    return scan_segment(path, int(os.path.basename(path)[:16]), data, last=True).valid_end


def unpreallocated(path: str) -> str:
    """Cut a segment to its records, as an older version, or a file system that refuses
    fallocate, leaves it: tests that cut bytes off the end of a file start from there."""
    os.truncate(path, written_end(path))
    return path
