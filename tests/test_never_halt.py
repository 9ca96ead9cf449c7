"""Never halt, never lose: poison records, a missing or foreign store, files an export
never wrote, rewritten log files, time that lies, counters that must not double."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time

import pytest

import logfactory as f
from conftest import Daemon, free_port

DAY = 86400


def _snapshots(install) -> dict:
    return {p.name: p.read_bytes() for p in sorted(install.snap_dir.iterdir())}


# ---------------------------------------------------------------------- 3. the store must exist

@pytest.fixture
def exported(install):
    install.ingest([f.bounce("u@dest.example", "example.com"), f.bounce("v@dest.example", "other.example")])
    install.ok("export")
    return install


@pytest.mark.parametrize("damage", ["missing", "empty", "foreign", "foreign-sqlite"])
@pytest.mark.parametrize("command", [("ingest",), ("export",), ("sync",), ("prune",),
                                     ("check", "u@dest.example", "--domain", "example.com"),
                                     ("add", "w@dest.example", "--domain", "example.com")])
def test_no_command_but_init_uses_a_missing_empty_or_foreign_store(exported, damage, command):
    install = exported
    before = _snapshots(install)
    install.db.unlink()
    if damage == "empty":
        install.db.write_bytes(b"")
    elif damage == "foreign":
        install.db.write_text("queue = 'x'\n")
    elif damage == "foreign-sqlite":
        with sqlite3.connect(install.db) as conn:
            conn.execute("CREATE TABLE t(x)")
    size = install.db.stat().st_size if install.db.exists() else None
    r = install.subprocess(*command)
    err = r.stderr.decode()
    assert r.returncode == 3, err
    assert str(install.db) in err and "kumo-suppress init" in err and "Traceback" not in err
    assert _snapshots(install) == before, "the snapshots kumod reads stay as they were"
    assert (install.db.stat().st_size if install.db.exists() else None) == size, "nothing created or written"


def test_run_and_serve_refuse_a_missing_store(exported):
    install = exported
    install.db.unlink()
    install.configure(webhook={"listen": f"127.0.0.1:{free_port()}"})
    for command in ("serve", "run"):
        r = install.subprocess(command, timeout=30)
        assert r.returncode == 3, r.stderr.decode()
        assert "kumo-suppress init" in r.stderr.decode()
    assert not install.db.exists()


def test_init_still_creates_and_an_empty_file_can_be_initialised(install):
    install.db.unlink()
    install.db.write_bytes(b"")
    install.ok("init")
    install.ok("add", "w@dest.example", "--domain", "example.com")
