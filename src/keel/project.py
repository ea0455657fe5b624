"""A Keel project: its settings, its definitions module, and the backends they name.

Thin on purpose: it loads and hands out; the work is done by the packages.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, overload

import msgspec

from keel.config import CONFIG_FILE, Settings
from keel.errors import ConfigError, ConflictError, NotFoundError, ValidationError, did_you_mean
from keel.features import FeatureStore, FeatureView
from keel.index import IndexStore
from keel.jobs.store import JobStore
from keel.log import Log, Topic, open_log
from keel.recommend import FineTuneResult, Recommender, RecommenderResult, train_recommender
from keel.recommend import fine_tune as fine_tune_recommender
from keel.recommend.data import check_recommender
from keel.registry import Registry
from keel.training import Model, TrainResult, check_model, train_model

if TYPE_CHECKING:
    from keel.jobs.manager import JobManager, JobSpec

Declared = Model | Recommender

__all__ = ["Project", "init_project"]

VIEWS_FILE = "feature_views.json"


class Project:
    """The project described by ``settings``; backends open lazily on first use."""

    def __init__(self, settings: Settings, config_path: str | Path | None = None) -> None:
        self.settings = settings
        self._definitions: ModuleType | None = None
        #: The keel.toml that jobs run with (``keel -c``).
        self.config_path = Path(config_path or Path(settings.project_dir) / CONFIG_FILE).resolve()

    @classmethod
    def load(cls, config: str | Path | None = None) -> Project:
        return cls(Settings.load(config), config)

    @cached_property
    def log(self) -> Log:
        return open_log(self.settings.log_url)

    def definitions(self) -> ModuleType:
        """Import the project's definitions module (fresh on every call)."""
        path = self.settings.definitions_path
        if not path.is_file():
            raise ConfigError(
                f"definitions module {str(path)!r} does not exist (set 'definitions' in "
                f"{CONFIG_FILE}, or create one with `keel init`)"
            )
        name = f"keel_definitions_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import definitions from {str(path)!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(name, None)
        return module

    def declared_topics(self) -> list[Topic]:
        return self._declared("topics", Topic)

    def declared_views(self) -> list[FeatureView]:
        return self._declared("feature_views", FeatureView)

    def declared_models(self) -> list[Declared]:
        return self._declared("models", (Model, Recommender))

    def model(self, name: str) -> Declared:
        """The declared model ``name`` (a model or a recommender)."""
        models = {m.name: m for m in self.declared_models()}
        if name not in models:
            raise NotFoundError(
                f"no model {name!r} is declared in {self.settings.definitions}"
                f"{did_you_mean(name, models)}; declared: {', '.join(models) or 'none'}"
            )
        return models[name]

    def _parent_alias(self, route_name: str | None) -> str | None:
        """The alias the model's route serves (``fraud@champion`` → ``champion``)."""
        route = next((r for r in self.settings.routes if r.name == route_name), None)
        if route is not None and "@" in route.model:
            return route.model.split("@", 1)[1]
        return None

    @overload
    def train(self, model: Model, **options: Any) -> TrainResult: ...
    @overload
    def train(self, model: Recommender, **options: Any) -> RecommenderResult: ...
    @overload
    def train(self, model: str | Declared, **options: Any) -> TrainResult | RecommenderResult: ...
    def train(self, model: str | Declared, **options: Any) -> TrainResult | RecommenderResult:
        """Train the declared model ``model`` (or a variant of one, such as a declared
        model with other hyperparameters) and register it (see
        :func:`keel.training.train_model` and :func:`keel.recommend.train_recommender` for
        ``options``)."""
        if isinstance(model, str):
            model = self.model(model)
        parent_alias = self._parent_alias(model.route)
        checkpoint_dir = Path(self.settings.data_dir) / "checkpoints"
        code_dir = str(self.settings.project_dir)
        if isinstance(model, Recommender):
            parent = None
            if parent_alias is not None and parent_alias in self._aliases(model.name):
                parent = self._aliases(model.name)[parent_alias]
            return train_recommender(
                model,
                features=self.features if model.features else None,
                indexes=self.indexes,
                parent=parent,
                log=self.log,
                registry=self.registry,
                checkpoint_dir=checkpoint_dir,
                code_dir=code_dir,
                **options,
            )
        return train_model(
            model,
            features=self.features,
            parent_alias=parent_alias,
            log=self.log,
            registry=self.registry,
            checkpoint_dir=checkpoint_dir,
            code_dir=code_dir,
            **options,
        )

    def fine_tune(self, model: str | Recommender, **options: Any) -> FineTuneResult:
        """Refresh a declared recommender's embedding tables from the interactions logged
        since the version its route serves (see :func:`keel.recommend.fine_tune`)."""
        declared = self.model(model) if isinstance(model, str) else model
        if not isinstance(declared, Recommender):
            raise ValidationError(
                f"model {declared.name!r} is not a recommender: only a recommender's embedding "
                "tables are fine-tuned; retrain it with keel train"
            )
        if "parent" not in options:
            alias = self._parent_alias(declared.route)
            options["parent"] = alias if alias in self._aliases(declared.name) else "latest"
        return fine_tune_recommender(
            declared,
            log=self.log,
            features=self.features if declared.features else None,
            registry=self.registry,
            indexes=self.indexes,
            checkpoint_dir=Path(self.settings.data_dir) / "checkpoints",
            code_dir=str(self.settings.project_dir),
            **options,
        )

    def _aliases(self, name: str) -> dict[str, int]:
        try:
            return self.registry.aliases(name)
        except NotFoundError:
            return {}

    def _declared(self, attr: str, kind: type | tuple[type, ...]) -> list[Any]:
        found = getattr(self._module(), attr, [])
        bad = [x for x in found if not isinstance(x, kind)]
        if bad:
            kinds = kind if isinstance(kind, tuple) else (kind,)
            raise ValidationError(
                f"{self.settings.definitions}: {attr!r} must hold "
                f"{' or '.join(k.__name__ for k in kinds)} objects, found {type(bad[0]).__name__}"
            )
        return list(found)

    def _module(self) -> ModuleType:
        if self._definitions is None:
            self._definitions = self.definitions()
        return self._definitions

    @cached_property
    def features(self) -> FeatureStore:
        """The feature store over the declared views (validated against their topics)."""
        return FeatureStore(
            self.log,
            views=self.declared_views(),
            online=self.settings.online_url,
            offline=self.settings.offline_url,
        )

    @cached_property
    def indexes(self) -> IndexStore:
        """Each model version's vector index, under the data folder."""
        return IndexStore(Path(self.settings.data_dir) / "indexes")

    @cached_property
    def registry(self) -> Registry:
        """The model registry (metadata and artifacts) named by the settings."""
        return Registry(self.settings.registry_url, self.settings.artifacts_url, log=self.log)

    @cached_property
    def jobs(self) -> JobStore:
        """Jobs and their states, in the registry's database."""
        return JobStore(self.registry.engine)

    def job_manager(self, **options: Any) -> JobManager:
        """A manager that admits this project's jobs and runs them on ``jobs_url``."""
        from keel.jobs.executors import executor_for
        from keel.jobs.manager import JobManager

        return JobManager(
            self.settings.jobs,
            self.jobs,
            executor_for(self.settings.jobs_url),
            run_root=Path(self.settings.data_dir) / "jobs",
            **options,
        )

    def job(
        self,
        kind: str,
        target: str | None = None,
        *,
        argv: list[str] | None = None,
        name: str | None = None,
        now: float | None = None,
        **options: Any,
    ) -> JobSpec:
        """The job that runs ``keel <kind> <target>`` on this project (or ``argv``); a
        training job is pinned to ``now`` (default: the wall clock)."""
        from keel.jobs.manager import JobSpec, keel_argv

        if argv is None:
            when = time.time() if now is None else now
            argv = keel_argv(str(self.config_path), kind, target, now=when)
        name = name or "-".join(p for p in (kind, target) if p).replace("@", "-")
        return JobSpec(name=name, argv=argv, kind=kind, cwd=self.settings.project_dir, **options)

    def applied_views(self) -> dict[str, dict[str, Any]]:
        """What `apply` last recorded per view: fingerprint, time, previous fingerprint."""
        path = Path(self.settings.data_dir) / VIEWS_FILE
        if not path.exists():
            return {}
        return msgspec.json.decode(path.read_bytes())

    def apply(self) -> list[tuple[str, str, str]]:
        """Create declared topics, validate and record declared feature views, and check
        declared models (views and features, label topic and column, trainer parameters).

        Returns ``(kind, name, status)`` rows, status being ``created``, ``changed`` or
        ``unchanged`` (``valid`` for a model). A declared topic whose definition differs
        from the stored one, or an invalid view, is an error naming it, and nothing is
        created; an invalid model is an error naming what is wrong, and no view is recorded.
        """
        declared = self.declared_topics()
        views = self.declared_views()
        names = [t.name for t in declared]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValidationError(f"topic {sorted(dupes)[0]!r} is declared more than once")
        existing = {t.name: t for t in self.log.topics()}
        for t in declared:
            if t.name in existing and existing[t.name] != t:
                raise ConflictError(
                    f"topic {t.name!r} exists with a different definition; stored: "
                    f"{existing[t.name]!r}; declared: {t!r}. Topics are append-only: "
                    "declare a new topic name instead"
                )
        models = self.declared_models()
        model_names = [m.name for m in models]
        twice = {n for n in model_names if model_names.count(n) > 1}
        if twice:
            raise ValidationError(f"model {sorted(twice)[0]!r} is declared more than once")
        route_names = [r.name for r in self.settings.routes]
        for m in models:
            if m.route is not None and m.route not in route_names:
                raise ValidationError(
                    f"model {m.name!r} feeds route {m.route!r}, which {CONFIG_FILE} does not "
                    f"declare{did_you_mean(m.route, route_names)}"
                )
        known = set(existing) | set(names)
        for v in views:
            if v.source.topic not in known:
                raise ValidationError(
                    f"feature view {v.name!r} reads topic {v.source.topic!r}, which is neither "
                    f"declared nor in the log{did_you_mean(v.source.topic, known)}"
                )
        out = []
        for t in declared:
            status = "unchanged" if t.name in existing else "created"
            self.log.create_topic(t, exist_ok=True)
            out.append(("topic", t.name, status))
        fingerprints = self.features.validate()
        for m in models:
            if isinstance(m, Recommender):
                check_recommender(m, self.log, self.features)
            else:
                check_model(m, self.log, self.features)
        before = self.applied_views()
        record = {}
        for name, fp in fingerprints.items():
            old = before.get(name)
            if old is None:
                status, previous, applied_at = "created", None, time.time()
            elif old["fingerprint"] == fp:
                status, previous, applied_at = "unchanged", old.get("previous"), old["applied_at"]
            else:
                status, previous, applied_at = "changed", old["fingerprint"], time.time()
            record[name] = {"fingerprint": fp, "applied_at": applied_at, "previous": previous}
            out.append(("feature view", name, status))
        out.extend(("model", m.name, "valid") for m in models)
        path = Path(self.settings.data_dir) / VIEWS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(record))
        os.replace(tmp, path)
        return out


def init_project(directory: str | Path, *, name: str | None = None, force: bool = False) -> Path:
    """Write a working example project (``keel.toml`` + ``definitions.py``) into ``directory``."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    templates = resources.files("keel") / "templates"
    targets = {CONFIG_FILE: root / CONFIG_FILE, "definitions.py": root / "definitions.py"}
    clash = [str(p) for p in targets.values() if p.exists()]
    if clash and not force:
        raise ConflictError(f"{clash[0]} already exists (use --force to overwrite)")
    project = name or root.resolve().name or "keel"
    for template, target in targets.items():
        text = (templates / template).read_text()
        if template == CONFIG_FILE:
            text = text.replace("{name}", project)
        target.write_text(text)
    return root
