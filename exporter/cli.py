"""kumo-suppress: a thin click layer over the library (docs/cli.md).

Exit codes: 0 ok, 1 a negative answer (`check`: not suppressed; `validate`: a bad file),
2 usage or config error, 3 runtime failure (store or snapshot dir unusable). Errors are
one line naming the path or key; no tracebacks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import sys
from pathlib import Path

import click

from . import __version__
from .config import REASONS, Config, ConfigError, find_config_path, load_config
from .export import ExportError
from .facade import ArgumentError, IngestProgress, SuppressionList
from .snapshot import MANIFEST, validate_directory, validate_manifest
from .store import StoreError

log = logging.getLogger("kumo_suppress")

EXIT_NEGATIVE, EXIT_USAGE, EXIT_RUNTIME = 1, 2, 3
EXIT_BROKEN_PIPE = 128 + 13     # what a shell reports for a writer ended by SIGPIPE

# the library names an argument as its parameter; the operator knows it by its option
OPTION_OF = {"recipient": "RECIPIENT", "domain": "--domain", "reason": "--reason", "ttl": "--ttl",
             "note": "--note", "paths": "PATH"}


class Fail(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Group(click.Group):
    """Turns the library's errors into one line and the contract's exit code."""

    def invoke(self, ctx):
        try:
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()     # a closed pipe shows here, not at interpreter exit
        except BrokenPipeError:
            _end_quietly()
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
        except ArgumentError as err:     # the library refused an argument: "<name>: <why>", one per line
            _die("\n".join(_option_named(line) for line in str(err).splitlines()), EXIT_USAGE)
        except Exception as err:  # noqa: BLE001 - the contract: one line, never a traceback
            log.debug("unexpected error", exc_info=True)
            _die(f"unexpected {type(err).__name__}: {err} (run with -vv for the details)", EXIT_RUNTIME)


def _store_path(ctx) -> str:
    try:
        return f"{ctx.obj.config.store.path}: "
    except Exception:  # noqa: BLE001 - only decorates a message
        return ""


def _option_named(message: str) -> str:
    name, sep, why = message.partition(": ")
    return f"{OPTION_OF[name]}: {why}" if sep and name in OPTION_OF else message


def _die(message: str, code: int):
    for line in message.splitlines():
        click.echo(f"kumo-suppress: error: {line}", err=True)
    sys.exit(code)


def _end_quietly():
    """The reader of our output left (`| head`): that is not an error. Later writes,
    such as the interpreter's last flush, go nowhere."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_BROKEN_PIPE)


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
            # a stray ./config.toml wins over /etc/kumo-suppression/config.toml: -v says so
            log.info("config %s, store %s", path, self._config.store.path)
        return self._config

    def open(self, create: bool = False) -> SuppressionList:
        """Only `init` creates a store (create=True); every other command refuses a missing,
        empty or foreign file, so a lost store never becomes an empty list that an export
        would then push to kumod."""
        return SuppressionList.open(self.config, create=create)


pass_ctx = click.make_pass_decorator(Context)


class Progress:
    """click's progress bar on stderr when it is a terminal, opened once the total is
    known; nothing at all otherwise (cron, systemd and pipes keep clean logs).
    Call it with the position reached and the total."""

    def __init__(self, label: str, describe=None):
        self.label = label
        self.describe = describe       # current item -> the text beside the bar
        self.bar = None
        self._stack = contextlib.ExitStack()

    def __call__(self, done: int, total: int, item=None) -> None:
        if self.bar is None:
            if not total or not sys.stderr.isatty():
                return
            self.bar = self._stack.enter_context(click.progressbar(
                length=total, label=self.label, file=sys.stderr, item_show_func=self.describe,
                show_pos=self.describe is None, bar_template="%(label)s: %(info)s  [%(bar)s]"))
        self.bar.update(done - self.bar.pos, item)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()


def _ingest_progress(state: IngestProgress) -> str | None:
    if state is None:
        return None
    scale, unit = (1e6, "MB") if state.bytes_total >= 1e6 else (1e3, "kB")
    return (f"{state.files_done}/{state.files_total} segments, {state.bytes_done / scale:.1f}/"
            f"{state.bytes_total / scale:.1f} {unit}  {state.current}")


def _date(ts: int | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def pair_arguments(command):
    """RECIPIENT (an address or @domain) and --domain D, as given: the library checks
    and normalizes them."""
    command = click.option("--domain", "-d", required=True, help="Sending domain.")(command)
    return click.argument("recipient")(command)


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
    with ctx.open(create=True) as sl:
        click.echo(f"store ready: {sl.store.path}")


def _ingest(sl: SuppressionList, paths) -> None:
    with Progress("ingest", _ingest_progress) as progress:
        result = sl.ingest(paths or None, progress=lambda state: progress(state.bytes_done, state.bytes_total, state))
    click.echo(result.summary())


def _export(sl: SuppressionList, force: bool) -> None:
    with Progress("export") as progress:
        result = sl.export(force=force, progress=progress)
    click.echo(result.summary())


@cli.command()
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@pass_ctx
def ingest(ctx: Context, paths):
    """Ingest the configured log dirs, or the given files/dirs (`-` reads JSONL from stdin)."""
    with ctx.open() as sl:
        _ingest(sl, paths)


@cli.command()
@click.option("--force", is_flag=True,
              help="Export even though the snapshot dir was written from another store and most of its "
                   "snapshots would be removed.")
@pass_ctx
def export(ctx: Context, force):
    """Write one snapshot per sending domain; prints written / unchanged / removed."""
    with ctx.open() as sl:
        _export(sl, force)


@cli.command()
@click.option("--force", is_flag=True,
              help="Export even though the snapshot dir was written from another store and most of its "
                   "snapshots would be removed.")
@pass_ctx
def sync(ctx: Context, force):
    """Ingest, then export (for cron or a systemd timer)."""
    with ctx.open() as sl:
        _ingest(sl, ())
        _export(sl, force)


@cli.command()
@pair_arguments
@click.option("--reason", "-r", default="manual", show_default=True, help=f"One of {', '.join(REASONS)}.")
@click.option("--ttl", "-t", default=None, help='Lifetime like "30d" or "never" (default: [rules.ttl] of the reason).')
@click.option("--note", "-n", default=None, help="Why (kept in the store and its history).")
@pass_ctx
def add(ctx: Context, recipient, domain, reason, ttl, note):
    """Suppress RECIPIENT (or @domain, every recipient there) for a sending domain."""
    with ctx.open() as sl:
        before = sl.check(recipient, domain)
        entry = sl.add(recipient, domain, reason, ttl, note, actor="cli")
    refreshed = before is not None and before["recipient"] == entry["recipient"]
    # a refresh keeps the later expiry (and its reason): say what the entry now is
    click.echo(f"{'refreshed' if refreshed else 'added'}: {entry['recipient']} for {entry['domain']}: "
               f"{entry['reason']}, expires {_date(entry['expires'])}")


@cli.command()
@pair_arguments
@click.option("--note", "-n", default=None, help="Why (kept in the history).")
@pass_ctx
def remove(ctx: Context, recipient, domain, note):
    """Remove a suppression, leaving a tombstone so replayed old logs cannot re-add it.
    Exit 1, writing nothing, when the pair is not suppressed."""
    with ctx.open() as sl:
        answer = sl.lookup(recipient, domain)
        removed = sl.remove(recipient, domain, note, actor="cli")
    if removed:
        click.echo(f"removed: {answer['recipient']} for {answer['domain']}")
        return
    if answer["suppressed"]:      # by its recipient domain's entry, which is not the one named
        click.echo(f"not suppressed by an entry of its own: {recipient} for {answer['domain']} "
                   f"(the entry {answer['recipient']} suppresses it)")
    else:
        click.echo(f"not suppressed: {answer['recipient']} for {answer['domain']}{_elsewhere(answer)}")
    sys.exit(EXIT_NEGATIVE)


def _elsewhere(answer: dict) -> str:
    others = answer["other_domains"]
    return f" (suppressed for {', '.join(others)})" if others else ""


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
    """Exit 0 and show the entry if suppressed, 1 if not; both say which other sending
    domains suppress the recipient."""
    with ctx.open() as sl:
        answer = sl.lookup(recipient, domain)
    if as_json:
        click.echo(json.dumps(answer))
    elif answer["suppressed"]:
        click.echo(_describe(answer) + (f"\n  also suppressed for {', '.join(answer['other_domains'])}"
                                        if answer["other_domains"] else ""))
    else:
        click.echo(f"{answer['recipient']} is not suppressed for {answer['domain']}{_elsewhere(answer)}")
    if not answer["suppressed"]:
        sys.exit(EXIT_NEGATIVE)


@cli.command(name="list")
@click.option("--domain", "-d", default=None, help="Only this sending domain.")
@click.option("--reason", "-r", default=None, help=f"Only this reason ({', '.join(REASONS)}).")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of entries (as `check --json`).")
@pass_ctx
def list_(ctx: Context, domain, reason, as_json):
    """List active entries."""
    with ctx.open() as sl:
        entries = sl.entries(domain=domain, reason=reason)
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


@cli.command(name="import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@pass_ctx
def import_(ctx: Context, file):
    """Import CSV rows recipient,domain[,reason,since,expires] (`-` for stdin; a header
    row and a UTF-8 BOM are fine). All rows or none: every bad row is reported by its
    line and nothing is stored. An empty expires means never."""
    lines = _count_lines(file)
    with ctx.open() as sl, Progress("import") as progress:
        count = sl.import_csv(file, progress=lambda line: progress(line, lines))
    click.echo(f"imported {count} row(s)")


def _count_lines(file) -> int | None:
    """The lines of a regular file (the total of the progress bar); None for a pipe."""
    if not sys.stderr.isatty() or not file.seekable():
        return None
    total = sum(1 for _ in file)
    file.seek(0)
    return total


@cli.command()
@pass_ctx
def dump(ctx: Context):
    """Write every active entry as CSV: recipient,domain,reason,since,expires (a cell a
    spreadsheet would take for a formula gets a leading ', which import removes)."""
    with ctx.open() as sl:
        sl.dump_csv(sys.stdout)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats(ctx: Context, as_json):
    """Counts by domain and by reason, last ingest, last export."""
    with ctx.open() as sl:
        data = sl.stats()
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
    with ctx.open() as sl:
        count = sl.prune()
    click.echo(f"pruned {count} expired entr{'y' if count == 1 else 'ies'}")


@cli.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@pass_ctx
def validate(ctx: Context, directory):
    """Check snapshot files (both layouts) and the manifest against their schemas; exit 1 if any fails."""
    directory = directory or ctx.config.export.dir
    if not directory.is_dir():
        raise Fail(f"{directory}: no such snapshot directory", EXIT_RUNTIME)
    results = validate_directory(directory)
    bad = 0
    for name, problems in results:
        if problems:
            bad += 1
            click.echo(f"FAIL {name}: {'; '.join(problems)}")
    manifest_problems = validate_manifest(directory / MANIFEST) if (directory / MANIFEST).exists() else []
    if manifest_problems:
        click.echo(f"FAIL {MANIFEST}: {'; '.join(manifest_problems)}")
    click.echo(f"{len(results) - bad} valid, {bad} invalid")
    if bad or manifest_problems:
        sys.exit(EXIT_NEGATIVE)


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
@pass_ctx
def backup(ctx: Context, target):
    """Write a consistent copy of the store to TARGET (VACUUM INTO; safe while running)."""
    with ctx.open() as sl:
        sl.backup(target)
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
    from .server import serve as serve_webhook
    sys.exit(serve_webhook(ctx.config))


@cli.command(name="install-policy")
@click.argument("directory", type=click.Path(path_type=Path))
def install_policy(directory):
    """Copy the kumod module (suppression.lua, as installed with this package) into
    DIRECTORY, kumod's policy dir on its package.path: 0644, replaced atomically, so a
    kumod loading it meanwhile reads the old or the new file, never half of one."""
    from importlib import resources

    from .export import atomic_write
    if not directory.is_dir():
        raise Fail(f"{directory}: not a directory (kumod's policy dir, e.g. /opt/kumomta/etc/policy)",
                   EXIT_USAGE)
    module = resources.files("exporter").joinpath("data/suppression.lua").read_bytes()
    target = directory / "suppression.lua"
    try:
        atomic_write(target, lambda fh: fh.write(module), mode=0o644)
    except OSError as err:
        raise Fail(f"{target}: {err.strerror or err}", EXIT_RUNTIME) from err
    click.echo(str(target))


def main() -> None:
    cli(prog_name="kumo-suppress")
