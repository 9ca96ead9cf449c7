"""The exposition and the cached active-entry figures behind a scrape."""

from __future__ import annotations

from exporter.config import load_config
from exporter.daemon import Daemon
from exporter.metrics import PROCESS_REGISTRY, StatsCache, render
from exporter.store import Store


class CountingStore:
    """A Store whose stats() (the only query that grows with the list) is counted."""

    def __init__(self, store: Store):
        self.store, self.stats_calls = store, 0

    def domain_generations(self):
        return self.store.domain_generations()

    def stats(self, now):
        self.stats_calls += 1
        return self.store.stats(now)


def test_a_scrape_never_counts_the_entries(install):
    install.ok("add", "a@example.net", "--domain", "example.com")
    with Store.open(install.db, create=False) as store:
        counting = CountingStore(store)
        cache = StatsCache(lambda: None)
        cache.refresh(counting)
        cache.refresh(counting)            # nothing changed: no recount
        assert counting.stats_calls == 1
        text = render(store, cache.stats).decode()
        assert 'kumo_suppression_entries{reason="manual"} 1.0' in text
        install.ok("add", "b@example.net", "--domain", "example.com")
        assert 'kumo_suppression_entries{reason="manual"} 1.0' in render(store, cache.stats).decode()
        cache.refresh(counting)            # a domain's generation moved: recount
        assert counting.stats_calls == 2
        assert 'kumo_suppression_entries{reason="manual"} 2.0' in render(store, cache.stats).decode()


def test_the_entries_are_recounted_only_while_someone_scrapes():
    """Under webhook traffic the generations move all the time: with nobody scraping, the
    background thread counts once at start and then leaves the store alone."""
    import contextlib
    import threading
    import time

    class Moving:
        """A store whose domains change between any two looks, stats() counted."""
        def __init__(self):
            self.generation, self.stats_calls, self.counted = 0, 0, threading.Event()

        def domain_generations(self):
            self.generation += 1
            return {"example.com": self.generation}

        def stats(self, now):
            self.stats_calls += 1
            self.counted.set()
            return {"by_reason": {}, "by_domain": {}, "calls": self.stats_calls}

    store = Moving()
    cache = StatsCache(lambda: contextlib.nullcontext(store))
    cache.REFRESH = 0.01
    cache.start()
    try:
        assert store.counted.wait(10)
        time.sleep(0.3)                       # some 30 rounds of the thread, nobody scraping
        assert store.stats_calls == 1
        store.counted.clear()
        assert cache.stats["calls"] == 1      # a scrape: the count from start, then a fresh one
        assert store.counted.wait(10)
        deadline = time.monotonic() + 10
        while cache.stats["calls"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.stats["calls"] >= 2
    finally:
        cache.stop()


def test_figures_before_the_first_count_leave_the_gauges_out(install):
    install.ok("init")
    with Store.open(install.db, create=False) as store:
        text = render(store, None).decode()
    assert "kumo_suppression_records_ingested_total" in text
    assert "kumo_suppression_entries" not in text


def test_a_failing_job_is_counted(install):
    install.ok("init")
    daemon = Daemon(load_config(install.config_path))
    before = PROCESS_REGISTRY.get_sample_value("kumo_suppression_job_failures_total", {"job": "export"}) or 0

    def broken(store):
        raise OSError("disk on fire")
    daemon._job("export", broken)
    assert PROCESS_REGISTRY.get_sample_value("kumo_suppression_job_failures_total", {"job": "export"}) == before + 1
