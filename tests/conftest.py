"""Shared fixtures: a per-test installation (config, log dir, store, snapshot dir) and a
way to run the CLI the way an operator does."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

import logfactory  # noqa: E402

from exporter.cli import cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"


@dataclass
class Result:
    exit_code: int
    output: str
    stderr: str


class Install:
    """A kumo-suppression installation in a temp dir, driven through the CLI."""

    def __init__(self, root: Path, **sections):
        self.root = root
        self.log_dir = root / "logs"
        self.snap_dir = root / "snapshots"
        self.db = root / "var" / "suppression.db"
        self.config_path = root / "config.toml"
        self.cfg = {
            "store": {"path": "var/suppression.db"},
            "ingest": {"log_dirs": ["logs"]},
            "export": {"dir": "snapshots"},
        }
        self.configure(**sections)
        self.ok("init")   # only `init` creates a store

    def configure(self, **sections) -> None:
        for name, values in sections.items():
            if isinstance(values, dict) and isinstance(self.cfg.get(name), dict):
                self.cfg[name].update(values)
            else:
                self.cfg[name] = values
        self.config_path.write_text(tomli_w.dumps(self.cfg))

    def run(self, *args, input: str | bytes | None = None) -> Result:
        """In-process (fast) run of `kumo-suppress -c CONFIG ARGS`."""
        runner = CliRunner()
        r = runner.invoke(cli, ["-c", str(self.config_path), *map(str, args)], input=input,
                          catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    def ok(self, *args, **kw) -> Result:
        r = self.run(*args, **kw)
        assert r.exit_code == 0, f"kumo-suppress {' '.join(map(str, args))} -> {r.exit_code}\n{r.output}\n{r.stderr}"
        return r

    def subprocess(self, *args, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """A real process, as cron or systemd would start it."""
        return subprocess.run([sys.executable, "-m", "exporter", "-c", str(self.config_path), *map(str, args)],
                              input=input, capture_output=True, timeout=timeout, cwd=self.root)

    def segment(self, records, **kw) -> Path:
        return logfactory.write_segment(self.log_dir, records, **kw)

    def ingest(self, records=None, **kw) -> Result:
        if records is not None:
            self.segment(records, **kw)
        return self.ok("ingest")

    def check(self, recipient: str, domain: str = "example.com") -> dict | None:
        r = self.run("check", recipient, "--domain", domain, "--json")
        assert r.exit_code in (0, 1), r.output + r.stderr
        return json.loads(r.output) if r.exit_code == 0 else None

    def snapshot(self, domain: str, fmt: str = "json") -> dict:
        path = self.snap_dir / f"{domain}.{fmt}"
        if fmt == "toml":
            import tomllib
            return tomllib.loads(path.read_text())
        return json.loads(path.read_text())


def wait_for(predicate, timeout: float = 30, what: str = "the condition"):
    """Poll `predicate` every 50 ms until it returns something true (returned), failing
    after `timeout` seconds: tests wait for a state, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout} s"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A long-running `kumo-suppress -c CONFIG COMMAND` (run, serve) in its own process
    group, its output in ROOT/COMMAND.log."""

    def __init__(self, install: Install, command: str, *, fd_limit: int | None = None):
        self.log_path = install.root / f"{command}.log"
        self.log = open(self.log_path, "wb")

        def limit_fds():       # as systemd's LimitNOFILE would
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
        self.proc = subprocess.Popen([sys.executable, "-m", "exporter", "-c", str(install.config_path), command],
                                     cwd=install.root, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=limit_fds if fd_limit else None)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; SIGKILL if it has not exited within 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.log.close()

    def wait_listening(self, port: int, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"did not listen on {port}: {self.output()}")


@pytest.fixture
def install(tmp_path) -> Install:
    return Install(tmp_path)


@pytest.fixture
def factory():
    return logfactory


def run_ok(argv, **kw) -> subprocess.CompletedProcess:
    """Run a tool to completion (at most 10 minutes); its output in the failure."""
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, argv))} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="session")
def built_dist(tmp_path_factory) -> Path:
    """A wheelhouse as a release builds it: the sdist, the wheel built FROM that sdist (so
    the sdist is complete enough to build), and the dependency wheels pinned by
    deploy/constraints.txt. `python -m build` takes its isolated build env, and pip the
    dependency wheels, from the package index (through pip's cache)."""
    out = tmp_path_factory.mktemp("dist")
    run_ok([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, ROOT])
    wheel = next(out.glob("kumo_suppression-*.whl"))
    run_ok([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", out,
            "-c", CONSTRAINTS, wheel])
    return out


def pytest_collection_modifyitems(config, items):
    """Under xdist (`./dev test` runs -n auto --dist loadgroup) the tests that share one of
    this suite's module- or session-scoped fixtures (a reference ingest, an applied Ansible
    role, a built wheel) run on one worker, so the fixture is built once; every other test
    is balanced on its own."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        shared = sorted(
            (defs[-1].scope != "session", name)
            for name, defs in item._fixtureinfo.name2fixturedefs.items()
            if defs and defs[-1].scope in ("module", "session")
            and getattr(defs[-1].func, "__module__", "").startswith(("conftest", "test_")))
        if shared:
            item.add_marker(pytest.mark.xdist_group(name=shared[0][1]))
