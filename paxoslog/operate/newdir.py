"""``NewDataDir``: build a data directory beside its target, then move it into place at once.

Nothing is ever half-written at the target: everything is written (and fsynced) under
``<target>.building-<pid>-<ns>`` first, then

* a target that does not exist (or is an empty directory) is replaced by one rename;
* a target that holds data (``paxoslog recover``) is swapped with the new directory in one
  atomic ``renameat2(RENAME_EXCHANGE)`` and the old data, now at the temporary name, is
  renamed to ``<target>.before-<what>-<UTC time>-<pid>-<ns>`` and kept (unique: two runs
  in one second never collide).  Where the kernel or the file system cannot exchange, two
  renames are used (old aside, new in); a crash between them leaves no directory at the
  target, only the two named ones, and the command says how to finish by hand.

The marker.  The first thing written in a new directory is ``.paxoslog-building``: JSON
naming the directory it was made as (``path``) and where the old data goes (``aside``),
``flock()``ed for as long as the building process lives.  It is removed from the target
only once the old data has its ``.before-`` name.  So, whatever step a crash interrupts:

* a ``<target>.building-*`` directory carrying a marker that names that very directory and
  that nobody holds locked is a new directory a dead run never finished: deleted by the
  next run;
* the old data, after the exchange, sits at the building name WITHOUT a marker (the
  marker went to the target with the new data), and a directory with someone else's
  marker (a leftover of a run interrupted before it removed its marker) names another
  path: neither is ever deleted (only an EMPTY unmarked one is, a run killed between
  ``mkdir`` and writing its marker);
* a target that still carries a marker was swapped in by a run that did not finish: the
  next run (``__enter__``) moves the old data it names to its ``aside`` name, then drops
  the marker.

Anything else found under ``<target>.building-*`` is left alone and listed in
``leftovers`` for the command to report.  A mount point can take part in no rename: it is
refused (``OperateError``) before anything is written.

The parent directory is fsynced after every rename.  A failure before the move deletes the
temporary directory; the target is untouched.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import json
import os
import shutil
import time

from paxoslog.storage.durable import DATA_DIR_MODE, fsync_dir, make_dirs, write_all

from .datadir import OperateError

__all__ = ["NewDataDir", "exchange_paths", "is_empty_dir", "MARKER", "interrupted_swap",
           "refuse_mount_point"]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
MARKER = ".paxoslog-building"


def exchange_paths(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2); False when not supported here."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"cannot exchange {a} and {b}: {os.strerror(code)}")


def is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def refuse_mount_point(target: str, what: str) -> None:
    """``OperateError`` when ``target`` is a mount point (a Kubernetes volume, say): a
    directory is built beside it and renamed into place, and a mount point can be neither
    renamed, exchanged nor removed (EBUSY), nor is its parent on the same file system."""
    if os.path.ismount(target):
        raise OperateError(
            f"{target} is a mount point: {what} builds a new data directory beside it and "
            "renames it into place, which a mount point cannot take part in, so it is not "
            "supported on a mount point.  Point data_dir at a directory inside the volume "
            f"(e.g. {os.path.join(target, 'paxoslog')}; for existing data, move its "
            "contents there first while the node is stopped) and run it again; nothing "
            "was changed")


def _read_marker(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 1 << 16, 0).decode())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _open_locked(marker: str) -> tuple[int | None, bool]:
    """(fd, locked here) of ``marker``; (None, False) when there is none.  Not locked here:
    a live run holds it."""
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None, False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd, False
    return fd, True


def interrupted_swap(target: str) -> tuple[str, str] | None:
    """(where the old data is, its intended ``.before-`` name) when ``target`` was swapped
    in by a run that was interrupted before it moved the old data aside; read-only."""
    fd, _locked = _open_locked(os.path.join(target, MARKER))
    if fd is None:
        return None
    try:
        info = _read_marker(fd) or {}
    finally:
        os.close(fd)
    old, aside = info.get("path"), info.get("aside")
    if isinstance(old, str) and isinstance(aside, str) and os.path.isdir(old):
        return old, aside
    return None


class NewDataDir:
    """``with NewDataDir(target, "recover") as new: ... write under new.path ...;
    new.commit()``.  ``new.aside``: where existing data at the target will be kept;
    ``new.leftovers``: directories of earlier runs found beside the target and left alone;
    ``new.finished``: (from, to) when ``__enter__`` finished an interrupted swap."""

    def __init__(self, target: str, aside_label: str = "replaced") -> None:
        self.target = os.path.abspath(target)
        self.parent = os.path.dirname(self.target)
        ns = time.time_ns()
        self._unique = f"{os.getpid()}-{ns % 1_000_000_000:09d}"
        self.path = f"{self.target}.building-{self._unique}"
        self.aside_label = aside_label
        self.aside = self._aside_name(aside_label, ns)
        self.kept_as: str | None = None
        self.leftovers: list[str] = []
        self.finished: tuple[str, str] | None = None
        self.stage = "building"             # then "swapped" (old data at self.path), "done"
        self._committed = False
        self._marker_fd: int | None = None

    def _aside_name(self, label: str, ns: int) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ns / 1e9))
        return f"{self.target}.before-{label}-{stamp}-{self._unique}"

    # ------------------------------------------------------------------ entering

    def __enter__(self) -> "NewDataDir":
        refuse_mount_point(self.target, "this command")
        make_dirs(self.parent)
        self._finish_interrupted_swap()
        self._remove_stale()
        os.mkdir(self.path, DATA_DIR_MODE)
        try:
            fd = os.open(os.path.join(self.path, MARKER),
                         os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self._marker_fd = fd
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._write_marker()
            fsync_dir(self.path)
            fsync_dir(self.parent)
        except BaseException:
            self._close_marker()
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        return self

    def _write_marker(self) -> None:
        data = json.dumps({"path": self.path, "target": self.target, "aside": self.aside,
                           "pid": os.getpid()}).encode()
        os.ftruncate(self._marker_fd, 0)
        os.lseek(self._marker_fd, 0, os.SEEK_SET)
        write_all(self._marker_fd, data)
        os.fsync(self._marker_fd)

    def _sibling(self, path, kind: str) -> bool:
        return (isinstance(path, str) and os.path.dirname(path) == self.parent
                and os.path.basename(path).startswith(os.path.basename(self.target) + kind))

    def _finish_interrupted_swap(self) -> None:
        """The target carries a marker: a run swapped it in and stopped before it was done.
        Move the old data it names to its ``.before-`` name, then drop the marker."""
        marker = os.path.join(self.target, MARKER)
        fd, locked = _open_locked(marker)
        if fd is None:
            return
        try:
            info = _read_marker(fd) or {}
            if not locked:
                raise OperateError(f"{self.target} is being swapped in by another run right "
                                   f"now (pid {info.get('pid', 'unknown')}); nothing was "
                                   "changed")
            old, aside = info.get("path"), info.get("aside")
            if (self._sibling(old, ".building-") and self._sibling(aside, ".before-")
                    and os.path.isdir(old) and not os.path.islink(old)):
                if self._carries_own_marker(old) or os.path.lexists(aside):
                    self.leftovers.append(old)
                else:
                    os.rename(old, aside)
                    fsync_dir(self.parent)
                    self.finished = (old, aside)
            os.unlink(marker)
            fsync_dir(self.target)
        finally:
            os.close(fd)

    @staticmethod
    def _carries_own_marker(path: str) -> bool:
        fd, _locked = _open_locked(os.path.join(path, MARKER))
        if fd is None:
            return False
        try:
            return (_read_marker(fd) or {}).get("path") == path
        finally:
            os.close(fd)

    def _remove_stale(self) -> None:
        """Delete what crashed runs of this code left half-built; never anything else."""
        removed = False
        for stale in sorted(glob.glob(glob.escape(self.target) + ".building-*")):
            if stale == self.path or os.path.islink(stale) or not os.path.isdir(stale):
                continue
            fd, locked = _open_locked(os.path.join(stale, MARKER))
            if fd is None:
                try:
                    os.rmdir(stale)              # empty: killed before writing its marker
                    removed = True
                except OSError:
                    self.leftovers.append(stale)  # e.g. old data a swap left here
                continue
            try:
                if not locked:
                    continue                     # a live run is building it
                info = _read_marker(fd) or {}
                own = info.get("path") == stale
                aside = info.get("aside")
                if own and not os.path.lexists(self.target) and self._sibling(aside, ".before-") \
                        and os.path.lexists(aside):
                    # two renames, interrupted between them: the old data is at ``aside``
                    # and this is the complete new directory; the command said so.
                    self.leftovers.append(stale)
                elif own or set(os.listdir(stale)) <= {MARKER}:
                    shutil.rmtree(stale, ignore_errors=True)
                    removed = True
                    if os.path.lexists(stale):
                        self.leftovers.append(stale)
                else:
                    self.leftovers.append(stale)
            finally:
                os.close(fd)
        if removed:
            fsync_dir(self.parent)

    # ------------------------------------------------------------------ leaving

    def _close_marker(self) -> None:
        if self._marker_fd is not None:
            os.close(self._marker_fd)
            self._marker_fd = None

    def __exit__(self, kind, exc, tb) -> None:
        self._close_marker()
        if not self._committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def where_the_old_data_is(self) -> str:
        """For messages after a failure: where the target's old data is now."""
        if self.stage == "swapped":
            return (f"{self.target} holds the NEW data; the old data is at {self.path}: "
                    f"rename it to {self.aside} (running the command again does that)")
        if self.stage == "aside-first":
            return (f"the old data is at {self.aside} and the new data at {self.path}: "
                    f"rename {self.path} to {self.target} to finish")
        if self.stage == "done":
            return f"the old data is at {self.aside}"
        return f"nothing was changed: {self.target} still holds the old data"

    def commit(self, aside_label: str | None = None) -> str | None:
        """Move the new directory to the target.  Returns where the old data was kept
        (None when there was none)."""
        if aside_label is not None and aside_label != self.aside_label:
            self.aside_label = aside_label
            self.aside = self._aside_name(aside_label, time.time_ns())
            self._write_marker()
        self._fsync_tree()
        refuse_mount_point(self.target, "this command")
        if not os.path.exists(self.target) or is_empty_dir(self.target):
            if os.path.exists(self.target):
                os.rmdir(self.target)
            os.rename(self.path, self.target)
            fsync_dir(self.parent)
            self._committed = True
            self.stage = "done"
            self._drop_marker()
            return None
        if os.path.lexists(self.aside):
            raise OSError(errno.EEXIST, f"{self.aside} exists (nothing was changed)")
        if exchange_paths(self.path, self.target):
            self._committed = True
            self.stage = "swapped"               # the old data is at self.path now
            fsync_dir(self.parent)
            os.rename(self.path, self.aside)
        else:
            os.rename(self.target, self.aside)
            self.stage = "aside-first"
            fsync_dir(self.parent)
            os.rename(self.path, self.target)
            self._committed = True
        fsync_dir(self.parent)
        self.stage = "done"
        self._drop_marker()
        self.kept_as = self.aside
        return self.aside

    def _drop_marker(self) -> None:
        """Last step: the new data at the target no longer needs its marker."""
        os.unlink(os.path.join(self.target, MARKER))
        fsync_dir(self.target)
        self._close_marker()

    def _fsync_tree(self) -> None:
        """fsync every directory of the new tree (files were fsynced as written)."""
        for root, _dirs, _files in os.walk(self.path, topdown=False):
            fsync_dir(root)
