"""What an operator gets without the git checkout: the sdist and the wheel built from it,
installed into a fresh venv, carry the kumod module, the example config and the units;
`kumo-suppress install-policy DIR` and `--version`.

The wheel is built by conftest's built_dist; the fresh venv installs it with `--no-index`
from that wheelhouse, pinned by deploy/constraints.txt.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import logfactory
from conftest import CONSTRAINTS, run_ok
from exporter import __version__
from exporter.cli import cli

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "policy_lua" / "suppression.lua"
SHIPPED = {  # path in the wheel's exporter/data/ -> the file operators know in the repository
    "suppression.lua": "policy_lua/suppression.lua",
    "init.example.lua": "policy_lua/init.example.lua",
    "config.example.toml": "config.example.toml",
    **{f"systemd/{unit.name}": f"deploy/systemd/{unit.name}"
       for unit in sorted((ROOT / "deploy" / "systemd").iterdir())},
}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_policy_copies_the_module_byte_identical(tmp_path):
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "suppression.lua").write_text("-- an older module\n")
    old_umask = os.umask(0o077)   # the mode must not depend on the operator's umask
    try:
        r = CliRunner().invoke(cli, ["install-policy", str(policy_dir)], catch_exceptions=False)
    finally:
        os.umask(old_umask)
    assert r.exit_code == 0, r.output
    target = policy_dir / "suppression.lua"
    assert r.stdout.strip() == str(target)
    assert target.read_bytes() == MODULE.read_bytes()
    assert _mode(target) == 0o644
    assert sorted(p.name for p in policy_dir.iterdir()) == ["suppression.lua"], "no temp file left"


def test_install_policy_needs_an_existing_directory(tmp_path):
    missing = tmp_path / "no-such-policy-dir"
    r = CliRunner().invoke(cli, ["install-policy", str(missing)], catch_exceptions=False)
    assert r.exit_code == 2
    assert str(missing) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not missing.exists()


def test_version_is_the_package_version():
    r = CliRunner().invoke(cli, ["--version"], catch_exceptions=False)
    assert r.exit_code == 0
    assert r.stdout.strip() == f"kumo-suppress, version {__version__}"
    assert metadata.version("kumo-suppression") == __version__


def test_sdist_holds_every_tracked_file(built_dist):
    """The sdist is the source release: everything its tests read is in it."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files to compare with")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    sdist = next(built_dist.glob("kumo_suppression-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert sorted(set(tracked) - members) == []


def test_wheel_in_a_fresh_venv_runs_the_shipped_example(built_dist, tmp_path):
    venv = tmp_path / "venv"
    run_ok([sys.executable, "-m", "venv", "--without-pip", venv])   # this pip installs into it
    py, exe = venv / "bin" / "python", venv / "bin" / "kumo-suppress"
    run_ok([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--disable-pip-version-check", "--no-index",
          "--find-links", built_dist, "-c", CONSTRAINTS, "kumo-suppression"])
    work = tmp_path / "work"   # nothing of the checkout on the path: cwd elsewhere
    work.mkdir()

    assert run_ok([exe, "--version"], cwd=work).stdout.strip() == f"kumo-suppress, version {__version__}"

    data = Path(run_ok([py, "-c", "import exporter, pathlib; print(pathlib.Path(exporter.__file__).parent / 'data')"],
                     cwd=work).stdout.strip())
    assert str(data).startswith(str(venv)), data
    for shipped, original in SHIPPED.items():
        assert (data / shipped).read_bytes() == (ROOT / original).read_bytes(), shipped

    policy_dir = work / "policy"
    policy_dir.mkdir()
    printed = run_ok([exe, "install-policy", policy_dir], cwd=work).stdout.strip()
    assert printed == str(policy_dir / "suppression.lua")
    assert (policy_dir / "suppression.lua").read_bytes() == MODULE.read_bytes()

    # the shipped example config as an operator copies it, with one kumod log segment
    config = work / "config.toml"
    shutil.copyfile(data / "config.example.toml", config)
    logfactory.write_segment(work / "var" / "example-logs", [logfactory.bounce("gone@example.net")])
    run_ok([exe, "-c", config, "init"], cwd=work)
    run_ok([exe, "-c", config, "sync"], cwd=work)
    snapshot = json.loads((work / "var" / "snapshots" / "example.com.json").read_text())
    assert "gone@example.net" in snapshot["recipients"]
    run_ok([exe, "-c", config, "validate"], cwd=work)
    run_ok([exe, "-c", config, "check", "gone@example.net", "--domain", "example.com"], cwd=work)
