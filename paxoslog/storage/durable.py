"""Durable file primitives: full writes, directory fsync, atomic replace.

Rules from ALICE (OSDI'14) and etcd #6368: a new or renamed file is durable only once its
directory is fsynced; a replaced file is written to a temp file, fsynced, renamed over the old
one, and the directory fsynced.  Anything that fails here raises ``OSError``; callers turn it
into ``StorageIOError`` and stop writing.
"""

from __future__ import annotations

import os

from .failpoints import ACTIVE, hit

__all__ = ["write_all", "pwrite_all", "fsync_dir", "make_dirs", "atomic_write", "create_file",
           "TMP_SUFFIX", "DATA_DIR_MODE", "DATA_FILE_MODE"]

TMP_SUFFIX = ".tmp"

# A data directory holds every key and value and the session table (client ids): owner only,
# as etcd does (0700 directories, 0600 files).  Given explicitly to mkdir/open, never through
# the umask (which can only take bits away).
DATA_DIR_MODE = 0o700
DATA_FILE_MODE = 0o600


def write_all(fd: int, data) -> None:
    """``os.write`` until every byte is written (a short write is legal for regular files)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data, offset: int) -> None:
    """``os.pwrite`` at ``offset`` until every byte is written."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def fsync_dir(path: str) -> None:
    """fsync a directory so that creations, renames and deletions in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str, mode: int = 0o777) -> None:
    """``os.makedirs`` that also fsyncs the parent of every directory it creates (a new
    directory is only durable once its parent's entry for it is).  ``mode``: of every
    directory it creates (``DATA_DIR_MODE`` in a data directory); existing ones keep theirs."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(directory))


def create_file(path: str, mode: int = DATA_FILE_MODE):
    """``open(path, "wb")`` whose file, when created, gets ``mode`` (not 0o666 less the
    umask).  An existing file is truncated and keeps its mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def atomic_write(path: str, data: bytes, failpoint: str | None = None,
                 mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, fsync directory.

    After a crash the file holds either the old or the new content, never a mix.
    ``failpoint`` is a prefix such as ``"hardstate"``: ``<prefix>.before_rename`` and
    ``<prefix>.after_rename`` are hit around the rename.  ``mode``: the new file's
    permissions (``DATA_FILE_MODE`` in a data directory, 0o600 for secrets).
    """
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    if ACTIVE and failpoint:
        hit(failpoint + ".before_rename")
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    if ACTIVE and failpoint:
        hit(failpoint + ".after_rename")
