"""`kumo-suppress run` as a real process: scheduled ingest/export/prune with short
intervals, the webhook in the same process, one-line job failures, clean SIGTERM."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import logfactory  # noqa: E402
from conftest import Daemon, Install, free_port  # noqa: E402


class Runner(Daemon):
    def __init__(self, install: Install):
        super().__init__(install, "run")

    def stop(self) -> tuple[int, float]:
        started = time.time()
        code = super().stop()
        return code, time.time() - started


def wait_until(predicate, timeout: float = 15.0, what: str = "condition", runner: Runner | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if runner is not None and runner.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s" + (f"\n{runner.output()}" if runner else ""))


def snapshot_recipients(install: Install, domain: str = "example.com") -> set[str]:
    path = install.snap_dir / f"{domain}.json"
    try:
        return set(json.loads(path.read_text())["recipients"])
    except (OSError, ValueError):
        return set()


@pytest.fixture
def fast(tmp_path) -> Install:
    install = Install(tmp_path, schedule={"ingest_interval": "1s", "export_interval": "1s", "prune_interval": "1h"},
                      metrics={"textfile": "metrics/kumo_suppression.prom"})
    install.log_dir.mkdir(parents=True, exist_ok=True)
    return install


def test_run_follows_new_segments_and_stops_on_sigterm(fast):
    fast.segment([logfactory.bounce("first@example.net")])
    runner = Runner(fast)
    try:
        wait_until(lambda: "first@example.net" in snapshot_recipients(fast), what="first export", runner=runner)
        # a new done segment arrives while it runs; an open one is left alone
        fast.segment([logfactory.bounce("second@example.net")])
        fast.segment([logfactory.bounce("open@example.net")], done=False)
        wait_until(lambda: "second@example.net" in snapshot_recipients(fast), what="second export", runner=runner)
        assert "open@example.net" not in snapshot_recipients(fast)
        prom = fast.root / "metrics" / "kumo_suppression.prom"
        wait_until(lambda: prom.exists() and "kumo_suppression_entries" in prom.read_text(), what="textfile")
        assert (fast.snap_dir / "manifest.json").exists()
    finally:
        code, took = runner.stop()
    assert code == 0, runner.output()
    assert took < 5
    assert "Traceback" not in runner.output()
    # everything it committed is there, and a fresh ingest has nothing left to do
    assert fast.check("second@example.net") is not None


def test_failing_job_logs_one_line_and_the_next_run_goes_on(fast):
    fast.snap_dir.parent.mkdir(parents=True, exist_ok=True)
    fast.snap_dir.write_text("not a directory\n")    # every export fails
    fast.segment([logfactory.bounce("one@example.net")])
    runner = Runner(fast)
    try:
        wait_until(lambda: runner.output().count("export failed") >= 2, what="two failed exports", runner=runner)
        fast.segment([logfactory.bounce("two@example.net")])
        wait_until(lambda: fast.check("two@example.net"), what="ingest after failures", runner=runner)
        fast.snap_dir.unlink()                       # repaired: the next export succeeds
        wait_until(lambda: "two@example.net" in snapshot_recipients(fast), what="export after repair",
                   runner=runner)
    finally:
        code, _ = runner.stop()
    out = runner.output()
    assert code == 0, out
    assert "Traceback" not in out
    failures = [line for line in out.splitlines() if "export failed" in line]
    assert failures and all(str(fast.snap_dir) in line or "snapshot" in line.lower() for line in failures), out


def test_run_with_webhook(fast):
    port = free_port()
    fast.configure(webhook={"enabled": True, "listen": f"127.0.0.1:{port}", "token": "tok"})
    runner = Runner(fast)
    try:
        def listening():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False
        wait_until(listening, what="webhook listening", runner=runner)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            body = json.dumps([logfactory.bounce("hooked@example.net")])
            conn.request("POST", "/v1/events", body=body,
                         headers={"Authorization": "Bearer tok", "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
        finally:
            conn.close()
        wait_until(lambda: "hooked@example.net" in snapshot_recipients(fast), what="webhook -> snapshot",
                   runner=runner)
    finally:
        code, took = runner.stop()
    assert code == 0, runner.output()
    assert took < 5
    assert "tok" not in runner.output().replace("token", "")


def test_run_refuses_open_listen_without_token(fast):
    fast.configure(webhook={"enabled": True, "listen": "0.0.0.0:18097", "token": ""})
    r = fast.subprocess("run", timeout=20)
    assert r.returncode == 2, r.stderr
    assert "token" in r.stderr.decode()


def test_sigint_also_stops_cleanly(fast):
    runner = Runner(fast)
    try:
        # the first export has run: the scheduler (and its signal handlers) is up
        wait_until(lambda: (fast.snap_dir / "manifest.json").exists(), what="first export", runner=runner)
        runner.proc.send_signal(signal.SIGINT)
        runner.proc.wait(5)
    finally:
        runner.kill()
    assert runner.proc.returncode == 0, runner.output()
