"""``NewDataDir``: build a data directory beside its target, then move it into place at once.

Nothing is ever half-written at the target: everything is written (and fsynced) under
``<target>.building-<pid>`` first, then

* a target that does not exist (or is an empty directory) is replaced by one rename;
* a target that holds data (``paxoslog recover``) is swapped with the new directory in one
  atomic ``renameat2(RENAME_EXCHANGE)`` and the old data, now at the temporary name, is
  renamed to ``<target>.before-<what>-<UTC time>`` and kept.  Where the kernel or the file
  system cannot exchange, two renames are used (old aside, new in); a crash between them
  leaves no directory at the target, only the two named ones, and the command says how to
  finish by hand.

The parent directory is fsynced after every rename.  A failure before the move deletes the
temporary directory; the target is untouched.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import shutil
import time

from paxoslog.storage.durable import fsync_dir, make_dirs

__all__ = ["NewDataDir", "exchange_paths", "is_empty_dir"]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


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


class NewDataDir:
    """``with NewDataDir(target) as new: ... write under new.path ...; new.commit()``."""

    def __init__(self, target: str) -> None:
        self.target = os.path.abspath(target)
        self.parent = os.path.dirname(self.target)
        self.path = f"{self.target}.building-{os.getpid()}"
        self.kept_as: str | None = None
        self._committed = False

    def __enter__(self) -> "NewDataDir":
        for stale in glob.glob(glob.escape(self.target) + ".building-*"):
            shutil.rmtree(stale, ignore_errors=True)      # left by a crashed earlier run
        make_dirs(self.path)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if not self._committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, aside_label: str = "replaced") -> str | None:
        """Move the new directory to the target.  Returns where the old data was kept
        (None when there was none)."""
        self._fsync_tree()
        if not os.path.exists(self.target) or is_empty_dir(self.target):
            if os.path.exists(self.target):
                os.rmdir(self.target)
            os.rename(self.path, self.target)
            fsync_dir(self.parent)
            self._committed = True
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = f"{self.target}.before-{aside_label}-{stamp}"
        if exchange_paths(self.path, self.target):
            fsync_dir(self.parent)
            self._committed = True
            os.rename(self.path, aside)           # the old data, now at the temporary name
        else:
            os.rename(self.target, aside)
            fsync_dir(self.parent)
            os.rename(self.path, self.target)
            self._committed = True
        fsync_dir(self.parent)
        self.kept_as = aside
        return aside

    def _fsync_tree(self) -> None:
        """fsync every directory of the new tree (files were fsynced as written)."""
        for root, _dirs, _files in os.walk(self.path, topdown=False):
            fsync_dir(root)
