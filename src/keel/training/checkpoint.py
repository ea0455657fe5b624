"""Checkpoints that survive preemption: written atomically, verified on read.

A checkpoint is one file ``step-<n>.ckpt``: a header (magic, the payload's SHA-256, the
length of a JSON metadata block), the metadata, then the trainer's payload bytes. It is
written to a temporary file, fsynced, renamed into place and the folder fsynced, so a crash
leaves either the previous checkpoint or the new one, never half of one. Reading walks from
the newest file back and returns the first whose checksum holds: a torn or corrupted file is
reported and skipped, never loaded.

Example
-------
>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp(), keep=2)
>>> for step in (10, 20, 30):
...     _ = store.save(step, b"weights at %d" % step, {"rows": [0, step]})
>>> cp = store.latest()
>>> (cp.step, cp.payload, cp.meta["rows"], [c.step for c in store.list()])
(30, b'weights at 30', [0, 30], [20, 30])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from keel.errors import ValidationError

__all__ = ["Checkpoint", "CheckpointStore", "Preemption"]

logger = logging.getLogger(__name__)

MAGIC = b"KEELCKP1"
_HEADER = struct.Struct(">8s32sQ")  # magic, sha256 of meta + payload, meta length


@dataclass(frozen=True, slots=True)
class Checkpoint:
    step: int
    meta: dict[str, Any]
    payload: bytes
    path: Path


class CheckpointStore:
    """A folder of checkpoints of one training run, newest kept, oldest pruned.

    Parameters
    ----------
    root
        The run's checkpoint folder (created when missing).
    keep
        How many good checkpoints to keep; older ones are deleted after a new one lands.
    """

    def __init__(self, root: str | Path, *, keep: int = 3) -> None:
        if keep < 1:
            raise ValidationError(f"checkpoint keep must be at least 1, got {keep}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        #: Files found torn or corrupt by the last :meth:`latest` (newest first).
        self.rejected: list[Path] = []

    def _path(self, step: int) -> Path:
        return self.root / f"step-{step:012d}.ckpt"

    def _files(self) -> list[Path]:
        return sorted(self.root.glob("step-*.ckpt"))

    def save(self, step: int, payload: bytes, meta: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint of ``step`` atomically (temporary file, fsync, rename)."""
        meta_bytes = json.dumps({"step": step, "saved_at": time.time(), **(meta or {})}).encode()
        digest = hashlib.sha256(meta_bytes + payload).digest()
        target = self._path(step)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(MAGIC, digest, len(meta_bytes)))
            f.write(meta_bytes)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(self.root)
        for old in self._files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return target

    def read(self, path: Path) -> Checkpoint:
        """One checkpoint file, verified; :class:`ValidationError` when torn or corrupt."""
        data = path.read_bytes()
        if len(data) < _HEADER.size:
            raise ValidationError(f"checkpoint {path.name} is truncated ({len(data)} bytes)")
        magic, digest, meta_len = _HEADER.unpack_from(data)
        body = data[_HEADER.size :]
        if magic != MAGIC:
            raise ValidationError(f"checkpoint {path.name} is not a Keel checkpoint")
        if len(body) < meta_len or hashlib.sha256(body).digest() != digest:
            raise ValidationError(f"checkpoint {path.name} fails its checksum (torn or corrupt)")
        meta = json.loads(body[:meta_len])
        return Checkpoint(int(meta["step"]), meta, body[meta_len:], path)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint whose checksum holds; torn or corrupt ones are skipped and
        listed in :attr:`rejected`."""
        self.rejected = []
        for path in reversed(self._files()):
            try:
                return self.read(path)
            except (ValidationError, ValueError, OSError) as exc:
                logger.warning("skipping checkpoint %s: %s", path, exc)
                self.rejected.append(path)
        return None

    def list(self) -> list[Checkpoint]:
        """Every good checkpoint, oldest first."""
        out = []
        for path in self._files():
            try:
                out.append(self.read(path))
            except (ValidationError, ValueError, OSError):
                continue
        return out

    def clear(self) -> None:
        for path in self._files():
            path.unlink(missing_ok=True)


class Preemption:
    """Turns SIGTERM (a preemptible machine being reclaimed, a scheduler evicting the job)
    into a flag the training loop checks between steps, so it can checkpoint and exit.

    Use as a context manager in the main thread; elsewhere it only offers :meth:`request`.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: Any = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        self._event.set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._event.set()

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class Preempted(Exception):
    """The run stopped at a checkpoint because it was asked to (SIGTERM)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"preempted at step {step}; checkpoint saved, resume to finish")
        self.step = step


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
