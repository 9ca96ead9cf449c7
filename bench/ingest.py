#!/usr/bin/env python3
"""Ingest throughput and memory: kumod-shaped zstd segments through the whole
`kumo-suppress ingest` process, against plain zstd decompression of the same segments.

Mix: 95% Delivery / Reception / TransientFailure, 5% Bounce / Expiration / OOB /
Feedback, over 1,000 sending domains; segments of 100k records (kumod-style names,
zstd level 3, marked done). Records are made from a few hundred template lines varied
by string formatting (id, recipient, sending domain), not one json.dumps per record.

Figures (name: value unit):
  ingest_records_per_s            whole `kumo-suppress ingest` process, wall time (best of 3,
                                  each into a fresh store)
  zstandard_lines_records_per_s   zstandard module, decompress + iterate lines
  zstd_cli_records_per_s          `zstd -dc SEGMENTS > /dev/null` (if /usr/bin/zstd exists)
  ingest_vs_zstandard_ratio       ingest time / zstandard time (target <= 5)
  ingest_peak_rss_small / _large  peak RSS of the ingest process at the small and full size
  ingest_cpu_vs_zstandard_cpu_ratio  the same ratio in CPU seconds (user + system) of each:
                                  what a shared machine's load does not change much
  breakdown_*_cpu_s               where the ingest's CPU goes, measured stage by stage in this
                                  process over the same segments (CPU seconds, best of
                                  `repeat`): decompress (zstd to ~1 MB chunks), line_cut (chunks
                                  to lines), prefilter (records.line_types), json (parse_line of
                                  the lines left), rules (record -> event -> decision), sqlite
                                  (the batches' transactions), startup (`kumo-suppress` import
                                  and config, one process)
Targets: >= 300,000 records/s, within 5x of plain decompression, RSS flat in input size.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KUMO_SUPPRESS, figure, note, reproduce, run_child, write_config  # noqa: E402

import zstandard  # noqa: E402

import logfactory  # noqa: E402  (tests/logfactory.py, on the path via _common)

DOMAINS = 1000
ID, RCPT, DOM = "XIDX", "XRCPTX", "XDOMX"

# kind -> weight (per mille)
MIX = {"Delivery": 450, "Reception": 400, "TransientFailure": 100,
       "Bounce": 30, "Expiration": 10, "OOB": 5, "Feedback": 5}


def _template(kind: str, rng: random.Random, now: int) -> str:
    mbox = f"mbox{rng.randrange(50)}.example"
    rcpt = f"u{RCPT}@{mbox}"
    ts = now - rng.randrange(1, 3 * 86400)
    f = logfactory
    if kind == "Delivery":
        rec = f.delivery(rcpt, DOM, id=ID, timestamp=ts)
    elif kind == "Reception":
        rec = f.reception(rcpt, DOM, id=ID, timestamp=ts)
    elif kind == "TransientFailure":
        rec = f.transient(rcpt, DOM, id=ID, timestamp=ts)
    elif kind == "Bounce":
        if rng.random() < 0.8:
            rec = f.bounce(rcpt, DOM, id=ID, timestamp=ts)
        else:      # a policy block: never suppresses
            rec = f.bounce(rcpt, DOM, id=ID, timestamp=ts, enhanced_code="5.7.1",
                           content="5.7.1 blocked by policy", classification="Uncategorized")
    elif kind == "Expiration":
        rec = f.expiration(rcpt, DOM, id=ID, timestamp=ts)
    elif kind == "OOB":
        rec = f.oob(f"bounces@{DOM}", rcpt, id=ID, timestamp=ts)
    else:
        rec = f.feedback(rcpt, f"News <news@{DOM}>", id=ID, timestamp=ts)
    text = logfactory.to_jsonl([rec]).decode().rstrip("\n")
    text = text.replace("{", "{{").replace("}", "}}")
    return text.replace(ID, "{0}").replace(RCPT, "{1}").replace(DOM, "{2}") + "\n"


def make_segments(directory: Path, records: int, per_segment: int = 100_000, seed: int = 5) -> list[Path]:
    rng = random.Random(seed)
    now = int(time.time())
    kinds = list(MIX)
    templates = {k: [_template(k, rng, now) for _ in range(60)] for k in kinds}
    flat = [t for k in kinds for t in templates[k]]
    weights = [MIX[k] / len(templates[k]) for k in kinds for _ in templates[k]]
    domains = [f"s{d}.example" for d in range(DOMAINS)]
    paths = []
    start = 0
    while start < records:
        n = min(per_segment, records - start)
        chosen = rng.choices(flat, weights, k=n)
        lines = [t.format(f"{start + i:032x}", start + i, domains[(start + i) * 7919 % DOMAINS])
                 for i, t in enumerate(chosen)]
        paths.append(logfactory.write_segment(directory, "".join(lines).encode()))
        start += n
    return paths


def zstandard_lines(paths: list[Path]) -> tuple[float, int]:
    started = time.perf_counter()
    count = 0
    for path in paths:
        with open(path, "rb") as fh:
            reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh), 1 << 20)
            for _line in reader:
                count += 1
    return time.perf_counter() - started, count


def zstd_cli(paths: list[Path]) -> float | None:
    zstd = shutil.which("zstd")
    if not zstd:
        return None
    started = time.perf_counter()
    with open("/dev/null", "wb") as null:
        subprocess.run([zstd, "-dcq", *map(str, paths)], stdout=null, check=True)
    return time.perf_counter() - started


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ingest(root: Path, log_dir: Path) -> tuple[float, float, str, float]:
    """(wall s, peak RSS MB, output, CPU s) of one `kumo-suppress ingest` into a fresh store."""
    config = write_config(root)
    run_child([*KUMO_SUPPRESS, "-c", str(config), "init"])
    before = _children_cpu()
    wall, rss, out = run_child([*KUMO_SUPPRESS, "-c", str(config), "ingest", str(log_dir)])
    return wall, rss, out, _children_cpu() - before


def _cpu(fn) -> tuple[float, object]:
    started = time.process_time()
    value = fn()
    return time.process_time() - started, value


def breakdown(root: Path, paths: list[Path], repeat: int) -> dict[str, float]:
    """CPU seconds of each stage of an ingest of `paths`, measured one by one in this
    process (best of `repeat`; the sqlite stage is one whole in-process ingest)."""
    from exporter.config import load_config
    from exporter.ingest import Ingestor, IngestResult
    from exporter.records import line_types, parse_line
    from exporter.segments import Lines
    from exporter.store import Store

    def chunks():
        for path in paths:
            with open(path, "rb") as fh:
                for _chunk in Lines(fh, 1 << 20)._chunks():
                    pass

    def lines():
        for path in paths:
            with open(path, "rb") as fh:
                for _block in Lines(fh, 1 << 20):
                    pass

    left: list[bytes] = []     # the lines the prefilter leaves to parse_line

    def prefilter(keep: bool = False):
        for path in paths:
            with open(path, "rb") as fh:
                for block in Lines(fh, 1 << 20):
                    if block is not None:
                        types = line_types(block)
                        if keep:
                            left.extend(block[i][:-1] for i, kind in enumerate(types) if kind is None)

    prefilter(keep=True)
    config = load_config(write_config(root / "breakdown"))

    def json_():
        return [parse_line(line) for line in left]

    def rules():
        ingestor, result, pending = Ingestor(None, config), IngestResult(), []
        horizon = ingestor._horizon()
        for line in left:
            ingestor._handle(parse_line(line), result, pending, "bench", horizon)

    def best(fn) -> float:
        return min(_cpu(fn)[0] for _ in range(repeat))

    out = {"decompress": best(chunks)}
    out["line_cut"] = max(0.0, best(lines) - out["decompress"])
    out["prefilter"] = max(0.0, best(prefilter) - out["line_cut"] - out["decompress"])
    out["json"] = best(json_)
    out["rules"] = max(0.0, best(rules) - out["json"])
    spent = [0.0]
    real_commit = Ingestor._commit

    def timed_commit(self, *args, **kw):
        started = time.process_time()
        try:
            return real_commit(self, *args, **kw)
        finally:
            spent[0] += time.process_time() - started
    Ingestor._commit = timed_commit
    try:
        db = root / "breakdown" / "var" / "suppression.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        with Store.open(db) as store:
            ingestor = Ingestor(store, config)
            for path in paths:
                ingestor.ingest_file(path, require_done=False)
    finally:
        Ingestor._commit = real_commit
    out["sqlite"] = spent[0]
    before = _children_cpu()
    subprocess.run([*KUMO_SUPPRESS, "-c", str(root / "breakdown" / "config.toml"), "stats"], check=True,
                   stdout=subprocess.DEVNULL, cwd=root / "breakdown")
    out["startup"] = _children_cpu() - before
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000, help="size of the first RSS run")
    ap.add_argument("--per-segment", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="100k records, small run 20k")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                    help="skip the stage-by-stage CPU breakdown")
    args = ap.parse_args()
    if args.quick:
        args.records, args.small, args.per_segment, args.repeat = 100_000, 20_000, 20_000, 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.workdir))
    try:
        started = time.perf_counter()
        logs = tmp / "logs"
        paths = make_segments(logs, args.records, args.per_segment)
        size = sum(p.stat().st_size for p in paths)
        note(f"{args.records} records in {len(paths)} segments ({size / 1e6:.1f} MB zstd), "
             f"generated in {time.perf_counter() - started:.1f} s")

        # the reference first, so both read from a warm page cache; best of `repeat` runs
        # everywhere (a shared machine's noise only ever adds time)
        zstd_cli(paths)
        z_time, z_count = min(zstandard_lines(paths) for _ in range(args.repeat))
        assert z_count == args.records, (z_count, args.records)
        z_cpu = min(_cpu(lambda: zstandard_lines(paths))[0] for _ in range(args.repeat))
        cli_times = [zstd_cli(paths) for _ in range(args.repeat)]
        cli_time = None if cli_times[0] is None else min(cli_times)

        small_dir = tmp / "small"
        small_dir.mkdir()
        remaining = args.small
        for p in paths:   # the first segments, up to `small` records
            if remaining <= 0:
                break
            shutil.copy2(p, small_dir / p.name)
            remaining -= args.per_segment
        _t, small_rss, _out, _c = ingest(tmp / "run-small", small_dir)
        runs = [ingest(tmp / f"run-large-{i}", logs) for i in range(args.repeat)]
        wall = min(r[0] for r in runs)
        cpu = min(r[3] for r in runs)
        large_rss = max(r[1] for r in runs)
        out = runs[0][2]
        note(out.strip().splitlines()[-1] if out.strip() else "(no output)")

        figure("ingest_records", args.records, "records")
        figure("ingest_seconds", wall, "s")
        note(f"ingest wall times of {args.repeat} fresh-store runs: " + ", ".join(f"{r[0]:.2f} s" for r in runs))
        figure("ingest_records_per_s", args.records / wall, "records/s")
        figure("zstandard_lines_records_per_s", args.records / z_time, "records/s")
        if cli_time is not None:
            figure("zstd_cli_records_per_s", args.records / cli_time, "records/s")
        else:
            note("zstd CLI not found: zstd_cli figures skipped")
        figure("ingest_vs_zstandard_ratio", wall / z_time, "x")
        if cli_time is not None:
            figure("ingest_vs_zstd_cli_ratio", wall / cli_time, "x")
        figure("ingest_cpu_seconds", cpu, "s")
        figure("zstandard_lines_cpu_seconds", z_cpu, "s")
        figure("ingest_cpu_vs_zstandard_cpu_ratio", cpu / z_cpu, "x")
        if args.breakdown:
            stages = breakdown(tmp, paths, args.repeat)
            for name, seconds in stages.items():
                figure(f"breakdown_{name}_cpu_s", seconds, "s")
            note(f"stages sum to {sum(stages.values()):.2f} s of the {cpu:.2f} s CPU of the ingest process; "
                 f"5x zstandard would be {5 * z_cpu:.2f} s")
        figure("ingest_rss_small_records", min(args.small, args.records), "records")
        figure("ingest_peak_rss_small", small_rss, "MB")
        figure("ingest_peak_rss_large", large_rss, "MB")
        note("targets: ingest_records_per_s >= 300000; ingest_vs_zstandard_ratio <= 5; "
             "ingest_peak_rss_large about ingest_peak_rss_small")
        reproduce()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
