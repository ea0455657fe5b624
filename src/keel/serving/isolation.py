"""A shadow's candidate in its own process, at a lower CPU priority.

In the server's process the candidate's forward passes compete with the event loop for the
interpreter lock and for the cores. In a process of its own, started with a higher nice value,
it holds no lock the server needs and the kernel runs the server's threads (and its clients,
on a shared machine) first: the candidate takes the CPU time left over. The server keeps
everything else (feature joins, labels, the statistics) and sends stacked input tensors with
the primary's outputs; the process answers with the discrepancies, its own outputs and how
long the forward pass took. A recommender's process opens the same published vector index
(memory-mapped) as the server, or builds its own from the version's catalogue.

The process is a fresh interpreter (never a fork of the threaded server, and unlike
multiprocessing's start methods it does not import the server's ``__main__``): it rebuilds the
candidate from its registry artifact and speaks over a socket pair.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import numpy as np

from keel.errors import KeelError, UnavailableError, ValidationError
from keel.runtimes import BUILTIN_TEXT, Runtime, runtime_for
from keel.runtimes.recommend import RANKING, is_recommender, is_two_tower, published_index
from keel.serving.routes import Deployed, load
from keel.serving.traffic import compare_rankings, discrepancy

__all__ = [
    "CandidateProcess",
    "CandidateSpec",
    "Compared",
    "candidate_spec",
    "compare_outputs",
]

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 300.0  # building a large candidate (an embedding model) takes a while
STOP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CandidateSpec:
    """What a fresh process needs to rebuild a candidate: a builtin's reference, or a
    registry artifact's bytes and how to read them."""

    version: str
    device: str = "cpu"
    threads: int | None = None
    builtin: str | None = None
    fmt: str | None = None
    data: bytes = field(default=b"", repr=False)
    loader: dict[str, Any] = field(default_factory=dict)
    index_root: str | None = None  # a recommender's IndexStore (its version's index)

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.version, self.device, self.threads)


def candidate_spec(
    deployed: Deployed,
    registry: Any,
    *,
    device: str = "cpu",
    threads: int | None = None,
    indexes: Any = None,
) -> CandidateSpec | None:
    """The spec to rebuild ``deployed`` elsewhere, or None when it only exists here (a
    version the registry cannot hand out). A recommender's names the store of its index."""
    if deployed.version == BUILTIN_TEXT:
        return CandidateSpec(
            deployed.version, device, threads, builtin=f"builtin:{deployed.version}"
        )
    name, _, number = deployed.version.rpartition("@")
    if registry is None or not name or not number.isdigit():
        return None
    v = registry.get(name, int(number))
    return CandidateSpec(
        deployed.version,
        device,
        threads,
        fmt=v.format,
        data=registry.artifacts.get(v.artifact),
        loader=dict(v.loader),
        index_root=(
            str(indexes.root) if indexes is not None and is_recommender(deployed.runtime) else None
        ),
    )


class CandidateProcess:
    """One candidate process: :meth:`load` a spec, then :meth:`predict` batches on it.

    Not thread-safe: one thread (the shadow runner's) drives it; :meth:`close` may come from
    another once that thread has stopped or is stuck waiting."""

    def __init__(self, *, nice: int = 19) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The same imports as here (a torch candidate's factory may live in the app's code).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        with theirs:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    # Niceness is per thread and inherited on Linux: set it before anything
                    # is imported, so the imports and every thread a runtime starts have it.
                    f"import os; os.nice({int(nice)}); import {__name__} as m; m.main()",
                    str(theirs.fileno()),
                ],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        self._conn = Connection(ours.detach())
        self._lock = threading.Lock()
        self._loaded: tuple[str, str, int | None] | None = None
        self._twin: Deployed | None = None
        self.transport_s = 0.0  # round trips minus the process's own compute, summed

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None and not self._conn.closed

    def load(self, spec: CandidateSpec, local: Deployed) -> Deployed:
        """Rebuild the candidate in the process; returns a :class:`Deployed` whose runtime
        forwards to it (and reads inputs and feature names from ``local``)."""
        if self._loaded == spec.key and self._twin is not None:
            return self._twin
        self._call("load", spec, timeout=LOAD_TIMEOUT_S)
        self._loaded = spec.key
        self._twin = Deployed(
            RemoteRuntime(self, local.runtime), local.version, local.loaded_at, local.sample_output
        )
        return self._twin

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs, compute_s = self._call("predict", inputs)
        self.transport_s += max(time.perf_counter() - started - compute_s, 0.0)
        return outputs

    def compare(
        self,
        inputs: dict[str, np.ndarray],
        primary: dict[str, np.ndarray],
        compare: str,
        top_k: int,
    ) -> Compared:
        """:func:`compare_outputs`, run in the process."""
        return Compared(*self._call("compare", (inputs, primary, compare, top_k)))

    def _call(self, kind: str, body: Any, timeout: float | None = None) -> Any:
        with self._lock:
            try:
                self._conn.send((kind, body))
                if timeout is not None and not self._conn.poll(timeout):
                    self.close()
                    raise UnavailableError(
                        f"the shadow candidate's process did not answer {kind!r} within "
                        f"{timeout:.0f} s; it was stopped"
                    )
                status, answer = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._conn.close()
                raise UnavailableError(
                    f"the shadow candidate's process exited (exit code "
                    f"{self._process.poll()}): {type(exc).__name__}"
                ) from None
        if status != "ok":
            raise KeelError(f"shadow candidate failed: {answer}")
        return answer

    def close(self) -> None:
        """Stop the process: asked first, then terminated, then killed."""
        if not self._conn.closed:
            try:
                self._conn.send(None)
            except OSError:
                logger.debug("the shadow candidate's process had already gone")
            self._conn.close()
        for stop in (None, self._process.terminate, self._process.kill):
            if stop is not None:
                stop()
            try:
                self._process.wait(STOP_TIMEOUT_S)
                return
            except subprocess.TimeoutExpired:
                continue


class Compared(NamedTuple):
    """A stacked batch compared: the discrepancy per example, the change of score of the
    items both recommend (recommendations only), the candidate's first compared output, and
    its forward pass's seconds."""

    diffs: np.ndarray
    score_diffs: np.ndarray | None
    candidate: np.ndarray
    predict_s: float


def compare_outputs(
    runtime: Runtime,
    inputs: dict[str, np.ndarray],
    primary: dict[str, np.ndarray],
    compare: str,
    top_k: int,
) -> Compared:
    """Run the candidate on a stacked batch and compare its outputs with the primary's
    (``primary``: one output, or a recommender's items and scores for ``overlap``)."""
    started = time.perf_counter()
    outputs = runtime.predict(inputs)
    predict_s = time.perf_counter() - started
    if compare == "overlap":
        items, scores = RANKING
        diffs, score_diffs = compare_rankings(
            primary[items], outputs[items], primary[scores], outputs[scores]
        )
        return Compared(diffs, score_diffs, np.asarray(outputs[items]), predict_s)
    name, values = next(iter(primary.items()))
    candidate = np.asarray(outputs[name])
    return Compared(discrepancy(compare, values, candidate, top_k), None, candidate, predict_s)


class RemoteRuntime(Runtime):
    """The candidate as the shadow runner sees it: the local runtime's inputs and feature
    names (the feature join stays in the server), forward passes in the process."""

    def __init__(self, process: CandidateProcess, local: Runtime) -> None:
        self._process = process
        self.inputs = local.inputs
        self.outputs = local.outputs
        self.platform = local.platform
        self.feature_names = list(getattr(local, "feature_names", []))
        self.task = getattr(local, "task", None)  # how the server reads its outputs

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._process.predict(inputs)


def _build(spec: CandidateSpec) -> Runtime:
    if spec.builtin is not None:
        return load(spec.builtin, None, device=spec.device, threads=spec.threads).runtime
    if spec.fmt is None:
        raise ValidationError(f"candidate {spec.version}: its spec names no builtin and no format")
    from keel.index import IndexStore
    from keel.registry.formats import deserialize

    model = deserialize(spec.fmt, spec.data, spec.loader)
    index = None
    if spec.index_root is not None and is_two_tower(model):
        name, _, number = spec.version.rpartition("@")
        index = published_index(IndexStore(spec.index_root), name, int(number))
    runtime = runtime_for(model, spec.fmt, device=spec.device, index=index, threads=spec.threads)
    runtime.warmup()
    return runtime


def main() -> None:
    """The candidate process's loop: answer each request with ("ok", answer) or ("error",
    reason) until the server says stop or goes away."""
    # The server stops this process through close(); a terminal's Ctrl-C is for the server.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    runtime: Runtime | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        if message is None:
            return
        kind, body = message
        try:
            if kind == "load":
                runtime = _build(body)
                answer: Any = None
            elif runtime is None:
                raise UnavailableError("no candidate loaded in the shadow process")
            elif kind == "compare":
                answer = tuple(compare_outputs(runtime, *body))
            else:
                started = time.perf_counter()
                outputs = runtime.predict(body)
                answer = (outputs, time.perf_counter() - started)
            reply = ("ok", answer)
        except Exception as exc:  # reported to the server, which counts it against the candidate
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
