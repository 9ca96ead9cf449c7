"""Failure and recovery (issue #6): a full disk, a read-only store or an unwritable
snapshot dir is one clear line and exit 3, with the old snapshots intact and nothing
half-written; `backup` taken during an ingest is a consistent store; the recovery story
of docs/recovery.md (rebuild from kumod's logs, restore a backup) works as written.

The disk-full and read-only cases mount a small tmpfs (root only; skipped otherwise);
the RLIMIT_FSIZE cases need no privilege."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import tomli_w

import logfactory
from conftest import wait_for
from test_crash import _cmd, _make_install, reference_run, state_of

from exporter.export import snapshot_files, validate_snapshot_file


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                       capture_output=True)
    return r.returncode == 0


@contextmanager
def tmpfs(where: Path, size: str = "1m"):
    if os.geteuid() != 0 or shutil.which("mount") is None or not _mount_tmpfs(where, size):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _remount(where: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(where)], check=True, capture_output=True)


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    err = r.stderr.decode().strip()
    lines = [ln for ln in err.splitlines() if ln.startswith("kumo-suppress: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _snap_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.startswith(".")}


def _no_debris(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


def _fill(install, domain: str, n: int, width: int = 40) -> None:
    rows = "".join(f"{'u' * width}{i}@dest.example,{domain},manual\n" for i in range(n))
    install.ok("import", "-", input=rows)


# ---------------------------------------------------------------------- disk full

def test_disk_full_export_keeps_old_snapshots(install, tmp_path):
    with tmpfs(tmp_path / "snapfs", "256k") as snap:
        install.configure(export={"dir": str(snap / "snapshots")})
        _fill(install, "example.com", 50)
        _fill(install, "other.example", 20)
        install.ok("export")
        old = _snap_bytes(snap / "snapshots")
        _fill(install, "example.com", 8000)          # ~500 KB: cannot fit
        r = install.subprocess("export")
        assert r.returncode == 3
        _one_line_error(r, str(snap / "snapshots"), "No space left")
        assert _snap_bytes(snap / "snapshots") == old  # untouched, not half-written
        _no_debris(snap / "snapshots")
        for p in snapshot_files(snap / "snapshots"):
            assert validate_snapshot_file(p) == []
        _remount(snap, "size=16m")                     # space again: the next export repairs
        install.ok("export")
        data = json.loads((snap / "snapshots" / "example.com.json").read_text())
        assert data["count"] == 8000          # the first 50 were refreshed
        _no_debris(snap / "snapshots")


def test_disk_full_store_then_rerun_equals_one_run(tmp_path):
    corpus, ref = reference_run(tmp_path)
    with tmpfs(tmp_path / "storefs", "1m") as fs:
        cfg = _make_install(tmp_path / "inst", corpus)
        import tomllib
        data = tomllib.loads(cfg.read_text())
        data["store"]["path"] = str(fs / "suppression.db")
        cfg.write_text(tomli_w.dumps(data))
        assert subprocess.run(_cmd(cfg, "init"), capture_output=True, timeout=120).returncode == 0
        r = subprocess.run(_cmd(cfg, "ingest"), capture_output=True, timeout=120)
        assert r.returncode == 3, r.stderr.decode()
        _one_line_error(r, "full")
        conn = sqlite3.connect(fs / "suppression.db")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        _remount(fs, "size=64m")
        r = subprocess.run(_cmd(cfg, "ingest"), capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        assert state_of(fs / "suppression.db") == ref


def _fsize_limit(limit: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_rlimit_fsize_export_is_exit_3_one_line(install):
    _fill(install, "example.com", 30)
    install.ok("export")
    old = _snap_bytes(install.snap_dir)
    _fill(install, "example.com", 3000)
    r = subprocess.run([sys.executable, "-m", "exporter", "-c", str(install.config_path), "export"],
                       capture_output=True, timeout=60, preexec_fn=_fsize_limit(65_536))  # > the 32 KB -shm
    assert r.returncode == 3
    _one_line_error(r, "File too large")
    assert _snap_bytes(install.snap_dir) == old
    _no_debris(install.snap_dir)
    install.ok("export")
    assert install.snapshot("example.com")["count"] == 3000


def test_rlimit_fsize_ingest_is_exit_3_one_line(install):
    install.ok("init")
    ts = int(time.time()) - 60
    install.segment([logfactory.bounce(f"user{i}@dest{i % 9}.example", timestamp=ts, id=f"m{i}")
                     for i in range(20000)])
    size = install.db.stat().st_size
    r = subprocess.run([sys.executable, "-m", "exporter", "-c", str(install.config_path), "ingest"],
                       capture_output=True, timeout=60, preexec_fn=_fsize_limit(size + 200_000))
    assert r.returncode == 3, r.stderr.decode()
    _one_line_error(r)
    conn = sqlite3.connect(install.db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    install.ok("ingest")
    assert json.loads(install.ok("stats", "--json").output)["entries"] == 20000


# ---------------------------------------------------------------------- read-only

def test_read_only_store_is_exit_3_and_check_never_says_no(install, tmp_path):
    with tmpfs(tmp_path / "rofs", "8m") as fs:
        import tomllib
        data = tomllib.loads(install.config_path.read_text())
        data["store"]["path"] = str(fs / "suppression.db")
        install.config_path.write_text(tomli_w.dumps(data))
        install.ok("init")
        install.ingest([logfactory.bounce("u@dest.example")])
        _remount(fs, "ro")
        install.segment([logfactory.bounce("v@dest.example")])
        r = install.subprocess("ingest")
        assert r.returncode == 3, r.stderr.decode()
        _one_line_error(r, str(fs / "suppression.db"))
        for who, ok in (("u@dest.example", (0, 3)), ("v@dest.example", (1, 3))):
            r = install.subprocess("check", who, "--domain", "example.com")
            assert r.returncode in ok, (who, r.returncode, r.stderr.decode())
            if r.returncode == 3:
                _one_line_error(r)
        r = install.subprocess("add", "w@dest.example", "--domain", "example.com")
        assert r.returncode == 3
        _one_line_error(r)
        _remount(fs, "rw")


def test_unwritable_snapshot_dir_keeps_old_snapshots(install, tmp_path):
    with tmpfs(tmp_path / "snapro", "4m") as fs:
        install.configure(export={"dir": str(fs / "snapshots")})
        install.ingest([logfactory.bounce("u@dest.example")])
        install.ok("export")
        old = _snap_bytes(fs / "snapshots")
        install.ok("add", "w@dest.example", "--domain", "example.com")
        _remount(fs, "ro")
        r = install.subprocess("export")
        assert r.returncode == 3
        _one_line_error(r, str(fs / "snapshots"))
        assert _snap_bytes(fs / "snapshots") == old
        _remount(fs, "rw")
        install.ok("export")
        assert "w@dest.example" in json.loads((fs / "snapshots" / "example.com.json").read_text())["recipients"]


def test_snapshot_dir_is_a_file_is_exit_3(install):
    install.ok("init")
    install.snap_dir.write_text("not a dir")
    r = install.subprocess("export")
    assert r.returncode == 3
    _one_line_error(r, str(install.snap_dir))


def test_missing_store_check_is_3_not_1(install):
    install.db.unlink()
    r = install.subprocess("check", "u@dest.example", "--domain", "example.com")
    assert r.returncode == 3
    _one_line_error(r, str(install.db))


# ---------------------------------------------------------------------- backup and restore

def test_backup_during_ingest_is_consistent_and_restorable(tmp_path):
    corpus, ref = reference_run(tmp_path)

    cfg = _make_install(tmp_path / "inst", corpus)
    db = tmp_path / "inst" / "var" / "suppression.db"
    subprocess.run(_cmd(cfg, "init"), check=True, capture_output=True)
    ingest = subprocess.Popen(_cmd(cfg, "ingest"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    backups = []

    def store_bytes() -> int:   # the database and its WAL: they grow with every commit
        return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())

    for i in range(3):
        # each backup after more of the ingest was committed (or after it ended)
        seen = store_bytes()
        wait_for(lambda: ingest.poll() is not None or store_bytes() > seen, what="the ingest went on")
        target = tmp_path / f"backup{i}.db"
        r = subprocess.run(_cmd(cfg, "backup", str(target)), capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        backups.append(target)
    out, err = ingest.communicate(timeout=120)
    assert ingest.returncode == 0, err.decode()
    assert state_of(db) == ref

    mid = 0
    for target in backups:
        conn = sqlite3.connect(target)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] in ("delete", "wal")
        # one commit point: every line the checkpoints say were read is counted, and
        # every pair in the list has its history
        lines = conn.execute("SELECT COALESCE(SUM(lines), 0) FROM segments").fetchone()[0]
        counted = conn.execute("SELECT COALESCE(SUM(value), 0) FROM counters "
                               "WHERE name LIKE 'records_total:%'").fetchone()[0]
        assert lines == counted
        adds = conn.execute("SELECT COUNT(*) FROM history WHERE action = 'add'").fetchone()[0]
        assert adds == conn.execute("SELECT COUNT(*) FROM suppressions").fetchone()[0]
        conn.close()
        mid += 0 < lines < sum(s[1] for s in ref["segments"])

        # restore = stop, copy the backup over the store, start: then an ingest of the
        # same logs ends exactly where one uninterrupted run does
        restored = tmp_path / f"restored-{target.stem}"
        rcfg = _make_install(restored, corpus)
        shutil.copy2(target, restored / "var" / "suppression.db")
        r = subprocess.run(_cmd(rcfg, "ingest"), capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        assert state_of(restored / "var" / "suppression.db")["suppressions"] == ref["suppressions"]
        # (the restored copy's segment paths are the original install's; same lines)
    assert mid >= 1, "no backup was taken mid-ingest"

    # a backup of the finished store has the same entries
    final = tmp_path / "final.db"
    assert subprocess.run(_cmd(cfg, "backup", str(final)), capture_output=True).returncode == 0
    assert state_of(final)["suppressions"] == ref["suppressions"]
    r = subprocess.run(_cmd(cfg, "backup", str(final)), capture_output=True)
    assert r.returncode == 3 and b"already exists" in r.stderr


def test_rebuild_from_logs_plus_dump(install):
    """docs/recovery.md: delete the store, init, ingest the archived segments; manual
    entries come back from a `dump` CSV (or a backup)."""
    ts = int(time.time()) - 3600
    install.segment([logfactory.bounce(f"u{i}@dest.example", timestamp=ts + i, id=f"m{i}") for i in range(50)]
                    + [logfactory.oob("bounces@example.com", f"o{i}@dest.example", timestamp=ts + i)
                       for i in range(10)])
    install.ok("ingest")
    install.ok("add", "manual@dest.example", "--domain", "example.com", "--note", "asked by phone")
    install.ok("add", "@bad.example", "--domain", "example.com")
    before = json.loads(install.ok("list", "--json").output)
    dump = install.ok("dump").output

    for p in install.db.parent.iterdir():        # the store is lost
        p.unlink()
    install.ok("init")
    install.ok("ingest")
    rebuilt = json.loads(install.ok("list", "--json").output)
    key = lambda e: (e["domain"], e["recipient"], e["reason"], e["first_seen"], e["expires"])  # noqa: E731
    assert sorted(map(key, rebuilt)) == sorted(key(e) for e in before if e["source"] == "log")
    manual = [row for row in csv.reader(io.StringIO(dump)) if row and row[2] == "manual"]
    install.ok("import", "-", input="".join(",".join(r) + "\n" for r in manual))
    after = json.loads(install.ok("list", "--json").output)
    assert sorted((e["domain"], e["recipient"], e["reason"]) for e in after) == \
        sorted((e["domain"], e["recipient"], e["reason"]) for e in before)


def test_restored_backup_rewrites_snapshots_instead_of_trusting_the_newer_manifest(install, tmp_path):
    """After a restore, generations climb back to the numbers the newer store's manifest
    holds; the backup's own store_id makes the next export rewrite every file."""
    install.ok("add", "a@x.example", "--domain", "example.com")
    install.ok("backup", tmp_path / "b.db")
    install.ok("add", "b@x.example", "--domain", "example.com")
    install.ok("export")
    shutil.copyfile(tmp_path / "b.db", install.db)          # restore (exporter stopped)
    for suffix in ("-wal", "-shm"):
        Path(str(install.db) + suffix).unlink(missing_ok=True)
    install.ok("add", "c@x.example", "--domain", "example.com")
    install.ok("export")
    recipients = install.snapshot("example.com")["recipients"]
    assert set(recipients) == {"a@x.example", "c@x.example"}
