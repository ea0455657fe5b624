"""The model registry: versions, artifacts, aliases with history, lineage, reproduce and diff.

Example
-------
>>> import tempfile
>>> from sklearn.linear_model import LogisticRegression
>>> d = tempfile.mkdtemp()
>>> reg = Registry(f"sqlite:///{d}/registry.db", f"{d}/artifacts")
>>> model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
>>> v = reg.register("fraud", model, params={"C": 1.0}, metrics={"auc": 0.9})
>>> (v.model, v.version, v.format)
('fraud', 1, 'sklearn')
>>> reg.set_alias("fraud", "champion", 1, reason="first").to_version
1
>>> reg.load("fraud", "champion").predict([[2.5]]).tolist()
[1]
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from keel.errors import ConflictError, NotFoundError, ValidationError, did_you_mean
from keel.features.training import table_sha256
from keel.log import Log, Topic
from keel.registry.artifacts import ArtifactStore
from keel.registry.db import make_engine, migrate
from keel.registry.formats import deserialize, serialize
from keel.registry.lineage import code_state, environment, training_info
from keel.registry.schema import alias_history, aliases, models, versions

__all__ = ["EVENTS_TOPIC", "AliasMove", "Change", "ModelVersion", "Registry", "ReproduceReport"]

EVENTS_TOPIC = "keel.registry"
_EVENTS = Topic(
    EVENTS_TOPIC,
    {
        "ts": "timestamp",
        "model": "string",
        "event": "string",
        "alias": "string?",
        "from_version": "int64?",
        "to_version": "int64?",
        "reason": "string?",
    },
    event_time="ts",
    key="model",
)
_ANY = object()


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    created_at: datetime
    format: str
    artifact: str
    artifact_size: int
    loader: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    parent_version: int | None
    description: str
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.version}"


@dataclass(frozen=True)
class AliasMove:
    model: str
    alias: str
    seq: int
    from_version: int | None
    to_version: int | None
    at: datetime
    reason: str


@dataclass(frozen=True)
class Change:
    field: str
    a: Any
    b: Any


@dataclass
class ReproduceReport:
    model: str
    version: int
    matches: bool
    recorded_sha256: str
    rebuilt_sha256: str
    rows: int
    changed_views: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: The rebuilt training set, for whoever goes on to retrain from it.
    table: pa.Table | None = field(default=None, repr=False)


class Registry:
    """Model versions in a SQL database (SQLite or PostgreSQL), artifacts by content hash.

    Parameters
    ----------
    url
        ``sqlite:///path/registry.db`` or ``postgresql://user@host/db``. Migrated on open.
    artifacts
        A folder or fsspec URL for the content-addressed artifacts.
    log
        Where alias moves and registrations are published (topic ``keel.registry``), so
        servers and controllers can react. Optional.
    """

    def __init__(self, url: str, artifacts: str, *, log: Log | None = None) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        migrate(self.engine)
        self.artifacts = ArtifactStore(artifacts)
        self.log = log
        if log is not None:
            log.create_topic(_EVENTS, exist_ok=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- registering ----------------------------------------------------------------------
    def register(
        self,
        name: str,
        model: Any,
        *,
        format: str | None = None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        training_set: pa.Table | None = None,
        parent: int | None = None,
        description: str = "",
        factory: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
        trusted: bool = False,
        code_dir: str | None = None,
        training: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Store ``model`` as the next version of ``name`` with its lineage.

        The lineage records, automatically, the training set's views and fingerprints, its
        content hash, row count, time range and log offsets (when it came from
        ``FeatureStore.training_set``), the code commit and dirty flag, the environment,
        ``params``, ``metrics`` and the ``parent`` version (for fine-tunes). ``training``
        records how a trainer produced it (trainer, seeds, code fingerprint, split), which
        ``keel.training.reproduce_model`` retrains from.
        """
        _check_name(name)
        serialized = serialize(
            model, format, factory=factory, init_kwargs=init_kwargs, trusted=trusted
        )
        digest = self.artifacts.put(serialized.data)
        lineage: dict[str, Any] = {"code": code_state(code_dir), "environment": environment()}
        if training_set is not None:
            info = training_info(training_set)
            label_cols = info.get("label_columns")
            if label_cols:
                labels = training_set.select(label_cols).replace_schema_metadata(None)
                buf = io.BytesIO()
                pq.write_table(labels, buf)
                info["labels_artifact"] = self.artifacts.put(buf.getvalue())
            lineage["training_set"] = info
        if training is not None:
            lineage["training"] = _jsonable(training, "training")
        params = _jsonable(params or {}, "params")
        metrics = _jsonable(metrics or {}, "metrics")
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            self._ensure_model(conn, name, now)
            current = conn.execute(
                select(func.max(versions.c.version)).where(versions.c.model == name)
            ).scalar()
            number = (current or 0) + 1
            if parent is not None and not 1 <= parent <= (current or 0):
                raise NotFoundError(f"model {name!r} has no version {parent} to be a parent of")
            conn.execute(
                insert(versions).values(
                    model=name,
                    version=number,
                    created_at=now,
                    format=serialized.format,
                    artifact=digest,
                    artifact_size=len(serialized.data),
                    loader=serialized.loader,
                    params=params,
                    metrics=metrics,
                    lineage=lineage,
                    parent_version=parent,
                    description=description,
                )
            )
        self._publish(name, "registered", to_version=number, reason=description)
        return self.get(name, number)

    def _ensure_model(self, conn: Any, name: str, now: datetime) -> None:
        row = conn.execute(
            select(models.c.name).where(models.c.name == name).with_for_update()
        ).first()
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(models).values(name=name, created_at=now, description=""))
            except IntegrityError:  # created by a concurrent registration: lock it instead
                conn.execute(select(models.c.name).where(models.c.name == name).with_for_update())

    # -- reading --------------------------------------------------------------------------
    def models(self) -> list[tuple[str, int, dict[str, int]]]:
        """Every model with its number of versions and its aliases."""
        with self.engine.connect() as conn:
            counts: dict[str, int] = dict(
                conn.execute(
                    select(versions.c.model, func.count()).group_by(versions.c.model)
                ).all()
            )
            names = [r[0] for r in conn.execute(select(models.c.name).order_by(models.c.name))]
            alias_rows = conn.execute(
                select(aliases.c.model, aliases.c.alias, aliases.c.version)
            ).all()
        by_model: dict[str, dict[str, int]] = {}
        for m, a, v in alias_rows:
            by_model.setdefault(m, {})[a] = v
        return [(n, counts.get(n, 0), by_model.get(n, {})) for n in names]

    def versions(self, name: str) -> list[ModelVersion]:
        self._require_model(name)
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(versions).where(versions.c.model == name).order_by(versions.c.version)
                )
                .mappings()
                .all()
            )
            alias_map = self._alias_map(conn, name)
        return [_version(r, alias_map) for r in rows]

    def get(self, name: str, ref: int | str = "latest") -> ModelVersion:
        """A version by number, alias or ``"latest"``."""
        self._require_model(name)
        with self.engine.connect() as conn:
            number = self._resolve(conn, name, ref)
            row = (
                conn.execute(
                    select(versions).where(
                        (versions.c.model == name) & (versions.c.version == number)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise NotFoundError(f"model {name!r} has no version {number}")
            return _version(row, self._alias_map(conn, name))

    def load(self, name: str, ref: int | str = "latest", *, trusted: bool = False) -> Any:
        """Rebuild the model object, after verifying its artifact's hash."""
        v = self.get(name, ref)
        return deserialize(v.format, self.artifacts.get(v.artifact), v.loader, trusted=trusted)

    def _resolve(self, conn: Any, name: str, ref: int | str) -> int:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return int(ref)
        if ref == "latest":
            number = conn.execute(
                select(func.max(versions.c.version)).where(versions.c.model == name)
            ).scalar()
            if number is None:
                raise NotFoundError(f"model {name!r} has no versions yet")
            return int(number)
        number = conn.execute(
            select(aliases.c.version).where((aliases.c.model == name) & (aliases.c.alias == ref))
        ).scalar()
        if number is None:
            known = self._alias_map(conn, name)
            raise NotFoundError(
                f"model {name!r} has no alias {ref!r}{did_you_mean(ref, known)}; aliases: "
                f"{', '.join(f'{a}→{v}' for a, v in sorted(known.items())) or 'none'}"
            )
        return int(number)

    def _alias_map(self, conn: Any, name: str) -> dict[str, int]:
        return dict(
            conn.execute(
                select(aliases.c.alias, aliases.c.version).where(aliases.c.model == name)
            ).all()
        )

    def _require_model(self, name: str) -> None:
        with self.engine.connect() as conn:
            if conn.execute(select(models.c.name).where(models.c.name == name)).first():
                return
            known = [r[0] for r in conn.execute(select(models.c.name))]
        raise NotFoundError(f"no model {name!r} in the registry{did_you_mean(name, known)}")

    # -- aliases --------------------------------------------------------------------------
    def set_alias(
        self,
        name: str,
        alias: str,
        version: int | None,
        *,
        reason: str = "",
        expected: Any = _ANY,
    ) -> AliasMove:
        """Point ``alias`` at ``version`` (None removes it), atomically, with history.

        With ``expected`` (a version, or None for "not set"), the move only happens if the
        alias still points there — otherwise :class:`ConflictError`, and nothing changes.
        """
        _check_name(alias, "alias")
        self._require_model(name)
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(select(models.c.name).where(models.c.name == name).with_for_update())
            if version is not None:
                exists = conn.execute(
                    select(versions.c.version).where(
                        (versions.c.model == name) & (versions.c.version == version)
                    )
                ).first()
                if exists is None:
                    raise NotFoundError(f"model {name!r} has no version {version}")
            current = conn.execute(
                select(aliases.c.version).where(
                    (aliases.c.model == name) & (aliases.c.alias == alias)
                )
            ).scalar()
            if expected is not _ANY and current != expected:
                raise ConflictError(
                    f"alias {name}@{alias} points to {current}, not {expected}: it was moved "
                    "meanwhile; nothing changed"
                )
            if version is None:
                conn.execute(
                    aliases.delete().where((aliases.c.model == name) & (aliases.c.alias == alias))
                )
            elif current is None:
                conn.execute(
                    insert(aliases).values(model=name, alias=alias, version=version, updated_at=now)
                )
            else:
                conn.execute(
                    update(aliases)
                    .where((aliases.c.model == name) & (aliases.c.alias == alias))
                    .values(version=version, updated_at=now)
                )
            seq = (
                conn.execute(
                    select(func.max(alias_history.c.seq)).where(
                        (alias_history.c.model == name) & (alias_history.c.alias == alias)
                    )
                ).scalar()
                or 0
            ) + 1
            conn.execute(
                insert(alias_history).values(
                    model=name,
                    alias=alias,
                    seq=seq,
                    from_version=current,
                    to_version=version,
                    at=now,
                    reason=reason,
                )
            )
        self._publish(
            name,
            "alias_moved",
            alias=alias,
            from_version=current,
            to_version=version,
            reason=reason,
        )
        return AliasMove(name, alias, seq, current, version, now, reason)

    def aliases(self, name: str) -> dict[str, int]:
        self._require_model(name)
        with self.engine.connect() as conn:
            return self._alias_map(conn, name)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        """Every move of ``name``'s aliases (or of one), oldest first."""
        self._require_model(name)
        q = select(alias_history).where(alias_history.c.model == name)
        if alias is not None:
            q = q.where(alias_history.c.alias == alias)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(alias_history.c.alias, alias_history.c.seq)).all()
        return [
            AliasMove(r.model, r.alias, r.seq, r.from_version, r.to_version, _utc(r.at), r.reason)
            for r in rows
        ]

    def _publish(self, name: str, event: str, **fields: Any) -> None:
        # After the database commit: the tables stay the source of truth; the topic lets
        # servers and controllers react without polling.
        if self.log is None:
            return
        self.log.append(
            EVENTS_TOPIC,
            [
                {
                    "ts": datetime.now(UTC),
                    "model": name,
                    "event": event,
                    "alias": fields.get("alias"),
                    "from_version": fields.get("from_version"),
                    "to_version": fields.get("to_version"),
                    "reason": fields.get("reason") or None,
                }
            ],
        )

    # -- lineage --------------------------------------------------------------------------
    def lineage(self, name: str, ref: int | str = "latest") -> dict[str, Any]:
        v = self.get(name, ref)
        return {
            "model": v.model,
            "version": v.version,
            "created_at": v.created_at.isoformat(),
            "format": v.format,
            "artifact": v.artifact,
            "parent_version": v.parent_version,
            "params": v.params,
            "metrics": v.metrics,
            **v.lineage,
        }

    def diff(self, name: str, a: int | str, b: int | str) -> list[Change]:
        """Field by field, what differs between two versions (features, data, code,
        parameters, metrics, environment, artifact)."""
        left, right = _flatten(self.lineage(name, a)), _flatten(self.lineage(name, b))
        skip = {"version", "created_at"}
        out = []
        for key in sorted(set(left) | set(right)):
            if key in skip:
                continue
            if left.get(key) != right.get(key):
                out.append(Change(key, left.get(key), right.get(key)))
        return out

    def training_set(self, name: str, ref: int | str, features: Any) -> pa.Table:
        """The version's training set, rebuilt from its lineage: the recorded labels joined
        with the recorded views over the recorded log offsets (what monitoring compares
        live traffic with)."""
        v = self.get(name, ref)
        info = v.lineage.get("training_set")
        if not info or "labels_artifact" not in info:
            raise ValidationError(
                f"{v.ref} has no training set recorded: register with "
                "training_set=FeatureStore.training_set(...) to make it reproducible"
            )
        labels = pq.read_table(io.BytesIO(self.artifacts.get(info["labels_artifact"])))
        return features.training_set(
            labels,
            info["features"],
            timestamp=info["timestamp"],
            until={t: {int(p): o for p, o in offs.items()} for t, offs in info["offsets"].items()},
        )

    def reproduce(self, name: str, ref: int | str, features: Any) -> ReproduceReport:
        """Rebuild the version's training set with today's definitions over the recorded
        log offsets and labels, and compare its hash with the recorded one."""
        v = self.get(name, ref)
        info = v.lineage.get("training_set") or {}
        changed = {}
        for view_name, recorded in info.get("views", {}).items():
            now_fp = features.view(view_name).fingerprint
            if now_fp != recorded["fingerprint"]:
                changed[view_name] = (recorded["fingerprint"], now_fp)
        rebuilt = self.training_set(name, ref, features)
        digest = table_sha256(rebuilt)
        return ReproduceReport(
            v.model,
            v.version,
            digest == info["sha256"],
            info["sha256"],
            digest,
            rebuilt.num_rows,
            changed,
            rebuilt,
        )


def _version(row: Any, alias_map: dict[str, int]) -> ModelVersion:
    return ModelVersion(
        model=row["model"],
        version=row["version"],
        created_at=_utc(row["created_at"]),
        format=row["format"],
        artifact=row["artifact"],
        artifact_size=row["artifact_size"],
        loader=row["loader"],
        params=row["params"],
        metrics=row["metrics"],
        lineage=row["lineage"],
        parent_version=row["parent_version"],
        description=row["description"],
        aliases=tuple(sorted(a for a, v in alias_map.items() if v == row["version"])),
    )


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _check_name(name: str, what: str = "model name") -> None:
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 100
        or not all(c.isalnum() or c in "-_." for c in name)
    ):
        raise ValidationError(f"{what} {name!r} is invalid: use letters, digits, '-', '_', '.'")


def _jsonable(values: dict[str, Any], what: str) -> dict[str, Any]:
    import json

    try:
        return json.loads(json.dumps(values, default=_plain))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} must be JSON-serializable: {exc}") from None


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON-serializable")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
