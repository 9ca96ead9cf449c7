"""The main job on the bundled example, end to end:

  1. generate sample kumod log segments (examples/make_sample_logs.py),
  2. `kumo-suppress -c config.example.toml init`, then `sync` (ingest + export),
  3. load policy_lua/suppression.lua into this project's kumod stand-in (Lua 5.4 via
     lupa, tests/kumo_standin.py) with the same config, and check a suppressed and a
     clean message by SMTP and by the HTTP injection API.

    ./dev demo        (or: .venv/bin/python examples/demo.py)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.example.toml"
sys.path.insert(0, str(ROOT / "tests"))


def kumo_suppress(*args: str) -> None:
    cmd = [sys.executable, "-m", "exporter", "-c", str(CONFIG), *args]
    print(f"$ kumo-suppress -c config.example.toml {' '.join(args)}")
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        print(f"  {line}")
    if proc.returncode != 0:
        sys.exit(f"demo: kumo-suppress {args[0]} failed with exit {proc.returncode}")


def main() -> int:
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_sample_logs.py")], check=True)
    kumo_suppress("init")
    kumo_suppress("sync")
    kumo_suppress("check", "gone@example.net", "--domain", "example.com")

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
    print("\nkumod (Lua 5.4 stand-in) with policy_lua/suppression.lua and config.example.toml:")
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
    print("\ndemo: all checks as expected" if not failures else f"\ndemo: {failures} check(s) NOT as expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
