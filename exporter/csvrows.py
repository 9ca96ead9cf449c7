"""The CSV row format of `import` and `dump`: recipient,domain[,reason,since,expires].

`since`/`expires` are unix seconds or ISO 8601 dates (UTC unless they say otherwise); an
empty `expires` means never, a missing one the reason's [rules.ttl]. Spreadsheets are
where these files are edited, so both directions take care of them: a UTF-8 BOM (Excel's
"CSV UTF-8") and a header row are accepted, and a dumped cell that a spreadsheet would
run as a formula (leading =, +, -, @, tab or CR; `@bad.example` is one) gets a leading
`'`, which import takes off again.
"""

from __future__ import annotations

import csv
import datetime as dt
from typing import IO, Iterable, Iterator

COLUMNS = ("recipient", "domain", "reason", "since", "expires")
_FORMULA_LEAD = "=+-@\t\r"
_USAGE = "expected recipient,domain[,reason,since,expires]"


def _formula_leading(text: str) -> bool:
    # the first character after any quotes already there: escaping "'=x" too keeps the
    # round trip exact for a value that really starts with a quote
    return text.lstrip("'")[:1] in tuple(_FORMULA_LEAD)


def escape_cell(text: str) -> str:
    return "'" + text if _formula_leading(text) else text


def unescape_cell(text: str) -> str:
    return text[1:] if text.startswith("'") and _formula_leading(text) else text


def parse_time(text: str, what: str) -> int:
    """Unix seconds or an ISO 8601 date -> unix seconds; ValueError naming `what`."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what}: {text!r} is neither unix seconds nor an ISO 8601 date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())


def read_rows(stream: IO[str]) -> Iterator[tuple[int, dict | ValueError]]:
    """(line, item) per data row: an item is a dict of the columns present (as the
    library's add_many takes them), or the ValueError that says what is wrong with the
    row, so that a caller can report every bad row, not only the first."""
    reader = csv.reader(stream)
    first = True
    for row in reader:
        if first:
            first = False
            if row and row[0].startswith("\ufeff"):
                row[0] = row[0][1:]
            if row and row[0].strip().lower() == COLUMNS[0]:
                continue
        if not any(cell.strip() for cell in row):
            continue
        yield reader.line_num, _item(row)


def _item(row: list[str]) -> dict | ValueError:
    if not 2 <= len(row) <= len(COLUMNS):
        return ValueError(_USAGE)
    cells = [unescape_cell(cell) for cell in row]
    item: dict = {"recipient": cells[0], "domain": cells[1]}
    try:
        if len(cells) > 2 and cells[2].strip():
            item["reason"] = cells[2].strip()
        if len(cells) > 3 and cells[3].strip():
            item["since"] = parse_time(cells[3], "since")
        if len(cells) > 4:
            item["expires"] = parse_time(cells[4], "expires") if cells[4].strip() else None
    except ValueError as err:
        return err
    return item


def write_rows(stream: IO[str], entries: Iterable[dict]) -> int:
    """A header and one row per entry (as the library's entries() gives them)."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for entry in entries:
        writer.writerow([escape_cell(entry["recipient"]), escape_cell(entry["domain"]), entry["reason"],
                         entry["first_seen"], "" if entry["expires"] is None else entry["expires"]])
        count += 1
    return count
