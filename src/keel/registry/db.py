"""Engines and migrations for the registry's metadata database.

``sqlite:///path`` (default) or ``postgresql://user@host/db`` (psycopg 3). SQLite writers take
the database lock when their transaction begins (``BEGIN IMMEDIATE``), so two processes
registering or moving aliases at once serialize instead of failing mid-transaction.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event

from keel.errors import ConfigError

__all__ = ["HEAD", "current_revision", "make_engine", "migrate"]

HEAD = "0003"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; ``postgresql://`` is routed to psycopg 3."""
    if url.startswith("sqlite:"):
        path = url.split("sqlite:///", 1)[-1] if url.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            # Let SQLAlchemy's begin() emit BEGIN IMMEDIATE itself (the pysqlite recipe).
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA foreign_keys=ON")
            if path and path != ":memory:":
                dbapi_conn.execute("PRAGMA journal_mode=WAL")

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return create_engine(url, pool_pre_ping=True)
    raise ConfigError(
        f"registry URL {url!r} has no known scheme; expected sqlite:///path/registry.db or "
        "postgresql://user@host/db (KEEL_REGISTRY_URL or registry_url)"
    )


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("keel.registry") / "migrations"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest)."""
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
