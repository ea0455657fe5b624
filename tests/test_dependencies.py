"""Every third-party module the package imports is declared in pyproject.toml (as a
dependency or in an extra), so that an install with the declared extras has what it runs."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_distribution_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        if extra != "dev":  # the package itself may not need test tools
            declared |= {_name(r) for r in reqs}
    modules: dict[str, str] = {}
    for path in (ROOT / "src" / "keel").rglob("*.py"):
        if "templates" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "keel" and top not in sys.stdlib_module_names:
                    modules.setdefault(top, str(path.relative_to(ROOT)))
    dists = packages_distributions()
    missing = {}
    for module, where in sorted(modules.items()):
        provided = {_name(d) for d in dists.get(module, [])}
        assert provided, f"{module} (imported in {where}) is not installed"
        if not provided & declared:
            missing[module] = where
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
