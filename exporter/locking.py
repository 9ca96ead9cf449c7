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
def exclusive(lock_path: Path, what: str, mode: int = 0o600):
    """Hold an exclusive flock on `lock_path` (created if missing) for the block."""
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another %s is running (%s); waiting for it", what, lock_path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
