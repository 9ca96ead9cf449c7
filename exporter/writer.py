"""Group commit for the webhook: ONE writer thread with ONE Store connection.

Request handlers (server.py) parse and check a payload, then hand its records to the
writer. The writer takes everything queued at that moment and commits it in a single
transaction, then tells each waiting request the outcome; a request answers 2xx only after
that. Many concurrent posts so cost one fsync, not one each, and there is no SQLite lock
contention between request handlers (separate connections would sleep in SQLite's busy
handler instead).

A record that cannot be processed for any reason never costs its neighbours their commit,
and never becomes a 5xx: the group is retried job by job, and within a failing job record
by record, skipping (and counting) the records that fail. Only a store that cannot commit
now (locked, disk full, gone) is a StoreError, which the server answers 503.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import Config
from .ingest import Ingestor
from .store import Store, StoreError

log = logging.getLogger("kumo_suppress.writer")

GROUP_MAX_RECORDS = 20_000        # records the writer puts in one transaction at most
LINGER = 0.0005                   # seconds a group waits at most for the posters it expects
RECENT_GROUPS = 8                 # the groups whose largest size is the one expected


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one job: `committed` records are in the store (or were duplicates,
    or yield no suppression), `skipped` could not be processed; or `error` (a StoreError):
    nothing of the job was committed."""
    committed: int = 0
    skipped: int = 0
    error: StoreError | None = None


@dataclass(slots=True)
class _Job:
    records: list
    on_done: Callable[[Outcome], None]


def _store_failure(err: Exception) -> StoreError | None:
    if isinstance(err, StoreError):
        return err
    if isinstance(err, sqlite3.Error):
        return StoreError(f"store error: {err}")
    return None


class Writer:
    def __init__(self, config: Config):
        self.config = config
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._stop = threading.Event()
        # `serve` never creates a store (only `init` does): a missing one is StoreError, exit 3
        self.store = Store.open(config.store.path, create=False, busy_timeout=config.store.busy_timeout)
        # a 2xx tells kumod it may forget the record: the commit must survive a power
        # loss too, not only a crash of this process (WAL + NORMAL would not fsync it)
        self.store.conn.execute("PRAGMA synchronous=FULL")
        self.ingestor = Ingestor(self.store, config)
        self._recent_sizes: deque[int] = deque([1], maxlen=RECENT_GROUPS)
        self._thread = threading.Thread(target=self._loop, name="webhook-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, records: list, on_done: Callable[[Outcome], None]) -> None:
        """Queue `records`; `on_done(Outcome)` is called from the writer thread once they
        are committed (or could not be)."""
        if self._stop.is_set():
            on_done(Outcome(error=StoreError("receiver is shutting down")))
            return
        self._queue.put(_Job(records, on_done))

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then end the thread and close the store."""
        self._stop.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    break
                continue
            group = self._group(job)
            self._recent_sizes.append(len(group))
            self._commit_group(group)
        self.store.close()

    def _group(self, first: _Job) -> list[_Job]:
        """`first` and what is queued behind it. While the group is smaller than the
        largest of the last few, it waits up to LINGER for the rest: posters that were
        answered by the last commit are about to post again, and one fsync for all of them
        costs less than one each. A lone poster never waits (its groups are of one)."""
        group, count = [first], len(first.records)
        expected = max(self._recent_sizes)
        deadline = None
        while count < GROUP_MAX_RECORDS:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                if len(group) >= expected:
                    break
                if deadline is None:
                    deadline = time.monotonic() + LINGER
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    more = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            group.append(more)
            count += len(more.records)
        return group

    def _commit_group(self, group: list[_Job]) -> None:
        try:
            records = group[0].records if len(group) == 1 else [r for job in group for r in job.records]
            self.ingestor.ingest_records(records, source="webhook")
        except Exception as err:  # noqa: BLE001 - every waiter must get an answer
            failure = _store_failure(err)
            if failure is not None:
                self._finish(group, Outcome(error=failure))
                return
            for job in group:          # one bad record must not fail its neighbours
                self._finish([job], self._commit_one_by_one(job.records))
            return
        for job in group:
            self._finish([job], Outcome(committed=len(job.records)))

    def _commit_one_by_one(self, records: list) -> Outcome:
        committed = skipped = 0
        for index, record in enumerate(records):
            try:
                self.ingestor.ingest_records([record], source="webhook")
            except Exception as err:  # noqa: BLE001 - counted and skipped, never a 5xx
                failure = _store_failure(err)
                if failure is not None:
                    # the records before it are committed: kumod may resend them (ingestion
                    # is idempotent), so the whole post is answered 503
                    return Outcome(error=failure)
                skipped += 1
                log.warning("webhook: record %d of a post skipped: %s", index, (str(err).splitlines() or [type(err).__name__])[0][:200])
            else:
                committed += 1
        return Outcome(committed=committed, skipped=skipped)

    @staticmethod
    def _finish(group: list[_Job], outcome: Outcome) -> None:
        for job in group:
            try:
                job.on_done(outcome)
            except Exception as err:  # noqa: BLE001 - a vanished waiter must not kill the writer
                log.error("webhook: cannot hand back a commit outcome: %s", err)
