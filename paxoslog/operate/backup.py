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

The temporary file is ``.FILE.part-<pid>``, created owner-only (0600: the backup holds every
key) and never over an existing file; it is removed when anything fails, when the disk fills
up (a clear error, not a traceback) and on SIGTERM or SIGINT (exit 128 + the signal); the
ones a killed (SIGKILL) run left are removed by the next run, once their pid is gone.

Exit 0 on success, 1 when a node refused, the download was damaged or could not be written,
2 bad arguments (``timeout_s`` must be finite, > 0 and at most ``TIMEOUT_MAX_S``), 4 when no
node could serve a backup before the deadline, 128 + N on signal N.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import time
from dataclasses import dataclass

from paxoslog.storage.durable import fsync_dir, write_all
from paxoslog.storage.errors import CorruptSnapshot
from paxoslog.storage.snapshot import SnapshotInfo, verify_snapshot

from .datadir import (OperateError, create_private, discard_partial, interruptible,
                      remove_stale_temps)
from .progress import Progress, human_bytes

__all__ = ["save_backup", "SavedBackup", "BACKUP_PATH", "TIMEOUT_MAX_S", "check_timeout",
           "temp_prefix"]

BACKUP_PATH = "/api/v1/snapshot"
_PIECE_BYTES = 1 << 20
TIMEOUT_MAX_S = 7 * 86400.0      # a week: socket timeouts take no more than a time_t


def check_timeout(value: float) -> float:
    """``value`` when it is a usable timeout in seconds (finite, > 0, at most a week);
    ``ValueError`` saying why not."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0 \
            or value > TIMEOUT_MAX_S:
        raise ValueError(f"must be a number of seconds greater than 0 and at most "
                         f"{TIMEOUT_MAX_S:.0f} (a week), not {value!r}")
    return float(value)


def temp_prefix(path: str) -> str:
    """The name of ``path``'s temporary files, less the pid: ``.FILE.part-``."""
    return f".{os.path.basename(path)}.part-"


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
    try:
        timeout_s = check_timeout(timeout_s)
    except ValueError as exc:
        raise OperateError(f"timeout: {exc}", 2) from None
    if os.path.isdir(path):
        raise OperateError(f"{path} is a directory; give a file name", 2)
    if os.path.exists(path) and not force:
        raise OperateError(f"{path} exists: choose another name, or --force to replace it", 2)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OperateError(f"{parent}: no such directory (for {path})", 2)
    remove_stale_temps(parent, temp_prefix(path))
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
    tmp = os.path.join(parent, f"{temp_prefix(path)}{os.getpid()}")
    digest = hashlib.sha256()
    progress = Progress(f"downloading the backup from {endpoint}", expected, quiet=quiet)
    received = 0

    def cannot_write(exc: OSError) -> OperateError:
        return OperateError(f"cannot write the backup to {tmp} (for {path}): "
                            f"{exc.strerror or exc}; nothing was saved (the partial file was "
                            "removed)")
    made = False
    with interruptible():
        try:
            try:
                fd = create_private(tmp)
                made = True
            except OSError as exc:
                raise OperateError(f"cannot create {tmp} (for {path}): "
                                   f"{exc.strerror or exc}; nothing was saved") from None
            try:
                while True:
                    try:
                        piece = response.read(_PIECE_BYTES)
                    except (OSError, http.client.HTTPException) as exc:
                        raise OperateError(f"the download from {endpoint} broke off after "
                                           f"{human_bytes(received)}: {exc}; nothing was "
                                           "saved") from None
                    if not piece:
                        break
                    try:
                        write_all(fd, piece)
                    except OSError as exc:
                        raise cannot_write(exc) from None
                    digest.update(piece)
                    received += len(piece)
                    progress.update(received)
                try:
                    os.fsync(fd)
                except OSError as exc:
                    raise cannot_write(exc) from None
            finally:
                os.close(fd)
            progress.finish()
            if expected is not None and received != expected:
                raise OperateError(f"the download from {endpoint} is truncated: {received} of "
                                   f"{expected} bytes; nothing was saved")
            try:
                info = verify_snapshot(tmp)
            except CorruptSnapshot as exc:
                raise OperateError(f"the backup from {endpoint} is damaged ({exc.reason}); "
                                   "nothing was saved") from None
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise OperateError(f"cannot rename {tmp} to {path}: {exc.strerror or exc}; "
                                   "nothing was saved") from None
            made = False                         # it is FILE now
        except BaseException as exc:
            if made:
                discard_partial(tmp, exc, "nothing was saved")
            raise
        try:
            fsync_dir(parent)
        except OSError as exc:
            raise OperateError(f"{path} was written but {parent} could not be fsynced: "
                               f"{exc.strerror or exc}: it may not survive a power "
                               "failure") from None
    return SavedBackup(path, endpoint, info, digest.hexdigest(), received, clock() - started)
