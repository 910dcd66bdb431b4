"""``paxoslog snapshot save [--endpoints URL,... | --config F] FILE``: a consistent backup of
a running cluster, without stopping it.

The node asked (any member: the endpoints are tried in order until one serves it) takes
the snapshot at a linearizable read point (server/backup.py has the argument: the file
holds every write acknowledged before the request), streams it, and this command:

1. writes the stream to a temporary file next to FILE, showing progress;
2. checks that it got exactly ``Content-Length`` bytes, then verifies the whole file (zstd
   frame layout and content checksum, every state against the trailer) and hashes it
   (SHA-256, printed: keep it with the file);
3. fsyncs it and renames it to FILE (FILE is never half-written; an existing FILE is kept
   unless ``--force``).

Exit 0 on success, 1 when a node refused or the download was damaged, 4 when no node could
serve a backup before the deadline.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
from dataclasses import dataclass

from paxoslog.storage.durable import fsync_dir
from paxoslog.storage.errors import CorruptSnapshot
from paxoslog.storage.snapshot import SnapshotInfo, verify_snapshot

from .datadir import OperateError
from .progress import Progress, human_bytes

__all__ = ["save_backup", "SavedBackup", "BACKUP_PATH"]

BACKUP_PATH = "/api/v1/snapshot"
_PIECE_BYTES = 1 << 20


@dataclass
class SavedBackup:
    path: str
    endpoint: str
    info: SnapshotInfo
    sha256: str
    bytes: int
    seconds: float


def save_backup(client, endpoints: list[str], path: str, *, timeout_s: float,
                force: bool = False, quiet: bool = False, sleep=time.sleep,
                clock=time.monotonic) -> SavedBackup:
    """Download a backup into ``path`` (see the module docstring).  ``client``: a
    SyncClient (its ``open_stream``)."""
    if os.path.isdir(path):
        raise OperateError(f"{path} is a directory; give a file name", 2)
    if os.path.exists(path) and not force:
        raise OperateError(f"{path} exists: choose another name, or --force to replace it", 2)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OperateError(f"{parent}: no such directory (for {path})", 2)
    started = clock()
    deadline = started + timeout_s
    problems: list[str] = []
    while True:
        for endpoint in endpoints:
            remaining = deadline - clock()
            if remaining <= 0:
                break
            try:
                response = client.open_stream(endpoint, BACKUP_PATH, timeout=max(1.0, remaining))
            except (OSError, http.client.HTTPException) as exc:
                problems.append(f"{endpoint}: {exc}")
                continue
            try:
                if response.status == 200:
                    return _receive(response, endpoint, path, parent, started, quiet, clock)
                body = response.read(4096).decode("utf-8", "replace")
            finally:
                response.close()
            problems.append(f"{endpoint}: {response.status} {body.strip()[:200]}")
            if response.status not in (502, 503, 504):
                raise OperateError(f"{endpoint} refused the backup: {response.status} "
                                   f"{body.strip()[:300]}")
        if clock() >= deadline:
            raise OperateError("no node served a backup within "
                               f"{timeout_s:g}s: " + "; ".join(problems[-len(endpoints):]), 4)
        sleep(min(0.5, max(0.0, deadline - clock())))


def _receive(response, endpoint: str, path: str, parent: str, started: float, quiet: bool,
             clock) -> SavedBackup:
    length = response.getheader("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    tmp = os.path.join(parent, f".{os.path.basename(path)}.part-{os.getpid()}")
    digest = hashlib.sha256()
    progress = Progress(f"downloading the backup from {endpoint}", expected, quiet=quiet)
    received = 0
    try:
        with open(tmp, "wb") as out:
            while True:
                try:
                    piece = response.read(_PIECE_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise OperateError(f"the download from {endpoint} broke off after "
                                       f"{human_bytes(received)}: {exc}; nothing was "
                                       "saved") from None
                if not piece:
                    break
                out.write(piece)
                digest.update(piece)
                received += len(piece)
                progress.update(received)
            out.flush()
            os.fsync(out.fileno())
        progress.finish()
        if expected is not None and received != expected:
            raise OperateError(f"the download from {endpoint} is truncated: {received} of "
                               f"{expected} bytes; nothing was saved")
        try:
            info = verify_snapshot(tmp)
        except CorruptSnapshot as exc:
            raise OperateError(f"the backup from {endpoint} is damaged ({exc.reason}); "
                               "nothing was saved") from None
        os.replace(tmp, path)
        fsync_dir(parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return SavedBackup(path, endpoint, info, digest.hexdigest(), received, clock() - started)
