"""Feed log records into the store: kumod's log segments, plain JSONL files, stdin, and
(through the same Ingestor) the webhook.

Every source takes one path: record -> Event (records.py) -> Decision (rules.py) ->
store. A segment's checkpoint (lines consumed, complete or not) is committed in the same
transaction as the entries and counters those lines produced, so a crash anywhere
replays nothing twice and skips nothing. Entries also never double by themselves: each
event has a key, so the same record by file and by webhook counts once.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import sqlite3
import sys
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress, count, repeat
from operator import is_, itemgetter
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from .config import Config
from .locking import exclusive
from .records import KNOWN_TYPES, DomainSource, MalformedRecord, Skip, check_record, line_types, parse_line, \
    to_event
from .rules import decide
from .segments import Block, Lines, is_done
from .store import ApplyResult, FileIdentity, Store, StoreError, file_identity, now_ts

log = logging.getLogger("kumo_suppress.ingest")
_FIRST = itemgetter(0)


@dataclass
class IngestResult:
    records: int = 0
    by_type: dict = field(default_factory=dict)
    malformed: int = 0
    oversized: int = 0
    skipped: dict = field(default_factory=dict)       # reason -> count
    duplicate_records: dict = field(default_factory=dict)   # type -> records seen before
    segments: int = 0
    segments_skipped_open: int = 0
    warnings: list = field(default_factory=list)
    applied: ApplyResult = field(default_factory=ApplyResult)

    def merge(self, other: "IngestResult") -> None:
        self.records += other.records
        self.malformed += other.malformed
        self.oversized += other.oversized
        self.segments += other.segments
        self.segments_skipped_open += other.segments_skipped_open
        self.warnings += other.warnings
        for name in ("by_type", "skipped", "duplicate_records"):
            mine = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] = mine.get(k, 0) + v
        self.applied.merge(other.applied)

    def counters(self) -> dict[str, int]:
        """Flat counters persisted in the store (and exposed as metrics)."""
        out = {f"records_total:{k}": v for k, v in self.by_type.items()}
        out.update({f"records_duplicate_total:{k}": v for k, v in self.duplicate_records.items()})
        out.update({f"skipped_total:{k}": v for k, v in self.skipped.items()})
        out.update({f"added_total:{k}": v for k, v in self.applied.added.items()})
        out.update({f"refreshed_total:{k}": v for k, v in self.applied.refreshed.items()})
        out["malformed_total"] = self.malformed + self.oversized
        out["duplicates_total"] = self.applied.duplicates
        return out

    def summary(self) -> str:
        added = sum(self.applied.added.values())
        refreshed = sum(self.applied.refreshed.values())
        text = (f"ingested {self.records} records from {self.segments} segment(s): "
                f"{added} added, {refreshed} refreshed, {self.applied.duplicates} duplicate")
        if self.malformed or self.oversized:
            text += f", {self.malformed + self.oversized} malformed"
        for reason in ("no_domain", "unknown_type"):
            if self.skipped.get(reason):
                text += f", {self.skipped[reason]} {reason.replace('_', ' ')}"
        if self.segments_skipped_open:
            text += f"; {self.segments_skipped_open} open segment(s) left for later"
        return text


@contextlib.contextmanager
def ingest_lock(store_path: Path):
    """One file ingest at a time per store: the second waits for the first, then finds its
    segments done, so the result is exactly one run's. (Webhook records need no lock:
    they carry no checkpoint.)"""
    lock = Path(store_path).with_name(Path(store_path).name + ".ingest.lock")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive(lock, "ingest"))
        except OSError as err:
            # cannot lock here (read-only dir; a symlink planted as the lock, never
            # followed): _commit's checkpoint check still keeps counts exact
            log.warning("%s: cannot take the ingest lock (%s); going on without it", lock, err.strerror)
        yield


class _Superseded(Exception):
    """Another process advanced this segment's checkpoint while we read it."""


class _RecordFailed(Exception):
    """A record the store could not take: write the batch again, one savepoint per record."""


def _store_failure(err: BaseException) -> bool:
    """Errors of the store itself (locked, disk full, I/O, corrupt file): the batch must
    fail and be retried later. Everything else raised while storing one record (a
    UnicodeEncodeError binding a lone surrogate, a RecursionError, a value SQLite refuses)
    is that record's fault."""
    return isinstance(err, (StoreError, OSError, MemoryError, sqlite3.OperationalError, sqlite3.InternalError)) \
        or type(err) is sqlite3.DatabaseError


def _printable(text: str, limit: int = 200) -> str:
    """A message that is safe to log: a lone surrogate would break the log handler itself."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def _malformed(result: "IngestResult", where: str, err: BaseException) -> None:
    result.malformed += 1
    why = str(err) if isinstance(err, MalformedRecord) else f"{type(err).__name__}: {err}"
    log.warning("%s: malformed record skipped: %s", _printable(where, 1000), _printable(why))


class Ingestor:
    def __init__(self, store: Store, config: Config, *, progress: Callable[[str, int], None] | None = None,
                 file_done: Callable[[Path], None] | None = None):
        """`progress(origin, line)` after each committed batch; `file_done(path)` after each
        file of a directory or path list, read or passed over."""
        self.store = store
        self.config = config
        self.source = DomainSource(config.keys.sending_domain, config.policy.domain_meta,
                                   config.keys.aliases or None)
        self.own_queue = config.policy.queue
        self.progress = progress
        self.file_done = file_done
        # False: every line goes through parse_line (the reference the prefilter is
        # tested against; the result is the same either way)
        self.prefilter = True

    # ------------------------------------------------------------------ records
    def _horizon(self) -> int:
        """Records dated after this are malformed: beyond [ingest] max_future_skew."""
        return now_ts() + int(self.config.ingest.max_future_skew)

    def _handle(self, record: dict, result: IngestResult, pending: list, where: str, horizon: int) -> None:
        """One record -> a pending (event, decision), a counted skip, or a malformed record.
        Any failure while turning it into an event (absurd nesting in a header, a type no
        field should have) is that record's alone: counted, logged at `where`, skipped."""
        kind = record["type"]
        # a future (or garbage) type is counted as "other": every distinct string would
        # otherwise become a counter row and a metrics label
        counted = kind if kind in KNOWN_TYPES else "other"
        try:
            event = to_event(record, self.source, self.own_queue)
            if event.timestamp > horizon:
                raise MalformedRecord(f"dated {event.timestamp}, more than [ingest] max_future_skew "
                                      "ahead of this host's clock")
            decision = decide(event, self.config.rules)
        except Skip as skip:
            result.records += 1
            result.by_type[counted] = result.by_type.get(counted, 0) + 1
            if skip.reason != "not_suppressing":
                result.skipped[skip.reason] = result.skipped.get(skip.reason, 0) + 1
            return
        except Exception as err:  # noqa: BLE001 - one bad record never stops the others
            _malformed(result, where, err)
            return
        result.records += 1
        if decision is None:
            result.by_type[counted] = result.by_type.get(counted, 0) + 1
            result.skipped["rule"] = result.skipped.get("rule", 0) + 1
            return
        # counted by type at commit: a record seen before (file and webhook, a hook retry)
        # goes to the duplicates instead
        pending.append((event, decision, counted, where))

    def _commit(self, pending: list, batch: IngestResult, result: IngestResult, source: str,
                checkpoint: tuple | None = None, expect: int | None = None) -> None:
        """One transaction: the batch's entries, its counters and (for a file) its
        checkpoint. Then the batch is folded into `result` and emptied.
        `expect`: the checkpoint this batch starts from; if another process (an
        overlapping cron run) moved it meanwhile, nothing is written: _Superseded.
        A record the store cannot take (text SQLite cannot encode, ...) rolls the batch
        back once; it is then written again with a savepoint per record, so that record
        alone is skipped as malformed and every other one commits."""
        now = now_ts()
        try:
            outcome = self._write(pending, batch, source, now, checkpoint, expect, isolate=False)
        except _RecordFailed:
            outcome = self._write(pending, batch, source, now, checkpoint, expect, isolate=True)
        pending.clear()
        result.merge(outcome)
        batch.__init__()

    def _write(self, pending: list, batch: IngestResult, source: str, now: int, checkpoint: tuple | None,
               expect: int | None, isolate: bool) -> IngestResult:
        store, conn = self.store, self.store.conn
        outcome = IngestResult()
        applied, by_type, duplicated = outcome.applied, outcome.by_type, outcome.duplicate_records
        with store.transaction():
            if checkpoint is not None and expect is not None:
                lines_done, complete = store.segment_checkpoint(checkpoint[0], checkpoint[3])
                if complete or lines_done != expect:
                    raise _Superseded(checkpoint[0])
            if not isolate:
                # the whole batch at once: one load and one write of its entries
                try:
                    news = store.apply_events([(event, decision) for event, decision, _c, _w in pending],
                                              source, now, applied)
                except Exception as err:  # noqa: BLE001 - a store failure, or one record's fault
                    if _store_failure(err):
                        raise
                    raise _RecordFailed() from err
                for (_e, _d, counted, _w), new in zip(pending, news):
                    counts = by_type if new else duplicated
                    counts[counted] = counts.get(counted, 0) + 1
            else:
                for event, decision, counted, where in pending:
                    conn.execute("SAVEPOINT record")
                    try:
                        one = ApplyResult()
                        new = store.apply_event(event, decision, source, now, one)
                        conn.execute("RELEASE record")
                        applied.merge(one)
                    except Exception as err:  # noqa: BLE001 - sorted out below
                        if _store_failure(err):
                            raise
                        conn.execute("ROLLBACK TO record")
                        conn.execute("RELEASE record")
                        outcome.records -= 1      # counted as read in _handle; it is malformed
                        _malformed(outcome, where, err)
                        continue
                    counts = by_type if new else duplicated
                    counts[counted] = counts.get(counted, 0) + 1
            outcome.merge(batch)
            if checkpoint is not None:
                store.set_segment_checkpoint(*checkpoint, now)
            store.add_counters(outcome.counters())
            store.set_state("last_ingest", str(now))
        return outcome

    def ingest_records(self, records: Iterable, source: str = "webhook") -> IngestResult:
        """Already-parsed records (the webhook), in one transaction. An item that is not
        a usable record is malformed (counted, logged with its index, skipped); the others
        commit. StoreError only when the store cannot commit now."""
        result, batch = IngestResult(), IngestResult()
        pending: list = []
        horizon = self._horizon()
        for i, record in enumerate(records):
            where = f"{source} record {i}"
            try:
                check_record(record)
            except MalformedRecord as err:
                _malformed(batch, where, err)
                continue
            self._handle(record, batch, pending, where, horizon)
        self._commit(pending, batch, result, source)
        return result

    # ------------------------------------------------------------------ streams
    def _scan(self, types: list, others: list, base: int, origin: str, batch: IngestResult, pending: list,
              horizon: int) -> None:
        """Part of a Block whose line i is line `base + i + 1` of `origin`: the records
        counted by type are added in bulk, every other non-blank line is parsed and
        handled, in order."""
        by_type = batch.by_type
        for name, found in Counter(types).items():
            if name is not None:
                batch.records += found
                by_type[name] = by_type.get(name, 0) + found
        handle = self._handle
        for at, line in others:
            if not line.strip():
                continue
            try:
                record = parse_line(line)
            except MalformedRecord as err:
                batch.malformed += 1
                log.warning("%s:%d: malformed record skipped: %s", origin, base + at + 1, err)
            else:
                handle(record, batch, pending, f"{origin}:{base + at + 1}", horizon)

    def _blocks(self, lines: Lines) -> Iterator[Block | None]:
        """The blocks of `lines` sorted out by records.line_types (None: an oversized line)."""
        prefilter = self.prefilter
        for block in lines:
            if block is None:
                yield None
                continue
            types = line_types(block) if prefilter else [None] * len(block)
            yield Block(types, [(i, block[i][:-1]) for i in compress(count(), map(is_, types, repeat(None)))])

    def _ingest_lines(self, lines: Lines, origin: str, source: str, skip_lines: int,
                      identity: FileIdentity | None, size: int, final: bool, result: IngestResult) -> None:
        """Lines after `skip_lines`, committed every [ingest] batch_lines with the checkpoint.
        `final`: the file is done, so a torn last line will never be completed."""
        pending: list = []
        batch = IngestResult()
        handle = self._handle
        lineno = 0
        batch_start = skip_lines    # the checkpoint the current batch continues from
        batch_lines = self.config.ingest.batch_lines
        horizon = self._horizon()

        def checkpoint(complete: bool = False):
            return (identity, lineno, complete, size) if identity else None

        def at_batch_end() -> None:
            nonlocal batch_start
            if lineno % batch_lines == 0:
                self._commit(pending, batch, result, source, checkpoint(), batch_start)
                batch_start = lineno
                if self.progress:
                    self.progress(origin, lineno)

        for block in self._blocks(lines):
            if block is None:
                lineno += 1
                if lineno > skip_lines:
                    batch.oversized += 1
                    log.warning("%s:%d: line over %d bytes skipped", origin, lineno, lines.max_line)
                    at_batch_end()
                continue
            types, others = block
            n = len(types)
            if lineno + n <= skip_lines:
                lineno += n
                continue
            base = lineno                 # line i of the block is line base + i + 1
            start = max(0, skip_lines - lineno)
            lineno += start
            k = bisect.bisect_left(others, start, key=_FIRST)
            while start < n:
                # up to the next multiple of batch_lines: a batch commits exactly there
                end = min(n, start + batch_lines - lineno % batch_lines)
                j = bisect.bisect_left(others, end, lo=k, key=_FIRST)
                self._scan(types[start:end] if start or end < n else types, others[k:j], base, origin,
                           batch, pending, horizon)
                lineno += end - start
                start, k = end, j
                at_batch_end()
        if lines.truncated and final:   # an open segment's frame is simply not finished yet
            result.warnings.append(f"{origin}: truncated zstd stream; kept its {lineno} complete line(s)")
            log.warning("%s: truncated zstd stream; kept its %d complete line(s)", origin, lineno)
        if lines.torn:
            # the last line without its newline: a whole record (a hand-made JSONL file,
            # `printf ... | ingest -`, a file nobody writes any more but still writable)
            # is read, even from an open file: a writer appends nothing to a line that
            # already holds a whole JSON object. Half of one is a torn line once the
            # input is finished (kumod crashed mid-write), else it is read next time.
            try:
                record = parse_line(lines.tail) if lines.tail else None
            except MalformedRecord:
                record = None
            if lineno + 1 <= skip_lines:
                lineno += 1                 # that whole record, read by an earlier run
            elif record is not None:
                lineno += 1
                handle(record, batch, pending, f"{origin}:{lineno}", horizon)
            elif final:
                lineno += 1
                batch.malformed += 1
                result.warnings.append(f"{origin}:{lineno}: torn last line skipped")
                log.warning("%s:%d: torn last line skipped", origin, lineno)
        # an open segment's unfinished last line is read next time, from the checkpoint
        self._commit(pending, batch, result, source, checkpoint(final), batch_start)

    def ingest_file(self, path: Path, *, require_done: bool, source: str = "log") -> IngestResult:
        """One segment or JSONL file, from its checkpoint on."""
        result = IngestResult()
        try:
            fh = open(path, "rb")
        except OSError as err:
            result.warnings.append(f"{path}: cannot read: {err.strerror}")
            log.warning("%s: cannot read: %s", path, err.strerror)
            return result
        with fh:
            st = os.fstat(fh.fileno())
            done = is_done(st)
            if require_done and not done:
                result.segments_skipped_open = 1
                return result
            identity = file_identity(path, fh)
            if identity is None:
                result.warnings.append(f"{path}: cannot read")
                log.warning("%s: cannot read", path)
                return result
            skip, complete = self.store.segment_checkpoint(identity, st.st_size)
            if complete:
                return result
            lines = Lines(fh, self.config.ingest.max_line)
            try:
                self._ingest_lines(lines, str(path), source, skip, identity, st.st_size, done, result)
            except _Superseded:
                # another ingest (cron overlap) is reading this segment: it counts the rest
                log.info("%s: another ingest is processing this segment; leaving it to that one", path)
                return result
            result.segments = 1
        return result

    def ingest_stream(self, stream: BinaryIO, origin: str = "<stdin>", source: str = "log") -> IngestResult:
        result = IngestResult()
        lines = Lines(stream, self.config.ingest.max_line)
        self._ingest_lines(lines, origin, source, 0, None, 0, True, result)
        return result

    def ingest_dir(self, root: Path, *, include_open: bool) -> IngestResult:
        result = IngestResult()
        if not root.is_dir():
            result.warnings.append(f"{root}: log directory not found")
            log.warning("%s: log directory not found", root)
            return result
        for path in iter_segments(root):
            result.merge(self.ingest_file(path, require_done=not include_open))
            if self.file_done:
                self.file_done(path)
        return result

    def ingest_paths(self, paths: Iterable[str]) -> IngestResult:
        """`kumo-suppress ingest PATH...`: files (open or done), directories, `-` for stdin.
        Files take the ingest lock; stdin does not (no checkpoint, and a long-running pipe
        must not block the scheduler's ingests)."""
        result = IngestResult()
        for p in paths:
            if p == "-":
                result.merge(self.ingest_stream(sys.stdin.buffer))
                continue
            path = Path(p)
            if path.is_dir():
                with ingest_lock(self.store.path):
                    result.merge(self.ingest_dir(path, include_open=self.config.ingest.include_open))
            elif path.exists():
                with ingest_lock(self.store.path):
                    result.merge(self.ingest_file(path, require_done=False))
                if self.file_done:
                    self.file_done(path)
            else:
                raise FileNotFoundError(f"{path}: no such file or directory")
        return result

    def ingest_configured(self) -> IngestResult:
        result = IngestResult()
        with ingest_lock(self.store.path):
            for root in self.config.ingest.log_dirs:
                result.merge(self.ingest_dir(root, include_open=self.config.ingest.include_open))
        return result


def planned_files(paths: Iterable[str] | None, config: Config) -> list[Path]:
    """The files an ingest of `paths` (None: the configured log dirs) will look at, in
    the order it does: the totals of its progress."""
    roots = config.ingest.log_dirs if paths is None else [Path(p) for p in paths if p != "-"]
    files: list[Path] = []
    for root in roots:
        if root.is_dir():
            files += iter_segments(root)
        elif root.exists():
            files.append(root)
    return files


def iter_segments(root: Path) -> Iterator[Path]:
    """Regular files below `root` (subdirectories too), oldest name first; kumod names
    segments by their start time, so name order is time order within a directory."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                found.append(path)
    found.sort(key=lambda p: (p.name, str(p)))
    return iter(found)
