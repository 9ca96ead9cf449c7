"""Webhook receiver throughput over loopback, the server of today beside the old one.

Starts `kumo-suppress serve` (a real process, temp store, no fsync tuning) and drives it
with CLIENTS concurrent keep-alive clients (separate processes, so the client side is not
the bottleneck): single-record posts, then batches of 100. Every record is a Bounce for a
distinct recipient (the worst case: each one is a new suppression); a third phase sends
batches with 1 Bounce in 10 records, the rest Delivery, closer to a real hook stream.
Afterwards the store must hold exactly as many entries as records
answered 2xx, i.e. every 2xx was committed.

The same phases run against the previous server (the standard library's
ThreadingHTTPServer, exporter/webhook.py before it moved to aiohttp), checked out of this
repository's git history into a temp dir for the run and driving today's store, ingest and
records code, so only the HTTP layer differs. Both servers run at once, each on a fresh
store, and take turns in short slices of every phase (which goes first alternates): on a
shared machine another job can halve the speed of a whole minute, and slices that
alternate every second or so give both servers the same share of it. A figure sums a
phase's slices (p99 over all its posts). Without git history the old server is skipped,
saying so.

    python bench/webhook.py [--quick] [--clients 4] [--singles N] [--batches N] [--slices N] [--no-old]

Prints `name: value unit` lines (`old_` before the old server's). Targets: >= 1000 single
posts/s, >= 20000 records/s batched. batched_100_server_cpu is the server process's CPU
time (user + system, Linux) per record of the batched phase: the work a record costs, which
other jobs on a shared machine disturb far less than they do the throughput.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bounce(rcpt: str, ts: int, kind: str = "Bounce") -> dict:
    return {"type": kind, "id": os.urandom(16).hex(), "sender": "bounces@example.com", "recipient": rcpt,
            "queue": "example.net", "site": "", "size": 2048,
            "response": {"code": 550, "enhanced_code": {"class": 5, "subject": 1, "detail": 1},
                         "content": "5.1.1 user unknown", "command": None},
            "peer_address": None, "timestamp": ts, "created": ts, "num_attempts": 1,
            "bounce_classification": "InvalidRecipient", "meta": {}, "headers": {"From": "news@example.com"},
            "delivery_protocol": "ESMTP", "reception_protocol": "ESMTP", "nodeid": "bench"}


def client(args) -> tuple[int, int, int, float, float, list[float]]:
    """(requests answered 2xx, records in them, other answers, start, end, latencies); the
    bodies are built before the clock starts."""
    port, tag, requests, per_request, every = args
    ts = int(time.time()) - 60
    bodies = []
    for i in range(requests):
        recs = [bounce(f"{tag}-{i}-{j}@example.net", ts, "Bounce" if j % every == 0 else "Delivery")
                for j in range(per_request)]
        bodies.append(json.dumps(recs[0] if per_request == 1 else recs).encode())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ok = records = other = 0
    latencies = []
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    started = time.time()
    for body in bodies:
        sent = time.perf_counter()
        conn.request("POST", "/v1/events", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - sent)
        if 200 <= resp.status < 300:
            ok += 1
            records += per_request
        else:
            other += 1
    ended = time.time()
    conn.close()
    return ok, records, other, started, ended, latencies


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def run_phase(pool, port: int, name: str, clients: int, requests: int, per_request: int,
              every: int = 1) -> tuple[float, int, int, list[float]]:
    """(seconds from the first client's start to the last one's end, posts answered 2xx,
    records in them, every post's latency)."""
    args = [(port, f"{name}{c}", requests, per_request, every) for c in range(clients)]
    results = pool.map(client, args)
    elapsed = max(r[4] for r in results) - min(r[3] for r in results)
    ok = sum(r[0] for r in results)
    records = sum(r[1] for r in results)
    other = sum(r[2] for r in results)
    if other:
        print(f"{name}_non_2xx: {other} requests", flush=True)
    return elapsed, ok, records, [lat for r in results for lat in r[5]]


# the module imports its siblings relatively; beside them in a temp dir it imports the package's
OLD_SERVER = "exporter/webhook.py"
OLD_SERVER_LAUNCH = ("import sys; from exporter.config import load_config; import old_webhook_server as w; "
                     "sys.exit(w.serve(load_config(sys.argv[1])))")


def old_server_source() -> str | None:
    """The stdlib server as it was in the last commit that had it, or None."""
    try:
        deleted_in = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--diff-filter=D", "--",
                                     OLD_SERVER], capture_output=True, text=True, check=True).stdout.strip()
        if not deleted_in:
            return None
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{deleted_in}^:{OLD_SERVER}"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


# figure -> (unit, True when higher is better)
FIGURES = {"single_posts": ("posts/s", True), "single_latency_p99": ("ms", False),
           "batched_100": ("records/s", True), "batched_100_requests": ("posts/s", True),
           "batched_100_latency_p99": ("ms", False), "batched_100_mixed": ("records/s", True),
           "single_server_cpu": ("us/post", False), "batched_100_server_cpu": ("us/record", False)}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Running:
    """One server `argv` (CONFIG in it stands for the config's path) on a fresh store."""

    def __init__(self, label: str, argv: list[str], env: dict):
        self.label = label
        self.tmp = Path(tempfile.mkdtemp(prefix="kumo-webhook-bench-"))
        self.port = free_port()
        config = self.tmp / "config.toml"
        config.write_text(
            f'[store]\npath = "suppression.db"\n[ingest]\nlog_dirs = []\n[export]\ndir = "snap"\n'
            f'[webhook]\nenabled = true\nlisten = "127.0.0.1:{self.port}"\ntoken = "{TOKEN}"\nmax_body = "10MB"\n')
        subprocess.run([sys.executable, "-m", "exporter", "-c", str(config), "init"], cwd=self.tmp, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        self.log = open(self.tmp / "serve.log", "wb")
        self.proc = subprocess.Popen([str(config) if a == "CONFIG" else a for a in argv], cwd=self.tmp,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.expected = 0          # entries the store must hold: one per Bounce answered 2xx

    def wait_listening(self) -> bool:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    print((self.tmp / "serve.log").read_text(), file=sys.stderr)
                    return False
                time.sleep(0.1)

    def stop(self) -> bool:
        """SIGTERM; True when it exited 0 and its store holds exactly the entries answered 2xx."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        from exporter.store import Store
        try:
            with Store.open(self.tmp / "suppression.db", create=False) as store:
                entries = store.stats(int(time.time()))["entries"]
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if entries != self.expected or self.proc.returncode != 0:
            print(f"# MISMATCH {self.label or 'new_'}: {entries} entries in store for {self.expected} Bounce "
                  f"records answered 2xx; server exit {self.proc.returncode}", flush=True)
            return False
        return True


# phase -> (records per post, one Bounce in `every` records)
PHASES = {"single": (1, 1), "batch": (100, 1), "mixed": (100, 10)}


def measure(pool, servers: list[Running], opts, singles: int, batches: int) -> dict[str, dict[str, float]]:
    """Every phase in `opts.slices` slices, the servers taking turns slice by slice (which
    goes first alternates): both see the same background load, however it changes."""
    totals = {srv.label: {} for srv in servers}
    for phase, (per_post, every) in PHASES.items():
        posts = singles if per_post == 1 else batches
        per_slice = max(1, posts // opts.slices)
        for slice_no in range(opts.slices):
            for srv in (servers if slice_no % 2 == 0 else servers[::-1]):
                acc = totals[srv.label].setdefault(phase, {"t": 0.0, "ok": 0, "records": 0, "lat": [], "cpu": 0.0})
                cpu_before = cpu_seconds(srv.proc.pid)
                elapsed, ok, records, latencies = run_phase(pool, srv.port, f"{phase}{slice_no}-", opts.clients,
                                                            per_slice, per_post, every)
                cpu_after = cpu_seconds(srv.proc.pid)
                acc["t"] += elapsed
                acc["ok"] += ok
                acc["records"] += records
                acc["lat"] += latencies
                if cpu_before is not None and cpu_after is not None:
                    acc["cpu"] += cpu_after - cpu_before
                srv.expected += records // every
    figures = {}
    for label, phases in totals.items():
        single, batch, mixed = phases["single"], phases["batch"], phases["mixed"]
        figures[label] = {
            "single_posts": single["ok"] / single["t"], "single_latency_p99": p99(single["lat"]),
            "batched_100": batch["records"] / batch["t"], "batched_100_requests": batch["ok"] / batch["t"],
            "batched_100_latency_p99": p99(batch["lat"]), "batched_100_mixed": mixed["records"] / mixed["t"]}
        if single["cpu"]:
            figures[label]["single_server_cpu"] = single["cpu"] / single["ok"] * 1e6
        if batch["cpu"]:
            figures[label]["batched_100_server_cpu"] = batch["cpu"] / batch["records"] * 1e6
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 30 s)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--singles", type=int, default=None, help="single-record posts per client")
    ap.add_argument("--batches", type=int, default=None, help="100-record batches per client")
    ap.add_argument("--slices", type=int, default=None, help="turns per phase, the servers alternating")
    ap.add_argument("--no-old", action="store_true", help="skip the old server")
    opts = ap.parse_args()
    singles = opts.singles or (400 if opts.quick else 1500)
    batches = opts.batches or (30 if opts.quick else 150)
    opts.slices = opts.slices or (2 if opts.quick else 10)
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    print(f"# {opts.clients} keep-alive clients; each phase in {opts.slices} slices, the servers taking turns",
          flush=True)
    sys.path.insert(0, str(ROOT))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    commands = [("", [sys.executable, "-m", "exporter", "-c", "CONFIG", "serve"], env)]
    with tempfile.TemporaryDirectory(prefix="kumo-old-server-") as old_dir:
        source = None if opts.no_old else old_server_source()
        if source is not None:
            (Path(old_dir) / "old_webhook_server.py").write_text(source.replace("from .", "from exporter."))
            commands.append(("old_", [sys.executable, "-c", OLD_SERVER_LAUNCH, "CONFIG"],
                             {**env, "PYTHONPATH": os.pathsep.join([old_dir, str(ROOT)])}))
            print("# old_: the stdlib ThreadingHTTPServer this one replaced, checked out of git history, "
                  "over the same store, ingest and records code", flush=True)
        elif not opts.no_old:
            print("# old server: not in this checkout's git history, skipped", flush=True)
        servers = [Running(label, argv, server_env) for label, argv, server_env in commands]
        ok = True
        try:
            if not all(srv.wait_listening() for srv in servers):
                return 1
            with mp.get_context("fork").Pool(opts.clients) as pool:
                for srv in servers:
                    pool.map(client, [(srv.port, f"warm{c}", 5, 1, 1) for c in range(opts.clients)])
                    srv.expected += 5 * opts.clients
                figures = measure(pool, servers, opts, singles, batches)
        finally:
            for srv in servers:
                ok = srv.stop() and ok
    if not ok:
        return 1
    for name, (unit, _higher) in FIGURES.items():
        for srv in servers:
            if name not in figures[srv.label]:
                continue
            value = figures[srv.label][name]
            print(f"{srv.label}{name}: {value:.2f} {unit}" if unit == "ms" else f"{srv.label}{name}: {value:.0f} {unit}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
