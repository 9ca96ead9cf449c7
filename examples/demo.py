"""The main job on the bundled example, end to end, each step said in words:

  1. generate sample kumod log segments (examples/make_sample_logs.py),
  2. `kumo-suppress -c config.example.toml init`, then `sync` (ingest + export), and
     what it learned, what it deliberately did not (a spam block) and the files written,
  3. load policy_lua/suppression.lua into this project's kumod stand-in (Lua 5.4 via
     lupa, tests/kumo_standin.py) with the same config, and check a suppressed and a
     clean message by SMTP and by the HTTP injection API; then what to try next.

    ./dev demo        (or: .venv/bin/python examples/demo.py)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.example.toml"
LOGS, STORE, SNAPSHOTS = ROOT / "var" / "example-logs", ROOT / "var" / "suppression.db", ROOT / "var" / "snapshots"
sys.path.insert(0, str(ROOT / "tests"))


def say(text: str) -> None:
    print(f"\n{text}")


def kumo_suppress(*args: str, show: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "exporter", "-c", str(CONFIG), *args]
    if show:
        print(f"$ kumo-suppress -c config.example.toml {' '.join(args)}")
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    if show:
        for line in (proc.stdout + proc.stderr).splitlines():
            print(f"  {line}")
    if proc.returncode not in (0, 1):   # 1: a negative answer (check: not suppressed)
        sys.exit(f"demo: kumo-suppress {args[0]} failed with exit {proc.returncode}")
    return proc


def main() -> int:
    say("1. Sample kumod logs. kumod writes one JSON record per event (Reception, Delivery,\n"
        "   Bounce, ...) into zstd-compressed log segments; this writes a small day of them.")
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_sample_logs.py"), str(LOGS)], check=True)
    segments = sorted(p.name for p in LOGS.iterdir())
    print(f"  {len(segments)} segments in {LOGS.relative_to(ROOT)}/: {', '.join(segments)}")

    say("2. The store: one SQLite file holds the suppression list and how far each segment was read.")
    kumo_suppress("init")
    print(f"  {STORE.relative_to(ROOT)} is ready")

    say("3. Learn from the logs, then export one snapshot per sending domain for kumod (`sync`).")
    kumo_suppress("sync")
    entries = json.loads(kumo_suppress("list", "--json", show=False).stdout)
    print(f"  learned {len(entries)} entries (recipient, for sending domain: why):")
    for e in entries:
        print(f"    {e['recipient']:<22} for {e['domain']:<13} {e['reason']} ({(e.get('evidence') or {}).get('type', e['source'])})")
    spam = kumo_suppress("check", "bob@bigmail.example", "--domain", "example.com", show=False)
    print("  NOT learned on purpose: bob@bigmail.example's bounce (554 5.7.1 \"rejected as spam\") is\n"
          "    classified SpamBlock: the provider blocked the message, the address itself is fine.\n"
          "    [rules] ignore_classifications in config.example.toml lists such classes."
          + ("" if spam.returncode == 1 else "  (BAD: it was learned)"))
    print("  not learned either: alice@ and ivan@ (delivered) and carol@ (a temporary 4xx failure);\n"
          "    only permanent failures, complaints and expirations suppress.")
    written = sorted(p.name for p in SNAPSHOTS.iterdir() if not p.name.startswith("."))
    print(f"  files written to {SNAPSHOTS.relative_to(ROOT)}/: {', '.join(written)}\n"
          "    (one <sending domain>.json per domain, and manifest.json with their checksums)")

    say("4. kumod's side: the Lua module reads those snapshots in-process and stops mail to\n"
        "   suppressed pairs, by SMTP and by the HTTP injection API.")
    from kumo_standin import Kumod  # the project's kumod stand-in (tests/kumo_standin.py)
    k = Kumod(ROOT / "policy_lua")
    k.lua.globals()["__CONFIG"] = str(CONFIG)
    k.execute("""
local kumo = require 'kumo'
local suppression = require 'suppression'
sup = suppression:new { config = __CONFIG }
kumo.on('smtp_server_message_received', function(msg, conn_meta) sup:check_smtp(msg, conn_meta) end)
kumo.on('http_message_generated', function(msg) sup:check_http(msg) end)
""", "=init.lua")
    print("  kumod (this project's Lua 5.4 stand-in) with policy_lua/suppression.lua and config.example.toml:")
    failures = 0

    def report(what: str, got: str, expected_suppressed: bool, suppressed: bool) -> None:
        nonlocal failures
        ok = suppressed == expected_suppressed
        failures += not ok
        print(f"  {'ok ' if ok else 'BAD'} {what}: {got}")

    for rcpt, expect in (("gone@example.net", True), ("alice@example.net", False)):
        msg = k.make_message("bounces@example.com", [rcpt], from_header="News <news@example.com>")
        txn = k.smtp_transaction([msg])
        outcome = k.deliver_via_queue(msg) if txn.accepted else None
        if outcome is not None and outcome.kind == "Bounce":
            got = f"SMTP accepted, then bounced by the suppression queue: {outcome.code} {outcome.text}"
        else:
            got = f"SMTP {'accepted' if txn.accepted else 'rejected'}, delivered normally (queue {outcome.queue!r}, {outcome.kind})"
        report(f"SMTP  {rcpt:<18} from example.com", got, expect, outcome is not None and outcome.kind == "Bounce")

        msg = k.make_message("bounces@example.com", [rcpt], from_header="News <news@example.com>")
        result = k.http_inject(msg)
        got = f"rejected {result.code} {result.text}" if result.rejected else "accepted"
        report(f"HTTP  {rcpt:<18} from example.com", got, expect, result.rejected)

    msg = k.make_message("bounces@other.example", ["gone@example.net"], from_header="news@other.example")
    result = k.http_inject(msg)
    report("HTTP  gone@example.net   from other.example (suppression is per sending domain)",
           "rejected" if result.rejected else "accepted", False, result.rejected)
    failures += spam.returncode != 1
    print("\ndemo: all checks as expected" if not failures else f"\ndemo: {failures} check(s) NOT as expected")
    say("What to try next:\n"
        "  .venv/bin/kumo-suppress -c config.example.toml check gone@example.net --domain example.com --json\n"
        "  .venv/bin/kumo-suppress -c config.example.toml add you@example.net --domain example.com --note test\n"
        "  .venv/bin/kumo-suppress -c config.example.toml export      (then: ls var/snapshots)\n"
        "  .venv/bin/kumo-suppress -c config.example.toml stats\n"
        "  docs/kumod-setup.md and policy_lua/init.example.lua: the real kumod wiring\n"
        "  ./dev test: the whole suite")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
