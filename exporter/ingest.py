"""Feed log records into the store: kumod's log segments, plain JSONL files, stdin, and
(through the same Ingestor) the webhook.

Every source takes one path: record -> Event (records.py) -> Decision (rules.py) ->
store. A segment's checkpoint (lines consumed, complete or not) is committed in the same
transaction as the entries and counters those lines produced, so a crash anywhere
replays nothing twice and skips nothing. Entries also never double by themselves: each
event has a key, so the same record by file and by webhook counts once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import zstandard

from .config import Config
from .locking import exclusive
from .records import KNOWN_TYPES, SUPPRESSING_TYPES, DomainSource, MalformedRecord, Skip, check_record, \
    parse_line, to_event
from .rules import decide
from .store import ApplyResult, Store, now_ts

log = logging.getLogger("kumo_suppress.ingest")

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_CHUNK = 1 << 20
ZSTD_FEED = 256            # compressed bytes per decompress call (bounds a zstd bomb's output)
# Records of these types never suppress: a line that plainly is one is counted without
# being parsed (kumod writes `{"type":"Delivery",...` first), which is most of the log.
# The price: a broken line of that shape counts as a record, not as malformed; it could
# never have suppressed anything. They are found and counted a block of lines at a time
# (one regex pass gives every line's type), so no Python code runs per passed-over line.
_PASS_OVER = {t.encode(): t for t in KNOWN_TYPES - SUPPRESSING_TYPES}
# after each newline: the type of a line that starts `{"type":"<name>"`, else b""
_LINE_TYPE = re.compile(rb'\n(?:\{"type":"([^"\\\n]*)")?')


@dataclass
class IngestResult:
    records: int = 0
    by_type: dict = field(default_factory=dict)
    malformed: int = 0
    oversized: int = 0
    skipped: dict = field(default_factory=dict)       # reason -> count
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
        for name in ("by_type", "skipped"):
            mine = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] = mine.get(k, 0) + v
        self.applied.merge(other.applied)

    def counters(self) -> dict[str, int]:
        """Flat counters persisted in the store (and exposed as metrics)."""
        out = {f"records_total:{k}": v for k, v in self.by_type.items()}
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
        except OSError:
            pass   # cannot lock here; _commit's checkpoint check still keeps counts exact
        yield


class _Superseded(Exception):
    """Another process advanced this segment's checkpoint while we read it."""


def is_done(st: os.stat_result) -> bool:
    """kumod marks a closed segment by clearing every write bit."""
    return stat.S_IMODE(st.st_mode) & 0o222 == 0


class _Lines:
    """Complete lines of a zstd (kumod segment) or plain stream, tolerant of truncation
    and bounded in memory: a line longer than `max_line` is never buffered; it comes out
    as None so line numbers, and with them checkpoints, stay exact."""

    def __init__(self, stream: BinaryIO, max_line: int):
        self.stream = stream
        self.max_line = max_line
        self.torn = False          # the data ended inside a line
        self.tail = b""            # that last, unterminated line (unless oversized)
        self.truncated = False     # the zstd stream ended early or is corrupt

    def _chunks(self) -> Iterator[bytes]:
        data = self.stream.read(READ_CHUNK)
        if not data.startswith(ZSTD_MAGIC):
            while data:
                yield data
                data = self.stream.read(READ_CHUNK)
            return
        dobj = zstandard.ZstdDecompressor().decompressobj()
        fed = False                 # has the current frame's decompressor seen input?
        pending: list[bytes] = []   # small outputs gathered into chunks of ~READ_CHUNK
        size = 0
        while data:
            pos, restart = 0, False
            while pos < len(data):
                # a few hundred compressed bytes per call: zstd expands at most ~32768:1
                # (RLE blocks), so even a hostile stream yields a bounded piece at a time
                piece = data[pos:pos + ZSTD_FEED]
                pos += len(piece)
                try:
                    out = dobj.decompress(piece)
                except zstandard.ZstdError:
                    self.truncated = True
                    if pending:
                        yield b"".join(pending)
                    return
                fed = True
                if out:
                    pending.append(out)
                    size += len(out)
                    if size >= READ_CHUNK:
                        yield b"".join(pending)
                        pending, size = [], 0
                if dobj.eof:        # a segment may hold several frames
                    data = dobj.unused_data + data[pos:]
                    dobj = zstandard.ZstdDecompressor().decompressobj()
                    fed, restart = False, True
                    break
            if restart and data:
                continue
            data = self.stream.read(READ_CHUNK)
        if pending:
            yield b"".join(pending)
        if fed and not dobj.eof:
            self.truncated = True

    def __iter__(self) -> Iterator[list[bytes] | None]:
        """Blocks of complete lines (a list each, in order), and None for each line over
        max_line, in its place."""
        buf = b""
        skipping = False           # inside an oversized line: drop up to its newline
        max_line = self.max_line
        for chunk in self._chunks():
            buf += chunk
            end = buf.rfind(b"\n")
            if end >= 0:
                lines = buf[:end].split(b"\n")
                buf = buf[end + 1:]
                if skipping:
                    del lines[0]   # the end of the oversized line already reported
                    skipping = False
                if lines and max(map(len, lines)) > max_line:
                    for line in lines:
                        yield [line] if len(line) <= max_line else None
                elif lines:
                    yield lines
            if len(buf) > max_line:
                if not skipping:
                    yield None
                skipping = True
                buf = b""
        self.torn = bool(buf) or skipping
        self.tail = buf


class Ingestor:
    def __init__(self, store: Store, config: Config, *, progress: Callable[[str, int], None] | None = None):
        self.store = store
        self.config = config
        self.source = DomainSource(config.keys.sending_domain, config.policy.domain_meta,
                                   config.keys.aliases or None)
        self.own_queue = config.policy.queue
        self.progress = progress

    # ------------------------------------------------------------------ records
    def _handle(self, record: dict, result: IngestResult, pending: list) -> None:
        kind = record["type"]
        # a future (or garbage) type is counted as "other": every distinct string would
        # otherwise become a counter row and a metrics label
        counted = kind if kind in KNOWN_TYPES else "other"
        result.records += 1
        result.by_type[counted] = result.by_type.get(counted, 0) + 1
        try:
            event = to_event(record, self.source, self.own_queue)
        except Skip as skip:
            if skip.reason != "not_suppressing":
                result.skipped[skip.reason] = result.skipped.get(skip.reason, 0) + 1
            return
        decision = decide(event, self.config.rules)
        if decision is None:
            result.skipped["rule"] = result.skipped.get("rule", 0) + 1
            return
        pending.append((event, decision))

    def _commit(self, pending: list, batch: IngestResult, result: IngestResult, source: str,
                checkpoint: tuple | None = None, expect: int | None = None) -> None:
        """One transaction: the batch's entries, its counters and (for a file) its
        checkpoint. Then the batch is folded into `result` and emptied.
        `expect`: the checkpoint this batch starts from; if another process (an
        overlapping cron run) moved it meanwhile, nothing is written: _Superseded."""
        now = now_ts()
        applied = batch.applied
        with self.store.transaction():
            if checkpoint is not None and expect is not None:
                lines_done, complete = self.store.segment_checkpoint(checkpoint[0])
                if complete or lines_done != expect:
                    raise _Superseded(checkpoint[0])
            self.store.apply_events(pending, source, now, applied)
            if checkpoint is not None:
                self.store.set_segment_checkpoint(*checkpoint, now)
            self.store.add_counters(batch.counters())
            self.store.set_state("last_ingest", str(now))
        pending.clear()
        result.merge(batch)
        batch.__init__()

    def ingest_records(self, records: Iterable[dict], source: str = "webhook") -> IngestResult:
        """Already-parsed records (the webhook): all of them commit in one transaction,
        or none does. MalformedRecord if any item is not a record."""
        result, batch = IngestResult(), IngestResult()
        pending: list = []
        for record in records:
            check_record(record)
            self._handle(record, batch, pending)
        self._commit(pending, batch, result, source)
        return result

    # ------------------------------------------------------------------ streams
    def _scan(self, lines: list[bytes], lineno: int, origin: str, batch: IngestResult, pending: list) -> None:
        """Complete lines that follow line `lineno`: passed-over records are counted in
        bulk, every other non-blank line is parsed and handled, in order."""
        block = b"\n" + b"\n".join(lines)
        types = _LINE_TYPE.findall(block)          # one per line
        by_type = batch.by_type
        if block.count(b"}\n") + block.endswith(b"}") == len(lines):
            # every line ends with "}" (kumod's lines do): a line is passed over by its type
            others = []
            for kind, found in Counter(types).items():
                name = _PASS_OVER.get(kind)
                if name is not None:
                    batch.records += found
                    by_type[name] = by_type.get(name, 0) + found
                    continue
                at = -1
                for _ in range(found):
                    at = types.index(kind, at + 1)
                    others.append(at)
            others.sort()
        else:
            others = []
            for at, (kind, line) in enumerate(zip(types, lines)):
                name = _PASS_OVER.get(kind)
                if name is not None and line.endswith(b"}"):
                    batch.records += 1
                    by_type[name] = by_type.get(name, 0) + 1
                else:
                    others.append(at)
        handle = self._handle
        for at in others:
            line = lines[at]
            if not line.strip():
                continue
            try:
                record = parse_line(line)
            except MalformedRecord as err:
                batch.malformed += 1
                log.warning("%s:%d: malformed record skipped: %s", origin, lineno + at + 1, err)
            else:
                handle(record, batch, pending)

    def _ingest_lines(self, lines: _Lines, origin: str, source: str, skip_lines: int,
                      checkpoint_key: str | None, size: int, final: bool, result: IngestResult) -> None:
        """Lines after `skip_lines`, committed every [ingest] batch_lines with the checkpoint.
        `final`: the file is done, so a torn last line will never be completed."""
        pending: list = []
        batch = IngestResult()
        handle = self._handle
        lineno = 0
        batch_start = skip_lines    # the checkpoint the current batch continues from
        batch_lines = self.config.ingest.batch_lines

        def checkpoint(complete: bool = False):
            return (checkpoint_key, lineno, complete, size) if checkpoint_key else None

        def at_batch_end() -> None:
            nonlocal batch_start
            if lineno % batch_lines == 0:
                self._commit(pending, batch, result, source, checkpoint(), batch_start)
                batch_start = lineno
                if self.progress:
                    self.progress(origin, lineno)

        for block in lines:
            if block is None:
                lineno += 1
                if lineno > skip_lines:
                    batch.oversized += 1
                    log.warning("%s:%d: line over %d bytes skipped", origin, lineno, lines.max_line)
                    at_batch_end()
                continue
            if lineno + len(block) <= skip_lines:
                lineno += len(block)
                continue
            if lineno < skip_lines:
                block = block[skip_lines - lineno:]
                lineno = skip_lines
            while block:
                # up to the next multiple of batch_lines: a batch commits exactly there
                part = block[:batch_lines - lineno % batch_lines]
                block = block[len(part):]
                self._scan(part, lineno, origin, batch, pending)
                lineno += len(part)
                at_batch_end()
        if lines.truncated and final:   # an open segment's frame is simply not finished yet
            result.warnings.append(f"{origin}: truncated zstd stream; kept its {lineno} complete line(s)")
            log.warning("%s: truncated zstd stream; kept its %d complete line(s)", origin, lineno)
        if lines.torn and final:
            # the last line of a finished input without its newline: a whole record (a
            # hand-made JSONL file, `printf ... | ingest -`) is read; half of one (kumod
            # crashed mid-write) is a torn line
            lineno += 1
            try:
                record = parse_line(lines.tail) if lines.tail else None
            except MalformedRecord:
                record = None
            if record is None:
                batch.malformed += 1
                result.warnings.append(f"{origin}:{lineno}: torn last line skipped")
                log.warning("%s:%d: torn last line skipped", origin, lineno)
            else:
                handle(record, batch, pending)
        # an open segment's unfinished last line is read next time, from the checkpoint
        self._commit(pending, batch, result, source, checkpoint(final), batch_start)

    def ingest_file(self, path: Path, *, require_done: bool, source: str = "log") -> IngestResult:
        """One segment or JSONL file, from its checkpoint on."""
        result = IngestResult()
        key = str(path.resolve())
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
            skip, complete = self.store.segment_checkpoint(key)
            if complete:
                return result
            lines = _Lines(fh, self.config.ingest.max_line)
            try:
                self._ingest_lines(lines, str(path), source, skip, key, st.st_size, done, result)
            except _Superseded:
                # another ingest (cron overlap) is reading this segment: it counts the rest
                log.info("%s: another ingest is processing this segment; leaving it to that one", path)
                return result
            result.segments = 1
        return result

    def ingest_stream(self, stream: BinaryIO, origin: str = "<stdin>", source: str = "log") -> IngestResult:
        result = IngestResult()
        lines = _Lines(stream, self.config.ingest.max_line)
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
            else:
                raise FileNotFoundError(f"{path}: no such file or directory")
        return result

    def ingest_configured(self) -> IngestResult:
        result = IngestResult()
        with ingest_lock(self.store.path):
            for root in self.config.ingest.log_dirs:
                result.merge(self.ingest_dir(root, include_open=self.config.ingest.include_open))
        return result


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
