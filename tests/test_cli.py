"""The CLI as an operator uses it: commands, JSON output, exit codes, one-line errors."""

import json
import os
import sys
import time

import pytest

import logfactory as f
from conftest import wait_for


def test_check_json_carries_the_evidence(install):
    rec = f.bounce("user@example.net")
    install.ingest([rec])
    r = install.ok("check", "<User@Example.NET>", "--domain", "EXAMPLE.com.", "--json")
    entry = json.loads(r.output)
    assert set(entry) >= {"recipient", "domain", "reason", "source", "first_seen", "last_seen", "expires", "count",
                          "evidence"}
    assert (entry["recipient"], entry["domain"], entry["reason"], entry["source"], entry["count"]) == \
        ("user@example.net", "example.com", "bounce", "log", 1)
    assert entry["evidence"] == {"type": "Bounce", "message_id": rec["id"], "code": 550, "enhanced_code": "5.1.1",
                                 "content": "5.1.1 user unknown", "classification": "InvalidRecipient",
                                 "nodeid": f.NODE_ID}


def test_check_exit_codes(install):
    install.ok("add", "u@example.net", "--domain", "example.com")
    assert install.run("check", "u@example.net", "--domain", "example.com").exit_code == 0
    r = install.run("check", "v@example.net", "--domain", "example.com")
    assert r.exit_code == 1 and "not suppressed" in r.output
    assert install.run("check", "u@example.net").exit_code == 2, "--domain is required"
    assert install.run("check", "not-an-address", "--domain", "example.com").exit_code == 2


def test_check_cannot_read_store_is_3_not_1(install):
    install.configure(store={"path": "missing/dir/store.db"})
    r = install.run("check", "u@example.net", "--domain", "example.com")
    assert r.exit_code == 3 and "store" in r.stderr


def test_add_with_ttl_and_note_then_list_filters(install):
    install.ok("add", "a@example.net", "--domain", "example.com", "--ttl", "12h", "--note", "ticket 42")
    install.ok("add", "b@example.net", "--domain", "other.example", "--reason", "complaint")
    entry = install.check("a@example.net")
    assert entry["expires"] - entry["first_seen"] == 12 * 3600 and entry["note"] == "ticket 42"
    listed = json.loads(install.ok("list", "--json", "--domain", "other.example").output)
    assert [(e["recipient"], e["reason"]) for e in listed] == [("b@example.net", "complaint")]
    listed = json.loads(install.ok("list", "--json", "--reason", "manual").output)
    assert [e["recipient"] for e in listed] == ["a@example.net"]
    assert "a@example.net" in install.ok("list").output
    assert install.run("add", "x@example.net", "--domain", "example.com", "--reason", "bogus").exit_code == 2
    assert install.run("add", "x@example.net", "--domain", "example.com", "--ttl", "soon").exit_code == 2


def test_remove_leaves_a_tombstone_that_old_logs_respect(install):
    ts = int(time.time()) - 3600
    install.ingest([f.bounce("u@example.net", timestamp=ts)])
    install.ok("remove", "u@example.net", "--domain", "example.com")
    assert install.check("u@example.net") is None
    # replay the same old logs from another copy of the segment
    install.ingest([f.bounce("u@example.net", timestamp=ts - 10)])
    assert install.check("u@example.net") is None


def test_import_dump_roundtrip(install, tmp_path):
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("recipient,domain,reason,since,expires\n"
                      "A@example.net,Example.com,bounce,1790000000,1890000000\n"
                      "b@example.net,example.com,complaint,2026-11-01T00:00:00Z,\n"
                      "c@example.net,shop.example\n")
    assert install.ok("import", csv_in).output.strip() == "imported 3 row(s)"
    dump = install.ok("dump").output.splitlines()
    assert dump[0] == "recipient,domain,reason,since,expires"
    assert "a@example.net,example.com,bounce,1790000000,1890000000" in dump
    assert "b@example.net,example.com,complaint,1793491200," in dump
    c = install.check("c@example.net", "shop.example")
    assert c["reason"] == "manual" and c["expires"] is None and c["source"] == "import"
    # a dump imports into a fresh store unchanged
    other = tmp_path / "other"
    other.mkdir()
    from conftest import Install
    second = Install(other)
    (other / "dump.csv").write_text("\n".join(dump) + "\n")
    second.ok("import", other / "dump.csv")
    assert second.ok("dump").output.splitlines() == dump
    second.ok("import", other / "dump.csv")
    assert second.check("a@example.net")["count"] == 1, "importing twice does not double the counts"


def test_import_is_all_or_nothing(install, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a@example.net,example.com\nnot-an-address,example.com\n")
    install.ok("init")
    r = install.run("import", bad)
    assert r.exit_code == 2 and "bad.csv:2" in r.stderr
    assert install.check("a@example.net") is None


def test_stats_json_counts_by_domain_and_reason(install):
    install.ingest([f.bounce("a@example.net"), f.bounce("b@example.net", domain="shop.example"),
                    f.feedback("c@example.net", "news@example.com")])
    stats = json.loads(install.ok("stats", "--json").output)
    assert stats["by_domain"] == {"example.com": 2, "shop.example": 1}
    assert stats["by_reason"] == {"bounce": 2, "complaint": 1}
    assert stats["last_ingest"] and stats["last_export"] is None
    install.ok("export")
    again = json.loads(install.ok("stats", "--json").output)
    assert again["by_domain"] == stats["by_domain"] and again["last_export"]


def test_prune_removes_expired(install):
    old = int(time.time()) - 30 * 86400 + 1
    install.ingest([f.expiration("gone@example.net", timestamp=old), f.bounce("live@example.net")])
    # gone@ lapses a second after it was learned; until then prune finds nothing
    wait_for(lambda: "pruned 1 expired entry" in install.ok("prune").output, what="gone@ expired")
    assert json.loads(install.ok("stats", "--json").output)["entries"] == 1


def test_validate_flags_broken_files(install):
    install.ok("add", "u@example.net", "--domain", "example.com")
    install.ok("export")
    assert install.ok("validate").output.strip().endswith("1 valid, 0 invalid")
    (install.snap_dir / "broken.example.json").write_text('{"format": "kumo-suppression-snapshot"')
    bad = install.snap_dir / "wrong.example.json"
    bad.write_text(json.dumps({"format": "kumo-suppression-snapshot", "version": 1, "domain": "wrong.example",
                               "generated_at": "2026-01-01T00:00:00Z", "count": 2,
                               "recipients": {"u@x.example": {"reason": "bounce", "since": 1}}}))
    r = install.run("validate", install.snap_dir)
    assert r.exit_code == 1
    assert "FAIL broken.example.json" in r.output and "count is 2" in r.output


@pytest.mark.parametrize("config_text,needle", [
    ("[rules]\nbounce = 'yes'\n", "[rules] bounce"),
    ("[rulez]\nbounce = true\n", "rulez"),
    ("[export]\nformat = 'xml'\n", "[export] format"),
    ("[rules.ttl]\nbounce = 'forever'\n", "[rules.ttl] bounce"),
    ("[webhook]\nlisten = 'nowhere'\n", "[webhook] listen"),
    ("[policy]\ncheck_interval = '5 fortnights'\n", "[policy] check_interval"),
    ("not toml at all [", "invalid TOML"),
])
def test_config_errors_exit_2_naming_the_key(install, config_text, needle):
    install.config_path.write_text(config_text)
    r = install.run("stats")
    assert r.exit_code == 2
    assert needle in r.stderr and r.stderr.count("\n") == 1


def test_config_discovery_env_then_cwd(install, tmp_path, monkeypatch):
    from exporter.config import find_config_path
    monkeypatch.setenv("KUMO_SUPPRESS_CONFIG", str(install.config_path))
    assert find_config_path(None) == install.config_path
    monkeypatch.delenv("KUMO_SUPPRESS_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert str(find_config_path(None)) == "config.toml"


def test_real_process_usage_errors_and_python_dash_m(install):
    p = install.subprocess("no-such-command")
    assert p.returncode == 2
    p = install.subprocess("--help")
    assert p.returncode == 0 and b"ingest" in p.stdout
    install.db.unlink()
    p = install.subprocess("stats")
    assert p.returncode == 3 and b"Traceback" not in p.stderr


def test_sync_is_ingest_then_export(install):
    install.segment([f.bounce("u@example.net")])
    out = install.ok("sync").output
    assert "ingested 1 records" in out and "written 1" in out
    assert "u@example.net" in install.snapshot("example.com")["recipients"]


def test_metrics_textfile_after_sync(install):
    install.configure(metrics={"textfile": "metrics/kumo_suppression.prom"})
    install.segment([f.bounce("u@example.net"), f.delivery("d@example.net")])
    metrics_dir = install.root / "metrics"
    metrics_dir.mkdir()
    left = metrics_dir / ".kumo_suppression.prom.dead1234.tmp"      # a killed writer's
    left.write_text("partial")
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    fresh = metrics_dir / ".kumo_suppression.prom.live5678.tmp"     # a writer at work now
    fresh.write_text("partial")
    install.ok("sync")
    assert not left.exists() and fresh.exists()
    text = (metrics_dir / "kumo_suppression.prom").read_text()
    assert 'kumo_suppression_records_ingested_total{type="Bounce"} 1' in text
    assert 'kumo_suppression_suppressions_added_total{reason="bounce"} 1' in text
    assert "kumo_suppression_last_export_timestamp_seconds" in text


def test_backup_is_an_openable_copy(install, tmp_path):
    install.ok("add", "u@example.net", "--domain", "example.com")
    target = tmp_path / "backup.db"
    install.ok("backup", target)
    import sqlite3
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT recipient FROM suppressions").fetchall() == [("u@example.net",)]
    assert install.run("backup", target).exit_code == 3, "never overwrites"


def test_cli_has_no_traceback_on_stdin_garbage(install):
    r = install.run("ingest", "-", input=b"\x00\x01garbage\n{]\n")
    assert r.exit_code == 0 and "2 malformed" in r.output
    assert sys.executable


def _stderr_on_a_terminal(install, *args, input_bytes=None) -> str:
    """Run the CLI with its stderr on a pseudo-terminal, as an operator at a shell."""
    import pty
    import subprocess
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "exporter", "-c", str(install.config_path), *map(str, args)],
                              stderr=slave, stdout=subprocess.PIPE, input=input_bytes, cwd=install.root, timeout=60)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_only(install, tmp_path):
    install.configure(ingest={"batch_lines": 2})
    install.segment([f.delivery(f"u{i}@example.net") for i in range(10)])
    install.segment([f.delivery(f"w{i}@example.net") for i in range(10)])
    shown = _stderr_on_a_terminal(install, "ingest")
    assert "\r" in shown and "logs/" in shown, repr(shown)
    assert "2/2 segments" in shown and "kB" in shown, "with totals: " + repr(shown)
    csv_in = tmp_path / "rows.csv"
    csv_in.write_text("".join(f"r{i}@example.net,example.com\n" for i in range(5)))
    shown = _stderr_on_a_terminal(install, "import", csv_in)
    assert "import: 1" in shown and "import: 5/5" in shown, repr(shown)
    assert "export: 1/1" in _stderr_on_a_terminal(install, "export")
    # not on a terminal (cron, systemd): no progress lines at all
    install.segment([f.delivery(f"v{i}@example.net") for i in range(10)])
    r = install.subprocess("ingest")
    assert r.returncode == 0 and b"\r" not in r.stderr


def test_reject_code_must_be_5xx_on_both_sides(install):
    # the Lua module refuses a 4xx at policy load; the exporter's config check agrees
    install.configure(policy={"reject_code": 451})
    r = install.run("stats")
    assert r.exit_code == 2 and "[policy] reject_code" in r.stderr


@pytest.mark.parametrize("content,needle", [
    (b"a@example.net,example.com,manual,99999999999999999999999\n", "out of range"),
    (b"a@example.net,example.com\n\xff\xfe,x\n", "not UTF-8"),
])
def test_bad_import_input_is_one_line_exit_2(install, tmp_path, content, needle):
    install.ok("init")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    r = install.subprocess("import", bad)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr.decode() and r.stderr.count(b"\n") == 1 and b"Traceback" not in r.stderr


def test_validate_survives_a_nesting_bomb(install):
    install.ok("add", "u@example.net", "--domain", "example.com")
    install.ok("export")
    (install.snap_dir / "bomb.example.json").write_text("[" * 100_000 + "]" * 100_000)
    r = install.run("validate")
    assert r.exit_code == 1 and "FAIL bomb.example.json" in r.output


def test_no_config_anywhere_is_exit_2_not_a_store_in_cwd(tmp_path):
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != "KUMO_SUPPRESS_CONFIG"}
    if __import__("pathlib").Path("/etc/kumo-suppression/config.toml").exists():
        pytest.skip("this machine has /etc/kumo-suppression/config.toml")
    p = subprocess.run([sys.executable, "-m", "exporter", "init"], cwd=tmp_path, env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == 2 and b"no config file" in p.stderr
    assert list(tmp_path.iterdir()) == []


def _rows(install, table: str) -> int:
    import sqlite3
    with sqlite3.connect(install.db) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize("recipient,domain,named", [
    ("Some One <x@y.example>", "example.com", "RECIPIENT"),
    ("x@y.example", "not a domain", "--domain"),
    ("x@y.example", "*", "--domain"),
    ("x@*", "example.com", "RECIPIENT"),
    ("some one@y.example", "example.com", "RECIPIENT"),
])
def test_add_check_remove_refuse_what_is_not_an_address_or_a_domain(install, recipient, domain, named):
    install.ok("init")
    for command in ("add", "check", "remove"):
        r = install.run(command, recipient, "--domain", domain)
        assert r.exit_code == 2, (command, r.output, r.stderr)
        assert named in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert (_rows(install, "suppressions"), _rows(install, "history"), _rows(install, "tombstones")) == (0, 0, 0)


def test_a_quoted_local_part_may_hold_spaces(install):
    install.ok("add", '"some one"@y.example', "--domain", "example.com")
    assert install.check('"some one"@y.example')["recipient"] == '"some one"@y.example'


@pytest.mark.parametrize("ttl", ["0s", "0", "0.5s"])
def test_add_with_a_ttl_that_is_not_positive_is_exit_2_and_stores_nothing(install, ttl):
    install.ok("init")
    r = install.run("add", "u@example.net", "--domain", "example.com", "--ttl", ttl)
    assert r.exit_code == 2 and "--ttl" in r.stderr and "positive" in r.stderr, r.stderr
    assert _rows(install, "suppressions") == 0 and _rows(install, "history") == 0


def test_remove_of_a_pair_that_is_not_suppressed_is_exit_1_and_writes_nothing(install):
    install.ok("add", "u@example.net", "--domain", "example.com")
    r = install.run("remove", "u@example.net", "--domain", "exmaple.com")     # the typo
    assert r.exit_code == 1 and "not suppressed" in r.output and "suppressed for example.com" in r.output
    assert (_rows(install, "tombstones"), _rows(install, "history")) == (0, 1), "nothing written"
    assert install.ok("remove", "U@example.net", "--domain", "example.com").output.startswith("removed")
    assert install.run("remove", "u@example.net", "--domain", "example.com").exit_code == 1, "already removed"
    assert _rows(install, "tombstones") == 1


def test_check_json_answers_both_ways_and_names_the_other_domains(install):
    install.ok("add", "u@example.net", "--domain", "a.example")
    install.ok("add", "@example.net", "--domain", "b.example")
    r = install.run("check", "U@example.net", "--domain", "c.example", "--json")
    assert r.exit_code == 1
    assert json.loads(r.output) == {"suppressed": False, "recipient": "u@example.net", "domain": "c.example",
                                    "other_domains": ["a.example", "b.example"]}
    r = install.run("check", "u@example.net", "--domain", "a.example", "--json")
    answer = json.loads(r.output)
    assert r.exit_code == 0 and answer["suppressed"] is True and answer["other_domains"] == ["b.example"]
    r = install.run("check", "u@example.net", "--domain", "c.example")
    assert r.exit_code == 1 and "suppressed for a.example, b.example" in r.output


@pytest.mark.parametrize("args", [("list",), ("list", "--json"), ("dump",)])
def test_output_into_a_pipe_closed_early_ends_quietly(install, tmp_path, args):
    import subprocess
    rows = tmp_path / "many.csv"
    rows.write_text("".join(f"user{i}@dest.example,example.com\n" for i in range(5000)))   # > a pipe's buffer
    install.ok("import", rows)
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "-c", str(install.config_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=install.root)
    try:
        assert proc.stdout.readline()      # `| head -1`
        proc.stdout.close()
        stderr = proc.stderr.read()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code in (0, 141) and stderr == b"", (code, stderr)


def test_import_takes_a_bom_and_a_header_and_reports_every_bad_row(install, tmp_path):
    install.ok("init")
    bad = tmp_path / "bad.csv"
    bad.write_bytes("\ufeffrecipient,domain,reason\n"
                    "a@example.net,example.com\n"
                    "Some One <b@example.net>,example.com\n"
                    "c@example.net,example.com,manual\n"
                    "d@example.net,*\n".encode())
    r = install.run("import", bad)
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and "bad.csv:3: recipient: " in lines[0] and "bad.csv:5: domain: " in lines[1], lines
    assert _rows(install, "suppressions") == 0, "nothing stored"
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbfrecipient,domain\r\nA@example.net,example.com\r\n")
    assert install.ok("import", excel).output.strip() == "imported 1 row(s)"
    assert install.check("a@example.net") is not None


def test_dump_escapes_cells_a_spreadsheet_would_run_and_import_undoes_it(install, tmp_path):
    for rcpt in ("@bad.example", "=1+2@x.example", "+1@x.example", "-x@x.example", "plain@x.example"):
        install.ok("add", "--domain", "example.com", "--", rcpt)
    dump = install.ok("dump").output
    cells = [line.split(",")[0] for line in dump.splitlines()[1:]]
    assert sorted(cells) == ["'+1@x.example", "'-x@x.example", "'=1+2@x.example", "'@bad.example",
                             "plain@x.example"]
    from conftest import Install
    (tmp_path / "copy").mkdir()
    copy = Install(tmp_path / "copy")
    (tmp_path / "dump.csv").write_text(dump)
    copy.ok("import", tmp_path / "dump.csv")
    assert copy.ok("dump").output == dump
    assert copy.check("@bad.example") is not None


def test_verbose_says_which_config_and_store(install):
    install.ok("init")
    r = install.subprocess("-v", "stats")
    assert str(install.config_path).encode() in r.stderr and str(install.db).encode() in r.stderr, r.stderr
    assert install.subprocess("stats").stderr == b""

