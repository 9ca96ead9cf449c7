"""The library: one object that the CLI, the HTTP API and any script use.

    from exporter import SuppressionList
    with SuppressionList.open("/etc/kumo-suppression/config.toml") as sl:
        sl.add("User@Example.NET", "Example.COM", ttl="30d", note="ticket 4711")
        sl.check("user@example.net", "example.com")    # the `check --json` object, or None
        sl.remove("user@example.net", "example.com")   # True when an entry was removed
        sl.export()

Every method normalizes keys as the Lua module computes them and refuses what an operator
must not be able to store: a bad argument is ArgumentError, a ValueError("<argument>:
<why>"), and nothing is written. `now` (unix seconds) defaults to the current time. The
rules for what a key, reason, lifetime or note may be live here, not in the layers above.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from . import csvrows
from .config import MAX_DURATION, REASONS, Config, ConfigError, load_config, parse_duration
from .export import ExportResult, export_snapshots
from .ingest import Ingestor, IngestResult, planned_files
from .keys import operator_domain, operator_recipient
from .records import MAX_TIMESTAMP
from .store import Store

log = logging.getLogger("kumo_suppress")

SOURCES = ("log", "webhook", "manual", "import", "api")
MAX_NOTE = 1000          # characters: a ticket reference or a sentence, not a document
MAX_ACTOR = 200
MAX_PAGE = 1000
MAX_REPORTED_ROWS = 100  # bad import rows listed one by one; the rest are counted


class ArgumentError(ValueError):
    """A bad argument, nothing written: the message starts with the argument's name."""


class BadRows(ArgumentError):
    """An import with bad rows (nothing was stored): one line per row, by line number."""

    def __init__(self, problems: list[str], more: int = 0):
        self.problems = problems
        lines = problems + ([f"... and {more} more bad row(s)"] if more else [])
        super().__init__("\n".join(lines))


@dataclass
class IngestProgress:
    """How far an ingest is: files and bytes done of those it found when it started
    (sizes then), and the file at hand."""
    files_total: int
    bytes_total: int
    files_done: int = 0
    bytes_done: int = 0
    current: str = ""


class SuppressionList:
    def __init__(self, config: Config, store: Store):
        self._config = config
        self.store = store

    @classmethod
    def open(cls, config: Config | str | os.PathLike, *, create: bool = True) -> "SuppressionList":
        """`config`: a TOML config's path or a loaded Config. create=True creates or
        migrates the store (`init`); create=False refuses a store that is not there."""
        if not isinstance(config, Config):
            config = load_config(config)
        store = Store.open(config.store.path, create=create, busy_timeout=config.store.busy_timeout)
        return cls(config, store)

    @property
    def config(self) -> Config:
        return self._config

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ one pair
    def add(self, recipient, domain, reason="manual", ttl=None, note=None, *, source="manual",
            actor=None, now=None) -> dict:
        """Suppress a pair (an operator's word: it clears a tombstone); the entry as
        check() returns it. `ttl`: None for the reason's [rules.ttl], "never", a duration
        ("30d") or seconds."""
        rcpt, dom = _recipient(recipient), _domain(domain)
        reason = _reason(reason)
        lifetime = self._lifetime(ttl, reason)
        note, source, actor, now = _note(note), _source(source), _actor(actor), _now(now)
        self.store.add_manual(rcpt, dom, reason, lifetime, note, now, source=source, actor=actor)
        return self.check(rcpt, dom, now=now)

    def lookup(self, recipient, domain, *, now=None) -> dict:
        """Both answers as `check --json` prints them: check()'s object, or {"suppressed":
        False, recipient, domain, other_domains}."""
        rcpt, dom, now = _recipient(recipient), _domain(domain), _now(now)
        return self.check(rcpt, dom, now=now) or {"suppressed": False, "recipient": rcpt, "domain": dom,
                                                  "other_domains": self._other_domains(rcpt, dom, now)}

    def check(self, recipient, domain, *, now=None) -> dict | None:
        """The `check --json` object of the entry that suppresses the pair (its own or its
        recipient domain's), with the other sending domains that suppress the recipient
        ("other_domains"), or None."""
        rcpt, dom, now = _recipient(recipient), _domain(domain), _now(now)
        entry = self.store.get(rcpt, dom, now)
        if entry is None:
            return None
        return {**_suppressed(entry), "other_domains": self._other_domains(rcpt, dom, now)}

    def _other_domains(self, recipient: str, domain: str, now: int) -> list[str]:
        # a typo in the domain looks like this: suppressed, but for another one
        return [d for d in self.store.suppressing_domains(recipient, now) if d != domain]

    def other_domains(self, recipient, *, now=None) -> list[str]:
        """The sending domains that suppress the recipient (or its whole domain)."""
        return self.store.suppressing_domains(_recipient(recipient), _now(now))

    def remove(self, recipient, domain, note=None, *, actor=None, source="manual", now=None) -> bool:
        """True, and a tombstone, when an active entry was removed; False and nothing
        written when the pair has none."""
        rcpt, dom = _recipient(recipient), _domain(domain)
        note, source, actor, now = _note(note), _source(source), _actor(actor), _now(now)
        return self.store.remove(rcpt, dom, now, note, actor=actor, source=source)

    def history(self, recipient, domain) -> list[dict]:
        """Every add, refresh, remove and expire of the pair, oldest first."""
        return self.store.history(_recipient(recipient), _domain(domain))

    # ------------------------------------------------------------------ many
    def add_many(self, items: Iterable[dict], *, source="import", actor=None, now=None) -> int:
        """All or none: items {recipient, domain, reason?, ttl?, note?, since?, expires?};
        the first bad one is ValueError("items[<index>].<field>: <why>")."""
        source, actor, now = _source(source), _actor(actor), _now(now)
        rows = []
        for index, item in enumerate(items):
            try:
                rows.append(self._row(item, now))
            except ValueError as err:
                raise ArgumentError(f"items[{index}].{err}") from None
        return self.store.import_rows(rows, now, source=source, actor=actor)

    def entries(self, *, domain=None, recipient=None, reason=None, source=None, now=None) -> Iterator[dict]:
        """Active entries (as check() shows them, without other_domains) in (domain,
        recipient) order, streamed."""
        filters = _filters(domain, recipient, reason, source)
        return (_suppressed(e) for e in self.store.iter_entries(_now(now), **filters))

    def page(self, *, domain=None, recipient=None, reason=None, source=None, limit=100, cursor=None,
             now=None) -> tuple[list[dict], str | None]:
        """One page of entries() and the cursor of the next (None after the last):
        following the cursors yields every matching entry exactly once."""
        filters = _filters(domain, recipient, reason, source)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ArgumentError(f"limit: {limit!r} is not a whole number from 1 to {MAX_PAGE}")
        after = None if cursor is None else _decode_cursor(cursor)
        items = [_suppressed(e) for e in self.store.iter_entries(_now(now), **filters, after=after,
                                                                 limit=limit + 1)]
        if len(items) <= limit:
            return items, None
        last = items[limit - 1]
        return items[:limit], _encode_cursor(last["domain"], last["recipient"])

    def summary(self, *, now=None) -> dict:
        """Active entries: the total, per sending domain, per reason."""
        stats = self.store.stats(_now(now))
        return {"total": stats["entries"], "domains": stats["by_domain"], "reasons": stats["by_reason"]}

    def stats(self, *, now=None) -> dict:
        return self.store.stats(_now(now))

    # ------------------------------------------------------------------ CSV
    def import_csv(self, stream: IO[str], *, now=None, progress: Callable[[int], None] | None = None) -> int:
        """CSV rows (exporter.csvrows) from a text stream, all or none: every bad row is
        reported (BadRows, an ArgumentError, one line per row) and then nothing is stored.
        `progress(line)` is called as the rows are read."""
        now = _now(now)
        name = getattr(stream, "name", "<csv>")
        problems: list[str] = []
        bad = 0

        def rows():
            nonlocal bad
            for line, item in csvrows.read_rows(stream):
                if progress:
                    progress(line)
                try:
                    if isinstance(item, ValueError):
                        raise item
                    yield self._row(item, now)
                except ValueError as err:
                    bad += 1
                    if len(problems) < MAX_REPORTED_ROWS:
                        problems.append(f"{name}:{line}: {err}")
            if bad:    # raised inside the store's transaction: it rolls every row back
                raise BadRows(problems, bad - len(problems))

        # rows stream from the file into one transaction, so memory stays flat
        return self.store.import_rows(rows(), now)

    def dump_csv(self, stream: IO[str], *, now=None) -> int:
        """Every active entry as a CSV row; the number of rows."""
        return csvrows.write_rows(stream, self.store.iter_entries(_now(now)))

    # ------------------------------------------------------------------ jobs
    def ingest(self, paths: Iterable[str] | None = None, *,
               progress: Callable[[IngestProgress], None] | None = None) -> IngestResult:
        """The configured log dirs, or the given files, directories and `-` (stdin).
        `progress(IngestProgress)` after each committed batch and each file."""
        if paths is not None:
            paths = [str(p) for p in paths]
            for p in paths:
                if p != "-" and not Path(p).exists():
                    raise ArgumentError(f"paths: {p}: no such file or directory")
        ingestor = Ingestor(self.store, self.config, **(self._ingest_progress(paths, progress) if progress else {}))
        result = ingestor.ingest_configured() if paths is None else ingestor.ingest_paths(paths)
        self._write_metrics()
        return result

    def _ingest_progress(self, paths: list[str] | None, progress: Callable[[IngestProgress], None]) -> dict:
        """The Ingestor's callbacks that keep an IngestProgress and hand it on."""
        sizes: dict[Path, int] = {}
        for path in planned_files(paths, self.config):
            try:
                sizes[path] = path.stat().st_size
            except OSError:
                sizes[path] = 0
        state = IngestProgress(len(sizes), sum(sizes.values()))

        def batch_done(origin: str, line: int) -> None:
            state.current = origin
            progress(state)

        def file_done(path: Path) -> None:
            state.files_done += 1
            state.bytes_done += sizes.get(path, 0)
            state.current = str(path)
            progress(state)
        return {"progress": batch_done, "file_done": file_done}

    def ingest_records(self, records: Iterable[dict], *, source="webhook") -> IngestResult:
        """Parsed log records (the webhook's payload), committed in one transaction."""
        return Ingestor(self.store, self.config).ingest_records(records, _source(source))

    def export(self, *, force=False, progress: Callable[[int, int], None] | None = None) -> ExportResult:
        """Write the snapshots; `force` exports even when the snapshot dir was written from another
        store and most of its snapshots would be removed.
        `progress(done, total)` counts domains."""
        result = export_snapshots(self.store, self.config, progress=progress, force=bool(force))
        self._write_metrics()
        return result

    def prune(self, *, now=None) -> int:
        """Drop expired entries (an `expire` history row each); how many."""
        count = self.store.prune(_now(now), history_retention=self.config.store.history_retention)
        self._write_metrics()
        return count

    def backup(self, target: str | os.PathLike) -> None:
        """A consistent copy of the store, 0600, never over an existing file."""
        self.store.backup(target)

    # ------------------------------------------------------------------ rules
    def _lifetime(self, ttl, reason: str) -> int | None:
        if ttl is None:
            return self.config.rules.ttl[reason]
        if isinstance(ttl, str) and ttl.strip().lower() == "never":
            return None
        if isinstance(ttl, bool) or not isinstance(ttl, (str, int, float)):
            raise ArgumentError(f"ttl: {ttl!r} is not a duration")
        try:
            seconds = parse_duration(ttl, "ttl")
        except ConfigError as err:
            raise ArgumentError(str(err)) from None
        if not 1 <= seconds <= MAX_DURATION:      # also NaN
            raise ArgumentError(f"ttl: {ttl!r} is not a positive duration of at most 100 years "
                             "(use \"never\" for no expiry)")
        return int(seconds)

    def _row(self, item, now: int) -> tuple:
        """An add_many / import item -> (recipient, domain, reason, since, expires, note);
        ValueError("<field>: <why>")."""
        if not isinstance(item, dict):
            raise ArgumentError("item: not an object with recipient and domain")
        unknown = set(item) - {"recipient", "domain", "reason", "ttl", "note", "since", "expires"}
        if unknown:
            raise ArgumentError(f"{sorted(unknown)[0]}: unknown field")
        if "recipient" not in item or "domain" not in item:
            raise ArgumentError(f"{'recipient' if 'recipient' not in item else 'domain'}: missing")
        rcpt, dom = _recipient(item["recipient"]), _domain(item["domain"])
        reason = _reason(item.get("reason", "manual"))
        since = _time(item.get("since", now), "since")
        if "expires" in item:
            if item.get("ttl") is not None:
                raise ArgumentError("ttl: give ttl or expires, not both")
            expires = None if item["expires"] is None else _time(item["expires"], "expires")
        else:
            lifetime = self._lifetime(item.get("ttl"), reason)
            expires = None if lifetime is None else since + lifetime
        return rcpt, dom, reason, since, expires, _note(item.get("note"))

    def _write_metrics(self) -> None:
        if self.config.metrics.textfile:
            from .metrics import write_textfile
            write_textfile(self.config.metrics.textfile, self.store)


def _recipient(value, name: str = "recipient") -> str:
    try:
        return operator_recipient(value)
    except ValueError as err:
        raise ArgumentError(f"{name}: {err}") from None


def _domain(value, name: str = "domain") -> str:
    try:
        return operator_domain(value)
    except ValueError as err:
        raise ArgumentError(f"{name}: {err}") from None


def _reason(value) -> str:
    if value not in REASONS:
        raise ArgumentError(f"reason: {value!r} is not one of {', '.join(REASONS)}")
    return value


def _source(value) -> str:
    if value not in SOURCES:
        raise ArgumentError(f"source: {value!r} is not one of {', '.join(SOURCES)}")
    return value


def _text(value, name: str, longest: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ArgumentError(f"{name}: {value!r} is not text")
    if len(value) > longest:
        raise ArgumentError(f"{name}: longer than {longest} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError(f"{name}: not valid text (lone surrogates)") from None
    return value


def _note(value) -> str | None:
    return _text(value, "note", MAX_NOTE)


def _actor(value) -> str | None:
    return _text(value, "actor", MAX_ACTOR)


def _now(value) -> int:
    if value is None:
        return int(time.time())
    return _time(value, "now")


def _time(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < MAX_TIMESTAMP:
        raise ArgumentError(f"{name}: {value!r} is out of range (unix seconds)")
    return int(value)


def _filters(domain, recipient, reason, source) -> dict:
    return {"domain": None if domain is None else _domain(domain),
            "recipient": None if recipient is None else _recipient(recipient),
            "reason": None if reason is None else _reason(reason),
            "source": None if source is None else _source(source)}


def _suppressed(entry: dict) -> dict:
    return {"suppressed": True, **entry}


def _encode_cursor(domain: str, recipient: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([domain, recipient]).encode()).decode().rstrip("=")


def _decode_cursor(cursor) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)
    except (TypeError, ValueError, binascii.Error):
        after = None
    if not (isinstance(after, list) and len(after) == 2 and all(isinstance(p, str) for p in after)):
        raise ArgumentError(f"cursor: {cursor!r} is not a cursor this API returned")
    return after[0], after[1]
