"""The benchmarks must keep running: `bench/run --quick` prints every expected figure
with a positive number. No timing threshold is ever asserted here (figures depend on the
machine); the targets live in docs/performance.md and in each script's output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"^(?P<name>[a-z0-9_]+): (?P<value>-?[0-9.]+(?:e-?\d+)?) (?P<unit>\S+)", re.M)

EXPECTED = {
    "ingest": ["ingest_records", "ingest_seconds", "ingest_records_per_s", "zstandard_lines_records_per_s",
               "ingest_vs_zstandard_ratio", "ingest_peak_rss_small", "ingest_peak_rss_large"],
    "export": ["export_entries", "export_full_seconds", "export_nochange_seconds",
               "export_one_domain_seconds", "export_peak_rss", "export_floor_seconds",
               "export_full_vs_floor_ratio"],
    "write": ["write_20k_entries_per_s", "write_20k_floor_per_s", "write_20k_vs_floor_ratio"],
    "write_layouts": ["layouts_20k_floor_s", "layouts_20k_store_s", "layouts_20k_one_row_s",
                      "layouts_20k_store_vs_floor", "layouts_20k_one_row_vs_floor",
                      "layouts_20k_store_bytes_per_entry", "layouts_20k_one_row_bytes_per_entry",
                      "layouts_20k_long_store_vs_floor", "layouts_20k_long_one_row_vs_floor"],
    "store_size": ["store_active_entries", "store_bytes_per_active_entry", "store_floor_bytes_per_entry"],
    "naive_sqlite": ["naive_sqlite_miss_us", "naive_sqlite_hit_us", "snapshot_python_dict_us",
                     "naive_vs_snapshot_ratio"],
}


def test_bench_run_quick_prints_every_figure():
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run([str(ROOT / "bench" / "run"), "--quick"], capture_output=True, text=True,
                          timeout=170, env=env, cwd=ROOT)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    sections = re.split(r"^# == ", out, flags=re.M)[1:]
    by_section = {s.split("\n", 1)[0].split(":")[0].strip(): s for s in sections}
    for name, figures in EXPECTED.items():
        text = by_section.get(name)
        assert text is not None, f"bench/run printed no {name} section:\n{out}"
        found = {m["name"]: float(m["value"]) for m in FIGURE.finditer(text)}
        for fig in figures:
            assert fig in found, f"{name}: figure {fig} missing:\n{text}"
            assert found[fig] > 0, f"{name}: figure {fig} is not positive: {found[fig]}"
        assert "reproduce: " in text, f"{name}: no reproduce line"
    if Path("/usr/bin/zstd").exists():
        assert "zstd_cli_records_per_s" in by_section["ingest"]
    # benchmarks other engineers own: present => they ran and printed figures
    for name in ("lua_check", "webhook"):
        if (ROOT / "bench" / f"{name}.py").exists():
            text = by_section.get(name, "")
            assert list(FIGURE.finditer(text)), f"{name}: no figure lines:\n{text}"


SHARDS = [f"{layout}_{figure}" for layout in ("single", "sharded", "hashed")
          for figure in ("first_export_seconds", "one_new_entry_seconds", "one_new_entry_bytes_rewritten",
                         "domain_bytes", "rewritten_fraction", "bytes_per_entry")]


def test_shards_bench_quick_prints_every_figure():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "shards.py"), "--quick"], capture_output=True,
                          text=True, timeout=170, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = {m["name"]: float(m["value"]) for m in FIGURE.finditer(proc.stdout)}
    for fig in SHARDS:
        assert found.get(fig, 0) > 0, f"figure {fig} missing or not positive:\n{proc.stdout}"
    assert "reproduce: " in proc.stdout
