"""kumo-suppress: a thin click layer over the library (PRODUCT.md section 10).

Exit codes: 0 ok, 1 a negative answer (`check`: not suppressed; `validate`: a bad file),
2 usage or config error, 3 runtime failure (store or snapshot dir unusable). Errors are
one line naming the path or key; no tracebacks.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path

import click

from . import __version__
from .config import REASONS, Config, ConfigError, find_config_path, load_config, parse_lifetime
from .export import ExportError, export_snapshots, snapshot_files, validate_snapshot_file
from .ingest import Ingestor
from .keys import domain_key, recipient_key
from .records import MAX_TIMESTAMP
from .store import Store, StoreError

log = logging.getLogger("kumo_suppress")

EXIT_NEGATIVE, EXIT_USAGE, EXIT_RUNTIME = 1, 2, 3


class Fail(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Group(click.Group):
    """Turns the library's errors into one line and the contract's exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Fail as err:
            _die(str(err), err.code)
        except ConfigError as err:
            _die(str(err), EXIT_USAGE)
        except (StoreError, ExportError) as err:
            _die(str(err), EXIT_RUNTIME)
        except sqlite3.Error as err:
            _die(f"{_store_path(ctx)}store error: {err}", EXIT_RUNTIME)
        except OSError as err:
            where = f"{err.filename}: " if err.filename else ""
            _die(f"{where}{err.strerror or err}", EXIT_RUNTIME)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise   # usage errors: click's own message and exit 2
        except UnicodeDecodeError as err:
            _die(f"input is not UTF-8 text ({err.reason} at byte {err.start})", EXIT_USAGE)
        except Exception as err:  # noqa: BLE001 - the contract: one line, never a traceback
            log.debug("unexpected error", exc_info=True)
            _die(f"unexpected {type(err).__name__}: {err} (run with -vv for the details)", EXIT_RUNTIME)


def _store_path(ctx) -> str:
    try:
        return f"{ctx.obj.config.store.path}: "
    except Exception:  # noqa: BLE001 - only decorates a message
        return ""


def _die(message: str, code: int):
    click.echo(f"kumo-suppress: error: {message}", err=True)
    sys.exit(code)


class Context:
    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            path = find_config_path(self.config_path)
            if path is None:
                raise ConfigError("no config file: pass -c PATH, set $KUMO_SUPPRESS_CONFIG, or create "
                                  "./config.toml or /etc/kumo-suppression/config.toml "
                                  "(config.example.toml documents every key)")
            self._config = load_config(path)
        return self._config

    def store(self, create: bool = True) -> Store:
        cfg = self.config
        return Store.open(cfg.store.path, create=create, busy_timeout=cfg.store.busy_timeout)


pass_ctx = click.make_pass_decorator(Context)


def _progress_printer():
    """Progress on a terminal only; cron and systemd logs stay clean."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(what, done, total=None):
        now = time.monotonic()
        if now - last[0] < 0.2:
            return
        last[0] = now
        text = f"{what}: {done}" + (f"/{total}" if total else "")
        click.echo(f"\r\033[K{text}", err=True, nl=False)
    return show


def _end_progress(progress) -> None:
    if progress:
        click.echo("\r\033[K", err=True, nl=False)


def _date(ts: int | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _rcpt(value: str) -> str:
    key = recipient_key(value)
    if key is None:
        raise click.BadParameter(f"{value!r} is not an address (user@domain) or a domain entry (@domain)")
    return key


def _domain(value: str) -> str:
    key = domain_key(value)
    if key is None:
        raise click.BadParameter(f"{value!r} is not a domain")
    return key


def pair_arguments(command):
    """RECIPIENT and --domain D, normalized to their keys (as kumod's module computes them)
    before the command runs."""
    @functools.wraps(command)
    def normalized(recipient, domain, **kw):
        return command(recipient=_rcpt(recipient), domain=_domain(domain), **kw)
    normalized = click.option("--domain", "-d", required=True, help="Sending domain.")(normalized)
    return click.argument("recipient")(normalized)


def _write_metrics(ctx: Context, store: Store) -> None:
    if ctx.config.metrics.textfile:
        from .metrics import write_textfile
        write_textfile(ctx.config.metrics.textfile, store)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="PATH", envvar=None,
              help="Config file (else $KUMO_SUPPRESS_CONFIG, ./config.toml, /etc/kumo-suppression/config.toml).")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(__version__, prog_name="kumo-suppress")
@click.pass_context
def cli(click_ctx, config_path, verbose):
    """Suppression list for KumoMTA: learn from kumod's logs which (recipient, sending
    domain) pairs must not be mailed again, and export per-domain snapshots for the
    policy_lua/suppression.lua module."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="kumo-suppress: %(levelname)s: %(message)s", stream=sys.stderr)
    click_ctx.obj = Context(config_path)


@cli.command()
@pass_ctx
def init(ctx: Context):
    """Create or migrate the store."""
    with ctx.store() as store:
        click.echo(f"store ready: {store.path}")


def _ingest(ctx: Context, store: Store, paths) -> None:
    progress = _progress_printer()
    ingestor = Ingestor(store, ctx.config, progress=progress)
    try:
        result = ingestor.ingest_paths(paths) if paths else ingestor.ingest_configured()
    except FileNotFoundError as err:
        raise Fail(str(err), EXIT_USAGE) from None
    finally:
        _end_progress(progress)
    click.echo(result.summary())


def _export(ctx: Context, store: Store) -> None:
    progress = _progress_printer()
    try:
        result = export_snapshots(store, ctx.config,
                                  progress=(lambda i, n: progress("export", i, n)) if progress else None)
    finally:
        _end_progress(progress)
    click.echo(result.summary())


@cli.command()
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@pass_ctx
def ingest(ctx: Context, paths):
    """Ingest the configured log dirs, or the given files/dirs (`-` reads JSONL from stdin)."""
    with ctx.store() as store:
        _ingest(ctx, store, paths)
        _write_metrics(ctx, store)


@cli.command()
@pass_ctx
def export(ctx: Context):
    """Write one snapshot per sending domain; prints written / unchanged / removed."""
    with ctx.store() as store:
        _export(ctx, store)
        _write_metrics(ctx, store)


@cli.command()
@pass_ctx
def sync(ctx: Context):
    """Ingest, then export (for cron or a systemd timer)."""
    with ctx.store() as store:
        _ingest(ctx, store, ())
        _export(ctx, store)
        _write_metrics(ctx, store)


@cli.command()
@pair_arguments
@click.option("--reason", "-r", type=click.Choice(REASONS), default="manual", show_default=True)
@click.option("--ttl", "-t", default=None, help='Lifetime like "30d" or "never" (default: [rules.ttl] of the reason).')
@click.option("--note", "-n", default=None, help="Why (kept in the store and its history).")
@pass_ctx
def add(ctx: Context, recipient, domain, reason, ttl, note):
    """Suppress RECIPIENT (or @domain, every recipient there) for a sending domain."""
    lifetime = ctx.config.rules.ttl[reason] if ttl is None else parse_lifetime(ttl, "--ttl")
    now = int(time.time())
    with ctx.store() as store:
        action = store.add_manual(recipient, domain, reason, lifetime, note, now)
        entry = store.get(recipient, domain, now)
    # a refresh keeps the later expiry (and its reason): say what the entry now is
    click.echo(f"{'added' if action == 'add' else 'refreshed'}: {recipient} for {domain}: "
               f"{entry['reason']}, expires {_date(entry['expires'])}")


@cli.command()
@pair_arguments
@click.option("--note", "-n", default=None, help="Why (kept in the history).")
@pass_ctx
def remove(ctx: Context, recipient, domain, note):
    """Remove a suppression, leaving a tombstone so replayed old logs cannot re-add it."""
    with ctx.store() as store:
        removed = store.remove(recipient, domain, int(time.time()), note)
    click.echo(f"removed: {recipient} for {domain}" if removed
               else f"not suppressed (tombstone recorded): {recipient} for {domain}")


def _describe(entry: dict) -> str:
    ev = entry["evidence"]
    text = (f"{entry['recipient']} is suppressed for {entry['domain']}: {entry['reason']} since "
            f"{_date(entry['first_seen'])}, expires {_date(entry['expires'])}, {entry['count']} event(s), "
            f"source {entry['source']}")
    if ev.get("type") and ev.get("code") is not None:
        text += (f"\n  last evidence: {ev['type']} {ev['code']} {ev.get('enhanced_code') or ''} "
                 f"{(ev.get('content') or '').strip()}").rstrip()
        if ev.get("classification"):
            text += f" [{ev['classification']}]"
    return text


@cli.command()
@pair_arguments
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the entry and its evidence.")
@pass_ctx
def check(ctx: Context, recipient, domain, as_json):
    """Exit 0 and show the entry if suppressed, 1 if not."""
    with ctx.store(create=False) as store:
        entry = store.get(recipient, domain, int(time.time()))
    if entry is None:
        if not as_json:
            click.echo(f"{recipient} is not suppressed for {domain}")
        sys.exit(EXIT_NEGATIVE)
    click.echo(json.dumps(entry) if as_json else _describe(entry))


@cli.command(name="list")
@click.option("--domain", "-d", default=None, help="Only this sending domain.")
@click.option("--reason", "-r", type=click.Choice(REASONS), default=None)
@click.option("--json", "as_json", is_flag=True, help="A JSON array of entries (as `check --json`).")
@pass_ctx
def list_(ctx: Context, domain, reason, as_json):
    """List active entries."""
    dom = _domain(domain) if domain else None
    with ctx.store(create=False) as store:
        entries = store.iter_entries(int(time.time()), dom, reason)
        if as_json:
            out = sys.stdout
            out.write("[")
            for i, entry in enumerate(entries):
                out.write(("," if i else "") + "\n" + json.dumps(entry))
            out.write("\n]\n")
            return
        for entry in entries:
            click.echo(f"{entry['domain']}\t{entry['recipient']}\t{entry['reason']}\t"
                       f"{_date(entry['first_seen'])}\t{_date(entry['expires'])}")


def _parse_time(value: str, what: str, where: str) -> int:
    value = value.strip()
    if value.isdigit():
        seconds = int(value)
    else:
        try:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Fail(f"{where}: {what} {value!r} is neither unix seconds nor an ISO 8601 date",
                       EXIT_USAGE) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = int(when.timestamp())
    if not 0 <= seconds < MAX_TIMESTAMP:
        raise Fail(f"{where}: {what} {value!r} is out of range", EXIT_USAGE)
    return seconds


@cli.command(name="import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@pass_ctx
def import_(ctx: Context, file):
    """Import CSV rows recipient,domain[,reason,since,expires] (`-` for stdin). All rows or
    none: a bad row stops the import, naming its line. An empty expires means never."""
    now = int(time.time())
    progress = _progress_printer()
    # rows stream from the file into one transaction: a bad row rolls it all back
    try:
        with ctx.store() as store:
            count = store.import_rows(_csv_rows(file, ctx.config, now, progress), now)
    finally:
        _end_progress(progress)
    click.echo(f"imported {count} row(s)")


def _csv_rows(file, config: Config, now: int, progress):
    for line, row in enumerate(csv.reader(file), start=1):
        if progress:
            progress("import", line)
        if not row or (line == 1 and row[0].strip().lower() == "recipient"):
            continue
        if len(row) < 2 or len(row) > 5:
            raise Fail(f"{file.name}:{line}: expected recipient,domain[,reason,since,expires]", EXIT_USAGE)
        rcpt, dom = recipient_key(row[0]), domain_key(row[1])
        if rcpt is None or dom is None:
            raise Fail(f"{file.name}:{line}: bad recipient or domain: {row[0]!r}, {row[1]!r}", EXIT_USAGE)
        reason = (row[2].strip() if len(row) > 2 else "") or "manual"
        if reason not in REASONS:
            raise Fail(f"{file.name}:{line}: unknown reason {reason!r} (one of {', '.join(REASONS)})", EXIT_USAGE)
        where = f"{file.name}:{line}"
        since = _parse_time(row[3], "since", where) if len(row) > 3 and row[3].strip() else now
        if len(row) > 4:
            expires = _parse_time(row[4], "expires", where) if row[4].strip() else None
        else:
            ttl = config.rules.ttl[reason]
            expires = None if ttl is None else since + ttl
        yield rcpt, dom, reason, since, expires


@cli.command()
@pass_ctx
def dump(ctx: Context):
    """Write every active entry as CSV: recipient,domain,reason,since,expires."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["recipient", "domain", "reason", "since", "expires"])
    with ctx.store(create=False) as store:
        for entry in store.iter_entries(int(time.time())):
            writer.writerow([entry["recipient"], entry["domain"], entry["reason"], entry["first_seen"],
                             "" if entry["expires"] is None else entry["expires"]])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats(ctx: Context, as_json):
    """Counts by domain and by reason, last ingest, last export."""
    with ctx.store(create=False) as store:
        data = store.stats(int(time.time()))
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    click.echo(f"entries: {data['entries']} (tombstones {data['tombstones']}, "
               f"expired not yet pruned {data['expired_not_pruned']})")
    click.echo(f"last ingest: {_date(data['last_ingest']) if data['last_ingest'] else '-'}; "
               f"last export: {_date(data['last_export']) if data['last_export'] else '-'}")
    click.echo("by reason: " + (", ".join(f"{k} {v}" for k, v in data["by_reason"].items()) or "-"))
    click.echo("by domain:")
    for k, v in data["by_domain"].items():
        click.echo(f"  {k}\t{v}")


@cli.command()
@pass_ctx
def prune(ctx: Context):
    """Drop expired entries (each leaves an `expire` row in the history) and history
    older than [store] history_retention."""
    with ctx.store() as store:
        count = store.prune(int(time.time()), history_retention=ctx.config.store.history_retention)
        _write_metrics(ctx, store)
    click.echo(f"pruned {count} expired entr{'y' if count == 1 else 'ies'}")


@cli.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@pass_ctx
def validate(ctx: Context, directory):
    """Check snapshot files against the schema; exit 1 if any fails."""
    directory = directory or ctx.config.export.dir
    if not directory.is_dir():
        raise Fail(f"{directory}: no such snapshot directory", EXIT_RUNTIME)
    bad = 0
    files = snapshot_files(directory)
    for path in files:
        problems = validate_snapshot_file(path)
        if problems:
            bad += 1
            click.echo(f"FAIL {path.name}: {'; '.join(problems)}")
    click.echo(f"{len(files) - bad} valid, {bad} invalid")
    if bad:
        sys.exit(EXIT_NEGATIVE)


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
@pass_ctx
def backup(ctx: Context, target):
    """Write a consistent copy of the store to TARGET (VACUUM INTO; safe while running)."""
    with ctx.store(create=False) as store:
        store.backup(target)
    click.echo(f"backup written: {target}")


@cli.command()
@pass_ctx
def run(ctx: Context):
    """Scheduler: ingest and export every [schedule] interval, prune daily, the webhook
    receiver too when [webhook].enabled. SIGTERM/SIGINT stop it cleanly (exit 0)."""
    from .daemon import run as run_daemon
    sys.exit(run_daemon(ctx.config))


@cli.command()
@pass_ctx
def serve(ctx: Context):
    """Webhook receiver only: POST /v1/events, GET /healthz, /metrics and
    /v1/suppressions/{domain}/{recipient} on [webhook].listen."""
    from .webhook import serve as serve_webhook
    sys.exit(serve_webhook(ctx.config))


def main() -> None:
    cli(prog_name="kumo-suppress")
