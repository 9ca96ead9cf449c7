"""Concurrency (issue #6): overlapping runs (cron overlap, a manual export during an
ingest, the webhook writing while an ingest runs) share one store safely, and the final
state equals a single run's."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import tomli_w

import logfactory
from conftest import free_port
from test_crash import _cmd, _make_install, reference_run, state_of

from exporter.config import load_config
from exporter.export import snapshot_files, validate_snapshot_file
from exporter.ingest import Ingestor
from exporter.store import Store


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("conc")
    corpus, state = reference_run(base, "sync")
    ref_snap = {p.name: json.loads(p.read_text())["recipients"]
                for p in snapshot_files(base / "ref" / "snapshots")}
    return {"corpus": corpus, "base": base, "state": state, "snapshots": ref_snap}


def _snapshots(directory: Path) -> dict:
    for path in snapshot_files(directory):
        assert validate_snapshot_file(path) == [], path
    return {p.name: json.loads(p.read_text())["recipients"] for p in snapshot_files(directory)}


def _start_together(cmds: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds]
    out = []
    for p, c in zip(procs, cmds):
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout, stderr))
    return out


def _assert_clean(results) -> None:
    for r in results:
        assert r.returncode == 0, r.stderr.decode()
        # "waits or exits cleanly with a message": never a traceback
        assert b"Traceback" not in r.stderr, r.stderr.decode()


@pytest.mark.parametrize("round_", range(2))
def test_two_syncs_at_once_equal_one(corpus, round_):
    root = corpus["base"] / f"sync{round_}"
    cfg = _make_install(root, corpus["corpus"])
    _assert_clean(_start_together([_cmd(cfg, "sync"), _cmd(cfg, "sync")]))
    # same entries, counts, evidence, history; counters not doubled by the overlap
    assert state_of(root / "var" / "suppression.db") == corpus["state"]
    assert _snapshots(root / "snapshots") == corpus["snapshots"]


def test_ingest_and_manual_export_at_once(corpus):
    root = corpus["base"] / "ingest-export"
    cfg = _make_install(root, corpus["corpus"])
    subprocess.run(_cmd(cfg, "init"), check=True, capture_output=True)   # export never creates a store
    _assert_clean(_start_together([_cmd(cfg, "ingest"), _cmd(cfg, "export"), _cmd(cfg, "export")]))
    snaps = _snapshots(root / "snapshots")     # whatever the overlap exported is valid
    assert set(snaps) <= set(corpus["snapshots"])
    assert state_of(root / "var" / "suppression.db") == corpus["state"]
    done = subprocess.run(_cmd(cfg, "export"), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert _snapshots(root / "snapshots") == corpus["snapshots"]


_HOOK_BASE = int(time.time()) - 3600


def _webhook_records(n: int = 300) -> list[dict]:
    """Disjoint from the corpus (their own sending domain), so the expected final state is
    the corpus state plus these, whatever the interleaving."""
    base = _HOOK_BASE
    return [logfactory.bounce(f"hook{i}@dest{i % 3}.example", "hook.example", timestamp=base + i, id=f"h{i}")
            for i in range(n)]


def _expected_with_hook(corpus, records) -> dict:
    root = corpus["base"] / "expected-hook"
    if not root.exists():
        cfg = _make_install(root, corpus["corpus"])
        done = subprocess.run(_cmd(cfg, "ingest"), capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()
        config = load_config(cfg)
        with Store.open(config.store.path) as store:
            ing = Ingestor(store, config)
            for i in range(0, len(records), 10):
                ing.ingest_records(records[i:i + 10], source="webhook")
    return state_of(root / "var" / "suppression.db")


def test_two_ingests_and_in_process_writer(corpus):
    """Two `ingest` processes plus a thread applying Ingestor.ingest_records (what the
    webhook's writer does) through one store."""
    records = _webhook_records()
    expected = _expected_with_hook(corpus, records)
    root = corpus["base"] / "two-plus-thread"
    cfg = _make_install(root, corpus["corpus"])
    subprocess.run(_cmd(cfg, "init"), check=True, capture_output=True)
    config = load_config(cfg)
    errors: list = []

    def writer():
        try:
            with Store.open(config.store.path) as store:
                ing = Ingestor(store, config)
                for i in range(0, len(records), 10):
                    ing.ingest_records(records[i:i + 10], source="webhook")
                    time.sleep(0.005)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    t = threading.Thread(target=writer)
    procs = [subprocess.Popen(_cmd(cfg, "ingest"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    t.start()
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    t.join(timeout=120)
    assert not errors, errors
    _assert_clean(results)
    assert state_of(root / "var" / "suppression.db") == expected


def _wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_webhook_and_concurrent_ingest_share_one_store(corpus):
    """`kumo-suppress serve` takes POSTs while an `ingest` process runs over the same store:
    every POST answered 2xx is committed, and the final state is the sequential one."""
    records = _webhook_records()
    expected = _expected_with_hook(corpus, records)
    root = corpus["base"] / "webhook-ingest"
    cfg = _make_install(root, corpus["corpus"])
    port = free_port()
    import tomllib
    raw = tomllib.loads(cfg.read_text())
    raw["webhook"] = {"listen": f"127.0.0.1:{port}", "token": "s3cret-token-value"}
    cfg.write_text(tomli_w.dumps(raw))
    subprocess.run(_cmd(cfg, "init"), check=True, capture_output=True)
    server = subprocess.Popen([sys.executable, "-m", "exporter", "-vv", "-c", str(cfg), "serve"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        ingest = subprocess.Popen(_cmd(cfg, "ingest"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        statuses = []
        for i in range(0, len(records), 10):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events",
                                         data=json.dumps(records[i:i + 10]).encode(), method="POST",
                                         headers={"Authorization": "Bearer s3cret-token-value",
                                                  "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                statuses.append(r.status)
        out, err = ingest.communicate(timeout=300)
        assert ingest.returncode == 0, err.decode()
        assert all(200 <= s < 300 for s in statuses), statuses
    finally:
        server.terminate()
        s_out, s_err = server.communicate(timeout=30)
    assert server.returncode == 0, s_err.decode()
    assert b"s3cret-token-value" not in s_out + s_err       # the token is never logged
    assert state_of(root / "var" / "suppression.db") == expected


def test_checkpoint_guard_without_the_lock(corpus, monkeypatch):
    """Even when two ingests do read one segment at once (the lock file unusable), the
    checkpoint check inside each commit keeps every line counted exactly once."""
    import contextlib

    import exporter.ingest as ingest_mod
    monkeypatch.setattr(ingest_mod, "ingest_lock", lambda path: contextlib.nullcontext())
    root = corpus["base"] / "no-lock"
    cfg = _make_install(root, corpus["corpus"])
    config = load_config(cfg)
    Store.open(config.store.path).close()
    errors: list = []
    superseded: list = []

    def run():
        try:
            with Store.open(config.store.path) as store:
                res = Ingestor(store, config).ingest_configured()
                superseded.append(res.segments)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    state = state_of(root / "var" / "suppression.db")
    ref = corpus["state"]
    assert state["counters"].get("malformed_total") == ref["counters"].get("malformed_total")
    assert {k: v for k, v in state["counters"].items() if k.startswith("records_total")} == \
        {k: v for k, v in ref["counters"].items() if k.startswith("records_total")}
    assert state["suppressions"] == ref["suppressions"]
    assert state["segments"] == ref["segments"]
    assert state["counters"].get("duplicates_total", 0) == 0


def test_stdin_ingest_does_not_hold_the_ingest_lock(install):
    """`tail -F ... | kumo-suppress ingest -` runs forever: it must not block file ingests."""
    install.ok("init")
    feeder = subprocess.Popen([sys.executable, "-m", "exporter", "-c", str(install.config_path), "ingest", "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        feeder.stdin.write(json.dumps(logfactory.bounce("pipe@dest.example")).encode() + b"\n")
        feeder.stdin.flush()
        time.sleep(0.5)
        install.segment([logfactory.bounce("file@dest.example")])
        r = install.subprocess("ingest", timeout=20)
        assert r.returncode == 0, r.stderr.decode()
        assert b"waiting" not in r.stderr
        assert install.check("file@dest.example") is not None
    finally:
        feeder.stdin.close()
        feeder.wait(timeout=30)
        feeder.stdout.close()
        err = feeder.stderr.read()
        feeder.stderr.close()
    assert feeder.returncode == 0, err.decode()
    assert install.check("pipe@dest.example") is not None
