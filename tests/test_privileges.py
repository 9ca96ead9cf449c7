"""Least privilege and data (issue #6): the store (and its -wal/-shm) is 0600, snapshots
0644 in a 0755 dir whatever the umask, [export].group is applied, the webhook stays on
loopback unless a token is set and never logs the token, and SQL values only ever go
through bound parameters."""

from __future__ import annotations

import ast
import csv
import grp
import io
import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import logfactory
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _with_umask(mask: int):
    def pre():
        os.umask(mask)
    return pre


def _run(install, *args, umask: int = 0o022, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", "-c", str(install.config_path), *map(str, args)],
                          capture_output=True, timeout=timeout, cwd=install.root, preexec_fn=_with_umask(umask))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o000])
def test_store_wal_shm_are_0600(install, umask):
    install.segment([logfactory.bounce("u@dest.example")])
    assert _run(install, "init", umask=umask).returncode == 0
    # keep a connection open so -wal and -shm exist while we look at them
    import sqlite3
    conn = sqlite3.connect(install.db)
    conn.execute("SELECT COUNT(*) FROM suppressions").fetchone()
    r = _run(install, "ingest", umask=umask)
    assert r.returncode == 0, r.stderr.decode()
    files = [install.db, Path(f"{install.db}-wal"), Path(f"{install.db}-shm")]
    try:
        for f in files:
            assert f.exists(), f
            assert _mode(f) == 0o600, f"{f.name}: {oct(_mode(f))}"
        lock = install.db.with_name(install.db.name + ".ingest.lock")
        if lock.exists():
            assert _mode(lock) & 0o077 == 0
    finally:
        conn.close()


def test_backup_is_0600(install, tmp_path):
    install.ok("init")
    target = tmp_path / "backup.db"
    r = _run(install, "backup", target, umask=0o000)
    assert r.returncode == 0, r.stderr.decode()
    assert _mode(target) == 0o600


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_snapshots_0644_in_0755_dir_whatever_the_umask(install, umask):
    """kumod runs as another user: it must be able to read the snapshots."""
    install.segment([logfactory.bounce("u@dest.example", "example.com")])
    assert _run(install, "ingest", umask=umask).returncode == 0
    r = _run(install, "export", umask=umask)
    assert r.returncode == 0, r.stderr.decode()
    assert _mode(install.snap_dir) == 0o755, oct(_mode(install.snap_dir))
    for name in ("example.com.json", "manifest.json"):
        assert _mode(install.snap_dir / name) == 0o644, (name, oct(_mode(install.snap_dir / name)))


def _other_group() -> grp.struct_group | None:
    for g in grp.getgrall():
        if g.gr_gid != os.getgid():
            return g
    return None


def test_export_group_is_applied(install):
    install.segment([logfactory.bounce("u@dest.example", "example.com")])
    install.ok("ingest")
    primary = grp.getgrgid(os.getgid()).gr_name
    install.configure(export={"group": primary})
    install.ok("export")
    for name in ("example.com.json", "manifest.json"):
        assert (install.snap_dir / name).stat().st_gid == os.getgid()
    other = _other_group()
    if os.geteuid() == 0 and other is not None:     # root can give the files to any group
        install.ok("add", "w@dest.example", "--domain", "example.com")
        install.configure(export={"group": other.gr_name})
        install.ok("export")
        for name in ("example.com.json", "manifest.json"):
            assert (install.snap_dir / name).stat().st_gid == other.gr_gid, name
            assert _mode(install.snap_dir / name) == 0o644


def test_unknown_export_group_is_one_line(install):
    install.ok("init")
    install.configure(export={"group": "no-such-group-kumo"})
    r = _run(install, "export")
    assert r.returncode == 2, "a config error"
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "[export] group" in err and "no-such-group-kumo" in err and "Traceback" not in err


# ---------------------------------------------------------------------- webhook

def test_webhook_loopback_by_default_and_refuses_open_listen_without_token(install):
    from exporter.config import load_config
    cfg = load_config(install.config_path)
    assert cfg.webhook.host == "127.0.0.1"
    install.ok("init")
    install.configure(webhook={"listen": f"0.0.0.0:{free_port()}", "token": ""})
    r = _run(install, "serve", timeout=30)
    assert r.returncode == 2, r.stderr.decode()
    err = r.stderr.decode().strip()
    assert "token" in err and len(err.splitlines()) == 1


def test_webhook_token_never_logged(install):
    token = "tok-" + "x7" * 10
    port = free_port()
    install.ok("init")
    install.configure(webhook={"listen": f"127.0.0.1:{port}", "token": token})
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "-vv", "-c", str(install.config_path), "serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=install.root)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "serve never came up"
                time.sleep(0.1)
        body = json.dumps(logfactory.bounce("u@dest.example")).encode()
        for auth in (f"Bearer {token}", f"Bearer {token}x", token, f"Basic {token}"):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", data=body, method="POST",
                                         headers={"Authorization": auth})
            try:
                urllib.request.urlopen(req, timeout=10).close()
            except urllib.error.HTTPError as err:
                assert err.code in (401, 403)
                assert token.encode() not in err.read()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/suppressions/example.com/u%40dest.example",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert token.encode() not in r.read()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert token.encode() not in out + err
    assert token.encode()[:12] not in out + err
    assert not any(token in p.read_text(errors="replace") for p in install.root.rglob("*.log"))


# ---------------------------------------------------------------------- SQL

# f-string interpolations allowed inside execute(): constants, column/placeholder lists
# built from constants, and ints. Anything else must be a bound parameter.
ALLOWED_SQL_INTERPOLATIONS = {
    "int(busy_timeout * 1000)", "SCHEMA_VERSION", "WAL_SIZE_LIMIT", "_EV_COLS", "', '.join(sets)", "' AND '.join(where)",
}


def _execute_fstrings() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted((ROOT / "exporter").glob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        names: dict[str, ast.AST] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        names[t.id] = node.value
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("execute", "executemany", "executescript") and node.args):
                continue
            sql = node.args[0]
            if isinstance(sql, ast.Name) and sql.id in names:
                sql = names[sql.id]
            parts = [sql]
            if isinstance(sql, ast.BinOp):       # "..." + f"..."
                parts = [n for n in ast.walk(sql) if isinstance(n, ast.JoinedStr)]
            for part in parts:
                if isinstance(part, ast.JoinedStr):
                    for v in part.values:
                        if isinstance(v, ast.FormattedValue):
                            found.append((path.name, node.lineno, ast.unparse(v.value)))
                elif isinstance(part, ast.Call) and isinstance(part.func, ast.Attribute) \
                        and part.func.attr == "format":
                    found.append((path.name, node.lineno, "str.format"))
                elif isinstance(part, ast.BinOp) and isinstance(part.op, ast.Mod):
                    found.append((path.name, node.lineno, "% formatting"))
    return found


def test_sql_only_bound_parameters():
    found = _execute_fstrings()
    bad = [f for f in found if f[2] not in ALLOWED_SQL_INTERPOLATIONS]
    assert not bad, f"SQL built with interpolated values (use ? parameters): {bad}"


def test_where_and_set_lists_are_built_from_constants():
    """The two join()s allowed above only ever join literal SQL fragments."""
    src = (ROOT / "exporter" / "store.py").read_text()
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("append", "__iadd__") and isinstance(node.func.value, ast.Name) \
                and node.func.value.id in ("where", "sets"):
            arg = node.args[0]
            assert isinstance(arg, ast.Constant) or (
                isinstance(arg, ast.JoinedStr) and all(
                    isinstance(v, ast.Constant) or ast.unparse(v.value) == "c" for v in arg.values)), \
                ast.unparse(node)


HOSTILE = "x'); DROP TABLE suppressions;--@evil.example"


def test_hostile_recipient_round_trips(install):
    ts = int(time.time()) - 60
    rec = logfactory.bounce(HOSTILE, "example.com", timestamp=ts)
    rec["response"]["content"] = "550 '); DELETE FROM history; --"
    install.ingest([rec])
    install.ok("add", "o'brien\"; DROP TABLE tombstones;--@dest.example", "--domain", "example.com",
               "--note", "'); DROP TABLE state;--")
    entry = install.check(HOSTILE.lower())
    assert entry is not None and entry["recipient"] == HOSTILE.lower()
    assert entry["evidence"]["content"] == "550 '); DELETE FROM history; --"
    listed = json.loads(install.ok("list", "--json", "--domain", "example.com").output)
    assert {e["recipient"] for e in listed} == {HOSTILE.lower(), "o'brien\"; drop table tombstones;--@dest.example"}
    dumped = list(csv.reader(io.StringIO(install.ok("dump").output)))
    assert HOSTILE.lower() in [row[0] for row in dumped]
    install.ok("export")
    snap = install.snapshot("example.com")
    assert HOSTILE.lower() in snap["recipients"]
    install.ok("remove", HOSTILE, "--domain", "example.com")
    assert install.check(HOSTILE.lower()) is None
    stats = json.loads(install.ok("stats", "--json").output)
    assert stats["entries"] == 1 and stats["tombstones"] == 1


def test_export_group_also_owns_a_new_snapshot_dir(install):
    other = _other_group()
    if os.geteuid() != 0 or other is None:
        pytest.skip("giving a directory to another group needs root and a second group")
    install.configure(export={"group": other.gr_name})
    install.ok("add", "u@dest.example", "--domain", "example.com")
    install.ok("export")
    assert install.snap_dir.stat().st_gid == other.gr_gid
    assert _mode(install.snap_dir) == 0o755
