"""Advisory file locks between kumo-suppress processes (cron overlap, `run` plus a manual
command): the second one waits for the first, saying so once, instead of interleaving."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("kumo_suppress")


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str, mode: int = 0o600, *, directory: bool = False):
    """Hold an exclusive flock on `lock_path` for the block: a lock file (created if
    missing, never through a symlink: one planted there must not make us create or open
    a file elsewhere, ELOOP instead), or with `directory` the directory itself."""
    if directory:
        fd = os.open(lock_path, os.O_RDONLY | os.O_DIRECTORY)
    else:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another %s is running (%s); waiting for it", what, lock_path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
