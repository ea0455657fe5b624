"""The registry's tables (SQLAlchemy Core). Alembic migrations create and evolve them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = ["alias_history", "aliases", "metadata", "models", "versions"]

metadata = MetaData()

models = Table(
    "models",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("description", Text, nullable=False, default=""),
)

versions = Table(
    "versions",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("format", String(40), nullable=False),
    Column("artifact", String(64), nullable=False),  # sha256 of the artifact
    Column("artifact_size", BigInteger, nullable=False),
    Column("loader", JSON, nullable=False),  # how to rebuild the object (factory, kwargs…)
    Column("params", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("lineage", JSON, nullable=False),
    Column("parent_version", Integer, nullable=True),
    Column("description", Text, nullable=False, default=""),
    ForeignKeyConstraint(["model"], ["models.name"]),
)

aliases = Table(
    "aliases",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("alias", String(100), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["model", "version"], ["versions.model", "versions.version"]),
)

alias_history = Table(
    "alias_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("alias", String(100), nullable=False),
    Column("seq", Integer, nullable=False),  # 1, 2, 3… per (model, alias)
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=True),  # None: the alias was removed
    Column("at", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    UniqueConstraint("model", "alias", "seq", name="uq_alias_history_seq"),
)
