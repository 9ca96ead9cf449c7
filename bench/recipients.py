"""One record with MAX_RECIPIENTS recipients (the most kumod's log gives one message):
how long turning it into an event takes, and storing it (one transaction, every
recipient a new suppression). The receiver has one writer, so this is how long every
other post waits behind such a record.

    python bench/recipients.py

Prints `name: value unit` lines.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import figure, reproduce

import logfactory
from exporter.config import build_config
from exporter.ingest import Ingestor
from exporter.records import MAX_RECIPIENTS, DomainSource, to_event
from exporter.store import Store


def main() -> None:
    reproduce()
    recipients = [f"user{i}@dest{i % 7}.example" for i in range(MAX_RECIPIENTS)]
    record = logfactory.bounce(recipients, "example.com")
    started = time.perf_counter()
    event = to_event(record, DomainSource(), "suppressed.kumo_suppression")
    figure("to_event_10k_recipients", time.perf_counter() - started, "s")
    assert len(event.recipients) == MAX_RECIPIENTS
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config({"store": {"path": "s.db"}}, base=Path(tmp), cfg_path=None)
        with Store.open(config.store.path) as store:
            started = time.perf_counter()
            Ingestor(store, config).ingest_records([record])
            figure("ingest_one_record_10k_recipients", time.perf_counter() - started, "s")


if __name__ == "__main__":
    main()
