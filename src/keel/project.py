"""A Keel project: its settings, its definitions module, and the backends they name.

Thin on purpose: it loads and hands out; the work is done by the packages.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import ModuleType

from keel.config import CONFIG_FILE, Settings
from keel.errors import ConfigError, ConflictError, ValidationError
from keel.log import Log, Topic, open_log

__all__ = ["Project", "init_project"]


class Project:
    """The project described by ``settings``; backends open lazily on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def load(cls, config: str | Path | None = None) -> Project:
        return cls(Settings.load(config))

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
        topics = getattr(self.definitions(), "topics", [])
        bad = [t for t in topics if not isinstance(t, Topic)]
        if bad:
            raise ValidationError(
                f"{self.settings.definitions}: 'topics' must hold Topic objects, found "
                f"{type(bad[0]).__name__}"
            )
        return list(topics)

    def apply(self) -> list[tuple[Topic, str]]:
        """Create every declared topic that does not exist yet.

        Returns each topic with ``"created"`` or ``"unchanged"``. A declared topic whose
        definition differs from the stored one is a :class:`ConflictError` naming it, and
        nothing is created.
        """
        declared = self.declared_topics()
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
        out = []
        for t in declared:
            status = "unchanged" if t.name in existing else "created"
            self.log.create_topic(t, exist_ok=True)
            out.append((t, status))
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
