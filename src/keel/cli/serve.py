"""``keel serve`` and ``keel bench``."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from keel.cli._common import console, friendly, project
from keel.errors import NotFoundError, ValidationError
from keel.project import Project
from keel.serving.client import call

_TEXT = """wireless noise cancelling headphones with a battery that lasts all week for music
calls and video meetings a gripping thriller set in post war berlin organic cotton sweater for
everyday wear handmade ceramic plant pot for balcony herbs and tomatoes waterproof running shoes
for marathon training fair trade coffee beans roasted in small batches"""
WORDS = tuple(_TEXT.split())


def build_server(proj: Project, only: list[str] | None = None, *, clock: Any = None) -> Any:
    from keel.serving import InferenceServer

    routes = [r for r in proj.settings.routes if not only or r.name in only]
    if not routes:
        raise ValidationError("no routes to serve: add [[routes]] to keel.toml (see README)")
    needs_features = any(r.features or (r.fast_path and r.fast_path.features) for r in routes)
    needs_registry = any(not r.model.startswith("builtin:") for r in routes)
    server = InferenceServer(
        routes,
        registry=proj.registry if needs_registry else None,
        features=proj.features if needs_features else None,
        # The log carries registry events (hot swaps) and monitored routes' predictions.
        log_=proj.log if needs_registry or any(r.monitor for r in routes) else None,
        follow_features=needs_features,
        clock=clock,
        # A recommender's route serves each version with its own published vector index.
        indexes=proj.indexes if needs_registry else None,
    )
    server.load_all()
    return server


def _fast_routes(proj: Project, only: list[str] | None) -> list[Any]:
    """The routes (among ``only``) that have a fast path; a clear error when none has."""
    routes = [r for r in proj.settings.routes if not only or r.name in only]
    fast = [r for r in routes if r.fast_path is not None]
    if not fast:
        names = ", ".join(r.name for r in routes) or "none"
        raise ValidationError(
            f"no fast path to serve among the routes ({names}): add [routes.fast_path] "
            "with the small model (and the views it reads) to a route in keel.toml"
        )
    return fast


def build_fast_server(proj: Project, only: list[str] | None = None) -> Any:
    """The routes' fast paths as a server of their own (``keel serve --fast-only``): each
    route answers, unbatched, on its fast path's checkpoint, reading an in-process replica of
    the views it needs that this process keeps current from the log — nothing it shares with
    the main server's process but the log and the registry."""
    from keel.config import RouteConfig
    from keel.serving import InferenceServer

    configs = [
        RouteConfig(
            name=r.name,
            model=r.fast_path.model,
            features=list(r.fast_path.features),
            batching=False,
            max_queue=r.max_queue,
        )
        for r in _fast_routes(proj, only)
        if r.fast_path is not None
    ]
    views = [f for c in configs for f in c.features]
    replica = proj.features.replica(views, name="fast") if views else None
    if replica is not None:
        replica.materialize()  # caught up before the first answer
    server = InferenceServer(
        configs,
        registry=proj.registry,
        features=replica,
        log_=proj.log,  # the registry's events: the fast model's alias moves hot-swap it
        follow_features=replica is not None,
        indexes=proj.indexes,
    )
    server.load_all()
    return server


def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="address to bind"),
    port: int = typer.Option(8000, help="port"),
    route: list[str] = typer.Option(None, "--route", help="serve only these routes"),
    fast_port: int | None = typer.Option(
        None,
        help="also serve the routes' fast paths on this port, from a process of their own "
        "(its own model, its own replica of the features): a saturated main route does not "
        "slow them",
    ),
    fast_only: bool = typer.Option(
        False, help="serve only the routes' fast paths (what --fast-port starts)"
    ),
) -> None:
    """Serve the configured routes: Open Inference Protocol v2, /v1/routes, /metrics."""
    import uvicorn

    from keel.serving import create_app

    proj = project(ctx)
    if fast_only:
        server = build_fast_server(proj, route or None)
    else:
        server = build_server(proj, route or None)
    auth = proj.settings.auth.with_env()
    names = ", ".join(f"{r.name} ({r.current.version})" for r in server.routes.values())
    kind = "fast paths of " if fast_only else ""
    console.print(f"serving {kind}{names} on http://{host}:{port}")
    if not auth.tokens:
        console.print(
            "[yellow]no \\[auth] tokens: anyone who reaches this address may change routes and "
            "traffic[/] (keel token new NAME --role operator makes one)"
        )
    stop = threading.Event()
    if server.registry is not None and not fast_only:
        # The embedded default runs the controller beside the routes it decides for.
        from keel.controller import Controller

        threading.Thread(
            target=Controller(server, server.registry).run,
            args=(stop,),
            name="keel-controller",
            daemon=True,
        ).start()
    fast_proc = None
    if fast_port is not None and not fast_only:
        _fast_routes(proj, route or None)  # a clear error here rather than a dead child
        config = Path(proj.settings.project_dir) / "keel.toml"
        only = [a for r in route or [] for a in ("--route", r)]
        where = ["--host", host, "--port", str(fast_port)]
        fast_proc = subprocess.Popen(
            [sys.executable, "-m", "keel", "-c", str(config), "serve", "--fast-only", *where, *only]
        )
    try:
        uvicorn.run(
            create_app(server, auth=auth, limits=proj.settings.serve),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=int(proj.settings.serve.keep_alive_s),
            loop="uvloop",
            http="httptools",
        )
    finally:
        stop.set()
        if fast_proc is not None:
            fast_proc.terminate()
            fast_proc.wait(30)


def bench(
    ctx: typer.Context,
    route: str = typer.Argument(..., help="route to measure"),
    concurrency: str = typer.Option("1,4,8,16,32", help="connections to sweep"),
    seconds: float = typer.Option(5.0, help="seconds per level"),
) -> None:
    """Throughput and p50/p99 of ROUTE as configured, and of the same model served one
    request per forward pass, side by side (a lean built-in load generator, same machine)."""
    proj = project(ctx)
    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    results = run_bench(proj, route, levels, seconds)
    console.print(bench_table(route, results))


def bench_table(route: str, results: dict[str, dict[int, Any]]) -> Table:
    """The side-by-side table of a bench run, with the peak ratio in its caption."""
    table = Table(title=f"keel bench {route}: as configured vs one request per forward pass")
    table.add_column("connections", justify="right")
    for label in ("batched", "unbatched"):
        table.add_column(f"{label} req/s", justify="right")
        table.add_column("p50 ms", justify="right")
        table.add_column("p99 ms", justify="right")
    for level in results["batched"]:
        a, b = results["batched"][level], results["unbatched"][level]
        table.add_row(
            str(level),
            f"{a.rps:,.0f}",
            f"{a.pct(50):.1f}",
            f"{a.pct(99):.1f}",
            f"{b.rps:,.0f}",
            f"{b.pct(50):.1f}",
            f"{b.pct(99):.1f}",
        )
    best_a = max(r.rps for r in results["batched"].values())
    best_b = max(r.rps for r in results["unbatched"].values())
    errors = sum(r.errors for rs in results.values() for r in rs.values())
    table.caption = (
        f"peak {best_a:,.0f} vs {best_b:,.0f} req/s: "
        f"{best_a / max(best_b, 1e-9):.1f}x with micro-batching; "
        f"{errors} failed requests"
    )
    return table


@contextlib.contextmanager
def served(proj: Project, route: str) -> Iterator[tuple[int, Any]]:
    """``keel serve`` for ``route`` in a subprocess: yields (port, route config)."""
    cfg = next((r for r in proj.settings.routes if r.name == route), None)
    if cfg is None:
        raise NotFoundError(f"no route {route!r} in {proj.settings.project_dir}/keel.toml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Path(proj.settings.project_dir) / "keel.toml"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from keel.cli import main; main()",
            "-c",
            str(config),
            "serve",
            "--port",
            str(port),
            "--route",
            route,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait(port, proc)
        yield port, cfg
    finally:
        proc.terminate()
        proc.wait(30)


def run_bench(
    proj: Project, route: str, levels: list[int], seconds: float
) -> dict[str, dict[int, Any]]:
    """Start ``keel serve`` for ``route``, add its unbatched twin, and sweep both."""
    from keel.serving.loadgen import run_load

    with served(proj, route) as (port, cfg):
        path, bodies = requests_for(proj, cfg, port)
        twin = post(port, "/v1/routes", _twin(cfg))
        results: dict[str, dict[int, Any]] = {"batched": {}, "unbatched": {}}
        run_load("127.0.0.1", port, path, bodies, concurrency=2, seconds=1.0)  # warm up
        for level in levels:
            for label, name in (("batched", route), ("unbatched", twin["name"])):
                p = path.replace(f"/{route}/", f"/{name}/")
                results[label][level] = run_load(
                    "127.0.0.1", port, p, bodies, concurrency=level, seconds=seconds
                )
        return results


def _twin(cfg: Any) -> dict[str, Any]:
    import msgspec

    doc = msgspec.to_builtins(cfg)
    doc.update(name=f"{cfg.name}-unbatched", batching=False, fast_path=None)
    return doc


def requests_for(proj: Project, cfg: Any, port: int) -> tuple[str, list[bytes]]:
    """Request bodies of one example each: a known user's top ``default_k`` for a
    recommender, rows from the model's recorded training set when the route joins features,
    else tensors shaped as the served model declares."""
    import numpy as np

    rng = np.random.default_rng(0)
    meta = call(f"http://127.0.0.1:{port}", f"/v2/models/{cfg.name}")
    if [i["name"] for i in meta["inputs"]] == ["user_id", "item_id"]:
        from keel.runtimes import is_two_tower

        name, _, ref = cfg.model.partition("@")
        model = proj.registry.load(name, proj.registry.get(name, ref or "latest").version)
        if is_two_tower(model):
            users = rng.choice(model.users.ids[model.users.live], 500)
            return f"/v1/routes/{cfg.name}/predict", [
                json.dumps({"rows": [{"user_id": int(u)}]}).encode() for u in users
            ]
    if cfg.features and not cfg.model.startswith("builtin:"):
        import pyarrow.parquet as pq

        name, _, ref = cfg.model.partition("@")
        v = proj.registry.get(name, ref or "latest")
        info = v.lineage.get("training_set") or {}
        if "labels_artifact" not in info:
            raise ValidationError(f"{v.ref} has no recorded training set to take rows from")
        labels = pq.read_table(io.BytesIO(proj.registry.artifacts.get(info["labels_artifact"])))
        rows = labels.slice(max(labels.num_rows - 500, 0)).to_pylist()
        bodies = [
            json.dumps(
                {"rows": [{k: v for k, v in r.items() if not hasattr(v, "isoformat")}]}
            ).encode()
            for r in rows
        ]
        return f"/v1/routes/{cfg.name}/predict", bodies
    bodies = []
    for _ in range(200):
        inputs = []
        for spec in meta["inputs"]:
            shape = [1 if d == -1 else d for d in spec["shape"]]
            if spec["datatype"] == "BYTES":
                data: Any = [" ".join(rng.choice(WORDS, 15)) for _ in range(int(np.prod(shape)))]
            else:
                data = rng.normal(size=int(np.prod(shape))).round(4).tolist()
            inputs.append(
                {"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "data": data}
            )
        bodies.append(json.dumps({"inputs": inputs}).encode())
    return f"/v2/models/{cfg.name}/infer", bodies


def _wait(port: int, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ValidationError("keel serve exited before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise ValidationError("keel serve did not start in time")


def post(port: int, path: str, body: Any) -> Any:
    """POST ``body`` as JSON to the local server on ``port``; the decoded answer."""
    return call(f"http://127.0.0.1:{port}", path, body)


def register(app: typer.Typer) -> None:
    app.command("serve")(friendly(serve))
    app.command("bench")(friendly(bench))
    tokens = typer.Typer(help="Tokens for the server's control plane and data plane.")
    tokens.command("new")(friendly(token_new))
    app.add_typer(tokens, name="token")


def token_new(
    name: str = typer.Argument(..., help="the token's name, as the audit trail shows it"),
    role: str = typer.Option("operator", help="admin, operator, reader or client"),
) -> None:
    """Make a token: prints the secret once (for KEEL_TOKEN) and the [[auth.tokens]] entry
    that keel.toml keeps (its salted hash, never the secret)."""
    from keel.config import TokenConfig
    from keel.serving.auth import hash_token, new_token

    token = new_token()
    entry = TokenConfig(name=name, role=role, hash=hash_token(token))
    console.print(f"token (shown once; give it as KEEL_TOKEN): {token}", soft_wrap=True)
    console.print("add to keel.toml:", soft_wrap=True)
    console.print(
        f'[[auth.tokens]]\nname = "{entry.name}"\nrole = "{entry.role}"\nhash = "{entry.hash}"',
        markup=False,
        soft_wrap=True,
    )
