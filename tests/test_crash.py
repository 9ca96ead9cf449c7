"""Crash safety (issue #6): `kill -9` of a real `kumo-suppress ingest` / `export` at random
points, then a rerun, must leave exactly the state of one uninterrupted run.

The corpus is sized so one ingest takes about a second or two on a slow box, and
[ingest] batch_lines is small, so kills land between checkpoints as well as inside them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import tomli_w
import tomllib

import logfactory

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "exporter" / "schema" / "snapshot.schema.json").read_text())

SEGMENTS = 4
RECORDS_PER_SEGMENT = 9000
BATCH_LINES = 700
SEEDS = [11, 23, 37, 41, 53]
KILLS_PER_SEED = 5


def _cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "exporter", "-c", str(config), *args]


def _write_corpus(log_dir: Path) -> None:
    """Bounces, OOBs, expirations and (mostly) deliveries over a small pair space, so most
    pairs are refreshed several times: a replayed batch would show in `count`."""
    rng = random.Random(20261126)
    base = int(time.time()) - 3 * 86400
    for s in range(SEGMENTS):
        recs = []
        for i in range(RECORDS_PER_SEGMENT):
            ts = base + s * RECORDS_PER_SEGMENT + i
            rcpt = f"user{rng.randrange(400)}@dest{rng.randrange(4)}.example"
            dom = f"send{rng.randrange(4)}.example"
            r = rng.random()
            if r < 0.45:
                recs.append(logfactory.bounce(rcpt, dom, timestamp=ts, id=f"b{s}-{i}"))
            elif r < 0.52:
                recs.append(logfactory.oob(f"bounces@{dom}", rcpt, timestamp=ts, id=f"o{s}-{i}"))
            elif r < 0.56:
                recs.append(logfactory.expiration(rcpt, dom, timestamp=ts, id=f"e{s}-{i}"))
            elif r < 0.58:   # a multi-recipient bounce: every recipient counts
                recs.append(logfactory.bounce([rcpt, f"x{i % 50}@dest9.example"], dom, timestamp=ts,
                                              id=f"m{s}-{i}"))
            else:
                recs.append(logfactory.delivery(rcpt, dom, timestamp=ts, id=f"d{s}-{i}"))
        logfactory.write_segment(log_dir, recs, name=f"20261125-0{s}0000.000000000")


def _make_install(root: Path, corpus: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copytree(corpus, root / "logs")
    cfg = root / "config.toml"
    cfg.write_text(tomli_w.dumps({"store": {"path": "var/suppression.db"},
                                  "ingest": {"log_dirs": ["logs"], "batch_lines": BATCH_LINES},
                                  "export": {"dir": "snapshots"}}))
    _init(cfg)
    return cfg


def _init(cfg: Path) -> None:
    """Only `init` creates a store, as an operator's first step."""
    done = subprocess.run(_cmd(cfg, "init"), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


def reference_run(base: Path, command: str = "ingest") -> tuple[Path, dict]:
    """The corpus under base/corpus, and the state one uninterrupted `command` (ingest or
    sync) leaves in the install base/ref: what every fault-injection test compares with."""
    corpus = base / "corpus"
    _write_corpus(corpus)
    cfg = _make_install(base / "ref", corpus)
    done = subprocess.run(_cmd(cfg, command), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    return corpus, state_of(base / "ref" / "var" / "suppression.db")


def state_of(db: Path) -> dict:
    """Everything ingestion decides, minus wall-clock columns (updated_at, history.at)."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        supp = conn.execute(
            "SELECT domain, recipient, reason, source, first_seen, last_seen, expires, count, ev_type, "
            "ev_message_id, ev_code, ev_enhanced_code, ev_content, ev_classification, ev_nodeid, note "
            "FROM suppressions ORDER BY domain, recipient").fetchall()
        history = sorted(conn.execute(
            "SELECT action, domain, recipient, reason, source, event_time, expires FROM history").fetchall(),
            key=repr)
        segments = sorted((Path(p).name, lines, complete, size) for p, lines, complete, size in
                          conn.execute("SELECT path, lines, complete, size FROM segments"))
        return {
            "suppressions": supp,
            "history": history,
            "segments": segments,
            "counters": dict(conn.execute("SELECT name, value FROM counters")),
            "seen_events": conn.execute("SELECT COUNT(*) FROM seen_events").fetchone()[0],
            "strikes": conn.execute("SELECT COUNT(*) FROM strikes").fetchone()[0],
            "domains": dict(conn.execute("SELECT domain, generation FROM domains")),
        }
    finally:
        conn.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The corpus, and the state one uninterrupted ingest leaves."""
    base = tmp_path_factory.mktemp("crash")
    started = time.monotonic()
    corpus, state = reference_run(base)
    duration = time.monotonic() - started
    assert state["counters"].get("duplicates_total", 0) == 0
    assert sum(c for *_, c in [(r[7],) for r in state["suppressions"]]) > len(state["suppressions"])
    return {"corpus": corpus, "base": base, "state": state, "duration": duration}


@pytest.mark.parametrize("seed", SEEDS)
def test_kill9_ingest_then_rerun_equals_one_run(reference, seed):
    rng = random.Random(seed)
    root = reference["base"] / f"seed{seed}"
    cfg = _make_install(root, reference["corpus"])
    db = root / "var" / "suppression.db"
    # a kill lands somewhere after interpreter start-up, within the first part of the run;
    # several kills hit the same store, each rerun resuming from the last checkpoint
    span = max(0.3, reference["duration"] * 0.25)
    landed = attempts = 0
    while landed < KILLS_PER_SEED:
        attempts += 1
        assert attempts < 4 * KILLS_PER_SEED, f"only {landed} kills landed mid-run"
        proc = subprocess.Popen(_cmd(cfg, "ingest"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.25, 0.25 + span))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait(timeout=60)
        proc.stderr.close()
        if db.exists():    # whatever the kill left is a consistent store
            conn = sqlite3.connect(db)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
        if proc.returncode == 0 and landed < KILLS_PER_SEED:
            # that run finished before the kill: start over so the remaining kills land
            ref = reference["state"]
            assert state_of(db)["suppressions"] == ref["suppressions"]
            shutil.rmtree(root / "var")
            _init(cfg)
    done = subprocess.run(_cmd(cfg, "ingest"), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    state = state_of(db)
    ref = reference["state"]
    assert state["segments"] == ref["segments"]          # every segment once, to its last line
    assert state["counters"] == ref["counters"]          # no line counted twice or missed
    assert state["seen_events"] == ref["seen_events"]
    assert state["history"] == ref["history"]            # every add/refresh exactly once
    assert state["suppressions"] == ref["suppressions"]  # same entries, same counts, same evidence
    assert state["strikes"] == ref["strikes"]
    assert state["domains"] == ref["domains"]
    # a second rerun is a no-op
    again = subprocess.run(_cmd(cfg, "ingest"), capture_output=True, timeout=300)
    assert again.returncode == 0 and state_of(db) == state


# ---------------------------------------------------------------------- export

def _fill_for_export(db_root: Path, domains: int = 250, per_domain: int = 120) -> Path:
    cfg = db_root / "config.toml"
    db_root.mkdir(parents=True)
    cfg.write_text(tomli_w.dumps({"store": {"path": "var/suppression.db"}, "ingest": {"log_dirs": ["logs"]},
                                  "export": {"dir": "snapshots", "format": "json"}}))
    from exporter.store import Store
    now = int(time.time())
    with Store.open(db_root / "var" / "suppression.db") as store:
        store.import_rows(((f"u{i}@dest{i % 7}.example", f"d{d}.example", "bounce", now - 100, now + 86400 * 30)
                           for d in range(domains) for i in range(per_domain)), now)
    return cfg


def _check_file(path: Path, problems: list, seen: list) -> None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:     # removed between listing and reading (a format switch)
        return
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
        jsonschema.validate(data, SCHEMA)
        assert data["count"] == len(data["recipients"]), "count mismatch"
        assert data["domain"] == path.stem, "file name mismatch"
    except Exception as err:  # noqa: BLE001 - any problem is a test failure
        problems.append(f"{path.name}: {type(err).__name__}: {str(err)[:200]}")
    seen.append(path.name)


def _reader(directory: Path, stop: threading.Event, problems: list, seen: list) -> None:
    while not stop.is_set():
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith(".") or not name.endswith((".json", ".toml")):
                continue
            if name == "manifest.json":
                try:
                    json.loads((directory / name).read_bytes())
                except FileNotFoundError:
                    pass
                except ValueError as err:
                    problems.append(f"manifest.json: {err}")
                continue
            _check_file(directory / name, problems, seen)


def test_kill9_export_reader_never_sees_partial_file(tmp_path):
    cfg = _fill_for_export(tmp_path / "inst")
    snap = tmp_path / "inst" / "snapshots"
    snap.mkdir()
    rng = random.Random(7)
    problems: list = []
    seen: list = []
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(snap, stop, problems, seen), daemon=True)
    # how long one full export takes here
    started = time.monotonic()
    first = subprocess.run(_cmd(cfg, "export"), capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr.decode()
    full = time.monotonic() - started
    reader.start()
    landed = rounds = 0
    try:
        # until 10 kills landed mid-export (a round whose export finished first does not
        # count: the machine's speed varies), at most 30 rounds
        while landed < 10 and rounds < 30:
            i, rounds = rounds, rounds + 1
            # switch format each round, so every file is rewritten (and the old ones removed)
            fmt = "toml" if i % 2 == 0 else "json"
            data = tomllib.loads(cfg.read_text())
            data["export"]["format"] = fmt
            cfg.write_text(tomli_w.dumps(data))
            proc = subprocess.Popen(_cmd(cfg, "export"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.25, max(0.35, full * 0.9)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                landed += 1
            proc.wait(timeout=60)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not problems, problems[:5]
    assert seen, "the reader never read a snapshot"
    assert landed >= 5, f"only {landed} kills landed mid-export"

    # the next export repairs everything: json again, every domain, valid, no debris
    data = tomllib.loads(cfg.read_text())
    data["export"]["format"] = "json"
    cfg.write_text(tomli_w.dumps(data))
    done = subprocess.run(_cmd(cfg, "export"), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    files = sorted(p.name for p in snap.iterdir() if not p.name.startswith("."))
    assert files == sorted([f"d{d}.example.json" for d in range(250)] + ["manifest.json"])
    assert [p.name for p in snap.iterdir() if p.name.endswith(".tmp")] == []
    check = subprocess.run(_cmd(cfg, "validate"), capture_output=True, timeout=120)
    assert check.returncode == 0, check.stdout.decode()
    manifest = json.loads((snap / "manifest.json").read_text())
    import hashlib
    for domain, entry in manifest["domains"].items():
        assert hashlib.sha256((snap / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
        assert entry["count"] == 120
