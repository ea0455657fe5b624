"""What every section of ``make bench-peers`` shares: the peers' own virtual environments,
running a peer's script inside one, and the rows of the side-by-side table.

Each peer lives in ``benchmarks/peers/<name>/.venv`` (ignored by git), built on first use from
pinned requirements and rebuilt when the pins change. A peer's script (``peer_scripts/``) runs
under that venv's Python and prints one JSON object on its last line of stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
SCRIPTS = HERE / "peer_scripts"


@dataclass(frozen=True, slots=True)
class Row:
    """One measure, Keel beside one peer, measured in the same run.

    ``better`` says which way is good ("lower" for latencies and seconds, "higher" for
    throughput); ``ratio`` is how many times better Keel is (above 1: Keel leads).
    ``goal`` is the ratio the issue asks for, if it names one.
    """

    section: str
    measure: str
    unit: str
    keel: float
    peer: str
    peer_value: float
    better: str = "lower"
    goal: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.keel == 0 and self.peer_value == 0:
            return float("nan")
        if self.better == "lower":
            return self.peer_value / self.keel if self.keel > 0 else float("inf")
        return self.keel / self.peer_value if self.peer_value > 0 else float("inf")

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else bool(self.ratio >= self.goal)


def peer_python(name: str, pins: list[str], *, quiet: bool = True) -> Path:
    """The Python of peer ``name``'s own venv, built (or rebuilt when ``pins`` changed)."""
    root = PEERS_DIR / name
    python = root / ".venv" / "bin" / "python"
    stamp = root / ".venv" / "pins.txt"
    wanted = "\n".join(pins) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"  building the {name} peer's venv ({', '.join(pins)}) …", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(root / ".venv")
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins]
    subprocess.run(cmd, check=True)
    stamp.write_text(wanted)
    return python


def version(python: Path, dist: str) -> str:
    """The installed version of distribution ``dist`` in the venv of ``python``."""
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def run_peer(
    python: Path, script: str, *args: str, timeout: float = 3600, env: dict | None = None
) -> dict[str, Any]:
    """Run ``peer_scripts/<script>`` under ``python``; its last stdout line, decoded as JSON."""
    proc = subprocess.run(
        [str(python), str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{script} failed with exit status {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{script} printed nothing")
    return json.loads(lines[-1])


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown(rows: list[Row]) -> str:
    """The table as BENCHMARKS.md keeps it."""
    out = [
        "| section | measure | Keel | peer | peer's figure | Keel's lead | goal |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        goal = "" if r.goal is None else f"≥ {r.goal:g}× {'met' if r.met else 'NOT met'}"
        out.append(
            f"| {r.section} | {r.measure} ({r.unit}) | {fmt(r.keel)} | {r.peer} "
            f"| {fmt(r.peer_value)} | {r.ratio:.2f}× | {goal} |"
        )
    return "\n".join(out)
