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

# SQL text handed to execute() may only be made of literals: string and int constants,
# module constants made of literals, f-strings, joins and comprehensions over them,
# `int(...)` and `len(...)` (numbers cannot inject), and local lists every change of which
# adds literals only. Anything else (a value, a parameter) must be a bound `?` parameter.

def _literal(node: ast.AST, env: "_Env", bound: frozenset = frozenset()) -> bool:
    lit = lambda n: _literal(n, env, bound)  # noqa: E731
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, int)) and not isinstance(node.value, bool)
    if isinstance(node, ast.Name):
        return node.id in bound or env.literal_name(node.id)
    if isinstance(node, ast.JoinedStr):
        return all(isinstance(v, ast.Constant) or lit(v.value) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return lit(node.value)
    if isinstance(node, ast.BinOp):
        return lit(node.left) and lit(node.right)
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(lit(e) for e in node.elts)
    if isinstance(node, ast.Starred):
        return lit(node.value)
    if isinstance(node, (ast.GeneratorExp, ast.ListComp)):
        names = set(bound)
        for gen in node.generators:
            if isinstance(gen.target, ast.Name) and lit(gen.iter):
                names.add(gen.target.id)
            elif isinstance(gen.target, ast.Tuple) and gen.target.elts and isinstance(gen.target.elts[0], ast.Name) \
                    and env.literal_keys(gen.iter):
                names.add(gen.target.elts[0].id)     # `for sql, value in filters.items()`
            else:
                return False
        return _literal(node.elt, env, frozenset(names))
    if isinstance(node, ast.Subscript):
        return lit(node.value) and lit(node.slice)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("int", "len"):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join" \
            and isinstance(node.func.value, ast.Constant) and len(node.args) == 1:
        return lit(node.args[0])
    return False


class _Env:
    """The assignments a name in SQL can come from: module-level ones, and every
    assignment or in-place change of a local name in the enclosing function."""

    def __init__(self, module: ast.Module, function: ast.AST | None):
        self.writes: dict[str, list[ast.AST]] = {}
        scopes = [module.body] + ([function] if function is not None else [])
        for scope in scopes:
            nodes = ast.walk(scope) if not isinstance(scope, list) else scope
            for node in nodes:
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        self._assign(t, node.value)
                elif isinstance(node, ast.For):
                    self._assign(node.target, node.iter)    # an element of a literal is one
                elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                    self.writes.setdefault(node.target.id, []).append(node.value)
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in ("append", "extend", "insert") \
                        and isinstance(node.func.value, ast.Name):
                    self.writes.setdefault(node.func.value.id, []).extend(node.args[-1:])
        self.checking: set[str] = set()

    def _assign(self, target: ast.AST, value: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self.writes.setdefault(target.id, []).append(value)
        elif isinstance(target, ast.Tuple):
            pairs = zip(target.elts, value.elts) if isinstance(value, ast.Tuple) \
                and len(value.elts) == len(target.elts) else ((t, value) for t in target.elts)
            for t, v in pairs:
                self._assign(t, v)

    def literal_keys(self, node: ast.AST) -> bool:
        """`NAME.items()` of a dict every key of which is a literal (its values need not be)."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "items"
                and isinstance(node.func.value, ast.Name)):
            return False
        writes = self.writes.get(node.func.value.id)
        return bool(writes) and all(isinstance(w, ast.Dict) and all(k is not None and _literal(k, self)
                                                                    for k in w.keys) for w in writes)

    def literal_name(self, name: str) -> bool:
        if name in self.checking:
            return True          # a name built from itself (`sets += [...]`): its other writes decide
        writes = self.writes.get(name)
        if not writes:
            return False
        self.checking.add(name)
        try:
            return all(_literal(w, self) for w in writes)
        finally:
            self.checking.discard(name)


def sql_interpolations(source: str, filename: str = "<source>") -> list[tuple[str, int, str]]:
    """(file, line, SQL text) of every execute() whose SQL is not made of literals."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "executemany", "executescript") and node.args):
            continue
        function = node
        while function in parents and not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = parents[function]
        env = _Env(tree, function if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
        if not _literal(node.args[0], env):
            found.append((filename, node.lineno, ast.unparse(node.args[0])[:120]))
    return found


def test_sql_only_bound_parameters():
    found = [hit for path in sorted((ROOT / "exporter").glob("*.py"))
             for hit in sql_interpolations(path.read_text(), path.name)]
    assert not found, f"SQL built with interpolated values (use ? parameters): {found}"


@pytest.mark.parametrize("change", [
    'sets += [f"note = \'{note}\'"]',                 # a value in a SET list
    'sets.append("note = " + repr(note))',
    'where.append(f"reason = {reason!r}")',
])
def test_sql_check_catches_a_value_in_a_built_list(change):
    """The check above is only worth what it catches: a value pasted into a list of SQL
    fragments that is joined into an UPDATE must fail it."""
    source = f"""
def update(conn, note, reason, domain):
    sets = ["reason = ?", "first_seen = ?"]
    where = ["domain = ?"]
    {change}
    conn.execute(f"UPDATE suppressions SET {{', '.join(sets)}} WHERE {{' AND '.join(where)}}", (domain,))
"""
    assert sql_interpolations(source), "a value interpolated into SQL passed the check"


def test_sql_check_accepts_filters_keyed_by_literal_sql():
    source = """
def entries(conn, domain, reason):
    filters = {"domain = ?": domain, "reason = ?": reason}
    where = ["1", *(sql for sql, value in filters.items() if value is not None)]
    conn.execute(f"SELECT * FROM suppressions WHERE {' AND '.join(where)}", ())
"""
    assert sql_interpolations(source) == []
    assert sql_interpolations(source.replace('{"domain = ?": domain', '{f"domain = {domain}": domain'))


def test_sql_check_accepts_literal_lists():
    source = """
COLS = ", ".join(f"ev_{c}" for c in ("type", "code"))
def update(conn, evidence, domain):
    sets = ["reason = ?"]
    sets += [f"ev_{c} = ?" for c in ("type", "code")]
    conn.execute(f"UPDATE suppressions SET {', '.join(sets)}, {COLS} WHERE domain IN ({', '.join('?' * len(evidence))})", ())
"""
    assert sql_interpolations(source) == []


HOSTILE = "\"x'); DROP TABLE suppressions;--\"@evil.example"   # a quoted local part may hold all that


def test_hostile_recipient_round_trips(install):
    ts = int(time.time()) - 60
    rec = logfactory.bounce(HOSTILE, "example.com", timestamp=ts)
    rec["response"]["content"] = "550 '); DELETE FROM history; --"
    install.ingest([rec])
    install.ok("add", "o'brien\";DROP/**/TABLE/**/tombstones;--@dest.example", "--domain", "example.com",
               "--note", "'); DROP TABLE state;--")
    entry = install.check(HOSTILE.lower())
    assert entry is not None and entry["recipient"] == HOSTILE.lower()
    assert entry["evidence"]["content"] == "550 '); DELETE FROM history; --"
    listed = json.loads(install.ok("list", "--json", "--domain", "example.com").output)
    assert {e["recipient"] for e in listed} == {HOSTILE.lower(), "o'brien\";drop/**/table/**/tombstones;--@dest.example"}
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
