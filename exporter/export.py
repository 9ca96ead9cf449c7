"""Store -> snapshot files per sending domain (docs/snapshot-format.md), for kumod.

This module decides what to write and when; exporter/snapshot.py owns what the files
look like. kumod reloads a file when its version (mtime, size, inode) changes, so a file
is only rewritten when its entries changed; the manifest remembers each domain's store
generation, so an unchanged domain is not even read from the store, and for a sharded
domain how far into the store's history it saw, so only the shards holding a changed key
are rewritten. Files are written atomically (temp file in the same directory, fsync,
rename, fsync of the directory) and streamed from a cursor: one export never holds a
domain's list, let alone the whole list, in memory (a shard being patched at most).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import grp
import hashlib
import logging
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import snapshot
from .config import Config, ConfigError, ExportConfig
from .keys import snapshot_filename
from .locking import exclusive
from .store import Store

log = logging.getLogger("kumo_suppress.export")

OLD_LOCK = ".export.lock"   # where versions before the directory lock kept their lock file
# atomic_write's temp files: `.<name>.<random>.tmp`; one left behind was a killed export's
_TEMP_NAME = re.compile(r"^\..+\.(json|toml)\.[A-Za-z0-9_]+\.tmp$")
# a sharded domain's first export spreads its cursor over this many shard spools at once
# (more shards: one more pass per group), well under the usual 1024 open files
_OPEN_SPOOLS = 256
# new snapshot files are fsynced, then renamed into place, this many at a time (their
# descriptors stay open in between)
_SYNC_GROUP = 64


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
    batch = _Pending(mode, gid)
    try:
        value = batch.write(path, write)
        batch.commit()
    finally:
        batch.discard()
    if sync_dir and value is not None:
        _fsync_dir(path.parent)
    return value


class _Pending:
    """Files written to temp files beside their paths and renamed over them together by
    commit(), in the order written, or dropped by discard(): a sharded domain's shards go
    in before the index that names them, and not at all when they turn out to disagree
    with the store. Every temp file is fsynced before the first rename. With a `syncer`
    (a one-thread executor) each file's fsync runs there as soon as it is written, while
    the export formats the next ones, and commit() waits for them: the disk writes and the
    formatting overlap instead of taking turns (descriptors stay open until commit)."""

    def __init__(self, mode: int = 0o644, gid: int | None = None, *,
                 syncer: concurrent.futures.Executor | None = None):
        self.mode, self.gid, self.syncer = mode, gid, syncer
        self._temps: list[tuple[str, Path]] = []
        self._unsynced: dict[str, tuple] = {}      # temp path -> (its open file, its fsync)

    def __len__(self) -> int:
        return len(self._temps)

    def write(self, path: Path, write: Callable):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        fh = os.fdopen(fd, "wb")
        try:
            value = write(fh)
            if value is None:
                fh.close()
                os.unlink(tmp)
                return None
            fh.flush()
            os.fchmod(fh.fileno(), self.mode)
            if self.gid is not None:
                os.fchown(fh.fileno(), -1, self.gid)
            if self.syncer is not None:
                self._unsynced[tmp] = (fh, self.syncer.submit(os.fsync, fh.fileno()))
            else:
                os.fsync(fh.fileno())
                fh.close()
        except BaseException:
            fh.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._temps.append((tmp, path))
        return value

    def take(self, other: "_Pending") -> None:
        """Queue `other`'s files behind this batch's, to be synced and installed with them."""
        self._temps += other._temps
        self._unsynced.update(other._unsynced)
        other._temps, other._unsynced = [], {}

    def names(self) -> set[str]:
        """The names of the files waiting to be installed."""
        return {path.name for _tmp, path in self._temps}

    def _sync(self) -> None:
        while self._unsynced:
            tmp, (fh, synced) = next(iter(self._unsynced.items()))
            synced.result()             # an fsync that failed fails the commit
            fh.close()
            del self._unsynced[tmp]

    def commit(self) -> list[Path]:
        self._sync()
        installed = []
        while self._temps:
            tmp, path = self._temps[0]
            os.replace(tmp, path)
            self._temps.pop(0)
            installed.append(path)
        return installed

    def discard(self) -> None:
        for fh, synced in self._unsynced.values():
            with contextlib.suppress(Exception):
                synced.result()         # never close a descriptor an fsync is using
            with contextlib.suppress(OSError):
                fh.close()
        self._unsynced.clear()
        for tmp, _path in self._temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._temps.clear()


class _Hashing:
    """A binary file wrapper that hashes what goes through it."""

    def __init__(self, fh):
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.fh.write(data)


def _hashed_write(write: Callable, previous_entries: str | None) -> Callable:
    """A writer for _Pending.write: runs write(fh) -> entries sha256 and answers (file
    sha256, entries sha256), or None (drop the temp file) when the entries are those of
    the file in place: kumod then reloads nothing."""
    def run(fh):
        out = _Hashing(fh)
        entries = write(out)
        return None if entries == previous_entries else (out.sha.hexdigest(), entries)
    return run


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


def _intact(directory: Path, item: dict) -> bool:
    """The manifest's file entry still describes the file there (not deleted or edited)."""
    return _file_state(directory / item["file"]) == (item.get("size"), item.get("mtime_ns"))


def export_snapshots(store: Store, config: Config, now: float | None = None,
                     progress: Callable[[int, int], None] | None = None, *, force: bool = False) -> ExportResult:
    """`force`: export even when the snapshot dir was written from another store and this
    export would remove most of its snapshots (a lost store re-created empty)."""
    started = time.monotonic()
    now = int(time.time() if now is None else now)
    directory = config.export.dir
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
            result = _export(store, directory, config.export, gid, now, progress, force)
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
    """The snapshot files the manifest says an export wrote (a domain's single file or
    index, and its shards): the only files an export ever replaces or removes (never
    queues.toml, shaping.toml, ... beside them). A name that is not a snapshot name of
    its domain is ignored (a tampered manifest)."""
    domains = old.get("domains")
    if not isinstance(domains, dict):
        return set()
    names = set()
    for domain, entry in domains.items():
        if not isinstance(entry, dict):
            continue
        shard_files = entry.get("shard_files")
        for item in [entry, *(shard_files if isinstance(shard_files, list) else [])]:
            name = item.get("file") if isinstance(item, dict) else None
            parsed = snapshot.parse_filename(name) if isinstance(name, str) else None
            if parsed is not None and parsed.domain == domain:
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


@dataclass
class _Domain:
    """What one domain's export needs to know."""
    directory: Path
    settings: ExportConfig
    gid: int | None
    domain: str
    generated_at: str
    now: int
    prev: dict            # its manifest entry of the last export ({} when none is usable)
    batch: "_Pending"     # its files, installed once the store's read transaction is over

    @property
    def fmt(self) -> str:
        return self.settings.format

    @property
    def hashed(self) -> bool:
        return self.settings.hash_recipients


def _export(store: Store, directory: Path, settings: ExportConfig, gid: int | None, now: int,
            progress: Callable[[int, int], None] | None, force: bool) -> ExportResult:
    result = ExportResult()
    fmt = settings.format
    old = snapshot.read_manifest(directory)
    listed = _own_files(old)
    _guard_mass_removal(store, directory, old, listed, now, force)
    generations = store.domain_generations()
    # the files this export may write are on record before the first is written, so the
    # export after a killed one may remove them even though no manifest lists them (a
    # sharded domain's shard files are recorded before they are installed, below)
    where = str(directory.absolute())
    planned = {name for name in (snapshot_filename(d, fmt) for d in generations)
               if name and name != snapshot.MANIFEST}
    store.set_export_files(where, planned - store.export_files(where), replace=False)
    own_files = listed | store.export_files(where)
    usable = (old.get("store_id") == store.store_id and old.get("snapshot_format") == fmt
              and old.get("hash_recipients", False) == settings.hash_recipients)
    old_domains = old.get("domains", {}) if usable and isinstance(old.get("domains"), dict) else {}
    generated_at = iso_now(now)
    domains: dict[str, dict] = {}
    # the domains' new files, fsynced and installed a group at a time (shards before
    # their index, every file before the manifest), and the manifest entries naming them
    syncer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="export-fsync")
    queue = _Pending(gid=gid, syncer=syncer)
    queued: list[dict] = []

    def install() -> None:
        installed = [path.name for path in queue.commit()]
        names = set(installed)
        for entry in queued:
            for item in snapshot.manifest_files(entry):
                if item["file"] in names:
                    item["size"], item["mtime_ns"] = _file_state(directory / item["file"])
        queued.clear()
        result.written += installed

    try:
        for i, (domain, generation) in enumerate(sorted(generations.items())):
            if progress:
                progress(i + 1, len(generations))
            name = snapshot_filename(domain, fmt)
            if name is None or name == snapshot.MANIFEST:
                result.skipped.append(domain)
                log.warning("sending domain %r is not a plain hostname, or its file would be the manifest: "
                            "no snapshot file", domain)
                continue
            path = directory / name
            prev = old_domains.get(domain)
            prev = prev if isinstance(prev, dict) and prev.get("file") == name else {}
            # unchanged: same generation, the same files in place, and `now` inside the span
            # [computed_at, next_expiry) in which the set of active entries cannot change by
            # itself; a clock stepped back before computed_at makes entries that had expired
            # active again, so the domain is read again
            if (prev.get("generation") == generation
                    and isinstance(prev.get("computed_at"), int) and prev["computed_at"] <= now
                    and (prev.get("next_expiry") is None or prev["next_expiry"] > now)
                    and all(_intact(directory, item) for item in snapshot.manifest_files(prev))):
                domains[domain] = prev
                result.unchanged += 1
                result.entries += prev.get("count", 0)
                continue
            job = _Domain(directory, settings, gid, domain, generated_at, now, prev,
                          _Pending(gid=gid, syncer=syncer))
            try:
                with store.read_snapshot():    # one consistent view for the count and the rows
                    entry = _patch_sharded(store, job) if prev.get("shards") else None
                    if entry is None:
                        job.batch.discard()
                        count, next_expiry = store.domain_summary(domain, now)
                        if count == 0:
                            if name in own_files and path.is_file() and not path.is_symlink():
                                path.unlink()
                                result.removed.append(name)
                            continue
                        shards = snapshot.shard_count(count, settings.shard_entries, prev.get("shards", 1))
                        if shards == 1:
                            entry = _write_single(store, job, count, next_expiry)
                        else:
                            entry = _write_sharded(store, job, count, next_expiry, shards)
                new_names = job.batch.names() - own_files
                if new_names:              # on record before they exist (shards of a new count)
                    store.set_export_files(where, new_names, replace=False)
                    own_files |= new_names
                if len(job.batch):
                    queue.take(job.batch)  # shards first, then the index naming them
                    queued.append(entry)
                else:
                    result.unchanged += 1
            finally:
                job.batch.discard()
            entry.update(generation=generation, computed_at=now)
            domains[domain] = entry
            result.entries += entry["count"]
            if len(queue) >= _SYNC_GROUP:
                install()
        install()
    finally:
        queue.discard()
        syncer.shutdown()
    result.domains = len(domains)
    if result.written:                 # the snapshots' renames are durable before the manifest's
        _fsync_dir(directory)
    _remove_strays(directory, own_files, domains, result)
    manifest = snapshot.manifest_doc(generated_at, domains, store_id=store.store_id, snapshot_format=fmt,
                                     hash_recipients=settings.hash_recipients)
    if not usable or domains != old_domains or not (directory / snapshot.MANIFEST).exists():
        data = snapshot.manifest_bytes(manifest)
        atomic_write(directory / snapshot.MANIFEST, lambda fh: fh.write(data), gid=gid)
    store.set_export_files(where, [item["file"] for entry in domains.values()
                                   for item in snapshot.manifest_files(entry)], replace=True)
    return result


def _file_entry(name: str, count: int, written: tuple[str, str], **extra) -> dict:
    """A file's manifest entry; size and mtime_ns are added once it is installed."""
    return {"file": name, "count": count, "sha256": written[0], "entries_sha256": written[1], **extra}


def _write_single(store: Store, job: _Domain, count: int, next_expiry: int | None) -> dict:
    """A domain of at most shard_entries entries: one file, streamed from the store into
    the batch unless its entries are those of the file in place. Returns its manifest
    entry."""
    prev, name = job.prev, snapshot_filename(job.domain, job.fmt)
    same = prev.get("entries_sha256") if "shards" not in prev and prev and _intact(job.directory, prev) else None
    head = snapshot.header(job.domain, job.generated_at, count, hashed=job.hashed,
                           domain_entries=len(store.iter_domain_entries(job.domain, job.now)))
    rows = store.iter_snapshot(job.domain, job.now)
    written = job.batch.write(job.directory / name, _hashed_write(
        lambda fh: snapshot.write(fh, job.fmt, head, rows, job.hashed), same))
    if written is None:
        return dict(prev, next_expiry=next_expiry)
    return _file_entry(name, count, written, next_expiry=next_expiry)


def _write_sharded(store: Store, job: _Domain, count: int, next_expiry: int | None, shards: int) -> dict:
    """A domain of more than shard_entries entries, from one pass over the store: every
    shard (one whose entries did not change is left alone), then the index."""
    shard_files = _write_all_shards(store, job, shards)
    return _write_index(store, job, shards, shard_files, count, next_expiry)


def _patch_sharded(store: Store, job: _Domain) -> dict | None:
    """A domain the last export wrote as shards, keeping their number: only the shards
    holding a key that changed since (the store's history says which) or an entry that
    expired are read back, patched and rewritten, then the index. Its count comes from the
    shards, so the domain is not read from the store. None when that cannot be done: no
    usable last export of it, a shard file not as the manifest describes it, so many
    changes that one pass is cheaper, or a count that calls for another layout."""
    prev = job.prev
    shards, files = prev["shards"], prev.get("shard_files")
    if (not isinstance(files, list) or len(files) != shards or not isinstance(prev.get("history_id"), int)
            or prev["history_id"] > store.history_mark()
            # a clock stepped back revives entries the shards no longer hold
            or not isinstance(prev.get("computed_at"), int) or prev["computed_at"] > job.now
            or not all(_intact(job.directory, f) for f in files)):
        return None
    changed = [r for r in store.changed_since(job.domain, prev["history_id"]) if not r.startswith("@")]
    dirty: dict[int, list[str]] = {}
    for recipient in changed:
        dirty.setdefault(snapshot.shard_of(recipient, shards), []).append(recipient)
    for k, item in enumerate(files):
        if item.get("next_expiry") is not None and item["next_expiry"] <= job.now:
            dirty.setdefault(k, [])
    if len(dirty) > shards // 2:
        return None
    current = store.snapshot_rows(job.domain, changed, job.now)
    files = list(files)
    for k, recipients in sorted(dirty.items()):
        path = job.directory / files[k]["file"]
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != files[k].get("sha256"):
            return None
        try:
            old, entries = snapshot.active_recipients(raw, job.fmt, job.now)
        except snapshot.SnapshotError:
            return None
        for recipient in recipients:
            key = snapshot.key_digest(recipient) if job.hashed else recipient
            row = current.get(recipient)
            if row is None:
                entries.pop(key, None)
            else:
                entries[key] = snapshot.rows_entry(row)
        if entries == old:
            continue
        # plain keys in key order, as a pass over the store writes them; digests keep
        # the order they have
        rows = snapshot.rows_of(entries if job.hashed else dict(sorted(entries.items())))
        head = snapshot.header(job.domain, job.generated_at, len(rows), hashed=job.hashed, domain_entries=0,
                               shard=k, shards=shards)
        written = job.batch.write(path, _hashed_write(lambda fh: snapshot.write(fh, job.fmt, head, rows), None))
        files[k] = _file_entry(path.name, len(rows), written,
                               next_expiry=min((r[3] for r in rows if r[3] is not None), default=None))
    domain_rows = store.iter_domain_entries(job.domain, job.now)
    count = sum(f["count"] for f in files) + len(domain_rows)
    if snapshot.shard_count(count, job.settings.shard_entries, shards) != shards:
        return None
    expiries = [f["next_expiry"] for f in files if f.get("next_expiry") is not None]
    expiries += [r[3] for r in domain_rows if r[3] is not None]
    return _write_index(store, job, shards, files, count, min(expiries, default=None), domain_rows)


def _write_index(store: Store, job: _Domain, shards: int, shard_files: list[dict], count: int,
                 next_expiry: int | None, domain_rows: list | None = None) -> dict:
    """The index of a sharded domain into the batch, behind its shards (unless it is the
    file in place), and the domain's manifest entry."""
    if domain_rows is None:
        domain_rows = store.iter_domain_entries(job.domain, job.now)
    name, prev = snapshot_filename(job.domain, job.fmt), job.prev
    same = (prev.get("entries_sha256") if prev.get("shards") == shards and prev.get("count") == count
            and _intact(job.directory, prev) else None)
    head = snapshot.header(job.domain, job.generated_at, count, hashed=job.hashed,
                           domain_entries=len(domain_rows), shards=shards)
    index = job.batch.write(job.directory / name, _hashed_write(
        lambda fh: snapshot.write(fh, job.fmt, head, domain_rows, job.hashed), same))
    entry = (_file_entry(name, count, index) if index is not None
             else {k: v for k, v in prev.items() if k not in ("shard_files", "history_id")})
    entry.update(next_expiry=next_expiry, shards=shards, history_id=store.history_mark(),
                 shard_files=shard_files)
    return entry


def _write_all_shards(store: Store, job: _Domain, shards: int) -> list[dict]:
    """Every shard from one pass over the domain's cursor (one pass per _OPEN_SPOOLS
    shards): each plain entry is formatted into its shard's spool, then each shard is
    written behind its header, unless its entries are those of the file in place."""
    prev = job.prev
    prev_files = prev.get("shard_files") if prev.get("shards") == shards else None
    if not isinstance(prev_files, list) or len(prev_files) != shards:
        prev_files = None
    files = []
    for first in range(0, shards, _OPEN_SPOOLS):
        group = range(first, min(first + _OPEN_SPOOLS, shards))
        with contextlib.ExitStack() as stack:
            spools = {k: snapshot.Spool(job.fmt, stack.enter_context(
                tempfile.TemporaryFile(prefix=".spool.", dir=job.directory))) for k in group}
            for recipient, reason, since, expires in store.iter_snapshot(job.domain, job.now):
                if recipient[0] == "@":
                    continue
                digest = snapshot.key_digest(recipient)
                spool = spools.get(snapshot.shard_of_digest(digest, shards))
                if spool is not None:
                    spool.add(snapshot.entry_line(job.fmt, digest if job.hashed else recipient,
                                                  reason, since, expires), expires)
            for k, spool in spools.items():
                old = prev_files[k] if prev_files and _intact(job.directory, prev_files[k]) else {}
                name = snapshot.shard_filename(job.domain, k, shards, job.fmt)
                head = snapshot.header(job.domain, job.generated_at, spool.count, hashed=job.hashed,
                                       domain_entries=0, shard=k, shards=shards)
                written = job.batch.write(job.directory / name, _hashed_write(
                    lambda fh: spool.write_to(fh, head), old.get("entries_sha256")))
                files.append(old if written is None else
                             _file_entry(name, spool.count, written, next_expiry=spool.next_expiry))
    return files


def _remove_strays(directory: Path, own_files: set[str], domains: dict, result: ExportResult) -> None:
    """Files an earlier export wrote (listed in its manifest or on record in the store)
    that no domain has now (no active entries, a shard of a domain now written as one
    file or as another number of shards, the other format) go: kumod must stop reading
    them. So do temp files a killed export left. Any other file is left alone."""
    keep = {item["file"] for entry in domains.values() for item in snapshot.manifest_files(entry)}
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
