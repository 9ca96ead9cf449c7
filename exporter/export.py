"""Store -> one snapshot file per sending domain (PRODUCT.md section 9), for kumod.

kumod reloads a snapshot when its file version (mtime, size, inode) changes, so a file is
only rewritten when its entries changed; the manifest remembers each domain's store
generation, so an unchanged domain is not even read from the store. Files are written
atomically (temp file in the same directory, fsync, rename, fsync of the directory) and
streamed from a cursor: one export never holds a domain's list, let alone the whole
list, in memory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import tomli_w

from .config import Config, ConfigError
from .keys import snapshot_filename
from .locking import exclusive
from .store import Store

log = logging.getLogger("kumo_suppress.export")

SNAPSHOT_FORMAT = "kumo-suppression-snapshot"
MANIFEST_FORMAT = "kumo-suppression-manifest"
MANIFEST = "manifest.json"
OLD_LOCK = ".export.lock"   # where versions before the directory lock kept their lock file
# atomic_write's temp files: `.<name>.<random>.tmp`; one left behind was a killed export's
_TEMP_NAME = re.compile(r"^\..+\.(json|toml)\.[A-Za-z0-9_]+\.tmp$")


class ExportError(Exception):
    """The snapshot directory cannot be written: exit 3, old snapshots left as they were."""


@dataclass
class ExportResult:
    written: list = field(default_factory=list)
    unchanged: int = 0
    removed: list = field(default_factory=list)
    skipped: list = field(default_factory=list)     # domains that may not name a file
    entries: int = 0
    domains: int = 0
    duration: float = 0.0

    def summary(self) -> str:
        text = (f"written {len(self.written)}, unchanged {self.unchanged}, removed {len(self.removed)} "
                f"({self.domains} domain(s), {self.entries} entries)")
        if self.skipped:
            text += f"; {len(self.skipped)} domain(s) skipped: not a plain hostname"
        return text


def iso_now(now: float) -> str:
    return dt.datetime.fromtimestamp(int(now), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(text: str) -> bool:
    """True when JSON (and TOML) write `text` between quotes as it is, no escaping:
    printable ASCII without a quote or a backslash (nearly every address)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _toml_string(text: str) -> str:
    if _plain(text):
        return f'"{text}"'
    # JSON's escapes (\" \\ \n \uXXXX) are TOML basic-string escapes too; TOML also
    # forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _json_entry(recipient: str, reason: str, since: int, expires: int | None) -> str:
    key = f'"{recipient}"' if _plain(recipient) else json.dumps(recipient, ensure_ascii=False)
    if expires is None:
        return f'{key}:{{"reason":"{reason}","since":{since}}}'
    return f'{key}:{{"reason":"{reason}","since":{since},"expires":{expires}}}'


def _toml_entry(recipient: str, reason: str, since: int, expires: int | None) -> str:
    tail = f", expires = {expires}" if expires is not None else ""
    return f'{_toml_string(recipient)} = {{ reason = "{reason}", since = {since}{tail} }}'


def write_snapshot(fh, fmt: str, domain: str, generated_at: str, count: int,
                   rows: Iterable[tuple]) -> str:
    """Stream one snapshot into `fh` (binary); returns the sha256 of its entries alone, so
    an export can tell a real change from a new generated_at."""
    entries = hashlib.sha256()
    head = {"format": SNAPSHOT_FORMAT, "version": 1, "domain": domain, "generated_at": generated_at,
            "count": count}
    if fmt == "json":
        fh.write(json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1].encode())
        fh.write(b',"recipients":{\n')
        entry, sep, close = _json_entry, ",\n", "\n}}\n"
    else:
        fh.write(tomli_w.dumps(head).encode())
        fh.write(b"\n[recipients]\n")
        entry, sep, close = _toml_entry, "\n", "\n"
    first = True
    rows = iter(rows)
    while batch := list(islice(rows, 4096)):
        data = sep.join([entry(*row) for row in batch])
        data = (data if first else sep + data).encode()
        first = False
        entries.update(data)
        fh.write(data)
    fh.write(close.encode() if not (fmt == "toml" and first) else b"")
    return entries.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable, mode: int = 0o644, gid: int | None = None,
                 sync_dir: bool = True):
    """write(fh) into a temp file beside `path`, fsync, rename over it, fsync the dir, and
    return what write returned; when it returns None the temp file is dropped instead.
    A failure leaves the old file untouched. `sync_dir=False`: the caller fsyncs the
    directory itself, once for many files (export: before the manifest)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            value = write(fh)
            if value is not None:
                fh.flush()
                os.fsync(fh.fileno())
        if value is None:
            os.unlink(tmp)
            return None
        os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, -1, gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        _fsync_dir(path.parent)
    return value


class _Hashing:
    """A binary file wrapper that hashes what goes through it."""

    def __init__(self, fh):
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.fh.write(data)


def read_manifest(directory: Path) -> dict:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else {}


@contextlib.contextmanager
def export_lock(directory: Path):
    """One export at a time per snapshot directory: the second waits for the first. The
    lock is a flock on the directory itself, so no lock file sits among the snapshots
    (the directory is what kumod reads and what gets copied to other nodes)."""
    with exclusive(directory, "export", directory=True):
        with contextlib.suppress(FileNotFoundError):
            if (directory / OLD_LOCK).is_file() and not (directory / OLD_LOCK).is_symlink():
                os.unlink(directory / OLD_LOCK)
        yield


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def export_snapshots(store: Store, config: Config, now: float | None = None,
                     progress: Callable[[int, int], None] | None = None, *, force: bool = False) -> ExportResult:
    """`force`: export even when the snapshot dir was written from another store and this
    export would remove most of its snapshots (a lost store re-created empty)."""
    started = time.monotonic()
    now = int(time.time() if now is None else now)
    directory = config.export.dir
    fmt = config.export.format
    gid = None
    if config.export.group:
        try:
            gid = grp.getgrnam(config.export.group).gr_gid
        except KeyError:
            raise ConfigError(f"{config.path or 'config'}: [export] group {config.export.group!r}: "
                              "no such group") from None
    try:
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True, mode=0o755)
            # mkdir's mode is cut by the umask (0077 would give 0700): kumod, another
            # user, must be able to list and read it
            os.chmod(directory, 0o755)
            if gid is not None:
                os.chown(directory, -1, gid)
        _fix_dir_mode(directory)
        with export_lock(directory):
            result = _export(store, directory, fmt, gid, now, progress, force)
    except OSError as err:
        raise ExportError(f"{err.filename or directory}: cannot write snapshots: {err.strerror}") from None
    result.duration = time.monotonic() - started
    for key, value in (("last_export", now), ("last_export_duration", f"{result.duration:.6f}"),
                       ("last_export_entries", result.entries), ("last_export_domains", result.domains)):
        store.set_state(key, str(value))
    return result


def _fix_dir_mode(directory: Path) -> None:
    """A snapshot dir others may write into lets them plant or swap the files kumod
    enforces: group/world write bits are taken away, with a warning."""
    st = os.stat(directory)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        os.chmod(directory, mode & ~0o022)
        log.warning("%s: snapshot directory was writable by group or others (%o); now %o",
                    directory, mode, mode & ~0o022)


def _own_files(old: dict) -> set[str]:
    """The snapshot files the manifest says an export wrote: the only files an export
    ever replaces or removes (never queues.toml, shaping.toml, ... beside them). A name
    that is not a plain snapshot name in this directory is ignored (a tampered manifest)."""
    domains = old.get("domains")
    if not isinstance(domains, dict):
        return set()
    names = set()
    for domain, entry in domains.items():
        name = entry.get("file") if isinstance(entry, dict) else None
        if (isinstance(name, str) and isinstance(domain, str) and name != MANIFEST
                and name in (snapshot_filename(domain, "json"), snapshot_filename(domain, "toml"))):
            names.add(name)
    return names


def _guard_mass_removal(store: Store, directory: Path, old: dict, own_files: set[str], now: int,
                        force: bool) -> None:
    """A store that is not the one that wrote the manifest (a lost store re-created, the
    wrong [store].path) and would remove most snapshots is refused: kumod would stop
    suppressing for those domains. A restored backup, which has most domains, goes on."""
    old_id = old.get("store_id")
    if force or not old_id or old_id == store.store_id or not own_files:
        return
    active = {row[0] for row in store.conn.execute(
        "SELECT DISTINCT domain FROM suppressions WHERE expires IS NULL OR expires > ?", (now,))}
    listed = [d for d, e in old["domains"].items() if isinstance(e, dict) and e.get("file") in own_files]
    gone = [d for d in listed if d not in active]
    if len(gone) * 2 > len(listed):
        raise ExportError(
            f"{directory}: these snapshots were written from another store (id {str(old_id)[:12]}), and an export "
            f"from {store.path} (id {store.store_id[:12]}) would remove {len(gone)} of their {len(listed)} "
            "domain(s); if this store is the right one, run `kumo-suppress export --force` (or `sync --force`)")


def _export(store: Store, directory: Path, fmt: str, gid: int | None, now: int,
            progress: Callable[[int, int], None] | None, force: bool) -> ExportResult:
    result = ExportResult()
    old = read_manifest(directory)
    listed = _own_files(old)
    _guard_mass_removal(store, directory, old, listed, now, force)
    generations = store.domain_generations()
    # the files this export may write are on record before the first is written, so the
    # export after a killed one may remove them even though no manifest lists them
    where = str(directory.absolute())
    planned = {name for name in (snapshot_filename(d, fmt) for d in generations) if name and name != MANIFEST}
    store.set_export_files(where, planned - store.export_files(where), replace=False)
    own_files = listed | store.export_files(where)
    usable = old.get("store_id") == store.store_id and old.get("snapshot_format") == fmt
    old_domains = old.get("domains", {}) if usable and isinstance(old.get("domains"), dict) else {}
    generated_at = iso_now(now)
    domains: dict[str, dict] = {}
    for i, (domain, generation) in enumerate(sorted(generations.items())):
        if progress:
            progress(i + 1, len(generations))
        name = snapshot_filename(domain, fmt)
        if name is None or name == MANIFEST:
            result.skipped.append(domain)
            log.warning("sending domain %r is not a plain hostname, or its file would be the manifest: "
                        "no snapshot file", domain)
            continue
        path = directory / name
        prev = old_domains.get(domain)
        # unchanged: same generation, the same file in place, and `now` inside the span
        # [computed_at, next_expiry) in which the set of active entries cannot change by
        # itself; a clock stepped back before computed_at makes entries that had expired
        # active again, so the domain is read again
        if (isinstance(prev, dict) and prev.get("generation") == generation
                and isinstance(prev.get("computed_at"), int) and prev["computed_at"] <= now
                and (prev.get("next_expiry") is None or prev["next_expiry"] > now)
                and _file_state(path) == (prev.get("size"), prev.get("mtime_ns"))):
            domains[domain] = prev
            result.unchanged += 1
            result.entries += prev.get("count", 0)
            continue
        with store.read_snapshot():    # one consistent view for the count and the rows
            count, next_expiry = store.domain_summary(domain, now)
            if count == 0:
                if name in own_files and path.is_file() and not path.is_symlink():
                    path.unlink()
                    result.removed.append(name)
                continue
            entries_sha = None
            if isinstance(prev, dict) and _file_state(path) == (prev.get("size"), prev.get("mtime_ns")):
                entries_sha = prev.get("entries_sha256")
            written = _write_domain(store, path, fmt, domain, generated_at, count, now, gid, entries_sha)
        if written is None:            # same entries as the file there: leave it alone
            entry = dict(prev, generation=generation, next_expiry=next_expiry, computed_at=now)
            result.unchanged += 1
        else:
            size, mtime_ns = _file_state(path)
            entry = {"file": name, "count": count, "sha256": written[0], "entries_sha256": written[1],
                     "generation": generation, "next_expiry": next_expiry, "computed_at": now,
                     "size": size, "mtime_ns": mtime_ns}
            result.written.append(name)
        domains[domain] = entry
        result.entries += count
    result.domains = len(domains)
    if result.written:                 # the snapshots' renames are durable before the manifest's
        _fsync_dir(directory)
    _remove_strays(directory, own_files, domains, result)
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "store_id": store.store_id,
                "snapshot_format": fmt, "generated_at": generated_at, "domains": domains}
    if not usable or domains != old_domains or not (directory / MANIFEST).exists():
        data = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(directory / MANIFEST, lambda fh: fh.write(data), gid=gid)
    store.set_export_files(where, [entry["file"] for entry in domains.values()], replace=True)
    return result


def _write_domain(store: Store, path: Path, fmt: str, domain: str, generated_at: str, count: int,
                  now: int, gid: int | None, entries_sha: str | None) -> tuple[str, str] | None:
    """Write a domain's snapshot and return (file sha256, entries sha256), or None when its
    entries equal `entries_sha` (the file in place): kumod then reloads nothing."""
    def write(fh):
        out = _Hashing(fh)
        entries = write_snapshot(out, fmt, domain, generated_at, count, store.iter_snapshot(domain, now))
        return None if entries == entries_sha else (out.sha.hexdigest(), entries)
    return atomic_write(path, write, gid=gid, sync_dir=False)


def _remove_strays(directory: Path, own_files: set[str], domains: dict, result: ExportResult) -> None:
    """Files an earlier export wrote (listed in its manifest) that no domain has now (no
    active entries, the other format) go: kumod must stop suppressing for them. So do
    temp files a killed export left. Any other file is left alone."""
    keep = {entry["file"] for entry in domains.values()}
    for name in sorted(own_files - keep - set(result.removed)):
        path = directory / name
        if path.is_file() and not path.is_symlink():
            os.unlink(path)
            result.removed.append(name)
    for entry in os.scandir(directory):
        if _TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            # we hold the export lock, so no other export is writing it: debris of a crash
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


# ---------------------------------------------------------------------- validation

@lru_cache(maxsize=1)
def snapshot_schema() -> dict:
    return json.loads(resources.files("exporter").joinpath("schema/snapshot.schema.json").read_text())


def validate_snapshot_file(path: Path) -> list[str]:
    """Problems with one snapshot file (empty list: valid)."""
    import jsonschema
    import tomllib
    try:
        raw = path.read_bytes()
    except OSError as err:
        return [f"cannot read: {err.strerror}"]
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return [f"not valid {path.suffix[1:].upper()}: {err}"]
    except RecursionError:
        return [f"not valid {path.suffix[1:].upper()}: nested too deeply"]
    validator = jsonschema.Draft202012Validator(snapshot_schema())
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))[:5]]
    if problems:
        return problems
    if data["count"] != len(data["recipients"]):
        problems.append(f"count is {data['count']} but there are {len(data['recipients'])} recipients")
    if path.stem != data["domain"]:
        problems.append(f"file name {path.name} does not match domain {data['domain']!r}")
    return problems


def snapshot_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
                  and p.suffix in (".json", ".toml"))
