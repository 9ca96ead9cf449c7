"""The webhook's group-commit writer (exporter/writer.py), driven in-process on a real store:
which posts share one commit. No timing is asserted; what is asserted is which jobs a
group takes and whether the writer waited for more."""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import logfactory  # noqa: E402

from exporter.config import load_config  # noqa: E402
from exporter.writer import RECENT_GROUPS, Writer, _Job  # noqa: E402


class WatchedQueue(queue.Queue):
    """A queue that records every blocking get (the writer waiting for more posts)."""

    def __init__(self):
        super().__init__()
        self.waits: list[float | None] = []
        self.arriving: list[_Job] = []      # posted while the writer waits, one per wait

    def get(self, block=True, timeout=None):
        if block:
            self.waits.append(timeout)
            if self.arriving:
                self.put(self.arriving.pop(0))
        return super().get(block, timeout)


@pytest.fixture
def writer(install):
    w = Writer(load_config(install.config_path))
    w._queue = WatchedQueue()
    yield w
    w.store.close()


def job(i: int) -> _Job:
    return _Job([logfactory.bounce(f"user{i}@example.net")], lambda outcome: None)


def test_a_lone_poster_never_waits(writer):
    first = job(0)
    assert writer._group(first) == [first]
    assert writer._queue.waits == []


def test_what_is_queued_joins_the_group_without_waiting(writer):
    jobs = [job(i) for i in range(5)]
    for j in jobs[1:]:
        writer._queue.put(j)
    assert writer._group(jobs[0]) == jobs
    assert writer._queue.waits == []


def test_a_group_waits_briefly_for_as_many_posters_as_lately(writer):
    writer._recent_sizes.append(3)          # the last commits served three posters
    first, second, third = job(0), job(1), job(2)
    writer._queue.put(second)
    writer._queue.arriving.append(third)     # posts while the writer waits
    assert writer._group(first) == [first, second, third]
    assert len(writer._queue.waits) == 1 and 0 < writer._queue.waits[0] <= 0.001


def test_a_poster_that_is_gone_costs_at_most_one_linger_per_group(writer):
    writer._recent_sizes.append(4)
    first = job(0)
    assert writer._group(first) == [first]
    # one wait, bounded; the group is committed with what came
    assert len(writer._queue.waits) == 1 and 0 < writer._queue.waits[0] <= 0.001


def test_the_expectation_follows_the_recent_groups(writer):
    writer._recent_sizes.append(4)
    for _ in range(RECENT_GROUPS):
        writer._recent_sizes.append(1)      # the others stopped posting
    writer._group(job(0))
    assert writer._queue.waits == []


def test_grouped_posts_are_committed_together(writer, install):
    answers: list = []
    done = threading.Event()
    jobs = [_Job([logfactory.bounce(f"user{i}@example.net")],
                 lambda outcome: (answers.append(outcome), len(answers) == 3 and done.set())) for i in range(3)]
    for j in jobs[1:]:
        writer._queue.put(j)
    writer._commit_group(writer._group(jobs[0]))
    assert done.wait(5)
    assert [a.committed for a in answers] == [1, 1, 1]
    assert sorted(r["recipient"] for r in writer.store.iter_entries(now=int(time.time()))) == [
        "user0@example.net", "user1@example.net", "user2@example.net"]
