"""Tests of deploy/: the Ansible role, the example playbook and the systemd units.

Needs ansible-core and ansible-lint (deploy/requirements-test.txt); the tests that
need them skip, saying so, when they are not installed. systemd-analyze verify
skips where the tool is absent or cannot run here.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ANSIBLE_DIR = DEPLOY / "ansible"
ROLE_DIR = ANSIBLE_DIR / "roles" / "kumo_suppression"
SYSTEMD_DIR = DEPLOY / "systemd"
PLAYBOOK = ANSIBLE_DIR / "site.yml"
INVENTORIES = {
    "single": ANSIBLE_DIR / "inventories" / "single" / "hosts.yml",
    "cluster": ANSIBLE_DIR / "inventories" / "cluster" / "hosts.yml",
}
UNITS = [
    "kumo-suppress.service",
    "kumo-suppress-sync.service",
    "kumo-suppress-sync.timer",
    "kumo-suppress-pull.service",
    "kumo-suppress-pull.timer",
]


def _tool(name: str) -> str | None:
    """The tool next to sys.executable (the venv's bin) first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def _need(module: str, tool: str) -> str:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not importable: pip install -r deploy/requirements-test.txt")
    path = _tool(tool)
    if path is None:
        pytest.skip(f"{tool} not found beside {sys.executable} nor on PATH")
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The venv's bin first, so ansible finds its own helpers; no user config.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
    env["ANSIBLE_ROLES_PATH"] = str(ANSIBLE_DIR / "roles")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_RETRY_FILES_ENABLED"] = "0"
    env["ANSIBLE_LOCALHOST_WARNING"] = "0"
    env["ANSIBLE_INVENTORY_UNPARSED_WARNING"] = "0"
    env["NO_COLOR"] = "1"
    # faster: modules are fed through stdin instead of temp files
    env["ANSIBLE_PIPELINING"] = "1"
    return env


def _run(argv: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _recap(output: str) -> dict[str, int]:
    m = re.search(r"localhost\s*:\s*(.*)$", output.split("PLAY RECAP", 1)[-1], re.M)
    assert m, output
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


# --------------------------------------------------------------------------
# syntax check and lint
# --------------------------------------------------------------------------


@pytest.mark.parametrize("topology", sorted(INVENTORIES))
def test_playbook_syntax_check(topology):
    playbook = _need("ansible", "ansible-playbook")
    r = _run([playbook, "-i", str(INVENTORIES[topology]), "--syntax-check", str(PLAYBOOK)], ANSIBLE_DIR)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def lint_result():
    lint = _need("ansiblelint", "ansible-lint")
    return _run(
        [lint, "--offline", "--nocolor", "--profile", "production",
         "site.yml", "roles/kumo_suppression", "inventories"],
        ANSIBLE_DIR,
        timeout=300,
    )


def test_ansible_lint_production_profile(lint_result):
    out = lint_result.stdout + lint_result.stderr
    assert lint_result.returncode == 0, out
    assert "Profile 'production' was required, and it passed" in out, out


def test_role_uses_only_builtin_fqcn_modules():
    """No Galaxy collection needed: every task module is ansible.builtin.*."""
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with ansible-core")
    control = {"name", "when", "loop", "register", "notify", "listen", "vars", "become",
               "become_user", "delegate_to", "tags", "changed_when", "failed_when",
               "loop_control", "no_log", "block", "rescue", "always"}
    files = [*(ROLE_DIR / "tasks").glob("*.yml"), ROLE_DIR / "handlers" / "main.yml", PLAYBOOK]
    seen = 0
    for f in files:
        for task in yaml.safe_load(f.read_text()) or []:
            for key in task:
                if key in control or key in {"hosts", "roles", "gather_facts"}:
                    continue
                assert key.startswith("ansible.builtin."), f"{f.name}: {key}"
                seen += 1
    assert seen > 10


# --------------------------------------------------------------------------
# applying the role into a temporary root
# --------------------------------------------------------------------------


def _fake_source(tmp: Path) -> Path:
    """What the role reads from the checkout when the package is not installed: the Lua
    module."""
    src = tmp / "source"
    (src / "policy_lua").mkdir(parents=True)
    shutil.copy2(ROOT / "policy_lua" / "suppression.lua", src / "policy_lua" / "suppression.lua")
    return src


def _apply(tmp_path_factory, name: str, overrides: dict, check_mode: bool = False) -> dict:
    playbook_bin = _need("ansible", "ansible-playbook")
    tmp = tmp_path_factory.mktemp(name)
    root = tmp / "root"
    root.mkdir()
    src = _fake_source(tmp)
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    extra = {
        "kumo_suppression_root": str(root),
        "kumo_suppression_manage_systemd": False,
        "kumo_suppression_pip_install": False,
        "kumo_suppression_create_user": False,
        "kumo_suppression_install_packages": False,
        "kumo_suppression_kumod_notify": "none",
        "kumo_suppression_user": user,
        "kumo_suppression_group": group,
        "kumo_suppression_kumod_group": group,
        "kumo_suppression_source_dir": str(src),
        "kumo_suppression_webhook_enabled": True,
        "kumo_suppression_webhook_token": "s3cret-token",
        "kumo_suppression_aliases": {"bounce.example.com": "example.com"},
        **overrides,
    }
    play = tmp / "play.yml"
    play.write_text(textwrap.dedent("""\
        ---
        - name: Apply kumo_suppression into a temporary root
          hosts: localhost
          connection: local
          gather_facts: false
          roles:
            - role: kumo_suppression
        """))
    varsfile = tmp / "vars.json"
    varsfile.write_text(json.dumps(extra))
    argv = [playbook_bin, "-i", "localhost,", "-e", f"@{varsfile}",
            "-e", f"ansible_python_interpreter={sys.executable}", *(["--check"] if check_mode else []),
            str(play)]
    first = _run(argv, tmp)
    second = _run(argv, tmp) if first.returncode == 0 else None
    return {"root": root, "src": src, "vars": extra, "first": first, "second": second}


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """Topology (a): exporter and kumod on this host."""
    return _apply(tmp_path_factory, "single", {})


@pytest.fixture(scope="module")
def applied_cluster(tmp_path_factory):
    """Topology (b) squeezed onto one host: it is the exporter with the pull
    account AND a kumod node pulling from itself (localhost)."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (openssh-client)")
    user = pwd.getpwuid(os.getuid()).pw_name
    return _apply(tmp_path_factory, "cluster", {
        "kumo_suppression_pull_server": True,
        "kumo_suppression_pull_from": "localhost",
        "kumo_suppression_pull_account": user,
        "kumo_suppression_webhook_listen": "0.0.0.0:8086",
    })


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_role_applies_into_temp_root(applied):
    first = applied["first"]
    assert first.returncode == 0, first.stdout + first.stderr
    assert _recap(first.stdout)["failed"] == 0


def test_role_places_files_and_modes(applied):
    assert applied["first"].returncode == 0, applied["first"].stdout
    root = applied["root"]
    expect = {
        "/etc/kumo-suppression": 0o750,
        "/etc/kumo-suppression/config.toml": 0o640,
        "/var/lib/kumo-suppression": 0o700,
        "/var/lib/kumo-suppression-snapshots": 0o755,
        "/opt/kumomta/etc/policy/suppression.lua": 0o644,
        "/etc/systemd/system/kumo-suppress.service": 0o644,
        "/etc/systemd/system/kumo-suppress-sync.service": 0o644,
        "/etc/systemd/system/kumo-suppress-sync.timer": 0o644,
    }
    for path, mode in expect.items():
        p = root / path.lstrip("/")
        assert p.exists(), path
        if mode is not None:
            assert _mode(p) == mode, f"{path}: {oct(_mode(p))} != {oct(mode)}"
    lua = root / "opt/kumomta/etc/policy/suppression.lua"
    assert lua.read_bytes() == (applied["src"] / "policy_lua" / "suppression.lua").read_bytes()
    # no pull units unless kumo_suppression_pull_from is set
    assert not (root / "etc/systemd/system/kumo-suppress-pull.service").exists()
    # owner is the configured user
    assert (root / "var/lib/kumo-suppression").stat().st_uid == os.getuid()
    # the package is only installed when kumo_suppression_pip_install is on
    assert not (root / "opt/kumo-suppression").exists()


def test_role_config_is_valid(applied):
    assert applied["first"].returncode == 0, applied["first"].stdout
    cfg_path = applied["root"] / "etc/kumo-suppression/config.toml"
    cfg = tomllib.loads(cfg_path.read_text())
    # the documented key names (docs/config.md), final paths without the root prefix
    assert cfg["store"]["path"] == "/var/lib/kumo-suppression/suppression.db"
    assert cfg["ingest"] == {"log_dirs": ["/var/log/kumomta"], "include_open": False}
    assert cfg["keys"]["sending_domain"] == "from_header"
    assert cfg["keys"]["aliases"] == {"bounce.example.com": "example.com"}
    assert cfg["rules"]["bounce"] is True and cfg["rules"]["admin_bounce"] is False
    assert "SpamBlock" in cfg["rules"]["ignore_classifications"]
    assert cfg["rules"]["ttl"]["complaint"] == "never"
    assert cfg["export"] == {"dir": "/var/lib/kumo-suppression-snapshots", "format": "json"}
    assert cfg["schedule"]["ingest_interval"] == "30s"
    assert cfg["webhook"] == {"enabled": True, "listen": "127.0.0.1:8086",
                              "token": "s3cret-token", "max_body": "10MB"}
    assert cfg["policy"]["reject_text"] == "5.7.1 recipient suppressed for {domain}: {reason} since {since}"
    assert cfg["policy"]["reject_code"] == 550
    schema_path = ROOT / "exporter" / "schema" / "config.schema.json"
    if schema_path.exists():
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate(cfg, json.loads(schema_path.read_text()))


def test_role_units_name_the_configured_paths(applied):
    assert applied["first"].returncode == 0, applied["first"].stdout
    unit = (applied["root"] / "etc/systemd/system/kumo-suppress.service").read_text()
    user = applied["vars"]["kumo_suppression_user"]
    assert "ExecStart=/opt/kumo-suppression/venv/bin/kumo-suppress -c /etc/kumo-suppression/config.toml run" in unit
    assert f"User={user}\n" in unit
    assert "ReadWritePaths=/var/lib/kumo-suppression /var/lib/kumo-suppression-snapshots\n" in unit
    assert str(applied["root"]) not in unit  # DESTDIR semantics: contents name final paths


def test_role_is_idempotent(applied):
    assert applied["first"].returncode == 0, applied["first"].stdout
    second = applied["second"]
    assert second.returncode == 0, second.stdout + second.stderr
    recap = _recap(second.stdout)
    assert recap["changed"] == 0, second.stdout
    assert recap["failed"] == 0


def test_cluster_pull_setup(applied_cluster):
    first, second = applied_cluster["first"], applied_cluster["second"]
    assert first.returncode == 0, first.stdout + first.stderr
    root = applied_cluster["root"]
    key = root / "var/lib/kumo-suppression/pull_ed25519"
    assert key.exists() and _mode(key) == 0o600
    auth = root / "var/lib/kumo-snap/.ssh/authorized_keys"
    assert _mode(auth) == 0o600 and _mode(auth.parent) == 0o700
    line = auth.read_text().strip()
    pub = (root / "var/lib/kumo-suppression/pull_ed25519.pub").read_text().split()[1]
    assert line.startswith('restrict,command="/usr/bin/rrsync -ro /var/lib/kumo-suppression-snapshots" ssh-ed25519 ')
    assert pub in line and len(auth.read_text().splitlines()) == 1
    unit = (root / "etc/systemd/system/kumo-suppress-pull.service").read_text()
    user = applied_cluster["vars"]["kumo_suppression_user"]
    assert f" {user}@localhost:./ /var/lib/kumo-suppression-snapshots/\n" in unit
    assert (root / "etc/systemd/system/kumo-suppress-pull.timer").exists()
    assert second.returncode == 0, second.stdout + second.stderr
    assert _recap(second.stdout)["changed"] == 0, second.stdout


@pytest.fixture(scope="module")
def applied_from_wheel(tmp_path_factory, built_dist):
    """The exporter installed for real: the wheel copied, a venv made, pip install -c
    deploy/constraints.txt (offline, from the test wheelhouse), a metrics textfile."""
    wheel = next(built_dist.glob("kumo_suppression-*.whl"))
    return _apply(tmp_path_factory, "wheel", {
        "kumo_suppression_pip_install": True,
        "kumo_suppression_wheel": str(wheel),
        "kumo_suppression_pip_extra_args": f"--no-index --find-links {built_dist}",
        "kumo_suppression_python": sys.executable,
        "kumo_suppression_kumod": False,
        "kumo_suppression_metrics_textfile": "/var/lib/node-exporter-textfiles/kumo_suppression.prom",
    })


def test_role_installs_the_wheel_with_the_pinned_dependencies(applied_from_wheel):
    first, second = applied_from_wheel["first"], applied_from_wheel["second"]
    assert first.returncode == 0, first.stdout + first.stderr
    prefix = applied_from_wheel["root"] / "opt/kumo-suppression"
    assert (prefix / "constraints.txt").read_bytes() == (DEPLOY / "constraints.txt").read_bytes()
    exe = prefix / "venv/bin/kumo-suppress"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("kumo-suppress, version "), version
    freeze = subprocess.run([str(prefix / "venv/bin/python"), "-m", "pip", "freeze"],
                            capture_output=True, text=True, timeout=120).stdout.lower().split()
    pinned = [line.lower() for line in (DEPLOY / "constraints.txt").read_text().split()
              if "==" in line and not line.startswith("#")]
    assert set(pinned) <= set(freeze), sorted(set(pinned) - set(freeze))
    metrics_dir = applied_from_wheel["root"] / "var/lib/node-exporter-textfiles"
    assert metrics_dir.is_dir() and _mode(metrics_dir) == 0o755
    unit = (applied_from_wheel["root"] / "etc/systemd/system/kumo-suppress.service").read_text()
    assert "\nReadWritePaths=/var/lib/kumo-suppression /var/lib/kumo-suppression-snapshots " \
           "/var/lib/node-exporter-textfiles\n" in unit
    assert second.returncode == 0, second.stdout + second.stderr
    assert _recap(second.stdout)["changed"] == 0, second.stdout


def test_role_without_a_wheel_says_how_to_build_one(tmp_path_factory):
    r = _apply(tmp_path_factory, "nowheel", {"kumo_suppression_pip_install": True})["first"]
    assert r.returncode != 0
    assert "no wheel in" in r.stdout and "python3 -m pip wheel --no-deps -w dist ." in r.stdout, r.stdout


def test_role_check_mode_on_a_fresh_host(tmp_path_factory):
    """--check where the service user does not exist yet: every task checks, nothing is
    written (no "unknown user" from tasks that would chown to it)."""
    absent = "kumo-suppress-absent-user"
    with pytest.raises(KeyError):
        pwd.getpwnam(absent)
    checked = _apply(tmp_path_factory, "check", {
        "kumo_suppression_create_user": True,
        "kumo_suppression_user": absent,
        "kumo_suppression_group": absent,
    }, check_mode=True)
    first = checked["first"]
    assert first.returncode == 0, first.stdout + first.stderr
    assert _recap(first.stdout)["changed"] > 0
    assert list(checked["root"].iterdir()) == [], "check mode wrote files"
    with pytest.raises(KeyError):
        pwd.getpwnam(absent)


def test_role_stops_first_when_it_cannot_become_root(tmp_path_factory):
    """The real root (no kumo_suppression_root), and becoming fails (no sudo here) or
    gives a user other than root (where sudo works): the first task stops the play with
    the reason. (Becoming root itself is a no-op for ansible when it already runs as root,
    hence `nobody`; and --check, so that nothing can change on this machine.)"""
    r = _apply(tmp_path_factory, "become", {
        "kumo_suppression_root": "",
        "ansible_become": True,
        "ansible_become_user": "nobody",
    }, check_mode=True)["first"]
    assert r.returncode != 0
    assert "kumo_suppression needs root on localhost" in r.stdout and "become: true" in r.stdout, r.stdout
    recap = _recap(r.stdout)
    assert recap["changed"] == 0 and recap["failed"] == 1, r.stdout
    assert "Check the role variables" not in r.stdout, "the play went on after the root check"


# --------------------------------------------------------------------------
# systemd units
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered_defaults(tmp_path_factory):
    """The role's unit templates rendered with the role defaults only."""
    playbook_bin = _need("ansible", "ansible-playbook")
    out = tmp_path_factory.mktemp("units")
    play = out / "render.yml"
    play.write_text(textwrap.dedent(f"""\
        ---
        - name: Render the unit templates with the role defaults
          hosts: localhost
          connection: local
          gather_facts: false
          vars_files:
            - {ROLE_DIR / 'defaults' / 'main.yml'}
          tasks:
            - name: Render
              ansible.builtin.template:
                src: {ROLE_DIR / 'templates'}/{{{{ item }}}}.j2
                dest: {out}/{{{{ item }}}}
                mode: "0644"
              loop: {json.dumps(UNITS)}
        """))
    r = _run([playbook_bin, "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
              str(play)], out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.mark.parametrize("unit", UNITS)
def test_static_units_match_role_templates(rendered_defaults, unit):
    """deploy/systemd/* is exactly what the role installs with its defaults."""
    assert (SYSTEMD_DIR / unit).read_text() == (rendered_defaults / unit).read_text(), (
        f"deploy/systemd/{unit} drifted from the role template; re-render it")


def test_units_hardening_present():
    for unit in ("kumo-suppress.service", "kumo-suppress-sync.service"):
        text = (SYSTEMD_DIR / unit).read_text()
        for line in ("User=kumo-suppress", "ProtectSystem=strict", "ProtectHome=yes",
                     "PrivateTmp=yes", "NoNewPrivileges=yes", "UMask=0022",
                     "ReadWritePaths=/var/lib/kumo-suppression /var/lib/kumo-suppression-snapshots",
                     "ReadOnlyPaths=-/var/log/kumomta"):
            assert f"\n{line}\n" in text, f"{unit}: {line}"
    for unit in ("kumo-suppress.service", "kumo-suppress-sync.service", "kumo-suppress-pull.service"):
        text = (SYSTEMD_DIR / unit).read_text()
        for line in ("StateDirectory=kumo-suppression", "StateDirectoryMode=0700",
                     "ConfigurationDirectory=kumo-suppression", "ConfigurationDirectoryMode=0750"):
            assert f"\n{line}\n" in text, f"{unit}: {line}"
    assert "\nLimitNOFILE=16384\n" in (SYSTEMD_DIR / "kumo-suppress.service").read_text()
    assert "\nType=simple\n" in (SYSTEMD_DIR / "kumo-suppress.service").read_text()
    assert "\nType=oneshot\n" in (SYSTEMD_DIR / "kumo-suppress-sync.service").read_text()
    timer = (SYSTEMD_DIR / "kumo-suppress-sync.timer").read_text()
    assert "\nPersistent=true\n" in timer and "\nOnCalendar=*-*-* *:*:00\n" in timer


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze"
                                               if Path("/usr/bin/systemd-analyze").exists() else None)
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    probe = subprocess.run([tool, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {probe.stderr.strip()}")
    # verify needs the ExecStart binaries to exist: point them at a stub.
    stub = tmp_path / "stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for unit in UNITS:
        text = (SYSTEMD_DIR / unit).read_text()
        text = text.replace("/opt/kumo-suppression/venv/bin/kumo-suppress", str(stub))
        text = text.replace("ExecStart=/usr/bin/rsync", f"ExecStart={stub}")
        (tmp_path / unit).write_text(text)
    r = subprocess.run([tool, "verify", "--man=no", *(str(tmp_path / u) for u in UNITS)],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    if r.returncode != 0 and re.search(r"Failed to (connect|initialize|setup)|No such file or directory.*/run/systemd", out):
        pytest.skip(f"systemd-analyze verify cannot run in this container: {out.strip()[:300]}")
    assert r.returncode == 0, out
    # verify exits 0 on unknown keys and bad values: fail on any remark about our units
    ours = [line for line in out.splitlines() if "kumo-suppress" in line]
    assert not ours, out
