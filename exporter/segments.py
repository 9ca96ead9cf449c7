"""Reading kumod's log segments (zstd, several frames allowed) and plain JSONL: complete
lines, a block at a time, in bounded memory, tolerant of truncation and corruption.

A block is the complete lines of about READ_CHUNK decompressed bytes, cut with one
`split` per chunk: no per-line Python code runs here, and no chunk is copied again to
find its lines. A line longer than `max_line` is never buffered whole: it comes out as
None in its place, so line numbers (and with them the checkpoints) stay exact.
"""

from __future__ import annotations

import os
import stat
from io import BytesIO
from typing import BinaryIO, Iterator, NamedTuple

import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_CHUNK = 1 << 20
ZSTD_FEED = 256            # compressed bytes per decompress call (bounds a zstd bomb's output)


def is_done(st: os.stat_result) -> bool:
    """kumod marks a closed segment by clearing every write bit."""
    return stat.S_IMODE(st.st_mode) & 0o222 == 0


class Lines:
    """Blocks of complete lines of a zstd (kumod segment) or plain stream.

    After iteration: `torn` (the data ended inside a line), `tail` (that last,
    unterminated line, unless oversized) and `truncated` (the zstd stream ended early
    or is corrupt)."""

    def __init__(self, stream: BinaryIO, max_line: int):
        self.stream = stream
        self.max_line = max_line
        self.torn = False
        self.tail = b""
        self.truncated = False

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
        """Blocks of complete lines (a list each, in order, every line with its b"\\n"),
        and None for each line over max_line, in its place. (BytesIO.readlines cuts a
        chunk at memchr speed; bytes.split looks at every byte in Python's own loop.)"""
        tail = b""                 # the unterminated end of the chunks so far
        skipping = False           # inside an oversized line: drop up to its newline
        max_line = self.max_line
        for chunk in self._chunks():
            if skipping:
                cut = chunk.find(b"\n")
                if cut < 0:
                    continue
                chunk = chunk[cut + 1:]   # the end of the oversized line, already reported
                skipping = False
            lines = BytesIO(chunk).readlines()
            if not lines:
                continue
            if tail:
                lines[0] = tail + lines[0]
            tail = b"" if lines[-1].endswith(b"\n") else lines.pop()
            if lines:
                if max(map(len, lines)) > max_line + 1:
                    for line in lines:
                        yield [line] if len(line) <= max_line + 1 else None
                else:
                    yield lines
            if len(tail) > max_line:
                yield None
                skipping = True
                tail = b""
        self.torn = bool(tail) or skipping
        self.tail = tail


class Block(NamedTuple):
    """A block of complete lines, sorted out by the reader: `types[i]` is the type of
    line i when it is a record counted without being parsed, else None; `others` holds
    (i, line without its newline) for every line with None, in order."""
    types: list
    others: list

