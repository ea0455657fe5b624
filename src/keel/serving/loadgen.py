"""A lean HTTP load generator for ``keel bench`` and the benchmarks.

Closed loop: N connections, each sending its next request when the previous answer arrives,
for a fixed time; or paced: each connection sends at a fixed interval, the connections' sends
spread evenly over it (one arrival every 1/rate s, not all N at once). It speaks just enough
HTTP/1.1 (keep-alive, Content-Length) to cost far less CPU per request than the server it
measures — general HTTP clients do not, and on a small machine the load generator and the
server share the cores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")
        )


async def _connection(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    headers: dict[str, str],
    stop: float,
    lat: list[float],
    errors: list[str],
    interval: float | None = None,
    phase: float = 0.0,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    i = 0
    due = time.perf_counter() + phase
    try:
        while time.perf_counter() < stop:
            if interval is not None:  # paced: a fixed rate, not as fast as answers come
                due += interval
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            body = bodies[i % len(bodies)]
            i += 1
            t = time.perf_counter()
            writer.write(
                b"POST " + path.encode() + b" HTTP/1.1\r\nhost: keel\r\n"
                b"content-type: application/json\r\n"
                + extra
                + b"content-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                lat.append((time.perf_counter() - t) * 1e3)
            else:
                errors.append(head.split(b"\r\n", 1)[0].decode())
    finally:
        writer.close()


async def _run(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    concurrency: int,
    seconds: float,
    headers: dict[str, str],
    rate: float | None = None,
) -> LoadResult:
    lat: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    stop = start + seconds
    await asyncio.gather(
        *(
            _connection(
                host,
                port,
                path,
                bodies[c::concurrency] or bodies,
                headers,
                stop,
                lat,
                errors,
                None if rate is None else concurrency / rate,
                # Staggered: N connections starting together would send in bursts of N.
                0.0 if rate is None else c / rate,
            )
            for c in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - start
    return LoadResult(concurrency, len(lat), len(errors), elapsed, np.asarray(lat))


def run_load(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    rate: float | None = None,
) -> LoadResult:
    """Drive ``POST path`` with ``bodies`` (cycled) from ``concurrency`` connections — as
    fast as answers come, or paced at ``rate`` requests/s in total."""
    return asyncio.run(_run(host, port, path, bodies, concurrency, seconds, headers or {}, rate))
