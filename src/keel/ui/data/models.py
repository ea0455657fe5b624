"""The model page: its versions with their metrics, aliases and their history, one version's
lineage as a graph, and the differences between two versions (``keel registry show``,
``lineage``, ``alias`` and ``diff``)."""

from __future__ import annotations

import json
from typing import Any

from keel.errors import NotFoundError, ValidationError
from keel.ui.graph import Node, graph
from keel.ui.text import stamp

__all__ = ["model_page", "models_index"]


def models_index(state: Any) -> list[dict[str, Any]]:
    return [
        {"name": name, "versions": count, "aliases": aliases}
        for name, count, aliases in state.project.registry.models()
    ]


def _version_ref(registry: Any, name: str, ref: str | None) -> Any:
    """A version of ``name`` from a query value (a number or an alias); the one most
    aliases point at when not given (the served one, as a rule), else the latest."""
    if ref:
        return registry.get(name, int(ref) if ref.isdigit() else ref)
    aliases = registry.aliases(name)
    for preferred in ("champion", "production", "prod"):
        if preferred in aliases:
            return registry.get(name, aliases[preferred])
    return registry.get(name, "latest")


def model_page(
    state: Any,
    name: str,
    version: str | None,
    a: str | None,
    b: str | None,
    *,
    features_url: str = "/features",
    model_url: str = "",
) -> dict[str, Any]:
    """``features_url`` and ``model_url``: where the lineage's nodes link to."""
    registry = state.project.registry
    versions = registry.versions(name)
    if not versions:
        raise NotFoundError(f"model {name!r} has no versions")
    chosen = _version_ref(registry, name, version)
    history = registry.alias_history(name)
    numbers = [v.version for v in versions]
    a_ref = a or (str(chosen.parent_version) if chosen.parent_version else str(numbers[0]))
    b_ref = b or str(chosen.version)
    changes = None
    diff_error = None
    try:
        changes = [
            {"field": c.field, "a": _short(c.a), "b": _short(c.b)}
            for c in registry.diff(name, _ref(a_ref), _ref(b_ref))
        ]
    except (NotFoundError, ValidationError) as exc:
        diff_error = str(exc)
    metrics = sorted({k for v in versions for k in v.metrics})
    return {
        "name": name,
        "versions": list(reversed(versions)),
        "metric_names": metrics,
        "chosen": chosen,
        "aliases": registry.aliases(name),
        "history": list(reversed(sorted(history, key=lambda h: h.at))),
        "lineage": _lineage(chosen, features_url, model_url),
        "lineage_facts": _facts(registry.lineage(name, chosen.version)),
        "diff": {"a": a_ref, "b": b_ref, "changes": changes, "error": diff_error},
        "numbers": numbers,
    }


def _ref(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lineage(v: Any, features_url: str, model_url: str) -> Any:
    """Feature views (fingerprints) → training set (offsets, time range, hash) → version →
    parent."""
    lin = v.lineage
    ts = lin.get("training_set") or {}
    views = ts.get("views") or {}
    nodes: list[Node] = []
    edges: list[tuple[str, str]] = []
    for view, info in views.items():
        fp = str(info.get("fingerprint", ""))
        count = len(info.get("features") or [])
        nodes.append(
            Node(
                f"view:{view}",
                "view",
                0,
                [view, f"fingerprint {fp[:12]}", f"{count} features"],
                href=f"{features_url}#view-{view}",
                detail=f"feature view {view}, fingerprint {fp}, {count} features",
            )
        )
        edges.append((f"view:{view}", "training-set"))
    if ts:
        time_range = ts.get("time_range") or ["", ""]
        offsets = ts.get("offsets") or {}
        offsets_text = "; ".join(
            f"{topic}: " + ", ".join(f"p{p}<{o:,}" for p, o in sorted(parts.items()))
            for topic, parts in offsets.items()
        )
        nodes.append(
            Node(
                "training-set",
                "training-set",
                1,
                [
                    f"training set, {ts.get('rows', 0):,} rows",
                    f"sha256 {str(ts.get('sha256', ''))[:12]}",
                    f"from {str(time_range[0])[:16]}",
                    f"to {str(time_range[1])[:16]}",
                    f"offsets of {len(offsets)} topics",
                ],
                detail=(
                    f"training set of {ts.get('rows', 0):,} rows, sha256 {ts.get('sha256')}, "
                    f"{time_range[0]} → {time_range[1]}, log offsets {offsets_text or '—'}"
                ),
            )
        )
        edges.append(("training-set", "version"))
    aliases = ", ".join(v.aliases) or "no alias"
    metric = next((k for k in ("auc", "logloss", "rmse", "hit_rate@10") if k in v.metrics), None)
    nodes.append(
        Node(
            "version",
            "version",
            2 if ts else 0,
            [v.ref, f"{v.format}, {aliases}"]
            + ([f"{metric} {v.metrics[metric]:.4f}"] if metric else []),
            detail=f"{v.ref} ({v.format}), {aliases}, created {v.created_at:%Y-%m-%d %H:%M}",
        )
    )
    if v.parent_version is not None:
        parent = f"{v.model}@{v.parent_version}"
        nodes.append(
            Node(
                "parent",
                "parent",
                3 if ts else 1,
                ["parent", parent],
                href=f"{model_url}?version={v.parent_version}",
                detail=f"parent version {parent} (this version was trained from it)",
            )
        )
        edges.append(("version", "parent"))
    return graph(
        title=f"Lineage of {v.ref}",
        nodes=nodes,
        edges=edges,
        summary=f"{v.ref} was trained on a training set built from {len(views)} feature "
        f"views" + (f"; its parent is {v.model}@{v.parent_version}" if v.parent_version else ""),
    )


def _facts(lin: dict[str, Any]) -> list[tuple[str, str]]:
    training = lin.get("training") or {}
    code = lin.get("code") or {}
    env = lin.get("environment") or {}
    facts = [
        ("created", stamp(lin.get("created_at"))),
        ("artifact", f"{lin.get('format')}, sha256 {lin.get('artifact')}"),
    ]
    if training.get("trainer"):
        facts.append(("trainer", f"{training['trainer'].get('kind')}, seed {training.get('seed')}"))
    if training.get("job"):
        facts.append(("job", str(training["job"])))
    if code:
        facts.append(
            (
                "code",
                f"commit {code['git_commit'][:12]}{' (dirty)' if code.get('dirty') else ''}"
                if code.get("git_commit")
                else f"source sha256 {str(code.get('source_sha256', ''))[:16]}… "
                f"({code.get('files')} files, not in git)",
            )
        )
    if env:
        facts.append(("python", str(env.get("python"))))
    return facts
