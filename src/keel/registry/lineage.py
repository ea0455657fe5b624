"""What produced a model version: code, environment, data and features.

Captured automatically at registration; everything here is plain JSON-able data.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pyarrow as pa

from keel.features.training import TRAINING_SET_KEY, table_sha256

__all__ = ["TRAINING_SET_KEY", "code_state", "environment", "table_sha256", "training_info"]

PACKAGES = (
    "keel-ml",
    "numpy",
    "pyarrow",
    "duckdb",
    "pandas",
    "torch",
    "transformers",
    "lightgbm",
    "xgboost-cpu",
    "xgboost",
    "scikit-learn",
    "onnx",
    "onnxruntime",
)


def training_info(table: pa.Table) -> dict[str, Any]:
    """How a training set was built (recorded by ``FeatureStore.training_set``), plus its
    content hash, row count and columns; only those three for a table Keel did not build."""
    meta = (table.schema.metadata or {}).get(TRAINING_SET_KEY)
    info: dict[str, Any] = json.loads(meta) if meta else {}
    info["sha256"] = table_sha256(table)
    info["rows"] = table.num_rows
    info["columns"] = table.column_names
    return info


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
    ).stdout


def code_state(where: str | Path | None = None) -> dict[str, Any]:
    """The git commit and dirty flag of ``where`` (default: the current folder); outside git,
    a hash of the Python sources there instead."""
    root = Path(where or ".").resolve()
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        status = _git(root, "status", "--porcelain")
        return {"git_commit": commit, "dirty": bool(status.strip()), "path": str(root)}
    except (OSError, subprocess.SubprocessError):
        h = hashlib.sha256()
        files = sorted(
            p for p in root.rglob("*.py") if ".venv" not in p.parts and ".keel" not in p.parts
        )[:2000]
        for p in files:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
        return {
            "git_commit": None,
            "dirty": None,
            "source_sha256": h.hexdigest(),
            "files": len(files),
            "path": str(root),
        }


def environment() -> dict[str, Any]:
    """Python, platform and the versions of the packages that shape a model."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}
