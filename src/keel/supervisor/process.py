"""One run of a component: a child process in a process group of its own, its output
appended to the component's log file.

Its own group keeps a terminal's Ctrl-C for the supervisor alone (which then stops the
children in order), and lets a signal reach whatever the component itself started.

Example
-------
>>> import sys, tempfile
>>> from keel.supervisor.component import Component
>>> log_path = Path(tempfile.mkdtemp()) / "hello.log"
>>> child = Child.start(Component("hello", (sys.executable, "-c", "print('hi')")), log_path)
>>> child.wait(30)
0
>>> tail(log_path)[-1]
'hi'
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from keel.jobs.worker import process_started
from keel.supervisor.component import Component

__all__ = ["Child", "tail"]


class Child:
    """A started component process (see :meth:`start`)."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.pid = proc.pid
        self.started = process_started(proc.pid)  # None if it is gone already
        self.started_at = time.time()
        self._t0 = time.monotonic()

    @classmethod
    def start(
        cls, component: Component, log_path: Path, env: dict[str, str] | None = None
    ) -> Child:
        """Start ``component``, its stdout and stderr appended to ``log_path``.

        Raises ``OSError`` when the command cannot be started (no such program, say).
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        base = dict(os.environ if env is None else env)
        with log_path.open("ab") as out:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            out.write(f"[keel up] {stamp} starting: {shlex.join(component.argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                component.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**base, **component.env},
                cwd=component.cwd,
                process_group=0,
            )
        return cls(proc, log_path)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._t0

    def poll(self) -> int | None:
        """Its return code once it has ended (negative: the signal that killed it)."""
        return self.proc.poll()

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for it to end; its return code, or None."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to its whole process group (nothing if the group is gone)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, grace_s: float) -> int:
        """SIGTERM, up to ``grace_s`` seconds to end, then SIGKILL; its return code. What it
        left behind in its group is killed too."""
        self.signal(signal.SIGTERM)
        code = self.wait(grace_s)
        if code is None:
            self.signal(signal.SIGKILL)
            code = self.proc.wait()
        self.signal(signal.SIGKILL)  # stragglers of the group, if any
        return code


def tail(path: Path, lines: int = 20, max_bytes: int = 16_384) -> list[str]:
    """The last ``lines`` lines of the text file at ``path`` (none if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - max_bytes, 0))
            data = fh.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes:
        text = text[1:]  # the first line read is likely cut
    return text[-lines:]
