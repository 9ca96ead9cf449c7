"""`kumo-suppress run`: the long-running process (docs/cli.md).

APScheduler 3.x (BackgroundScheduler) runs three jobs: ingest every
[schedule].ingest_interval, export every export_interval, prune every prune_interval.
Each job has max_instances=1 and coalesce=True, so a slow run is never overlapped by the
next one and missed runs collapse into one. A failing job logs one line; the next run
goes on. After each job the metrics textfile is written when [metrics].textfile is set.
When [webhook].enabled, the HTTP server (server.py) runs in the same process.

Every job opens its own Store connection in its worker thread, and the webhook writer
has its own; no connection is used by two threads at once. SIGTERM/SIGINT: the receiver stops accepting and commits
what it was handed, no new job starts, a running ingest stops after its next committed
batch (checkpoint committed with the data, so nothing is half-written or lost), and the
process exits 0. A job still running after STOP_GRACE seconds is abandoned: SQLite rolls
its open transaction back, never half-writes it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from .config import Config
from .export import export_snapshots
from .ingest import Ingestor
from .metrics import JOB_FAILURES
from .store import Store, now_ts
from .server import EVENTS_PATH, WebhookService, on_stop_signals, wait_for

log = logging.getLogger("kumo_suppress.run")

STOP_GRACE = 8.0


class Stopping(Exception):
    """Raised from the ingest progress callback (after a commit) when a stop was asked."""


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self.stop_event = threading.Event()
        self._running = 0
        self._running_lock = threading.Lock()
        self.webhook = None
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=3)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone="UTC")

    # ------------------------------------------------------------------ jobs
    def _open(self) -> Store:
        # only `init` creates a store: a missing one is StoreError (exit 3 at start)
        return Store.open(self.config.store.path, create=False, busy_timeout=self.config.store.busy_timeout)

    def _job(self, name: str, work) -> None:
        if self.stop_event.is_set():
            return
        with self._running_lock:
            self._running += 1
        started = time.monotonic()
        try:
            with self._open() as store:
                summary = work(store)
                if self.config.metrics.textfile:
                    from .metrics import write_textfile
                    write_textfile(self.config.metrics.textfile, store)
            log.info("%s: %s (%.2fs)", name, summary, time.monotonic() - started)
        except Stopping:
            log.info("%s: stopped after a committed batch", name)
        except Exception as err:  # noqa: BLE001 - one line, and the next run goes on
            JOB_FAILURES.labels(job=name).inc()
            log.error("%s failed: %s", name, _one_line(err))
        finally:
            with self._running_lock:
                self._running -= 1

    def _progress(self, origin: str, lineno: int) -> None:
        if self.stop_event.is_set():
            raise Stopping()

    def ingest(self) -> None:
        def work(store: Store) -> str:
            return Ingestor(store, self.config, progress=self._progress).ingest_configured().summary()
        self._job("ingest", work)

    def export(self) -> None:
        self._job("export", lambda store: export_snapshots(store, self.config).summary())

    def prune(self) -> None:
        retention = self.config.store.history_retention
        self._job("prune", lambda store: f"pruned {store.prune(now_ts(), history_retention=retention)} "
                                         "expired entries")

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        sched = self.config.schedule
        now = datetime.now().astimezone()
        self._open().close()           # a missing or foreign store fails here, not in every job
        if self.config.webhook.enabled:
            self.webhook = WebhookService(self.config)   # binds now: a bad listen fails at start
            self.webhook.start()
        # ingest first, export right after, prune once at start, then on their intervals
        self.scheduler.add_job(self.ingest, "interval", seconds=sched.ingest_interval, id="ingest",
                               name="ingest", next_run_time=now)
        self.scheduler.add_job(self.export, "interval", seconds=sched.export_interval, id="export",
                               name="export", next_run_time=now + timedelta(seconds=min(1.0, sched.export_interval)))
        self.scheduler.add_job(self.prune, "interval", seconds=sched.prune_interval, id="prune",
                               name="prune", next_run_time=now + timedelta(seconds=2))
        self.scheduler.start()

    def stop(self) -> bool:
        """Returns True when every job ended within STOP_GRACE."""
        self.stop_event.set()
        if self.webhook is not None:
            self.webhook.stop()
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            with self._running_lock:
                if self._running == 0:
                    return True
            time.sleep(0.05)
        return False


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)


def run(config: Config) -> int:
    for name in ("apscheduler", "apscheduler.scheduler", "apscheduler.executors.default"):
        if logging.getLogger().level > logging.DEBUG:
            logging.getLogger(name).setLevel(logging.ERROR)
    daemon = Daemon(config)
    on_stop_signals(daemon.stop_event)
    daemon.start()
    sched = config.schedule
    print(f"kumo-suppress run: ingest every {sched.ingest_interval:g}s, export every {sched.export_interval:g}s, "
          f"prune every {sched.prune_interval:g}s" +
          (f", webhook on http://{daemon.webhook.address}{EVENTS_PATH}" if daemon.webhook else ""),
          file=sys.stderr, flush=True)
    wait_for(daemon.stop_event)
    clean = daemon.stop()
    print("kumo-suppress run: stopped" + ("" if clean else " (a job was still running; its open "
                                                           "transaction is rolled back)"),
          file=sys.stderr, flush=True)
    if not clean:
        sys.stdout.flush()
        os._exit(0)
    return 0

