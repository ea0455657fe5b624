"""What ``keel up`` runs for a project: the server, the materializer, the monitor, the job
scheduler, the controller and the web console, each a ``keel`` command on the same
``keel.toml``.

A component the project has no use for is left out with why: the materializer when the online
store is ``memory://`` (it lives inside the server, which follows the log itself), the monitor
when no route has a ``[routes.monitor]`` block, the server and the controller when there are
no routes; the console when no port is given for it.

Example
-------
>>> from keel.config import Settings
>>> settings = Settings.load(env={}, project_dir="/tmp/p")
>>> p = plan(settings, "/tmp/p/keel.toml")
>>> [c.name for c in p.components], p.notes["server"]
(['scheduler'], 'no [[routes]] in keel.toml to serve')
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keel.config import Settings
from keel.errors import ValidationError, did_you_mean
from keel.supervisor.component import Component
from keel.supervisor.health import Alive, HealthCheck, HttpReady

__all__ = ["COMPONENTS", "Plan", "plan", "run_dir", "shown"]

#: Every component ``keel up`` knows, in the order they start.
COMPONENTS = ("server", "materializer", "monitor", "scheduler", "controller", "ui")

#: The environment every component gets on top of ``keel up``'s own: output reaches its log
#: file as it is written, and rich's tables there are not folded at 80 columns.
ENV = {"PYTHONUNBUFFERED": "1", "COLUMNS": "160"}


@dataclass(frozen=True, slots=True)
class Plan:
    """The components to run, the server's URL (None when no server runs) and, for each
    component left out, why."""

    components: list[Component]
    url: str | None
    notes: dict[str, str] = field(default_factory=dict)


def plan(
    settings: Settings,
    config: str | os.PathLike[str] | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    controller_args: Sequence[str] = ("--no-traffic",),
    python: str = sys.executable,
    ui_port: int | None = None,
) -> Plan:
    """The components of the project whose settings are ``settings``, read from ``config``
    (None: from ``KEEL_*`` variables alone, which the components inherit).

    ``only`` and ``skip`` name components to run or leave out; ``controller_args`` are added
    to ``keel controller`` (the traffic part of the controller already runs in the server);
    ``ui_port``: where the web console (``keel ui``) listens, on ``host`` (None: no console).
    """
    for name in (*only, *skip):
        if name not in COMPONENTS:
            raise ValidationError(
                f"no component {name!r}{did_you_mean(name, COMPONENTS)}; components: "
                f"{', '.join(COMPONENTS)}"
            )
    for what, number in (("port", port), ("ui port", ui_port)):
        if number is not None and not 0 < number < 65536:
            raise ValidationError(f"{what} must be within 1..65535, got {number}")
    if ui_port == port:
        raise ValidationError(f"the console and the server cannot both listen on port {port}")
    keel: tuple[str, ...] = (python, "-m", "keel")
    if config is not None:
        keel += ("-c", str(os.path.abspath(config)))
    routes = settings.routes
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://[{local}]:{port}" if ":" in local else f"http://{local}:{port}"
    after_server = ("server",) if routes and _wanted("server", only, skip) else ()

    def component(
        name: str, *args: str, health: HealthCheck = Alive(), first: bool = False
    ) -> Component:
        return Component(
            name,
            (*keel, *args),
            health=health,
            depends_on=() if first else after_server,
            env=ENV,
            cwd=settings.project_dir,
        )

    candidates: dict[str, Component | str] = {
        "server": component(
            "server",
            *("serve", "--host", host, "--port", str(port)),
            health=HttpReady(f"{url}/v2/health/ready"),
            first=True,
        )
        if routes
        else "no [[routes]] in keel.toml to serve",
        "materializer": component("materializer", "features", "materialize", "--follow")
        if not settings.online_url.startswith("memory://")
        else "the server is the materializer: with online_url = memory:// the online store "
        "lives in the server's process, which follows the log itself",
        "monitor": component("monitor", "monitor")
        if any(r.monitor is not None for r in routes)
        else "no route has a [routes.monitor] block",
        "scheduler": component("scheduler", "jobs", "run"),
        "controller": component("controller", "controller", "--url", url, *controller_args)
        if routes
        else "no [[routes]] in keel.toml to control",
    }
    if ui_port is not None:  # the console runs only when asked for, and is not mentioned else
        candidates["ui"] = component(
            "ui",
            *("ui", "--host", host, "--port", str(ui_port), "--server-url", url),
            health=HttpReady(url.rsplit(":", 1)[0] + f":{ui_port}/health"),
        )
    components: list[Component] = []
    notes: dict[str, str] = {}
    for name in COMPONENTS:
        if name not in candidates:
            continue
        found = candidates[name]
        if not _wanted(name, only, skip):
            notes[name] = (
                "left out by --only" if only and name not in only else "left out by --skip"
            )
        elif isinstance(found, str):
            notes[name] = found
        else:
            components.append(found)
    return Plan(components, url if routes else None, notes)


def run_dir(data_dir: str | os.PathLike[str]) -> Path:
    """The folder of ``keel up``'s state and log files: ``<data_dir>/up``."""
    return Path(data_dir) / "up"


def shown(component: Component) -> str:
    """The component's command as a user would type it: ``keel serve ...`` for one of
    :func:`plan`'s, else the whole command."""
    argv = component.argv
    if argv[1:3] != ("-m", "keel"):
        return shlex.join(argv)
    return shlex.join(("keel", *argv[5 if argv[3:4] == ("-c",) else 3 :]))


def _wanted(name: str, only: Sequence[str], skip: Sequence[str]) -> bool:
    return (not only or name in only) and name not in skip
