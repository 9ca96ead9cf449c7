"""End to end: kumod-shaped zstd log segments -> `kumo-suppress -c CONFIG sync` ->
snapshots -> suppression.lua in the stand-in stops exactly the suppressed pairs, and a
new export is picked up once check_interval has passed."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import zstandard

from lua_support import QUEUE, Policy, write_config

CLI = shutil.which("kumo-suppress", path=str(Path(sys.executable).parent)) or shutil.which("kumo-suppress")


def record(kind, recipient, *, from_domain="example.com", code=550, enhanced=(5, 1, 1),
           content="5.1.1 user unknown", classification="InvalidRecipient", ts=None):
    ts = int(ts if ts is not None else time.time() - 3600)
    domain = recipient.rpartition("@")[2]
    return {
        "type": kind, "id": uuid.uuid4().hex, "sender": f"bounces@{from_domain}",
        "recipient": recipient, "queue": domain, "site": f"{domain}->mx", "size": 1024,
        "response": {"code": code, "content": content, "command": "RCPT TO",
                     "enhanced_code": None if enhanced is None else
                     dict(zip(("class", "subject", "detail"), enhanced))},
        "peer_address": {"name": f"mx.{domain}", "addr": "192.0.2.1"},
        "timestamp": ts, "created": ts - 5, "num_attempts": 1,
        "bounce_classification": classification, "egress_pool": "pool", "egress_source": "src",
        "feedback_report": None, "meta": {}, "headers": {"From": f"News <news@{from_domain}>"},
        "delivery_protocol": "ESMTP", "reception_protocol": "ESMTP", "nodeid": str(uuid.uuid4()),
    }


def write_segment(log_dir: Path, records, name=None) -> Path:
    """A closed kumod segment: zstd JSONL, named by start time, made read-only (done)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    name = name or time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}"
    path = log_dir / name
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    os.chmod(path, 0o444)
    return path


def sync(cfg: Path):
    proc = subprocess.run([CLI, "-c", str(cfg), "sync"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"sync failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture
def world(tmp_path):
    if CLI is None:
        pytest.fail("kumo-suppress is not installed (pip install -e .)")
    logs = tmp_path / "logs"
    cfg = write_config(tmp_path / "config.toml",
                       store={"path": "var/suppression.db"},
                       ingest={"log_dirs": [str(logs)], "include_open": False},
                       keys={"sending_domain": "from_header"},
                       export={"dir": "var/snapshots", "format": "json"},
                       policy={"check_interval": "5 seconds"})
    init = subprocess.run([CLI, "-c", str(cfg), "init"], capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    return logs, cfg


def test_logs_to_lua_decisions(world):
    logs, cfg = world
    write_segment(logs, [
        record("Bounce", "gone@example.net"),
        record("Bounce", "spam@example.net", code=554, enhanced=(5, 7, 1),
               content="rejected as spam", classification="SpamBlock"),
        record("Bounce", "later@example.net", code=451, enhanced=(4, 2, 0),
               content="try again", classification="TransientFailure"),
        record("Bounce", "other@example.net", from_domain="other.example"),
    ])
    # a segment still being written (writable) is not ingested
    open_seg = logs / "99999999-000000.000000001"
    open_seg.write_bytes(zstandard.ZstdCompressor().compress(
        (json.dumps(record("Bounce", "open@example.net")) + "\n").encode()))
    sync(cfg)

    p = Policy({"config": str(cfg)})
    result, msg = p.http("gone@example.net")
    assert result.rejected and result.code == 550 and "example.com: bounce" in result.text
    for clean in ("spam@example.net", "later@example.net", "open@example.net", "nobody@example.net"):
        assert p.http(clean)[0].ok, clean
    assert p.http("gone@example.net", from_domain="other.example")[0].ok, "per sending domain"
    assert p.http("other@example.net", from_domain="other.example")[0].rejected

    txn, msg = p.smtp(["gone@example.net", "fine@example.net"])
    assert txn.accepted and msg.recipients == ["fine@example.net"]
    txn, msg = p.smtp("gone@example.net")
    assert txn.accepted and msg.meta["queue"] == QUEUE
    assert p.k.deliver_via_queue(msg).kind == "Bounce"
    assert p.k.errors_logged == []

    # a new export is picked up once check_interval has passed
    write_segment(logs, [record("Bounce", "second@example.net")])
    sync(cfg)
    p.clock.advance(2)
    assert p.http("second@example.net")[0].ok
    p.clock.advance(4)
    assert p.http("second@example.net")[0].rejected
    assert p.http("gone@example.net")[0].rejected


def test_manual_add_and_remove_reach_lua(world):
    logs, cfg = world
    run = lambda *a: subprocess.run([CLI, "-c", str(cfg), *a], capture_output=True, text=True, timeout=60)
    assert run("add", "@bad.example", "--domain", "example.com").returncode == 0
    assert run("export").returncode == 0
    p = Policy({"config": str(cfg)})
    assert p.http("anyone@bad.example")[0].rejected
    assert run("remove", "@bad.example", "--domain", "example.com").returncode == 0
    assert run("export").returncode == 0
    p.clock.advance(6)
    assert p.http("anyone@bad.example")[0].ok
    assert p.k.errors_logged == []
