"""Shared helpers for the benchmarks: figure lines, child processes with their own peak
RSS, a throwaway installation (config + store + snapshot dir).

Every benchmark prints `name: value unit` lines (what tests/test_bench_quick.py looks
for) and the command that reproduces them. Benchmarks print; they never assert timings.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PYTHON = sys.executable
KUMO_SUPPRESS = [PYTHON, "-m", "exporter"]


def figure(name: str, value: float, unit: str) -> None:
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}".replace(",", "")
    else:
        text = str(value)
    print(f"{name}: {text} {unit}", flush=True)


def note(text: str) -> None:
    print(f"# {text}", flush=True)


@contextlib.contextmanager
def scratch(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A temporary directory for one benchmark run, removed afterwards whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def reproduce(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    print(f"reproduce: {shlex.join(['python', str(script), *args])}  (from {ROOT})", flush=True)


# Runs argv[2:] and writes its peak RSS (KB) and wall time (s) to argv[1]. A small launcher process: on
# Linux a child's ru_maxrss starts from its parent's RSS at fork time, so measuring the
# command from this (big) benchmark process directly would report our own memory.
_LAUNCHER = (
    "import os, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_pid, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(f'{usage.ru_maxrss} {time.perf_counter() - t}')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_child(argv: list[str], *, cwd: Path | None = None) -> tuple[float, float, str]:
    """Run argv to completion in a fresh, small launcher; (wall seconds of argv, its peak
    RSS in MB, its stdout+stderr). Exits with the output if argv fails."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        proc = subprocess.run([PYTHON, "-c", _LAUNCHER, rss.name, *argv], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        text = proc.stdout.decode(errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}:\n{text}")
        peak_kb, wall = rss.read().split()
    return float(wall), int(peak_kb) / 1024.0, text


def write_config(root: Path, **extra: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ['[store]', 'path = "var/suppression.db"', '[ingest]', 'log_dirs = ["logs"]',
             '[export]', 'dir = "snapshots"']
    for section, body in extra.items():
        lines += [f"[{section}]", body]
    path = root / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def size_arguments(doc: str) -> argparse.Namespace:
    """--sizes (new pairs; 200k and 2M by default), --quick (20k only), --workdir."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    ap.add_argument("--quick", action="store_true", help="20k new pairs only")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.sizes = [20_000]
    return args
