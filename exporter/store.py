"""The authoritative suppression list: one SQLite file (WAL), documented in the README so
an end user's panel can read it.

Writes are short IMMEDIATE transactions, so the scheduler, the webhook receiver and a
manual command can share one store. Every change to a domain's active entries bumps
that domain's generation, which is how export knows what to rewrite without reading it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from . import rules
from .keys import recipient_domain_entry
from .records import Event
from .rules import Decision, Entry

# 2: suppressions and tombstones clustered by (domain, recipient) (WITHOUT ROWID), event
#    keys as 64-bit integers that are the rowid, no secondary index on suppressions
SCHEMA_VERSION = 2
EVIDENCE = ("type", "message_id", "code", "enhanced_code", "content", "classification", "nodeid")
_EV_COLS = ", ".join(f"ev_{c}" for c in EVIDENCE)
_ENTRY_COLS = f"reason, source, first_seen, last_seen, expires, count, {_EV_COLS}, note, updated_at"
_ENTRY_WIDTH = 8 + len(EVIDENCE)
_SAVE_ENTRY = (f"REPLACE INTO suppressions(domain, recipient, {_ENTRY_COLS}) "
               f"VALUES ({', '.join('?' * (2 + _ENTRY_WIDTH))})")
_HISTORY = ("INSERT INTO history(at, action, domain, recipient, reason, source, event_time, expires, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")

# The schema, one statement each (executescript would commit the migration's transaction).
# Pages fill in arrival order but are read per domain: clustering the entries by their key
# is what keeps a full export of a store ingest filled as fast as one filled in key order.
_TABLES = (
    "CREATE TABLE suppressions (domain TEXT NOT NULL, recipient TEXT NOT NULL, reason TEXT NOT NULL, "
    "source TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, expires INTEGER, "
    "count INTEGER NOT NULL, ev_type TEXT, ev_message_id TEXT, ev_code INTEGER, ev_enhanced_code TEXT, "
    "ev_content TEXT, ev_classification TEXT, ev_nodeid TEXT, note TEXT, updated_at INTEGER, "
    "PRIMARY KEY (domain, recipient)) WITHOUT ROWID",
    "CREATE TABLE tombstones (domain TEXT NOT NULL, recipient TEXT NOT NULL, removed_at INTEGER, note TEXT, "
    "PRIMARY KEY (domain, recipient)) WITHOUT ROWID",
    "CREATE TABLE history (id INTEGER PRIMARY KEY, at INTEGER, action TEXT, domain TEXT, recipient TEXT, "
    "reason TEXT, source TEXT, event_time INTEGER, expires INTEGER, detail TEXT)",
    "CREATE INDEX history_pair ON history(domain, recipient)",
    "CREATE TABLE seen_events (key INTEGER PRIMARY KEY, at INTEGER)",
    "CREATE TABLE strikes (key INTEGER PRIMARY KEY, domain TEXT, recipient TEXT, reason TEXT, at INTEGER)",
    "CREATE INDEX strikes_pair ON strikes(domain, recipient, at)",
    "CREATE TABLE domains (domain TEXT PRIMARY KEY, generation INTEGER)",
    "CREATE TABLE segments (path TEXT PRIMARY KEY, lines INTEGER, complete INTEGER, size INTEGER, "
    "updated_at INTEGER)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER)",
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT)",
)
# schema 1 -> 2: the tables whose layout changed are rebuilt from their old rows; a
# 16-byte event key becomes its first 8 bytes, which is what Event.key now is
_MIGRATE_1 = (
    "ALTER TABLE suppressions RENAME TO suppressions_1",
    "ALTER TABLE tombstones RENAME TO tombstones_1",
    "ALTER TABLE seen_events RENAME TO seen_events_1",
    "ALTER TABLE strikes RENAME TO strikes_1",
    "DROP INDEX IF EXISTS strikes_pair",
    _TABLES[0], _TABLES[1], _TABLES[4], _TABLES[5], _TABLES[6],
    f"INSERT INTO suppressions(domain, recipient, {_ENTRY_COLS}) "
    f"SELECT domain, recipient, {_ENTRY_COLS} FROM suppressions_1 ORDER BY domain, recipient",
    "INSERT INTO tombstones SELECT domain, recipient, removed_at, note FROM tombstones_1 ORDER BY domain, recipient",
    "INSERT OR IGNORE INTO seen_events SELECT event_key_64(key), at FROM seen_events_1",
    "INSERT OR IGNORE INTO strikes SELECT event_key_64(key), domain, recipient, reason, at FROM strikes_1",
    "DROP TABLE suppressions_1", "DROP TABLE tombstones_1", "DROP TABLE seen_events_1", "DROP TABLE strikes_1",
)


def _event_key_64(key: bytes) -> int:
    """A schema-1 event key (16 bytes) as the 64-bit integer Event.key gives now."""
    return int.from_bytes(key[:8], "big", signed=True)


class StoreError(Exception):
    """The store cannot be used (missing, unreadable, locked, disk full): exit 3."""


@dataclass
class ApplyResult:
    added: dict = field(default_factory=dict)        # reason -> count
    refreshed: dict = field(default_factory=dict)
    duplicates: int = 0
    tombstoned: int = 0
    stale: int = 0
    below_threshold: int = 0

    def merge(self, other: "ApplyResult") -> None:
        for name in ("added", "refreshed"):
            mine = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] = mine.get(k, 0) + v
        for name in ("duplicates", "tombstoned", "stale", "below_threshold"):
            setattr(self, name, getattr(self, name) + getattr(other, name))



def entry_dict(row: sqlite3.Row) -> dict:
    """A suppressions row -> the object `check --json` and the read API show."""
    return {
        "recipient": row["recipient"], "domain": row["domain"], "reason": row["reason"],
        "source": row["source"], "first_seen": row["first_seen"], "last_seen": row["last_seen"],
        "expires": row["expires"], "count": row["count"], "note": row["note"],
        "evidence": {c: row[f"ev_{c}"] for c in EVIDENCE},
    }


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path
        # per transaction: domains whose generation to bump at commit (one UPSERT each,
        # not one per event)
        self._dirty: set[str] = set()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: os.PathLike | str, *, create: bool = True, busy_timeout: float = 30.0) -> "Store":
        path = Path(path)
        if not path.exists():
            if not create:
                raise StoreError(f"{path}: store does not exist (run `kumo-suppress init`)")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # 0600 from the first byte: the store holds every address ever bounced
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as err:
                raise StoreError(f"{path}: cannot create store: {err.strerror}") from None
        deadline = time.monotonic() + busy_timeout
        while True:
            conn = None
            try:
                conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA temp_store=MEMORY")   # a batch's pairs (temp.wanted_pairs): no temp file
                conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                store = cls(conn, path)
                store.migrate()
                return store
            except sqlite3.OperationalError as err:
                # switching a new file to WAL, or another process's WAL checkpoint on close,
                # can answer "locked" without waiting on busy_timeout: retry until it is up
                if conn is not None:
                    conn.close()
                if "locked" not in str(err) or time.monotonic() >= deadline:
                    raise StoreError(f"{path}: cannot open store: {err}") from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as err:
                if conn is not None:
                    conn.close()
                raise StoreError(f"{path}: cannot open store: {err}") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT: the writer lock is taken up front, so a busy store
        waits (busy_timeout) instead of failing halfway through."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise StoreError(f"{self.path}: {err}") from None
        self._dirty.clear()
        try:
            yield self.conn
            if self._dirty:
                self.conn.executemany(
                    "INSERT INTO domains(domain, generation) VALUES (?, 1) "
                    "ON CONFLICT(domain) DO UPDATE SET generation = generation + 1",
                    [(d,) for d in self._dirty])
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        finally:
            self._dirty.clear()
        try:
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as err:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: cannot commit: {err}") from None

    @contextlib.contextmanager
    def read_snapshot(self):
        """A read transaction: everything read inside sees one state of the store, however
        long it takes and whatever writers commit meanwhile (WAL)."""
        self.conn.execute("BEGIN")
        try:
            yield self
        finally:
            self.conn.execute("COMMIT")

    def migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema {version} is newer than this kumo-suppress ({SCHEMA_VERSION})")
        if version == SCHEMA_VERSION:
            return
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return     # another process migrated it while we waited for the lock
            if version == 0:
                for statement in _TABLES:
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO state(key, value) VALUES ('store_id', ?)", (uuid.uuid4().hex,))
            else:
                self.conn.create_function("event_key_64", 1, _event_key_64, deterministic=True)
                for statement in _MIGRATE_1:
                    self.conn.execute(statement)
            self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # ------------------------------------------------------------------ state
    def get_state(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO state(key, value) VALUES (?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def store_id(self) -> str:
        return self.get_state("store_id") or ""

    def add_counters(self, counts: dict[str, int]) -> None:
        self.conn.executemany(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(k, v) for k, v in counts.items() if v])

    def counters(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT name, value FROM counters")}

    # ------------------------------------------------------------------ segments
    def segment_checkpoint(self, path: str) -> tuple[int, bool]:
        row = self.conn.execute("SELECT lines, complete FROM segments WHERE path = ?", (path,)).fetchone()
        return (row[0], bool(row[1])) if row else (0, False)

    def set_segment_checkpoint(self, path: str, lines: int, complete: bool, size: int, now: int) -> None:
        self.conn.execute(
            "INSERT INTO segments(path, lines, complete, size, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET lines = excluded.lines, complete = excluded.complete, "
            "size = excluded.size, updated_at = excluded.updated_at",
            (path, lines, int(complete), size, now))

    # ------------------------------------------------------------------ writes
    def _bump(self, domain: str) -> None:
        """The domain's snapshot changed: its generation goes up when the transaction commits."""
        self._dirty.add(domain)

    def _load(self, pairs: Iterable[tuple[str, str]]) -> tuple[dict[tuple[str, str], Entry], dict[tuple[str, str], int]]:
        """The stored entries (expired ones included) and tombstones' removal times of
        these (domain, recipient) pairs, looked up in one join each."""
        conn = self.conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS wanted_pairs (domain TEXT, recipient TEXT, "
                     "PRIMARY KEY (domain, recipient)) WITHOUT ROWID")
        conn.execute("DELETE FROM temp.wanted_pairs")
        conn.executemany("INSERT OR IGNORE INTO temp.wanted_pairs VALUES (?, ?)", sorted(pairs))
        entries = {}
        for row in conn.execute(f"SELECT s.domain, s.recipient, {_ENTRY_COLS} FROM temp.wanted_pairs w "
                                "JOIN main.suppressions s ON s.domain = w.domain AND s.recipient = w.recipient"):
            entries[row[0], row[1]] = Entry(row[2], row[3], row[4], row[5], row[6], row[7],
                                            tuple(row[8:8 + len(EVIDENCE)]), row[-2], row[-1])
        removed = {}
        # most stores have no tombstone at all: then this is one lookup, not a join
        if conn.execute("SELECT EXISTS(SELECT 1 FROM tombstones)").fetchone()[0]:
            removed = {(r[0], r[1]): r[2] for r in conn.execute(
                "SELECT t.domain, t.recipient, t.removed_at FROM temp.wanted_pairs w "
                "JOIN main.tombstones t ON t.domain = w.domain AND t.recipient = w.recipient")}
        return entries, removed

    def _save(self, entries: dict[tuple[str, str], Entry], history: list[tuple]) -> None:
        """Write changed entries (in key order: neighbouring rows share pages) and their
        history rows (in the order they happened)."""
        self.conn.executemany(_SAVE_ENTRY, [
            (domain, recipient, e.reason, e.source, e.first_seen, e.last_seen, e.expires, e.count,
             *e.evidence, e.note, e.updated_at)
            for (domain, recipient), e in sorted(entries.items(), key=lambda item: item[0])])
        self.conn.executemany(_HISTORY, history)

    def _unseen(self, keyed: list[tuple[int, int | None]]) -> list[bool]:
        """For each (event key, forget-after time) whether this is its first sighting; the
        new ones are remembered. A key seen earlier in the same list is not new either.
        One INSERT per few hundred keys that returns the keys it inserted: looking a key
        up and inserting it is one b-tree descent, not two."""
        conn = self.conn
        first = dict(reversed(keyed))       # key -> at, once per key
        remembered: set[int] = set()
        ordered = sorted(first.items())     # neighbouring keys share pages
        for start in range(0, len(ordered), 400):
            chunk = ordered[start:start + 400]
            # `at` NULL for a suppression that never expires: prune never forgets such a key,
            # so replaying a years-old complaint cannot count it twice
            remembered.update(r[0] for r in conn.execute(
                f"INSERT INTO seen_events(key, at) VALUES {', '.join(['(?, ?)'] * len(chunk))} "
                "ON CONFLICT(key) DO NOTHING RETURNING key", [v for pair in chunk for v in pair]))
        fresh = []
        for key, _at in keyed:
            fresh.append(key in remembered)
            remembered.discard(key)         # a second sighting in the same list is not new
        return fresh

    def apply_event(self, event: Event, decision: Decision, source: str, now: int,
                    result: ApplyResult) -> bool:
        """Record one suppressing event for each of its recipients. Call inside transaction().
        False when every recipient's event was seen before."""
        return self.apply_events([(event, decision)], source, now, result)[0]

    def apply_events(self, pending: Iterable[tuple[Event, Decision]], source: str, now: int,
                     result: ApplyResult) -> list[bool]:
        """Record suppressing events, in order, for each of their recipients, with the
        outcome the same events one by one would have. Call inside transaction().
        Entries are loaded and written once per batch; what happens to each is rules.py's.
        Returns for each event whether it was new: False when every recipient's event
        had been seen before (the record is a duplicate)."""
        pending = list(pending)
        items = [(i, event, decision, recipient) for i, (event, decision) in enumerate(pending)
                 for recipient in event.recipients]
        if not items:
            return [False] * len(pending)
        fresh = self._unseen([(event.key(recipient), None if decision.ttl is None else event.timestamp)
                              for _i, event, decision, recipient in items])
        items = [item for item, new in zip(items, fresh) if new]
        new_events = [False] * len(pending)
        for i, *_rest in items:
            new_events[i] = True
        result.duplicates += len(fresh) - len(items)
        entries, removed = self._load({(event.domain, recipient) for _i, event, _d, recipient in items})
        changed: dict[tuple[str, str], Entry] = {}
        history: list[tuple] = []
        for _i, event, decision, recipient in items:
            pair = (event.domain, recipient)
            when = event.timestamp
            if rules.tombstoned(when, removed.get(pair)):
                result.tombstoned += 1
                continue
            if rules.stale(rules.expiry(when, decision.ttl), now):
                result.stale += 1
                continue
            if decision.threshold > 1:
                reached = self._strike(event, decision, recipient)
                if reached is None:
                    result.below_threshold += 1
                    continue
                when = reached
            evidence = (event.type, event.message_id, event.code, event.enhanced_code, event.content,
                        event.classification, event.nodeid)
            entry, action, shown = rules.record(entries.get(pair), decision.reason, source, when,
                                                rules.expiry(when, decision.ttl), evidence, None, now)
            entries[pair] = changed[pair] = entry
            history.append((now, action, event.domain, recipient, decision.reason, source, when, entry.expires,
                            None))
            if shown:
                self._bump(event.domain)
            tally = result.added if action == "add" else result.refreshed
            tally[decision.reason] = tally.get(decision.reason, 0) + 1
        self._save(changed, history)
        return new_events

    def _strike(self, event: Event, decision: Decision, recipient: str) -> int | None:
        """Count the event toward its pair's threshold; when the threshold is reached, the
        time the suppression starts (rules.threshold_reached), else None."""
        ts = event.timestamp
        self.conn.execute("INSERT OR IGNORE INTO strikes(key, domain, recipient, reason, at) VALUES (?, ?, ?, ?, ?)",
                          (event.key(recipient), event.domain, recipient, decision.reason, ts))
        times = [r[0] for r in self.conn.execute(
            "SELECT at FROM strikes WHERE domain = ? AND recipient = ? AND reason = ? AND at > ? AND at < ? "
            "ORDER BY at", (event.domain, recipient, decision.reason, ts - decision.window, ts + decision.window))]
        return rules.threshold_reached(times, ts, decision.threshold, decision.window)

    def _record_operator(self, rows: Iterable[tuple[str, str, str, int, int | None, str | None]], source: str,
                         now: int) -> list[str]:
        """Operator suppressions (recipient, domain, reason, since, expires, note): each
        clears the pair's tombstone (the operator has the last word). Returns each one's
        history action."""
        rows = list(rows)
        self.conn.executemany("DELETE FROM tombstones WHERE domain = ? AND recipient = ?",
                              [(domain, recipient) for recipient, domain, *_rest in rows])
        entries, _removed = self._load({(domain, recipient) for recipient, domain, *_rest in rows})
        changed: dict[tuple[str, str], Entry] = {}
        history, actions = [], []
        evidence = (source,) + (None,) * (len(EVIDENCE) - 1)
        for recipient, domain, reason, since, expires, note in rows:
            pair = (domain, recipient)
            entry, action, shown = rules.record(entries.get(pair), reason, source, since, expires, evidence,
                                                note, now)
            entries[pair] = changed[pair] = entry
            history.append((now, action, domain, recipient, reason, source, since, entry.expires, note))
            if shown:
                self._bump(domain)
            actions.append(action)
        self._save(changed, history)
        return actions

    def add_manual(self, recipient: str, domain: str, reason: str, ttl: int | None, note: str | None,
                   now: int, source: str = "manual", since: int | None = None,
                   expires: int | None | bool = False) -> str:
        """An operator's suppression (or an imported row). Clears a tombstone: the operator
        has the last word. Returns "add" or "refresh"."""
        when = now if since is None else since
        if expires is False:
            expires = rules.expiry(when, ttl)
        with self.transaction():
            return self._record_operator([(recipient, domain, reason, when, expires, note)], source, now)[0]

    def import_rows(self, rows: Iterable[tuple[str, str, str, int, int | None]], now: int) -> int:
        """(recipient, domain, reason, since, expires) rows, all in one transaction,
        written a chunk at a time so memory stays flat."""
        count = 0
        rows = iter(rows)
        with self.transaction():
            while chunk := [(*row, None) for row in itertools.islice(rows, 10_000)]:
                self._record_operator(chunk, "import", now)
                count += len(chunk)
        return count

    def remove(self, recipient: str, domain: str, now: int, note: str | None = None) -> bool:
        """Remove a pair and leave a tombstone: an event older than now never re-adds it."""
        with self.transaction():
            row = self.conn.execute("SELECT reason, expires FROM suppressions WHERE domain = ? AND recipient = ?",
                                    (domain, recipient)).fetchone()
            self.conn.execute("INSERT INTO tombstones(domain, recipient, removed_at, note) VALUES (?, ?, ?, ?) "
                              "ON CONFLICT(domain, recipient) DO UPDATE SET removed_at = excluded.removed_at, "
                              "note = excluded.note", (domain, recipient, now, note))
            if row is None:
                return False
            self.conn.execute("DELETE FROM suppressions WHERE domain = ? AND recipient = ?", (domain, recipient))
            self.conn.execute("DELETE FROM strikes WHERE domain = ? AND recipient = ?", (domain, recipient))
            self.conn.execute(_HISTORY, (now, "remove", domain, recipient, row["reason"], "manual", None, None, note))
            self._bump(domain)
            self.add_counters({"removed_total": 1})
            return rules.is_active(row["expires"], now)

    def prune(self, now: int, seen_retention: int = 400 * 86400, history_retention: int | None = None) -> int:
        """Drop expired entries (with an `expire` history row each), old event keys and,
        with `history_retention`, history rows older than that."""
        with self.transaction():
            # the SQL form of `not rules.is_active(expires, now)`
            rows = self.conn.execute("SELECT domain, recipient, reason, expires FROM suppressions "
                                     "WHERE expires IS NOT NULL AND expires <= ?", (now,)).fetchall()
            self.conn.executemany(_HISTORY, [(now, "expire", r["domain"], r["recipient"], r["reason"], None, None,
                                              r["expires"], None) for r in rows])
            self.conn.executemany("DELETE FROM suppressions WHERE domain = ? AND recipient = ?",
                                  [(r["domain"], r["recipient"]) for r in rows])
            for domain in {r["domain"] for r in rows}:
                self._bump(domain)
            self.add_counters({"expired_total": len(rows)})
            self.conn.execute("DELETE FROM seen_events WHERE at < ?", (now - seen_retention,))
            self.conn.execute("DELETE FROM strikes WHERE at < ?", (now - seen_retention,))
            if history_retention is not None:
                self.conn.execute("DELETE FROM history WHERE at < ?", (now - history_retention,))
        return len(rows)

    # ------------------------------------------------------------------ reads
    def get(self, recipient: str, domain: str, now: int) -> dict | None:
        """The active entry for a pair, or for its recipient domain (`@domain`)."""
        for key in (recipient, recipient_domain_entry(recipient)):
            row = self.conn.execute("SELECT * FROM suppressions WHERE domain = ? AND recipient = ? "
                                    "AND (expires IS NULL OR expires > ?)", (domain, key, now)).fetchone()
            if row is not None:
                return entry_dict(row)
        return None

    def iter_entries(self, now: int, domain: str | None = None, reason: str | None = None) -> Iterator[dict]:
        where, args = ["(expires IS NULL OR expires > ?)"], [now]
        if domain is not None:
            where.append("domain = ?")
            args.append(domain)
        if reason is not None:
            where.append("reason = ?")
            args.append(reason)
        cur = self.conn.execute(f"SELECT * FROM suppressions WHERE {' AND '.join(where)} "
                                "ORDER BY domain, recipient", args)
        for row in cur:
            yield entry_dict(row)

    def history(self, recipient: str, domain: str) -> list[dict]:
        return [dict(r) for r in self.conn.execute(
            "SELECT at, action, reason, source, event_time, expires, detail FROM history "
            "WHERE domain = ? AND recipient = ? ORDER BY id", (domain, recipient))]

    def domain_generations(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT domain, generation FROM domains")}

    def domain_summary(self, domain: str, now: int) -> tuple[int, int | None]:
        """(active entries, earliest expiry among them) for one domain."""
        row = self.conn.execute("SELECT COUNT(*), MIN(expires) FROM suppressions WHERE domain = ? "
                                "AND (expires IS NULL OR expires > ?)", (domain, now)).fetchone()
        return row[0], row[1]

    def iter_snapshot(self, domain: str, now: int) -> Iterator[tuple[str, str, int, int | None]]:
        """(recipient, reason, since, expires) of a domain's active entries, in key order,
        streamed from a cursor."""
        return self.conn.execute("SELECT recipient, reason, first_seen, expires FROM suppressions "
                                 "WHERE domain = ? AND (expires IS NULL OR expires > ?) ORDER BY recipient",
                                 (domain, now))

    def stats(self, now: int) -> dict:
        by_domain = {r[0]: r[1] for r in self.conn.execute(
            "SELECT domain, COUNT(*) FROM suppressions WHERE expires IS NULL OR expires > ? "
            "GROUP BY domain ORDER BY domain", (now,))}
        by_reason = {r[0]: r[1] for r in self.conn.execute(
            "SELECT reason, COUNT(*) FROM suppressions WHERE expires IS NULL OR expires > ? "
            "GROUP BY reason ORDER BY reason", (now,))}
        expired = self.conn.execute("SELECT COUNT(*) FROM suppressions WHERE expires IS NOT NULL "
                                    "AND expires <= ?", (now,)).fetchone()[0]

        def stamp(key: str) -> int | None:
            value = self.get_state(key)
            return int(value) if value else None
        return {
            "entries": sum(by_domain.values()), "expired_not_pruned": expired,
            "tombstones": self.conn.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0],
            "by_domain": by_domain, "by_reason": by_reason,
            "last_ingest": stamp("last_ingest"), "last_export": stamp("last_export"),
            "counters": self.counters(),
        }

    def backup(self, target: os.PathLike | str) -> None:
        """A consistent copy (VACUUM INTO) with a store_id of its own: restored later, it
        must not trust the manifest of the newer store it replaces (its domain
        generations would climb back to the same numbers with other entries)."""
        target = Path(target)
        if target.exists():
            raise StoreError(f"{target}: already exists")
        try:
            self.conn.execute("VACUUM INTO ?", (str(target),))
            os.chmod(target, 0o600)
            with contextlib.closing(sqlite3.connect(target)) as copy, copy:
                copy.execute("UPDATE state SET value = ? WHERE key = 'store_id'", (uuid.uuid4().hex,))
        except sqlite3.Error as err:
            raise StoreError(f"{target}: backup failed: {err}") from None


def now_ts() -> int:
    return int(time.time())

