"""Write the bundled example: a small kumod log directory (zstd JSONL segments, closed
ones read-only, as kumod leaves them) with the events the suppression list learns from.

    python examples/make_sample_logs.py [DIR]      (default: var/example-logs)

Segments are generated, not committed, because git does not keep the read-only bit
that marks a kumod segment as done. Timestamps are relative to now, so entries are live.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import logfactory as f  # noqa: E402


def sample_segments(now: int) -> list[list[dict]]:
    hour = 3600
    first = [
        f.reception("alice@example.net", timestamp=now - 5 * hour),
        f.delivery("alice@example.net", timestamp=now - 5 * hour + 2),
        # a dead mailbox: suppressed for example.com
        f.bounce("gone@example.net", timestamp=now - 4 * hour),
        # a provider's spam block blames the sender, not the address: never suppressed
        f.bounce("bob@bigmail.example", code=554, enhanced_code="5.7.1", content="rejected as spam",
                 classification="SpamBlock", timestamp=now - 4 * hour),
        f.transient("carol@example.org", timestamp=now - 3 * hour),
        # a multi-recipient message: both recipients bounced
        f.bounce(["dave@example.org", "erin@example.org"], domain="shop.example", timestamp=now - 3 * hour),
    ]
    second = [
        # an asynchronous bounce (DSN) for mail whose return path was bounces@shop.example
        f.oob("bounces@shop.example", "frank@example.net", timestamp=now - 2 * hour),
        # a complaint: the complainant is in the ARF report, not the record's recipient
        f.feedback("grace@example.com", "News <news@example.com>", timestamp=now - 2 * hour),
        # gave up after retries
        f.expiration("heidi@slow.example", timestamp=now - hour),
        f.delivery("ivan@example.net", domain="shop.example", timestamp=now - hour),
    ]
    return [first, second]


def main(argv: list[str]) -> int:
    target = Path(argv[1]) if len(argv) > 1 else ROOT / "var" / "example-logs"
    if target.exists():
        for path in target.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
        shutil.rmtree(target)
    now = int(time.time())
    for i, records in enumerate(sample_segments(now)):
        f.write_segment(target, records, name=f.segment_name(now - 3600 * (2 - i)))
    print(f"sample kumod log segments written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
