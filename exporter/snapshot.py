"""The snapshot format, in one place: what `export` writes, what the Lua module reads and
what `validate` checks (docs/snapshot-format.md describes it for readers of the files).

A sending domain's entries are one file, `<domain>.json` (or `.toml`), while they number
at most `[export].shard_entries`; above that the same name holds an INDEX (the `@domain`
entries and the shard count) and the plain entries go to `<domain>_shard-KKKK-of-NNNN.json`
by the hash of their key, so one change rewrites one shard, not the domain. With
`[export].hash_recipients` every key is written as the sha256 hex of its bytes.

The JSON and TOML entry lines are written by hand (no json.dumps per entry) because an
export of millions of entries spends its time here; tests/test_export_format.py pins them
to json.dumps' bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Iterable

import tomli_w

from .keys import is_plain_hostname, recipient_domain_entry, snapshot_filename

FORMAT = "kumo-suppression-snapshot"
VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "kumo-suppression-manifest"
MANIFEST_VERSION = 1
HASH = "sha256"
FORMATS = ("json", "toml")
MAX_SHARDS = 8192              # shard numbers have four digits in the file name
# a new layout's shards hold at most shard_entries / SHARD_FILL entries (12,500 by default):
# kumod loads a shard the first time a recipient hashes into it, so its size is the
# latency of that first message
SHARD_FILL = 4
_SEPARATOR = {"json": ",\n", "toml": "\n"}
# `example.com.json`, `example.com_shard-0007-of-0128.json`: `_` never occurs in a plain
# hostname, so a shard name can never be another domain's file
_FILE_NAME = re.compile(r"^(?P<domain>[^_/]+?)(?:_shard-(?P<shard>\d{4})-of-(?P<shards>\d{4}))?"
                        r"\.(?P<ext>json|toml)$")

Row = tuple  # (recipient key, reason, since, expires or None)


class SnapshotError(Exception):
    """A snapshot file that cannot be read as one."""


# ---------------------------------------------------------------------- keys and names

def key_digest(key: str) -> str:
    """The lowercase sha256 hex of a recipient key's UTF-8 bytes (kumo.digest.sha256(key).hex)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def shard_of_digest(digest: str, shards: int) -> int:
    """The shard of a key from its digest: the first 32 bits, big-endian, modulo `shards`."""
    return int(digest[:8], 16) % shards


def shard_of(key: str, shards: int) -> int:
    return shard_of_digest(key_digest(key), shards)


def shard_count(count: int, shard_entries: int, current: int = 1) -> int:
    """How many files a domain of `count` active entries is written as: 1 (the single
    file) up to `shard_entries`, else the smallest power of two >= 2 whose shards hold at
    most a SHARD_FILL-th of `shard_entries` each: the first lookup in a shard loads one
    small file, and one new entry rewrites a small part of the domain. The current count
    is kept while its shards stay between a quarter of that size and that size, so a
    domain hovering around a boundary does not rewrite all its shards at every export."""
    if count <= shard_entries:
        return 1
    per_shard = shard_entries / SHARD_FILL
    if current >= 2 and per_shard / 4 <= count / current <= per_shard:
        return current
    shards = 2
    while count / shards > per_shard and shards < MAX_SHARDS:
        shards *= 2
    return shards


def shard_filename(domain: str, shard: int, shards: int, fmt: str) -> str:
    return f"{domain}_shard-{shard:04d}-of-{shards:04d}.{fmt}"


@dataclass(frozen=True)
class FileName:
    domain: str
    ext: str
    shard: int | None = None       # None: a single file or an index
    shards: int | None = None


def parse_filename(name: str) -> FileName | None:
    """What a snapshot file name says, or None for any other name (the manifest too)."""
    m = _FILE_NAME.match(name)
    if not m or name == MANIFEST or not is_plain_hostname(m.group("domain")):
        return None
    if m.group("shard") is None:
        return FileName(m.group("domain"), m.group("ext"))
    shard, shards = int(m.group("shard")), int(m.group("shards"))
    if not (2 <= shards <= MAX_SHARDS and shards & (shards - 1) == 0 and shard < shards):
        return None
    return FileName(m.group("domain"), m.group("ext"), shard, shards)


def snapshot_files(directory: Path) -> list[Path]:
    """Every snapshot file (single, index and shard) in a directory."""
    return sorted(p for p in directory.iterdir()
                  if parse_filename(p.name) is not None and p.is_file())


# ---------------------------------------------------------------------- writing

def header(domain: str, generated_at: str, count: int, *, hashed: bool = False,
           domain_entries: int | None = None, shard: int | None = None,
           shards: int | None = None) -> dict:
    """The top-level fields of a file: `shards` alone marks an index, `shard` and
    `shards` a shard."""
    head = {"format": FORMAT, "version": VERSION, "domain": domain, "generated_at": generated_at,
            "count": count}
    if hashed:
        head["hash"] = HASH
    if domain_entries is not None:
        head["domain_entries"] = domain_entries
    if shard is not None:
        head["shard"] = shard
    if shards is not None:
        head["shards"] = shards
    return head


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


_ENTRY = {"json": _json_entry, "toml": _toml_entry}


def entry_line(fmt: str, key: str, reason: str, since: int, expires: int | None) -> str:
    """One entry as the file holds it, under `key` (the recipient key or its digest)."""
    return _ENTRY[fmt](key, reason, since, expires)


def _head_bytes(fmt: str, head: dict) -> bytes:
    if fmt == "json":
        return json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1].encode() + b',"recipients":{\n'
    return tomli_w.dumps(head).encode() + b"\n[recipients]\n"


def _tail_bytes(fmt: str, empty: bool) -> bytes:
    if fmt == "json":
        return b"}}\n" if empty else b"\n}}\n"
    return b"" if empty else b"\n"


def write(fh, fmt: str, head: dict, rows: Iterable[Row], hashed: bool = False) -> str:
    """Stream one file into `fh` (binary): `head`'s fields, then `rows` as its recipients,
    in the order given. Returns the sha256 of the entries alone, so an export can tell a
    real change from a new generated_at."""
    entries = hashlib.sha256()
    fh.write(_head_bytes(fmt, head))
    sep, entry = _SEPARATOR[fmt], _ENTRY[fmt]
    first = True
    rows = iter(rows)
    while batch := list(islice(rows, 4096)):
        if hashed:
            batch = [(key_digest(key), reason, since, expires) for key, reason, since, expires in batch]
        data = sep.join([entry(*row) for row in batch])
        data = (data if first else sep + data).encode()
        first = False
        entries.update(data)
        fh.write(data)
    fh.write(_tail_bytes(fmt, first))
    return entries.hexdigest()


class Spool:
    """The entries of one file gathered before its count is known (an export spreading
    a domain's cursor over its shards): formatted into an anonymous temp file, then
    written out behind their header by `write_to`."""

    def __init__(self, fmt: str, spool_file):
        self.fmt, self.file = fmt, spool_file
        self.count = 0
        self.next_expiry: int | None = None
        self._sep = _SEPARATOR[fmt].encode()

    def add(self, line: str, expires: int | None) -> None:
        self.file.write(line.encode() + self._sep)
        self.count += 1
        if expires is not None and (self.next_expiry is None or expires < self.next_expiry):
            self.next_expiry = expires

    def write_to(self, fh, head: dict) -> str:
        """The file: `head`, the spooled entries, the end; the sha256 of the entries
        (the same as `write` returns for the same rows)."""
        entries = hashlib.sha256()
        fh.write(_head_bytes(self.fmt, head))
        left = self.file.tell() - len(self._sep) * (self.count > 0)   # the last separator goes
        self.file.seek(0)
        while left > 0:
            data = self.file.read(min(left, 1 << 20))
            left -= len(data)
            entries.update(data)
            fh.write(data)
        fh.write(_tail_bytes(self.fmt, self.count == 0))
        return entries.hexdigest()


def rows_of(recipients: dict) -> list[Row]:
    """A `recipients` table (key -> {reason, since, expires?}) as rows for `write`."""
    return [(key, e["reason"], e["since"], e.get("expires")) for key, e in recipients.items()]


# ---------------------------------------------------------------------- reading

def read(path: Path) -> dict:
    """A snapshot file's document (JSON or TOML by its suffix); SnapshotError if it is none."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SnapshotError(f"cannot read: {err.strerror}") from None
    return loads(raw, path.suffix[1:])


def loads(raw: bytes, fmt: str) -> dict:
    """A snapshot document from a file's bytes in format `fmt` ("json" or "toml")."""
    kind = fmt.upper()
    try:
        data = tomllib.loads(raw.decode()) if fmt == "toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise SnapshotError(f"not valid {kind}: {err}") from None
    except RecursionError:
        raise SnapshotError(f"not valid {kind}: nested too deeply") from None
    if not isinstance(data, dict):
        raise SnapshotError(f"not a {FORMAT}")
    return data


def active_recipients(raw: bytes, fmt: str, now: int) -> tuple[dict, dict]:
    """A file's `recipients` table as it is and without the entries expired at `now`;
    SnapshotError when the bytes hold no such table."""
    recipients = loads(raw, fmt).get("recipients")
    if not isinstance(recipients, dict) or not all(isinstance(e, dict) for e in recipients.values()):
        raise SnapshotError("no recipients table")
    return recipients, {key: e for key, e in recipients.items() if e.get("expires") is None or e["expires"] > now}


def lookup(directory: Path, domain: str, recipient: str, fmt: str = "json") -> dict | None:
    """The entry that suppresses normalized `recipient` at sending domain `domain`, read
    from the files the way the Lua module reads them (either layout, plain or hashed
    keys), or None. Expiry is the caller's business."""
    name = snapshot_filename(domain, fmt)
    if name is None or not (directory / name).is_file():
        return None
    top = read(directory / name)
    hashed = top.get("hash") == HASH

    def key(k: str) -> str:
        return key_digest(k) if hashed else k
    shards = top.get("shards")
    if shards:
        digest = key_digest(recipient)
        shard = read(directory / shard_filename(domain, shard_of_digest(digest, shards), shards, fmt))
        found = shard["recipients"].get(digest if hashed else recipient)
    else:
        found = top["recipients"].get(key(recipient))
    if found is None and top.get("domain_entries", 1) != 0 and not recipient.startswith("@"):
        found = top["recipients"].get(key(recipient_domain_entry(recipient)))
    return found


# ---------------------------------------------------------------------- validation

@lru_cache(maxsize=None)
def _schema(name: str) -> dict:
    return json.loads(resources.files("exporter").joinpath(f"schema/{name}").read_text())


def schema() -> dict:
    return _schema("snapshot.schema.json")


def manifest_schema() -> dict:
    return _schema("manifest.schema.json")


def _schema_problems(data, schema_doc: dict) -> list[str]:
    import jsonschema
    validator = jsonschema.Draft202012Validator(schema_doc)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:5]]


def document_problems(doc) -> list[str]:
    """Where a document breaks snapshot.schema.json (empty list: it is a snapshot)."""
    return _schema_problems(doc, schema())


def validate_file(path: Path) -> list[str]:
    """Problems with one snapshot file on its own (empty list: valid)."""
    try:
        data = read(path)
    except SnapshotError as err:
        return [str(err)]
    problems = document_problems(data)
    if problems:
        return problems
    name = parse_filename(path.name)
    recipients = data["recipients"]
    if name is None or name.domain != data["domain"]:
        problems.append(f"file name {path.name} does not match domain {data['domain']!r}")
    elif (name.shard, name.shards) != ((data["shard"], data["shards"]) if "shard" in data else (None, None)):
        problems.append(f"file name {path.name} does not match shard {data.get('shard')} of {data.get('shards')}")
    domain_keys = sum(1 for k in recipients if k.startswith("@"))
    if "shards" in data and "shard" not in data:          # an index: @domain entries only
        if domain_keys != len(recipients) and "hash" not in data:
            problems.append("an index holds only @domain entries")
        if data["count"] < len(recipients):
            problems.append(f"count is {data['count']} but the index alone holds {len(recipients)}")
    else:
        if data["count"] != len(recipients):
            problems.append(f"count is {data['count']} but there are {len(recipients)} recipients")
        if "shard" in data:
            wrong = [k for k in recipients
                     if k.startswith("@") or shard_of_digest(k if "hash" in data else key_digest(k),
                                                              data["shards"]) != data["shard"]]
            if wrong:
                problems.append(f"{len(wrong)} key(s) do not hash into shard {data['shard']}, e.g. {wrong[0]!r}")
    if "domain_entries" in data and "hash" not in data and data["domain_entries"] != domain_keys:
        problems.append(f"domain_entries is {data['domain_entries']} but there are {domain_keys}")
    return problems


def validate_directory(directory: Path) -> list[tuple[str, list[str]]]:
    """(file name, problems) for every snapshot file of a directory: each file on its
    own, and each index against its shards."""
    results = []
    docs: dict[str, dict] = {}
    for path in snapshot_files(directory):
        problems = validate_file(path)
        results.append((path.name, problems))
        if not problems:
            docs[path.name] = read(path)
    for name, doc in docs.items():
        if "shards" not in doc or "shard" in doc:
            continue
        fmt = Path(name).suffix[1:]
        shard_names = [shard_filename(doc["domain"], k, doc["shards"], fmt) for k in range(doc["shards"])]
        missing = [n for n in shard_names if n not in docs]
        problems = next(p for n, p in results if n == name)
        if missing:
            problems.append(f"{len(missing)} of its {doc['shards']} shard files missing or invalid, e.g. {missing[0]}")
        elif doc["count"] != len(doc["recipients"]) + sum(docs[n]["count"] for n in shard_names):
            problems.append(f"count is {doc['count']} but the index and its shards hold "
                            f"{len(doc['recipients']) + sum(docs[n]['count'] for n in shard_names)}")
    return results


def validate_manifest(path: Path) -> list[str]:
    """Problems with a manifest file (empty list: valid)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        return [f"not a readable manifest: {err}"]
    return _schema_problems(data, manifest_schema())


def read_manifest(directory: Path) -> dict:
    """The manifest an export left, or {} when there is none usable."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else {}


def manifest_files(domain_entry: dict) -> list[dict]:
    """The file entries (name, sha256, ...) a manifest's domain entry lists: its single file
    or index, then its shards."""
    return [domain_entry, *domain_entry.get("shard_files", [])]


def manifest_doc(generated_at: str, domains: dict, **fields) -> dict:
    """The manifest: `domains` maps each sending domain to its file entry ({file, count,
    sha256, ...}, plus shards and shard_files for a sharded one); `fields` are the
    export's own (store_id, snapshot_format, hash_recipients)."""
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **fields, "generated_at": generated_at,
            "domains": domains}


def manifest_bytes(doc: dict) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def rows_entry(row: Row) -> dict:
    """A row as the entry a `recipients` table holds."""
    _key, reason, since, expires = row
    return {"reason": reason, "since": since} if expires is None else \
        {"reason": reason, "since": since, "expires": expires}
