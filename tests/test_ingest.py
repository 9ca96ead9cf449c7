"""Ingestion from kumod's log layout: zstd segments, done = read-only, subdirectories,
truncated streams, torn and malformed lines, checkpoints, stdin."""

import logging
import sqlite3

import logfactory as f
from exporter.config import load_config
from exporter.ingest import Ingestor
from exporter.store import Store, file_identity


def counters(install):
    with sqlite3.connect(install.db) as conn:
        return dict(conn.execute("SELECT name, value FROM counters"))


def test_only_done_segments_unless_include_open(install):
    install.segment([f.bounce("open@example.net")], done=False)
    install.segment([f.bounce("done@example.net")])
    out = install.ok("ingest").output
    assert "1 open segment" in out
    assert install.check("done@example.net") and not install.check("open@example.net")
    install.configure(ingest={"include_open": True})
    install.ok("ingest")
    assert install.check("open@example.net")


def test_open_segment_is_read_again_from_its_checkpoint_until_done(install):
    install.configure(ingest={"include_open": True})
    first = [f.bounce("a@example.net"), f.delivery("x@example.net")]
    path = install.segment(first, done=False, compress=False)
    install.ok("ingest")
    # kumod appends to the open segment, then closes it
    with open(path, "ab") as fh:
        fh.write(f.to_jsonl([f.bounce("b@example.net")]))
    f.mark_done(path)
    install.ok("ingest")
    assert install.check("a@example.net")["count"] == 1, "lines before the checkpoint are not read twice"
    assert install.check("b@example.net")
    assert counters(install)["records_total:Bounce"] == 2


def test_subdirectories_and_plain_jsonl(install):
    f.write_segment(install.log_dir / "bounces", [f.bounce("sub@example.net")])
    f.write_segment(install.log_dir, [f.bounce("plain@example.net")], compress=False)
    install.ok("ingest")
    assert install.check("sub@example.net") and install.check("plain@example.net")


def test_each_segment_is_processed_once(install):
    install.segment([f.bounce("u@example.net")])
    install.ok("ingest")
    out = install.ok("ingest").output
    assert out.startswith("ingested 0 records")
    assert install.check("u@example.net")["count"] == 1


def test_same_record_in_two_segments_counts_once(install):
    rec = f.bounce("u@example.net")
    install.segment([rec])
    install.segment([rec])
    install.ok("ingest")
    assert install.check("u@example.net")["count"] == 1
    assert counters(install)["duplicates_total"] == 1


def test_truncated_zstd_keeps_complete_lines(install, caplog):
    good = [f.bounce(f"u{i}@example.net") for i in range(5)]
    path = install.segment(good + [f.bounce("lost@example.net")], truncate=True)
    with caplog.at_level(logging.WARNING):
        out = install.ok("ingest").output
    assert out.startswith("ingested 5 records")
    assert all(install.check(f"u{i}@example.net") for i in range(5))
    assert install.check("lost@example.net") is None
    assert any("truncated" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_torn_last_line_is_skipped_with_a_warning(install, caplog):
    path = install.segment([f.bounce("u@example.net")], torn=True)
    with caplog.at_level(logging.WARNING):
        install.ok("ingest")
    assert install.check("u@example.net")
    assert any(f"{path}:2: torn last line" in r.getMessage() for r in caplog.records)
    assert counters(install)["malformed_total"] == 1


def test_malformed_lines_are_counted_with_file_and_line(install, caplog):
    data = (f.to_jsonl([f.bounce("a@example.net")]) + b"{not json\n" + b"[1, 2]\n" + b'{"no_type": 1}\n'
            + b"\xff\xfe garbage\n" + b"\n" + f.to_jsonl([f.bounce("b@example.net")]))
    path = install.segment(data)
    with caplog.at_level(logging.WARNING):
        out = install.ok("ingest").output
    assert "4 malformed" in out
    assert install.check("a@example.net") and install.check("b@example.net")
    lines = {r.getMessage().split(": ")[0] for r in caplog.records if "malformed" in r.getMessage()}
    assert lines == {f"{path}:{n}" for n in (2, 3, 4, 5)}


def test_oversized_line_is_skipped_and_counted(install):
    install.configure(ingest={"max_line": "4KB"})
    huge = f.bounce("huge@example.net")
    huge["headers"]["X-Pad"] = "x" * 100_000
    install.segment([f.bounce("before@example.net"), huge, f.bounce("after@example.net")])
    install.ok("ingest")
    assert install.check("before@example.net") and install.check("after@example.net")
    assert install.check("huge@example.net") is None
    assert counters(install)["malformed_total"] == 1


def test_ingest_paths_files_dirs_and_stdin(install, tmp_path):
    other = tmp_path / "elsewhere"
    path = f.write_segment(other, [f.bounce("file@example.net")], done=False)
    install.ok("ingest", path)
    assert install.check("file@example.net"), "an explicitly named file is read even if still open"
    install.ok("ingest", "-", input=f.to_jsonl([f.bounce("stdin@example.net")]).decode())
    assert install.check("stdin@example.net")
    r = install.run("ingest", tmp_path / "nope")
    assert r.exit_code == 2 and "nope" in r.stderr


def test_checkpoint_resumes_mid_segment(install, monkeypatch):
    """A crash after a committed batch: the next run starts at the checkpoint."""
    install.configure(ingest={"batch_lines": 2})
    recs = [f.bounce(f"u{i}@example.net") for i in range(6)]
    path = install.segment(recs)
    install.ok("init")
    cfg = load_config(install.config_path)
    with Store.open(cfg.store.path) as store:
        calls = {"n": 0}
        real = store.set_segment_checkpoint

        def crash_after_two(*a, **kw):
            real(*a, **kw)
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("simulated crash")
        monkeypatch.setattr(store, "set_segment_checkpoint", crash_after_two)
        try:
            Ingestor(store, cfg).ingest_configured()
        except KeyboardInterrupt:
            pass
        # the transaction holding the 2nd checkpoint rolled back with its entries
        assert store.segment_checkpoint(file_identity(path), path.stat().st_size) == (2, False)
    install.ok("ingest")
    for i in range(6):
        assert install.check(f"u{i}@example.net")["count"] == 1
    assert counters(install)["records_total:Bounce"] == 6


def test_counters_by_type_and_skips(install):
    install.segment([f.delivery("a@example.net"), f.delivery("b@example.net"), f.transient("c@example.net"),
                     f.record("QuantumTeleport", "b@example.com", "q@example.net"),
                     f.bounce("nodomain@example.net", headers={})])
    out = install.ok("ingest").output
    c = counters(install)
    assert c["records_total:Delivery"] == 2 and c["records_total:TransientFailure"] == 1
    assert c["skipped_total:unknown_type"] == 1 and c["skipped_total:no_domain"] == 1
    assert c["records_total:other"] == 1 and "records_total:QuantumTeleport" not in c
    assert "1 no domain" in out and "1 unknown type" in out


def test_webhook_style_records_share_the_path_and_dedupe_with_files(install):
    rec = f.bounce("u@example.net")
    install.ok("init")
    cfg = load_config(install.config_path)
    with Store.open(cfg.store.path) as store:
        result = Ingestor(store, cfg).ingest_records([rec], source="webhook")
        assert result.applied.added == {"bounce": 1}
    install.segment([rec])
    install.ok("ingest")
    entry = install.check("u@example.net")
    assert entry["count"] == 1 and entry["source"] == "webhook"


def test_last_record_without_newline_is_read(install):
    """A whole last record without its newline (hand-made JSONL, printf into stdin) is
    a record; only half a line is torn."""
    data = f.to_jsonl([f.bounce("a@example.net")]) + f.to_jsonl([f.bounce("b@example.net")]).rstrip(b"\n")
    install.segment(data, compress=False)
    install.ok("ingest")
    assert install.check("b@example.net")
    r = install.ok("ingest", "-", input=f.to_jsonl([f.bounce("c@example.net")]).rstrip(b"\n").decode())
    assert "malformed" not in r.output and install.check("c@example.net")


def test_lines_passed_over_by_type_count_as_records_and_the_rest_is_parsed(install, caplog):
    """Non-suppressing records are counted from their type prefix without parsing; a line
    of that shape that does not end in `}` is parsed like any other (valid JSON with
    trailing blanks is a record, a broken one is malformed), with its own line number."""
    data = (f.to_jsonl([f.delivery("a@example.net"), f.bounce("b@example.net"), f.reception("c@example.net")])
            + f.to_jsonl([f.delivery("d@example.net")]).rstrip(b"\n") + b"   \n"
            + b'{"type":"Delivery","recipient":\n'
            + b'{"type":"Deli\\u0076ery","id":"x"}\n'
            + f.to_jsonl([f.transient("e@example.net"), f.bounce("g@example.net")]))
    path = install.segment(data)
    with caplog.at_level(logging.WARNING):
        install.ok("ingest")
    c = counters(install)
    assert (c["records_total:Delivery"], c["records_total:Reception"], c["records_total:TransientFailure"],
            c["records_total:Bounce"]) == (3, 1, 1, 2)
    assert c["malformed_total"] == 1
    assert install.check("b@example.net") and install.check("g@example.net")
    assert {r.getMessage().split(": ")[0] for r in caplog.records if "malformed" in r.getMessage()} == {f"{path}:5"}


def test_batches_commit_at_exact_line_counts_across_blocks_and_oversized_lines(install):
    install.configure(ingest={"batch_lines": 3, "max_line": "4KB"})
    huge = f.bounce("huge@example.net")
    huge["headers"]["X-Pad"] = "x" * 10_000
    recs = [f.bounce(f"u{i}@example.net") for i in range(4)] + [huge] + [f.delivery(f"d{i}@example.net")
                                                                      for i in range(5)]
    path = install.segment(recs)
    install.ok("init")
    cfg = load_config(install.config_path)
    with Store.open(cfg.store.path) as store:
        seen = []
        real = store.set_segment_checkpoint

        def record(identity, lines, complete, size, now):
            seen.append((lines, complete))
            real(identity, lines, complete, size, now)
        store.set_segment_checkpoint = record
        Ingestor(store, cfg).ingest_configured()
        assert seen == [(3, False), (6, False), (9, False), (10, True)]
        assert store.segment_checkpoint(file_identity(path), path.stat().st_size) == (10, True)
    assert [install.check(f"u{i}@example.net")["count"] for i in range(4)] == [1, 1, 1, 1]
    c = counters(install)
    assert (c["records_total:Bounce"], c["records_total:Delivery"], c["malformed_total"]) == (4, 5, 1)
