"""The README's command-line tour, run as written on a fresh project, then ``keel serve``
of the example's routes: the trained one answers, the untrained one says how to train it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent


def tour() -> str:
    section = README.read_text().split("### A project", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)


@pytest.mark.slow
def test_the_readme_tour_works_on_a_fresh_project(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("KEEL_")}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", tour()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "shop.payments" in done.stdout and "fraud@1" in done.stdout

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["keel", "serve", "--port", str(port)],
        cwd=tmp_path / "shop",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "keel serve never became ready"
            time.sleep(0.5)
        row = {"card_id": 1, "user_id": 1, "amount": 250.0, "payment_id": 1}
        fraud = httpx.post(f"{url}/v1/routes/fraud/predict", json={"rows": [row]}, timeout=30)
        assert fraud.status_code == 200 and fraud.json()["version"] == "fraud@1", fraud.text
        waiting = httpx.post(
            f"{url}/v1/routes/recommend/predict", json={"rows": [{"user_id": 1}]}, timeout=30
        )
        assert waiting.status_code == 503, waiting.text
        assert "keel train recommend --alias champion" in waiting.json()["error"]
    finally:
        server.terminate()
        server.communicate(timeout=30)
