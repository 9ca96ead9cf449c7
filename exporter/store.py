"""The authoritative suppression list: one SQLite file (WAL), documented in docs/store.md so
an end user's panel can read it.

Writes are short IMMEDIATE transactions, so the scheduler, the webhook receiver and a
manual command can share one store. Every change to a domain's active entries bumps
that domain's generation, which is how export knows what to rewrite without reading it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
import os
import sqlite3
import stat
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import sqlite_utils

from . import rules
from .keys import recipient_domain_entry
from .records import Event
from .rules import Decision, Entry

SCHEMA_VERSION = 7
WAL_SIZE_LIMIT = 4 << 20     # bytes of WAL kept after a checkpoint
CACHE_KIB = 32 << 10         # SQLite's page cache per connection (at most; used as the store grows)
EVIDENCE = ("type", "message_id", "code", "enhanced_code", "content", "classification", "nodeid")
_EV_COLS = ", ".join(f"ev_{c}" for c in EVIDENCE)
_ENTRY_COLS = f"reason, source, first_seen, last_seen, expires, count, {_EV_COLS}, note, updated_at"
# Schema 7 keeps an entry in two rows (docs/store.md): `entries`, clustered by (domain,
# recipient), holds what a snapshot and a lookup need; `entry_details`, appended in
# arrival order, holds the rest (a response text is often longer than all of the
# former). A bounce storm's new entries land at random places of the clustered b-tree:
# each batch rewrites pages of it all over the table, now a narrow one. `suppressions` is
# the view that joins the two, with triggers, so a panel reads (and a hand-made row
# writes) the table it always had.
_DETAIL_COLS = f"source, last_seen, count, {_EV_COLS}, note, updated_at, added"
# the view's columns over entries e and entry_details d (the one-row table's, in its
# order) after the domain: the recipient, then an Entry's fields in order, its add row
_PAIR_COLS = (f"e.recipient, e.reason, d.source, e.first_seen, d.last_seen, e.expires, d.count, "
              f"{', '.join(f'd.ev_{c}' for c in EVIDENCE)}, d.note, d.updated_at, d.added")
_SAVE_ENTRY = "REPLACE INTO entries(domain, recipient, reason, first_seen, expires, detail) VALUES (?, ?, ?, ?, ?, ?)"
_SAVE_DETAIL = (f"REPLACE INTO entry_details(id, {_DETAIL_COLS}) "
                f"VALUES ({', '.join('?' * (4 + len(EVIDENCE)))}, NULLIF(?, 0), ?, ?)")   # note bound as 0: NULL
# a stored entry of one domain as _load reads it, and its details' id
_LOAD = (f"SELECT {_PAIR_COLS}, e.detail FROM entries e "
         "JOIN entry_details d ON d.id = e.detail WHERE e.domain = ? AND e.recipient IN (SELECT value FROM json_each(?))")
_HISTORY = ("INSERT INTO history(at, action, domain, recipient, reason, source, event_time, expires, note, actor) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# an entry's changes, with their ids and `indexed` (NULL: the add row its entry reaches).
# CPython's sqlite3 sends every None (and bytes) parameter through its adapter registry, a
# failed attribute lookup that raises and clears an AttributeError: 0.17 us each, a tenth
# of a bounce storm's write path. Columns that are NULL in nearly every row written here
# are bound as 0 and stored as NULL (0 is never a note, an actor or an `indexed` flag).
_HISTORY_ROWS = ("INSERT INTO history(id, at, action, domain, recipient, reason, source, event_time, expires, "
                 "note, actor, indexed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, 0), NULLIF(?, 0), NULLIF(?, 0))")
# the add rows of entries that go away (removed, expired, added afresh) join the pair index
_FILE_ADDED = "UPDATE history SET indexed = 1 WHERE id IN (SELECT value FROM json_each(?))"

# schema 3 -> 4: suppressions and tombstones clustered by (domain, recipient) (WITHOUT
# ROWID: pages fill in arrival order but are read per domain, so a full export of a store
# ingest filled is as fast as one filled in key order), no secondary index on suppressions
# but the recipient one (prune and stats scan), event keys as 64-bit integers that are the
# rowid of seen_events and strikes: a 16-byte key becomes its first 8 bytes, which is what
# Event.key is now. One statement each: executescript would commit the migration.
_MIGRATE_3_TO_4 = (
    "ALTER TABLE suppressions RENAME TO suppressions_3",
    "ALTER TABLE tombstones RENAME TO tombstones_3",
    "ALTER TABLE seen_events RENAME TO seen_events_3",
    "ALTER TABLE strikes RENAME TO strikes_3",
    "DROP INDEX IF EXISTS strikes_pair",
    "DROP INDEX IF EXISTS suppressions_recipient",
    "CREATE TABLE suppressions (domain TEXT NOT NULL, recipient TEXT NOT NULL, reason TEXT NOT NULL, "
    "source TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, expires INTEGER, "
    "count INTEGER NOT NULL, ev_type TEXT, ev_message_id TEXT, ev_code INTEGER, ev_enhanced_code TEXT, "
    "ev_content TEXT, ev_classification TEXT, ev_nodeid TEXT, note TEXT, updated_at INTEGER, "
    "PRIMARY KEY (domain, recipient)) WITHOUT ROWID",
    "CREATE TABLE tombstones (domain TEXT NOT NULL, recipient TEXT NOT NULL, removed_at INTEGER, note TEXT, "
    "PRIMARY KEY (domain, recipient)) WITHOUT ROWID",
    "CREATE TABLE seen_events (key INTEGER PRIMARY KEY, at INTEGER)",
    "CREATE TABLE strikes (key INTEGER PRIMARY KEY, domain TEXT, recipient TEXT, reason TEXT, at INTEGER, "
    "evidence TEXT)",
    f"INSERT INTO suppressions(domain, recipient, {_ENTRY_COLS}) "
    f"SELECT domain, recipient, {_ENTRY_COLS} FROM suppressions_3 ORDER BY domain, recipient",
    "INSERT INTO tombstones SELECT domain, recipient, removed_at, note FROM tombstones_3 ORDER BY domain, recipient",
    "INSERT OR IGNORE INTO seen_events SELECT event_key_64(key), at FROM seen_events_3",
    "INSERT OR IGNORE INTO strikes SELECT event_key_64(key), domain, recipient, reason, at, evidence FROM strikes_3",
    "DROP TABLE suppressions_3", "DROP TABLE tombstones_3", "DROP TABLE seen_events_3", "DROP TABLE strikes_3",
    "CREATE INDEX strikes_pair ON strikes(domain, recipient, at)",
    "CREATE INDEX suppressions_recipient ON suppressions(recipient)",
)

# schema 4 -> 5: no index on suppressions(recipient) (a fourth b-tree written in random
# order for every new entry, 55 B of it): a recipient is looked up in every sending
# domain by one probe of the primary key per row of `domains`, which lists every domain
# that ever had an entry (filled in here for a store written by hand). The event memory
# no longer holds the newest event of each entry: the entry's own evidence and
# last_seen are that event's key (Store._held_key); it goes to seen_events when the
# entry lets go of it (a newer event, a removal).
_MIGRATE_4_TO_5 = (
    "DROP INDEX IF EXISTS suppressions_recipient",
    "INSERT OR IGNORE INTO domains(domain, generation) SELECT DISTINCT domain, 1 FROM suppressions",
)
# schema 6 -> 7: the one-row entries split in two (see _DETAIL_COLS): detail ids in key
# order, both tables filled in key order, the view and its triggers in the table's place
ENTRY_TABLES = (     # schema 7's, as bench/write_layouts.py writes them too
    "CREATE TABLE entries (domain TEXT NOT NULL, recipient TEXT NOT NULL, reason TEXT NOT NULL, "
    "first_seen INTEGER NOT NULL, expires INTEGER, detail INTEGER NOT NULL, PRIMARY KEY (domain, recipient)) "
    "WITHOUT ROWID",
    "CREATE TABLE entry_details (id INTEGER PRIMARY KEY, source TEXT NOT NULL, last_seen INTEGER NOT NULL, "
    "count INTEGER NOT NULL, ev_type TEXT, ev_message_id TEXT, ev_code INTEGER, ev_enhanced_code TEXT, "
    "ev_content TEXT, ev_classification TEXT, ev_nodeid TEXT, note TEXT, updated_at INTEGER, added INTEGER)",
)
_MIGRATE_6_TO_7 = (
    *ENTRY_TABLES,
    f"INSERT INTO entry_details(id, {_DETAIL_COLS}) SELECT ROW_NUMBER() OVER (ORDER BY domain, recipient), "
    f"{_DETAIL_COLS} FROM suppressions ORDER BY domain, recipient",
    "INSERT INTO entries SELECT domain, recipient, reason, first_seen, expires, "
    "ROW_NUMBER() OVER (ORDER BY domain, recipient) FROM suppressions ORDER BY domain, recipient",
    "DROP TABLE suppressions",
    # LEFT JOIN: every entry has its details, and SQLite leaves out the details' b-tree
    # altogether for a query that reads none of their columns
    f"CREATE VIEW suppressions AS SELECT e.domain, {_PAIR_COLS} FROM entries e LEFT JOIN entry_details d ON d.id = e.detail",
    "CREATE TRIGGER suppressions_insert INSTEAD OF INSERT ON suppressions BEGIN "
    "DELETE FROM entry_details WHERE id = "
    "(SELECT detail FROM entries WHERE domain = NEW.domain AND recipient = NEW.recipient); "
    f"INSERT INTO entry_details({_DETAIL_COLS}) VALUES (NEW.source, NEW.last_seen, NEW.count, "
    f"{', '.join(f'NEW.ev_{c}' for c in EVIDENCE)}, NEW.note, NEW.updated_at, NEW.added); "
    "REPLACE INTO entries VALUES (NEW.domain, NEW.recipient, NEW.reason, NEW.first_seen, NEW.expires, "
    "last_insert_rowid()); END",
    "CREATE TRIGGER suppressions_update INSTEAD OF UPDATE ON suppressions BEGIN "
    "UPDATE entry_details SET source = NEW.source, last_seen = NEW.last_seen, count = NEW.count, "
    f"{', '.join(f'ev_{c} = NEW.ev_{c}' for c in EVIDENCE)}, note = NEW.note, updated_at = NEW.updated_at, "
    "added = NEW.added WHERE id = (SELECT detail FROM entries WHERE domain = OLD.domain AND recipient = OLD.recipient); "
    "UPDATE entries SET domain = NEW.domain, recipient = NEW.recipient, reason = NEW.reason, "
    "first_seen = NEW.first_seen, expires = NEW.expires WHERE domain = OLD.domain AND recipient = OLD.recipient; END",
    "CREATE TRIGGER suppressions_delete INSTEAD OF DELETE ON suppressions BEGIN "
    "DELETE FROM entry_details WHERE id = "
    "(SELECT detail FROM entries WHERE domain = OLD.domain AND recipient = OLD.recipient); "
    "DELETE FROM entries WHERE domain = OLD.domain AND recipient = OLD.recipient; END",
)
# an event's key (Event.key) is made of these: the types whose records an entry's evidence
# can come from (an operator's entry has its source there instead)
_EVENT_TYPES = frozenset(rules.REASON_OF_TYPE)


def _event_key_64(key: bytes | int) -> int:
    """An event key of schema 3 or older (16 bytes) as the 64-bit integer Event.key gives now."""
    return key if isinstance(key, int) else int.from_bytes(key[:8], "big", signed=True)


def _pair_of(item: tuple) -> tuple:
    return item[0]


def _history_pair(row: tuple) -> tuple:
    return row[2], row[3]


@contextlib.contextmanager
def _collector_paused():
    """A batch allocates several objects per event and no reference cycles: the cyclic
    collector's passes over them while it runs are pure cost (an eighth of a bounce
    storm's write path at 200k entries). Paused for the batch, if it was running."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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



# ---------------------------------------------------------------------- evidence columns
# Schema 5 keeps the evidence kumod writes in fewer bytes, exactly reversibly (the API, the
# CLI and a panel reading through these rules see the very strings): a record type or
# classification of this list as a one-byte BLOB holding its position (x'01' = "Bounce";
# a BLOB, as SQLite would turn an integer in a TEXT column into text), a 32-hex-digit message id
# as its 16 bytes, a lowercase UUID node id as its 16 bytes. Anything else stays text.
# The list only ever grows at its end: stored numbers must keep their meaning.
NAMES = (
    "Bounce", "OOB", "Expiration", "Feedback", "AdminBounce", "manual", "import", "api", "webhook", "log",
    "Uncategorized", "InvalidRecipient", "BadDomain", "InactiveMailbox", "QuotaIssues", "SpamBlock",
    "SpamContent", "SpamRelated", "PolicyRelated", "ContentRelated", "VirusRelated", "ProhibitedAttachment",
    "AuthenticationFailed", "BadConfiguration", "RelayDenied", "RelayingIssues", "InvalidSender",
    "TooManyRecipients", "BadConnection", "NoAnswerFromHost", "DNSFailure", "MessageExpired",
    "TransientFailure", "ProtocolErrors", "BadDestination", "BadDestinationMailbox", "MailboxFull",
)
# Packed values are bytearrays: CPython's sqlite3 binds a bytearray directly but sends a
# bytes through its adapter registry (see _HISTORY_ROWS); SQLite stores the same BLOB.
_NAME_CODE = {name: bytearray([i + 1]) for i, name in enumerate(NAMES)}


def _unpack_name(value):
    return (NAMES[value[0] - 1] if isinstance(value, (bytes, bytearray)) and len(value) == 1
            and 0 < value[0] <= len(NAMES) else value)


def _pack_hex(value):
    """A message id of 32 lowercase hex digits (kumod's) as its 16 bytes."""
    if type(value) is str and len(value) == 32:
        try:
            packed = bytearray.fromhex(value)
        except ValueError:
            return value
        if packed.hex() == value:         # exactly these digits back (no spaces, no capitals)
            return packed
    return value


def _unpack_hex(value):
    return value.hex() if isinstance(value, (bytes, bytearray)) else value


def _pack_uuid(value):
    """A node id that is a lowercase UUID (kumod's) as its 16 bytes."""
    return _pack_uuid_text(value) if type(value) is str else value


@functools.lru_cache(maxsize=256)    # a cluster has a few nodes; every entry holds one's id
def _pack_uuid_text(value: str):
    if len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-":
        packed = _pack_hex(value.replace("-", ""))
        if type(packed) is bytearray:
            return packed
    return value


def _unpack_uuid(value):
    if isinstance(value, (bytes, bytearray)):
        h = value.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return value


def pack_evidence(evidence: tuple, _code=_NAME_CODE.get) -> tuple:
    """(type, message_id, code, enhanced_code, content, classification, nodeid) as stored."""
    ev_type, message_id, code, enhanced, content, classification, nodeid = evidence
    return (_code(ev_type, ev_type), _pack_hex(message_id), code, enhanced, content,
            _code(classification, classification),
            _pack_uuid(nodeid))


def unpack_evidence(stored) -> tuple:
    ev_type, message_id, code, enhanced, content, classification, nodeid = stored
    return (_unpack_name(ev_type), _unpack_hex(message_id), code, enhanced, content, _unpack_name(classification),
            _unpack_uuid(nodeid))


def entry_dict(row: sqlite3.Row) -> dict:
    """A suppressions row -> the object `check --json` and the read API show."""
    evidence = unpack_evidence([row[f"ev_{c}"] for c in EVIDENCE])
    return {
        "recipient": row["recipient"], "domain": row["domain"], "reason": row["reason"],
        "source": row["source"], "first_seen": row["first_seen"], "last_seen": row["last_seen"],
        "expires": row["expires"], "count": row["count"], "note": row["note"],
        "evidence": dict(zip(EVIDENCE, evidence)),
    }


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path
        self.db = sqlite_utils.Database(conn)
        # per transaction: domains whose generation to bump at commit (one UPSERT each,
        # not one per event)
        self._dirty: set[str] = set()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: os.PathLike | str, *, create: bool = True, busy_timeout: float = 30.0) -> "Store":
        """`create=False` (every command but `init`): a missing, empty or foreign file is a
        StoreError naming the path and `init`, never a new empty store: an empty list
        exported would make kumod stop suppressing everything."""
        path = Path(path)
        if not create:
            _check_is_store_file(path)
        elif not path.exists():
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
                # mode=rw: a store deleted since the check is an error, never a new file
                target = path if create else f"file:{urllib.parse.quote(str(path.absolute()))}?mode=rw"
                conn = sqlite3.connect(target, timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False, uri=not create)
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                _check_is_store(conn, path, create)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                # a batch's pages (its entries written in key order, its history appended)
                # stay in memory until its commit instead of spilling to the WAL midway
                conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                # a long-lived connection (the webhook writer, `run`) truncates the WAL to
                # this each time it starts over after a complete checkpoint
                conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
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
                if "not a database" in str(err):
                    raise _not_a_store(path, "not an SQLite file") from None
                raise StoreError(f"{path}: cannot open store: {err}") from None
            except StoreError:
                conn.close()
                raise

    def close(self) -> None:
        """A TRUNCATE checkpoint first, without waiting: a panel that held a long read
        transaction made the WAL grow; once no reader needs it any more it shrinks to
        nothing here instead of staying at its peak size."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA busy_timeout=0")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
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
                self._create_v1()
            if version <= 1:
                self._migrate_v1_to_v2()
            if version <= 2:
                self._migrate_v2_to_v3()
            if version <= 3:
                self.conn.create_function("event_key_64", 1, _event_key_64, deterministic=True)
                for statement in _MIGRATE_3_TO_4:
                    self.conn.execute(statement)
            if version <= 4:
                for statement in _MIGRATE_4_TO_5:
                    self.conn.execute(statement)
            if version <= 5:
                self._migrate_v5_to_v6()
            for statement in _MIGRATE_6_TO_7:
                self.conn.execute(statement)
            self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _create_v1(self) -> None:
        """The v1 schema: a new store starts as v1 and is migrated like any other."""
        db = self.db
        db["suppressions"].create({
            "domain": str, "recipient": str, "reason": str, "source": str,
            "first_seen": int, "last_seen": int, "expires": int, "count": int,
            **{f"ev_{c}": (int if c == "code" else str) for c in EVIDENCE},
            "note": str, "updated_at": int,
        }, pk=("domain", "recipient"), not_null={"reason", "source", "first_seen", "last_seen", "count"},
            if_not_exists=True)
        db["tombstones"].create({"domain": str, "recipient": str, "removed_at": int, "note": str},
                                pk=("domain", "recipient"), if_not_exists=True)
        db["history"].create({"id": int, "at": int, "action": str, "domain": str, "recipient": str,
                              "reason": str, "source": str, "event_time": int, "expires": int,
                              "detail": str}, pk="id", if_not_exists=True)
        db["seen_events"].create({"key": bytes, "at": int}, pk="key", if_not_exists=True)
        db["strikes"].create({"domain": str, "recipient": str, "reason": str, "at": int, "key": bytes},
                             pk="key", if_not_exists=True)
        db["domains"].create({"domain": str, "generation": int}, pk="domain", if_not_exists=True)
        db["segments"].create({"path": str, "lines": int, "complete": int, "size": int,
                               "updated_at": int}, pk="path", if_not_exists=True)   # replaced in v2
        db["counters"].create({"name": str, "value": int}, pk="name", if_not_exists=True)
        db["state"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
        self.conn.execute("CREATE INDEX IF NOT EXISTS suppressions_expires ON suppressions(expires)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS suppressions_reason ON suppressions(reason)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS history_pair ON history(domain, recipient)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS strikes_pair ON strikes(domain, recipient, at)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS seen_events_at ON seen_events(at)")
        self.conn.execute("INSERT OR IGNORE INTO state(key, value) VALUES ('store_id', ?)", (uuid.uuid4().hex,))

    def _migrate_v1_to_v2(self) -> None:
        """v2: a segment's checkpoint belongs to the file's identity (device, inode, a
        fingerprint of its start), not its path; a strike keeps its evidence, so the
        entry a threshold produces is the same in any arrival order; seen_events.at is
        when the event stops mattering (v1 rows hold the event time, which is what v1
        pruned by)."""
        conn = self.conn
        conn.execute("ALTER TABLE strikes ADD COLUMN evidence TEXT")
        conn.execute("CREATE TABLE segments_v2 (dev INTEGER NOT NULL, ino INTEGER NOT NULL, "
                     "fingerprint BLOB NOT NULL, fingerprint_len INTEGER NOT NULL, path TEXT, "
                     "lines INTEGER, complete INTEGER, size INTEGER, updated_at INTEGER, PRIMARY KEY (dev, ino))")
        for path, lines, complete, size, updated_at in conn.execute(
                "SELECT path, lines, complete, size, updated_at FROM segments").fetchall():
            identity = file_identity(Path(path))   # checkpoints of files still there carry over
            if identity is not None:
                dev, ino, head, _ = identity
                conn.execute("INSERT OR REPLACE INTO segments_v2 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (dev, ino, hashlib.sha256(head).digest(), len(head), path, lines, complete, size,
                              updated_at))
        conn.execute("DROP TABLE segments")
        conn.execute("ALTER TABLE segments_v2 RENAME TO segments")
        # snapshot files an export of this store is about to write, per directory: an
        # export killed before its manifest must not leave files no export may remove
        conn.execute("CREATE TABLE export_files (directory TEXT NOT NULL, name TEXT NOT NULL, "
                     "PRIMARY KEY (directory, name))")

    def _migrate_v2_to_v3(self) -> None:
        """v3: history rows say who made a change (an API token's name, "cli"; NULL for log
        ingestion) and why (the note, formerly `detail`); a recipient can be looked up
        across every sending domain."""
        columns = set(self.db["history"].columns_dict)
        if "note" not in columns:
            self.conn.execute("ALTER TABLE history RENAME COLUMN detail TO note")
        if "actor" not in columns:
            self.conn.execute("ALTER TABLE history ADD COLUMN actor TEXT")
        self.conn.execute("CREATE INDEX IF NOT EXISTS suppressions_recipient ON suppressions(recipient)")

    def _migrate_v5_to_v6(self) -> None:
        """v6: the `add` row of an entry that still exists is reached from the entry
        (suppressions.added holds its id), not from the history's pair index: a bounce
        storm's new entries then append their history rows instead of inserting each into
        a b-tree in random order (a third of the write path's SQLite time at 2M entries).
        Every other row, and the add row of an entry once it goes away, is in the partial
        index (indexed = 1, the default: every row of an older store)."""
        if "added" not in self.db["suppressions"].columns_dict:
            self.conn.execute("ALTER TABLE suppressions ADD COLUMN added INTEGER")
        if "indexed" not in self.db["history"].columns_dict:
            self.conn.execute("ALTER TABLE history ADD COLUMN indexed INTEGER DEFAULT 1")
        self.conn.execute("DROP INDEX IF EXISTS history_pair")
        self.conn.execute("CREATE INDEX history_pair ON history(domain, recipient) WHERE indexed")

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

    # ------------------------------------------------------------------ export files
    def export_files(self, directory: str) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM export_files WHERE directory = ?", (directory,))}

    def set_export_files(self, directory: str, names: Iterable[str], *, replace: bool) -> None:
        """Remember `names` (before writing them); `replace`: these are all there are."""
        with self.transaction():
            if replace:
                self.conn.execute("DELETE FROM export_files WHERE directory = ?", (directory,))
            self.conn.executemany("INSERT OR IGNORE INTO export_files(directory, name) VALUES (?, ?)",
                                  [(directory, n) for n in names])

    # ------------------------------------------------------------------ segments
    def segment_checkpoint(self, identity: "FileIdentity", size: int) -> tuple[int, bool]:
        """(lines consumed, complete) of this file, (0, False) for a file never seen, or
        one that replaced an earlier one (its inode reused, rewritten in place: other
        first bytes, or shorter than it was)."""
        dev, ino, head, _path = identity
        row = self.conn.execute("SELECT fingerprint, fingerprint_len, lines, complete, size FROM segments "
                                "WHERE dev = ? AND ino = ?", (dev, ino)).fetchone()
        if row is None or len(head) < row[1] or hashlib.sha256(head[:row[1]]).digest() != row[0] \
                or (row[4] or 0) > size:
            return 0, False
        return row[2], bool(row[3])

    def set_segment_checkpoint(self, identity: "FileIdentity", lines: int, complete: bool, size: int,
                               now: int) -> None:
        dev, ino, head, path = identity
        self.conn.execute(
            "INSERT INTO segments(dev, ino, fingerprint, fingerprint_len, path, lines, complete, size, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(dev, ino) DO UPDATE SET fingerprint = excluded.fingerprint, "
            "fingerprint_len = excluded.fingerprint_len, path = excluded.path, lines = excluded.lines, "
            "complete = excluded.complete, size = excluded.size, updated_at = excluded.updated_at",
            (dev, ino, hashlib.sha256(head).digest(), len(head), path, lines, int(complete), size, now))

    # ------------------------------------------------------------------ writes
    def _bump(self, domain: str) -> None:
        """The domain's snapshot changed: its generation goes up when the transaction commits."""
        self._dirty.add(domain)

    def _load(self, pairs: Iterable[tuple[str, str]]) -> tuple[dict[tuple[str, str], Entry], dict[tuple[str, str], int],
                                                              dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """The stored entries (expired ones included), the ids of their rows in
        entry_details (`details`), the ids of the add rows they reach (`added`) and
        tombstones' removal times of these (domain, recipient) pairs, looked
        up one sending domain at a time: its recipients travel as one bound JSON array
        (a batch spans far fewer sending domains than pairs; filling a temporary table of
        the pairs cost three times these lookups in a bounce storm)."""
        by_domain: dict[str, list[str]] = {}
        for domain, recipient in pairs:
            by_domain.setdefault(domain, []).append(recipient)
        conn = self.conn
        entries, details, added, removed = {}, {}, {}, {}
        # most stores have no tombstone at all: then this is one lookup, not one per domain
        any_removed = conn.execute("SELECT EXISTS(SELECT 1 FROM tombstones)").fetchone()[0]
        for domain, recipients in by_domain.items():
            wanted = json.dumps(recipients)
            for row in conn.execute(_LOAD, (domain, wanted)):
                pair = (domain, row[0])
                entries[pair] = Entry(row[1], row[2], row[3], row[4], row[5], row[6],
                                      unpack_evidence(row[7:7 + len(EVIDENCE)]), row[-4], row[-3])
                details[pair] = row[-1]
                if row[-2] is not None:
                    added[pair] = row[-2]
            if any_removed:
                for recipient, removed_at in conn.execute(
                        "SELECT recipient, removed_at FROM tombstones WHERE domain = ? "
                        "AND recipient IN (SELECT value FROM json_each(?))", (domain, wanted)):
                    removed[domain, recipient] = removed_at
        return entries, details, added, removed

    def _save(self, entries: dict[tuple[str, str], Entry], details: dict[tuple[str, str], int],
              added: dict[tuple[str, str], int], history: list[tuple], ordered: bool = False) -> None:
        """Write changed entries (in key order: neighbouring rows share pages; a stored
        entry's details in place, a new one's appended, `details` as _load gave them) and their
        history rows, each pair's in the order they happened, the pairs in key order (ids
        within one transaction say nothing across pairs: the rows share their `at`).
        A pair's newest add row is reached from its entry, which holds the row's id, and
        stays out of the pair index; the add row the entry reached before (`added`, as
        _load gave it) joins the index. `ordered`: both are in that order already."""
        if not ordered:
            history.sort(key=_history_pair)     # stable: a pair's rows keep their order
        first_id = self.history_mark() + 1
        newest_add = {(row[2], row[3]): i for i, row in enumerate(history) if row[1] == "add"}
        reached = set(newest_add.values())
        self.conn.executemany(_HISTORY_ROWS, [
            (first_id + i, *row[:8], 0 if row[8] is None else row[8], 0 if row[9] is None else row[9],
             0 if i in reached else 1) for i, row in enumerate(history)])
        superseded = [added[pair] for pair in newest_add if pair in added]
        if superseded:
            self.conn.execute(_FILE_ADDED, (json.dumps(superseded),))
        changed = list(entries.items()) if ordered else sorted(entries.items(), key=_pair_of)
        new_ids = itertools.count(self.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM entry_details").fetchone()[0])
        ids = [details.get(pair) or next(new_ids) for pair, _e in changed]
        self.conn.executemany(_SAVE_DETAIL, [
            (detail, e.source, e.last_seen, e.count, *pack_evidence(e.evidence), 0 if e.note is None else e.note,
             e.updated_at, first_id + newest_add[pair] if pair in newest_add else added.get(pair))
            for detail, (pair, e) in zip(ids, changed)])
        self.conn.executemany(_SAVE_ENTRY, [(*pair, e.reason, e.first_seen, e.expires, detail)
                                            for detail, (pair, e) in zip(ids, changed)])

    def _held_key(self, pair: tuple[str, str], entry: Entry) -> int | None:
        """The key of the event whose evidence the entry holds (its newest: evidence and
        last_seen always come from the same event), or None for an operator's entry. The
        event memory does not keep that key while the entry holds it."""
        ev_type, message_id, code = entry.evidence[0], entry.evidence[1], entry.evidence[2]
        if ev_type not in _EVENT_TYPES:
            return None
        return Event(type=ev_type, recipients=[], domain=pair[0], timestamp=entry.last_seen,
                     message_id=message_id, code=code, enhanced_code=None, content=None,
                     classification=None, nodeid=None).key(pair[1])

    def _known_keys(self, keys: Iterable[int]) -> set[int]:
        """Those of `keys` the event memory holds (the keys travel as one JSON array)."""
        return {r[0] for r in self.conn.execute(
            "SELECT key FROM seen_events WHERE key IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(set(keys))),))}

    def _remember(self, keyed: dict[int, int | None]) -> None:
        """Event keys (-> when each stops mattering) into the event memory, in key order."""
        if keyed:
            self.conn.executemany("INSERT INTO seen_events(key, at) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                                  sorted(keyed.items()))

    def _let_go(self, stored: dict[tuple[str, str], Entry], held: dict[tuple[str, str], int | None],
                remember: dict[int, int | None]) -> None:
        """Entries that changed (`held`: pair -> the key of the event each holds now) let go
        of the key they held before: it joins `remember`, kept as long as the entry's
        expiry (at least as long as its own). A key an entry holds now is not kept apart."""
        for pair, now_held in held.items():
            before = stored.get(pair)
            key = None if before is None else self._held_key(pair, before)
            if key is not None and key != now_held:
                remember.setdefault(key, before.expires)
        for now_held in held.values():
            remember.pop(now_held, None)

    def apply_event(self, event: Event, decision: Decision, source: str, now: int,
                    result: ApplyResult) -> bool:
        """Record one suppressing event for each of its recipients. Call inside transaction().
        False when every recipient's event was seen before: the record is a duplicate."""
        return self.apply_events([(event, decision)], source, now, result)[0]

    @_collector_paused()
    def apply_events(self, pending: Iterable[tuple[Event, Decision]], source: str, now: int,
                     result: ApplyResult) -> list[bool]:
        """Record suppressing events, in order, for each of their recipients, with the
        outcome the same events one by one would have. Call inside transaction().
        Entries are loaded and written once per batch; what happens to each is rules.py's.
        Returns for each event whether it was new: False when every recipient's event
        had been seen before (the record is a duplicate)."""
        pending = list(pending)
        # in key order, each pair's events in arrival order: what happens to a pair depends
        # on its own events alone, and its rows are then written in key order. Sorted by
        # ("domain NUL recipient", arrival index), which is unique: events are never compared
        # (a domain key never holds NUL, so this is (domain, recipient) order).
        items = sorted([(f"{event.domain}\0{recipient}", i, event, decision, event.key(recipient), recipient)
                        for i, (event, decision) in enumerate(pending) for recipient in event.recipients])
        if not items:
            return [False] * len(pending)
        entries, details, added, removed = self._load((item[2].domain, item[5]) for item in items)
        stored = dict(entries)
        # seen before: in the event memory, held by its pair's entry, or earlier in the batch
        seen = self._known_keys(item[4] for item in items)
        seen.update(key for key in (self._held_key(pair, e) for pair, e in stored.items()) if key is not None)
        # an event's key is kept while the event can still matter (until its suppression
        # would expire; NULL: one that never expires, never forgotten)
        remember: dict[int, int | None] = {}
        new_events = [False] * len(pending)
        changed: dict[tuple[str, str], Entry] = {}
        held: dict[tuple[str, str], int | None] = {}     # changed pair -> the key its entry holds
        history: list[tuple] = []
        dirty = self._dirty
        expiry, record = rules.expiry, rules.record
        for _order, i, event, decision, key, recipient in items:
            if key in seen:
                result.duplicates += 1
                continue
            seen.add(key)
            new_events[i] = True
            remember[key] = expiry(event.timestamp, decision.ttl)
            pair = (event.domain, recipient)
            if removed and rules.tombstoned(event.timestamp, removed.get(pair)):
                result.tombstoned += 1   # an operator removed it after this event happened
                continue
            evidence = (event.type, event.message_id, event.code, event.enhanced_code, event.content,
                        event.classification, event.nodeid)
            if decision.threshold > 1:
                suppressions = self._strike(event, decision, recipient, evidence)
                if not suppressions:
                    result.below_threshold += 1
                    continue
            else:
                suppressions = ((event.timestamp, evidence),)
            reason = decision.reason
            for when, strike_evidence in suppressions:
                expires = expiry(when, decision.ttl)
                if rules.stale(expires, now):
                    result.stale += 1        # its suppression would already be over
                    continue
                entry, action, shown = record(entries.get(pair), reason, source, when, expires, strike_evidence,
                                              None, now)
                if entry.evidence is strike_evidence:      # the entry holds this event now
                    held[pair] = key if strike_evidence is evidence else self._held_key(pair, entry)
                elif pair not in held:
                    held[pair] = None if pair not in stored else self._held_key(pair, stored[pair])
                entries[pair] = changed[pair] = entry
                history.append((now, action, pair[0], recipient, reason, source, when, entry.expires, None, None))
                if shown:
                    dirty.add(pair[0])      # its generation goes up at commit (_bump)
                tally = result.added if action == "add" else result.refreshed
                tally[reason] = tally.get(reason, 0) + 1
        self._let_go(stored, held, remember)
        self._remember(remember)
        self._save(changed, details, added, history, ordered=True)
        return new_events

    def _strike(self, event: Event, decision: Decision, recipient: str, evidence: tuple) -> list[tuple[int, tuple]]:
        """Count the event toward its pair's threshold (every strike keeps its evidence);
        the (time, evidence) of each strike that qualifies because of it
        (rules.qualifying_strikes), in time order."""
        ts, window = event.timestamp, decision.window
        key = event.key(recipient)
        self.conn.execute("INSERT OR IGNORE INTO strikes(domain, recipient, reason, at, key, evidence) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (event.domain, recipient, decision.reason, ts, key,
                                                        json.dumps(dict(zip(EVIDENCE, evidence)))))
        rows = self.conn.execute(
            "SELECT at, key, evidence FROM strikes WHERE domain = ? AND recipient = ? AND reason = ? "
            "AND at > ? AND at < ? ORDER BY at", (event.domain, recipient, decision.reason, ts - window, ts + window)
        ).fetchall()
        qualifying = rules.qualifying_strikes([(r[0], r[1]) for r in rows], key, ts, decision.threshold, window)
        out = []
        for i in qualifying:
            at, strike_key, strike_evidence = rows[i]
            if strike_key == key:
                out.append((at, evidence))
            else:
                stored = json.loads(strike_evidence or "{}")
                out.append((at, tuple(stored.get(c) for c in EVIDENCE)))
        return out

    def _record_operator(self, rows: Iterable[tuple[str, str, str, int, int | None, str | None]], source: str,
                         now: int, actor: str | None) -> list[str]:
        """Operator suppressions (recipient, domain, reason, since, expires, note): each
        clears the pair's tombstone (the operator has the last word). Returns each one's
        history action."""
        rows = list(rows)
        self.conn.executemany("DELETE FROM tombstones WHERE domain = ? AND recipient = ?",
                              [(domain, recipient) for recipient, domain, *_rest in rows])
        entries, details, added, _removed = self._load({(domain, recipient) for recipient, domain, *_rest in rows})
        stored = dict(entries)
        held: dict[tuple[str, str], int | None] = {}
        changed: dict[tuple[str, str], Entry] = {}
        history, actions = [], []
        evidence = (source,) + (None,) * (len(EVIDENCE) - 1)
        for recipient, domain, reason, since, expires, note in rows:
            pair = (domain, recipient)
            entry, action, shown = rules.record(entries.get(pair), reason, source, since, expires, evidence,
                                                note, now)
            held[pair] = self._held_key(pair, entry)
            entries[pair] = changed[pair] = entry
            history.append((now, action, domain, recipient, reason, source, since, entry.expires, note, actor))
            if shown:
                self._bump(domain)
            actions.append(action)
        remember: dict[int, int | None] = {}
        self._let_go(stored, held, remember)
        self._remember(remember)
        self._save(changed, details, added, history)
        return actions

    def add_manual(self, recipient: str, domain: str, reason: str, ttl: int | None, note: str | None,
                   now: int, source: str = "manual", since: int | None = None,
                   expires: int | None | bool = False, actor: str | None = None) -> str:
        """An operator's suppression (or an imported row). Clears a tombstone: the operator
        has the last word. Returns "add" or "refresh"."""
        when = now if since is None else since
        if expires is False:
            expires = rules.expiry(when, ttl)
        with self.transaction():
            return self._record_operator([(recipient, domain, reason, when, expires, note)], source, now, actor)[0]

    def import_rows(self, rows: Iterable[tuple], now: int, *, source: str = "import",
                    actor: str | None = None) -> int:
        """(recipient, domain, reason, since, expires[, note]) rows, all in one transaction,
        written a chunk at a time so memory stays flat."""
        count = 0
        rows = iter(rows)
        with self.transaction():
            while chunk := [(recipient, domain, reason, since, expires, note[0] if note else None)
                            for recipient, domain, reason, since, expires, *note in itertools.islice(rows, 10_000)]:
                self._record_operator(chunk, source, now, actor)
                count += len(chunk)
        return count

    def remove(self, recipient: str, domain: str, now: int, note: str | None = None, *,
               actor: str | None = None, source: str = "manual") -> bool:
        """Remove an active entry and leave a tombstone: an event older than now never
        re-adds it. False, and nothing written, when the pair has no active entry (a typo
        must not leave a tombstone that silently blocks a later event)."""
        with self.transaction():
            entries, details, added, _removed = self._load([(domain, recipient)])
            row = entries.get((domain, recipient))
            if row is None or not rules.is_active(row.expires, now):
                return False
            if (domain, recipient) in added:
                self.conn.execute(_FILE_ADDED, (json.dumps([added[domain, recipient]]),))
            # the removed entry's newest event stays known: replayed, it is a duplicate
            remember: dict[int, int | None] = {}
            self._let_go({(domain, recipient): row}, {(domain, recipient): None}, remember)
            self._remember(remember)
            self.conn.execute("INSERT INTO tombstones(domain, recipient, removed_at, note) VALUES (?, ?, ?, ?) "
                              "ON CONFLICT(domain, recipient) DO UPDATE SET removed_at = excluded.removed_at, "
                              "note = excluded.note", (domain, recipient, now, note))
            self.conn.execute("DELETE FROM entry_details WHERE id = ?", (details[domain, recipient],))
            self.conn.execute("DELETE FROM entries WHERE domain = ? AND recipient = ?", (domain, recipient))
            self.conn.execute("DELETE FROM strikes WHERE domain = ? AND recipient = ?", (domain, recipient))
            self.conn.execute(_HISTORY, (now, "remove", domain, recipient, row.reason, source, None, None, note,
                                         actor))
            self._bump(domain)
            self.add_counters({"removed_total": 1})
            return True

    def prune(self, now: int, seen_retention: int = 400 * 86400, history_retention: int | None = None) -> int:
        """Drop expired entries (with an `expire` history row each), the keys of events
        whose suppression has ended (replayed, such an event is stale: it can change no
        entry, history row or snapshot any more; it is counted as a record again),
        strikes older than `seen_retention` and, with `history_retention`, history rows
        older than that."""
        with self.transaction():
            # the SQL form of `not rules.is_active(expires, now)`
            rows = self.conn.execute("SELECT e.domain, e.recipient, e.reason, e.expires, d.added, e.detail "
                                     "FROM entries e JOIN entry_details d ON d.id = e.detail "
                                     "WHERE e.expires IS NOT NULL AND e.expires <= ?", (now,)).fetchall()
            self.conn.execute(_FILE_ADDED, (json.dumps([r["added"] for r in rows if r["added"] is not None]),))
            self.conn.executemany(_HISTORY, [(now, "expire", r["domain"], r["recipient"], r["reason"], None, None,
                                              r["expires"], None, None) for r in rows])
            self.conn.execute("DELETE FROM entry_details WHERE id IN (SELECT value FROM json_each(?))",
                              (json.dumps([r["detail"] for r in rows]),))
            self.conn.execute("DELETE FROM entries WHERE expires IS NOT NULL AND expires <= ?", (now,))
            for domain in {r["domain"] for r in rows}:
                self._bump(domain)
            self.add_counters({"expired_total": len(rows)})
            self.conn.execute("DELETE FROM seen_events WHERE at <= ?", (now,))
            self.conn.execute("DELETE FROM strikes WHERE at < ?", (now - seen_retention,))
            if history_retention is not None:
                # an entry whose add row goes reaches none: no later row may take its id
                self.conn.execute("UPDATE entry_details SET added = NULL WHERE added IN "
                                  "(SELECT id FROM history WHERE at < ? AND indexed IS NULL)",
                                  (now - history_retention,))
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

    def iter_entries(self, now: int, domain: str | None = None, reason: str | None = None, *,
                     recipient: str | None = None, source: str | None = None,
                     after: tuple[str, str] | None = None, limit: int | None = None) -> Iterator[dict]:
        """Active entries in (domain, recipient) order; `after` a (domain, recipient) to
        continue behind (cursor pagination)."""
        filters = {"s.domain = ?": domain, "reason = ?": reason, "recipient = ?": recipient, "source = ?": source}
        where = ["(expires IS NULL OR expires > ?)", *(sql for sql, value in filters.items() if value is not None)]
        args = [now, *(value for value in filters.values() if value is not None)]
        if after is not None:
            where.append("(s.domain, recipient) > (?, ?)")
            args += after
        args.append(-1 if limit is None else limit)      # LIMIT -1: no limit
        # a recipient in every sending domain: one primary-key probe per domain
        source_rows = "suppressions s"
        if recipient is not None and domain is None:
            source_rows = "domains d CROSS JOIN suppressions s ON s.domain = d.domain"
        cur = self.conn.execute(f"SELECT s.* FROM {source_rows} WHERE {' AND '.join(where)} "
                                "ORDER BY s.domain, recipient LIMIT ?", args)
        for row in cur:
            yield entry_dict(row)

    def suppressing_domains(self, recipient: str, now: int) -> list[str]:
        """The sending domains with an active entry for the recipient or its `@domain`."""
        # one primary-key probe per sending domain and key (no index on recipient)
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT d.domain FROM domains d CROSS JOIN suppressions s ON s.domain = d.domain "
            "WHERE s.recipient IN (?, ?) AND (s.expires IS NULL OR s.expires > ?) ORDER BY d.domain",
            (recipient, recipient_domain_entry(recipient), now))]

    def history(self, recipient: str, domain: str) -> list[dict]:
        """The pair's rows, oldest first: those in the pair index and the add row its
        entry reaches."""
        columns = "at, action, reason, source, actor, note, event_time, expires"
        return [dict(r) for r in self.conn.execute(
            f"SELECT {columns} FROM (SELECT id, {columns} FROM history WHERE domain = ? AND recipient = ? "
            f"AND indexed UNION SELECT id, {columns} FROM history WHERE id = (SELECT added FROM suppressions "
            "WHERE domain = ? AND recipient = ?)) ORDER BY id", (domain, recipient, domain, recipient))]

    def domain_generations(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT domain, generation FROM domains")}

    def domain_summary(self, domain: str, now: int) -> tuple[int, int | None]:
        """(active entries, earliest expiry among them) for one domain."""
        row = self.conn.execute("SELECT COUNT(*), MIN(expires) FROM entries WHERE domain = ? "
                                "AND (expires IS NULL OR expires > ?)", (domain, now)).fetchone()
        return row[0], row[1]

    def iter_snapshot(self, domain: str, now: int) -> Iterator[tuple[str, str, int, int | None]]:
        """(recipient, reason, since, expires) of a domain's active entries, in key order,
        streamed from a cursor."""
        return self.conn.execute("SELECT recipient, reason, first_seen, expires FROM entries "
                                 "WHERE domain = ? AND (expires IS NULL OR expires > ?) ORDER BY recipient",
                                 (domain, now))

    def iter_domain_entries(self, domain: str, now: int) -> list[tuple[str, str, int, int | None]]:
        """Like iter_snapshot, for the `@domain` entries alone (keys '@' up to 'A' exclusive:
        a plain recipient key never starts with '@')."""
        return self.conn.execute("SELECT recipient, reason, first_seen, expires FROM entries "
                                 "WHERE domain = ? AND recipient >= '@' AND recipient < 'A' "
                                 "AND (expires IS NULL OR expires > ?) ORDER BY recipient",
                                 (domain, now)).fetchall()

    def history_mark(self) -> int:
        """The newest history row: every change to an entry writes one, so the keys changed
        since a mark are those of the rows after it."""
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM history").fetchone()[0]

    def changed_since(self, domain: str, mark: int) -> set[str]:
        """Recipient keys of `domain` added, refreshed, removed or expired after `mark`."""
        return {r[0] for r in self.conn.execute("SELECT DISTINCT recipient FROM history "
                                                "WHERE id > ? AND domain = ?", (mark, domain))}

    def snapshot_rows(self, domain: str, recipients: Iterable[str], now: int) -> dict[str, tuple]:
        """recipient -> (recipient, reason, since, expires) for those of `recipients` with an
        active entry in `domain`."""
        # the keys travel as one bound JSON array, however many there are
        return {row[0]: tuple(row) for row in self.conn.execute(
            "SELECT recipient, reason, first_seen, expires FROM entries WHERE domain = ? "
            "AND recipient IN (SELECT value FROM json_each(?)) AND (expires IS NULL OR expires > ?)",
            (domain, json.dumps(list(recipients)), now))}

    def stats(self, now: int) -> dict:
        by_domain = {r[0]: r[1] for r in self.conn.execute(
            "SELECT domain, COUNT(*) FROM entries WHERE expires IS NULL OR expires > ? "
            "GROUP BY domain ORDER BY domain", (now,))}
        by_reason = {r[0]: r[1] for r in self.conn.execute(
            "SELECT reason, COUNT(*) FROM entries WHERE expires IS NULL OR expires > ? "
            "GROUP BY reason ORDER BY reason", (now,))}
        expired = self.conn.execute("SELECT COUNT(*) FROM entries WHERE expires IS NOT NULL "
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
        generations would climb back to the same numbers with other entries). The copy
        is created empty, 0600 and exclusively (never through a symlink) before SQLite
        writes its first byte: another local user must never be able to open it."""
        target = Path(target)
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            raise StoreError(f"{target}: already exists") from None
        except OSError as err:
            raise StoreError(f"{target}: cannot create backup: {err.strerror}") from None
        try:
            self.conn.execute("VACUUM INTO ?", (str(target),))
            with contextlib.closing(sqlite3.connect(target)) as copy, copy:
                copy.execute("UPDATE state SET value = ? WHERE key = 'store_id'", (uuid.uuid4().hex,))
        except sqlite3.Error as err:
            with contextlib.suppress(OSError):
                os.unlink(target)
            raise StoreError(f"{target}: backup failed: {err}") from None


def _not_a_store(path: Path, why: str) -> StoreError:
    return StoreError(f"{path}: {why}; not a kumo-suppression store (create one with "
                      "`kumo-suppress init`, or fix [store].path)")


def _check_is_store_file(path: Path) -> None:
    """Before SQLite touches it (connecting would create a missing file, and WAL mode
    would write into an empty one). Only stat() here, never open() and close(): closing
    any descriptor of the file drops every POSIX lock this process holds on it, the
    locks of the server's other SQLite connections included (SQLite then answers "disk
    I/O error" or worse). A file that is not SQLite is refused by the connect itself."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: store does not exist (run `kumo-suppress init` to create it, "
                         "or fix [store].path)") from None
    except OSError as err:
        raise StoreError(f"{path}: cannot open store: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _not_a_store(path, "a directory")
    if st.st_size == 0:
        raise _not_a_store(path, "empty file")


def _check_is_store(conn: sqlite3.Connection, path: Path, create: bool) -> None:
    """An SQLite file is a store when it has our schema version and a store id; `init`
    may also start one in a fresh (table-less) file, never inside someone else's database."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        if tables or not create:
            raise _not_a_store(path, "an SQLite database of something else" if tables else "an empty database")
        return
    try:
        row = conn.execute("SELECT value FROM state WHERE key = 'store_id'").fetchone()
    except sqlite3.OperationalError as err:
        if "no such table" not in str(err):
            raise
        row = None
    if row is None:
        raise _not_a_store(path, "an SQLite database without a store id")


FINGERPRINT_BYTES = 4096
# (device, inode, the file's first FINGERPRINT_BYTES bytes (fewer while it is shorter), path)
FileIdentity = tuple[int, int, bytes, str]


def file_identity(path: Path, fh=None) -> FileIdentity | None:
    """Who a log file is: a checkpoint follows a file moved or hard-linked elsewhere, and
    is not inherited by a file that replaces it under the same name (other inode) or
    rewrites it in place (other first bytes). The store keeps a hash of the first bytes
    and how many there were, so a file that grows keeps its identity."""
    try:
        if fh is None:
            with open(path, "rb") as own:
                return file_identity(path, own)
        st = os.fstat(fh.fileno())
        head = os.pread(fh.fileno(), FINGERPRINT_BYTES, 0)
    except OSError:
        return None
    return st.st_dev, st.st_ino, head, str(path)


def now_ts() -> int:
    return int(time.time())

