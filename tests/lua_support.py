"""Helpers for the Lua test suites: snapshot/config writers and the module wired into
this project's kumod stand-in (tests/kumo_standin.py) the way docs/kumod-setup.md shows."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import tomli_w

from exporter import snapshot
from kumo_standin import FakeClock, Kumod

PROJECT = Path(__file__).resolve().parents[1]
POLICY_DIR = PROJECT / "policy_lua"
QUEUE = "suppressed.kumo_suppression"
DAY = 86400
# a fixed "now" so dates in reject texts are predictable: 2026-11-26T00:00:00Z
NOW = 1795651200
# the module's cache policy (policy_lua/suppression.lua): files from large_snapshot_bytes
# on (tests pass this smaller value) get a cache of their own; smaller ones share one
# whose ttl is SHARED_SNAPSHOT_TTL seconds
LARGE_SNAPSHOT_BYTES = 1048576
SHARED_SNAPSHOT_TTL = 300


def snapshot_doc(domain: str, recipients: dict, **overrides) -> dict:
    doc = snapshot.header(domain, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW)), len(recipients))
    doc["recipients"] = recipients
    doc.update(overrides)
    return doc


def write_snapshot(directory: Path, domain: str, recipients: dict, fmt: str = "json",
                   **overrides) -> Path:
    """Write <directory>/<domain>.<fmt> atomically (a new inode, like the exporter)."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = snapshot_doc(domain, recipients, **overrides)
    path = directory / f"{domain}.{fmt}"
    tmp = directory / f".{domain}.{fmt}.tmp"
    if snapshot.document_problems(doc):
        # a deliberately broken file, which the format's writer cannot produce
        tmp.write_text(tomli_w.dumps(doc) if fmt == "toml" else json.dumps(doc))
    else:
        with open(tmp, "wb") as fh:
            snapshot.write(fh, fmt, {k: v for k, v in doc.items() if k != "recipients"},
                           snapshot.rows_of(doc["recipients"]))
    tmp.replace(path)
    return path


def write_manifest(directory: Path, fmt: str = "json") -> Path:
    """manifest.json listing every snapshot file there with its sha256, shards under
    their domain, as the exporter lists them."""
    domains: dict = {}
    for path in snapshot.snapshot_files(directory):
        name = snapshot.parse_filename(path.name)
        if name.ext != fmt:
            continue
        item = {"file": path.name, "count": 0, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        entry = domains.setdefault(name.domain, {})
        if name.shard is None:
            entry.update(item)
        else:
            entry.setdefault("shard_files", []).append(item)
            entry.update(shards=name.shards, history_id=0)
    out = directory / snapshot.MANIFEST
    out.write_bytes(snapshot.manifest_bytes(snapshot.manifest_doc("2026-11-26T00:00:00Z", domains)))
    return out


def write_config(path: Path, **sections) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(sections))
    return path


def large_recipients(n: int = 20000) -> dict:
    """Enough entries for a snapshot file of more than LARGE_SNAPSHOT_BYTES."""
    return {f"bulk{i}@example.net": entry() for i in range(n)}


def entry(reason: str = "bounce", since: int = NOW - 10 * DAY, expires: int | None = None) -> dict:
    e = {"reason": reason, "since": since}
    if expires is not None:
        e["expires"] = expires
    return e


_INIT = """
local kumo = require 'kumo'
local suppression = require 'suppression'
sup = suppression:new(__OPTIONS)
kumo.on('smtp_server_message_received', function(msg, conn_meta) sup:check_smtp(msg, conn_meta) end)
kumo.on('http_message_generated', function(msg, auth_info) sup:check_http(msg) end)
"""

_RCPT = """
local kumo = require 'kumo'
kumo.on('smtp_server_mail_from', function(sender, conn_meta) sup:mail_from(sender, conn_meta) end)
kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta) sup:rcpt_to(rcpt, conn_meta) end)
"""


class Policy:
    """suppression.lua loaded in a fresh stand-in with the given options."""

    def __init__(self, options: dict, *, with_fs: bool = True, clock: FakeClock | None = None,
                 rcpt_hooks: bool = False, before: str = "", after: str = "", **kumod_kw):
        self.k = Kumod(POLICY_DIR, clock=clock or FakeClock(NOW), with_fs=with_fs, **kumod_kw)
        self.k.lua.globals()["__OPTIONS"] = self.k.to_lua(options)
        self.k.execute(before + _INIT + (_RCPT if rcpt_hooks else "") + after, "=init.lua")

    @property
    def clock(self) -> FakeClock:
        return self.k.clock

    def message(self, recipients, *, from_domain: str = "example.com", sender: str | None = None,
                from_header: str | None | bool = True, meta: dict | None = None):
        if from_header is True:
            from_header = f"News <news@{from_domain}>"
        elif from_header is False:
            from_header = None
        return self.k.make_message(sender or f"bounces@{from_domain}", recipients,
                                   from_header=from_header, meta=meta)

    def http(self, recipients, **kw):
        msg = self.message(recipients, **kw)
        return self.k.http_inject(msg), msg

    def smtp(self, recipients, **kw):
        msg = self.message(recipients, **kw)
        return self.k.smtp_transaction([msg]), msg

    def lookup(self, recipient, domain):
        fn = self.k.eval("function(a, b) return sup:lookup(a, b) end")
        ok, *values = self.k.pcall(fn, recipient, domain)
        assert ok is True, f"sup:lookup raised: {values}"
        return self.k.from_lua(values[0]) if values else None


# ---------------------------------------------------------------- sharded / hashed layouts
# Written here, to the agreed layout, until the exporter writes them (docs/lua-module.md).

def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def shard_of(key: str, shards: int) -> int:
    return int(key_digest(key)[:8], 16) % shards


def shard_name(domain: str, shard: int, shards: int, fmt: str = "json") -> str:
    return f"{domain}_shard-{shard:04d}-of-{shards:04d}.{fmt}"


def _write_doc(path: Path, doc: dict, fmt: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(tomli_w.dumps(doc) if fmt == "toml" else json.dumps(doc))
    tmp.replace(path)
    return path


def write_layout(directory: Path, domain: str, recipients: dict, *, shards: int = 1,
                 hashed: bool = False, domain_entries: bool = True, fmt: str = "json") -> list[Path]:
    """<domain>.<fmt> as one file (shards=1) or an index plus `shards` shard files,
    keys as sha256 hex when hashed; `domain_entries` False leaves the field out."""
    directory.mkdir(parents=True, exist_ok=True)

    def keyed(entries: dict) -> dict:
        return {key_digest(k) if hashed else k: v for k, v in entries.items()}

    def head(count: int, n_domain: int, **fields) -> dict:
        extra = {"hash": "sha256"} if hashed else {}
        if domain_entries:
            extra["domain_entries"] = n_domain
        return {**extra, **fields, "count": count}

    at_entries = {k: v for k, v in recipients.items() if k.startswith("@")}
    written = []
    if shards == 1:
        doc = snapshot_doc(domain, keyed(recipients), **head(len(recipients), len(at_entries)))
        return [_write_doc(directory / f"{domain}.{fmt}", doc, fmt)]
    plain = {k: v for k, v in recipients.items() if not k.startswith("@")}
    for k in range(shards):
        mine = {key: v for key, v in plain.items() if shard_of(key, shards) == k}
        doc = snapshot_doc(domain, keyed(mine), **head(len(mine), 0, shard=k, shards=shards))
        written.append(_write_doc(directory / shard_name(domain, k, shards, fmt), doc, fmt))
    index = snapshot_doc(domain, keyed(at_entries), **head(len(recipients), len(at_entries), shards=shards))
    written.append(_write_doc(directory / f"{domain}.{fmt}", index, fmt))
    return written


def write_layout_manifest(directory: Path, fmt: str = "json") -> Path:
    """manifest.json listing every file with its sha256, shards under shard_files."""
    def file_entry(path: Path) -> dict:
        doc = json.loads(path.read_text()) if fmt == "json" else {}
        return {"file": path.name, "count": doc.get("count", 0),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    domains = {}
    for path in sorted(directory.glob(f"*.{fmt}")):
        if path.name == "manifest.json" or "_shard-" in path.name:
            continue
        domain = path.name[: -len(fmt) - 1]
        info = file_entry(path)
        shard_files = sorted(directory.glob(f"{domain}_shard-*.{fmt}"))
        if shard_files:
            info["shards"] = len(shard_files)
            info["shard_files"] = [file_entry(p) for p in shard_files]
        domains[domain] = info
    out = directory / "manifest.json"
    out.write_text(json.dumps({"format": "kumo-suppression-manifest", "version": 1,
                               "generated_at": "2026-11-26T00:00:00Z", "domains": domains}))
    return out
