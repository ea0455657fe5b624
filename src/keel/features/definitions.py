"""Feature definitions: entities, sources, feature views and their features.

A definition is written once and drives both the offline training set and the online store.
Its *fingerprint* — a hash of the normalized definition, including a source transform's code —
is what the registry records in a model's lineage.

Example
-------
>>> from datetime import timedelta
>>> user = Entity("user", join_key="user_id")
>>> payments = Source("shop.payments")
>>> view = FeatureView(
...     "user_payments", entity=user, source=payments, tile=timedelta(hours=1),
...     ttl=timedelta(days=30),
...     features=[Aggregate("amount", "sum", timedelta(days=1)), Aggregate(None, "count",
...               timedelta(hours=1)), Last("country")])
>>> [f.name for f in view.features]
['amount_sum_1d', 'count_1h', 'country']
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import msgspec
import pyarrow as pa

from keel.errors import ValidationError, did_you_mean

__all__ = [
    "AGGREGATIONS",
    "Aggregate",
    "Entity",
    "Feature",
    "FeatureView",
    "Last",
    "Source",
    "format_duration",
]

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "last", "vector_mean")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
US = 1_000_000


def format_duration(d: timedelta) -> str:
    """``timedelta(days=7)`` → ``'7d'``; ``timedelta(minutes=90)`` → ``'90m'``."""
    s = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0 and s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def parse_duration(text: str) -> timedelta:
    """``'7d'`` → ``timedelta(days=7)``; also ``s``, ``m``, ``h``, ``w`` and plain seconds.

    >>> parse_duration("90m"), parse_duration("2.5")
    (datetime.timedelta(seconds=5400), datetime.timedelta(seconds=2, microseconds=500000))
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    raw = text.strip()
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValidationError(
            f"duration {text!r} is not understood: give a number with a unit, e.g. 30m, 6h, 2d"
        ) from None
    if not seconds >= 0:
        raise ValidationError(f"duration {text!r} must not be negative")
    return timedelta(seconds=seconds)


def _micros(d: timedelta) -> int:
    return round(d.total_seconds() * US)


@dataclass(frozen=True, slots=True)
class Entity:
    """A thing features describe (a user, a card), identified by ``join_key``."""

    name: str
    join_key: str

    def __post_init__(self) -> None:
        for attr in ("name", "join_key"):
            if not _NAME.match(getattr(self, attr) or ""):
                raise ValidationError(f"entity {attr} {getattr(self, attr)!r} is not a name")


@dataclass(frozen=True, slots=True)
class Source:
    """A log topic that feeds feature views, with an optional vectorized transform.

    Parameters
    ----------
    topic
        The log topic's name.
    transform
        A function from an Arrow table to an Arrow table with the same rows, adding or
        replacing columns (for example each item's text embedding). It runs on every batch,
        offline and online alike, so it must treat each row on its own.
    fields
        The columns ``transform`` adds, as name → type (see :mod:`keel.log.schema`).
    allowed_lateness
        An event whose time is older than the newest event seen before it in its partition,
        minus this, is late: it is dropped (offline and online alike) and counted.
    """

    topic: str
    transform: Callable[[pa.Table], pa.Table] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    allowed_lateness: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.transform is not None and not callable(self.transform):
            raise ValidationError(f"source {self.topic!r}: transform must be callable")
        if self.transform is None and self.fields:
            raise ValidationError(
                f"source {self.topic!r}: fields declares transform outputs, but there is no "
                "transform"
            )
        if self.allowed_lateness < timedelta(0):
            raise ValidationError(f"source {self.topic!r}: allowed_lateness must be >= 0")

    @property
    def lateness_us(self) -> int:
        return _micros(self.allowed_lateness)

    def transform_code(self) -> str:
        if self.transform is None:
            return ""
        describe = getattr(self.transform, "fingerprint_text", None)
        if callable(describe):
            return str(describe())
        try:
            return inspect.getsource(self.transform)
        except (OSError, TypeError):
            return getattr(self.transform, "__qualname__", repr(self.transform))

    def apply(self, table: pa.Table) -> pa.Table:
        """Run the transform (if any) and check it kept the rows and added what it declared."""
        if self.transform is None:
            return table
        out = self.transform(table)
        if not isinstance(out, pa.Table) or out.num_rows != table.num_rows:
            raise ValidationError(
                f"source {self.topic!r}: transform must return an Arrow table with the same "
                f"{table.num_rows} rows"
            )
        missing = [f for f in self.fields if f not in out.column_names]
        if missing:
            raise ValidationError(
                f"source {self.topic!r}: transform did not add declared field {missing[0]!r}"
            )
        return out


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature of a view: ``fn`` over ``column`` in a trailing ``window`` (None: all time)."""

    column: str | None
    fn: str
    window: timedelta | None
    name: str
    default: Any = None

    @property
    def window_us(self) -> int | None:
        return None if self.window is None else _micros(self.window)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "column": self.column,
            "fn": self.fn,
            "window_s": None if self.window is None else self.window.total_seconds(),
            "default": self.default,
        }


def Aggregate(
    column: str | None,
    fn: str,
    window: timedelta,
    *,
    name: str | None = None,
    default: Any = None,
) -> Feature:
    """``fn`` (count, sum, mean, min, max, last, vector_mean) of ``column`` over ``window``.

    ``count`` takes ``column=None`` to count events. Missing entities get ``default``
    (0 for count and sum unless given).
    """
    if fn not in AGGREGATIONS:
        raise ValidationError(
            f"aggregation {fn!r} is unknown{did_you_mean(fn, AGGREGATIONS)}; expected one of "
            f"{', '.join(AGGREGATIONS)}"
        )
    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise ValidationError(f"aggregate {fn}({column}) needs a positive timedelta window")
    if column is None and fn != "count":
        raise ValidationError(f"aggregate {fn!r} needs a column")
    if name is None:
        name = f"{column + '_' if column else ''}{fn}_{format_duration(window)}"
    if default is None and fn in ("count", "sum"):
        default = 0
    return Feature(column, fn, window, name, default)


def Last(column: str, *, name: str | None = None, default: Any = None) -> Feature:
    """The latest value of ``column`` for the entity (within the view's TTL)."""
    return Feature(column, "last", None, name or column, default)


@dataclass(frozen=True)
class FeatureView:
    """Features of one entity computed from one source.

    Parameters
    ----------
    name
        Unique among the project's views; features are referred to as ``view:feature``.
    entity, source
        Whose features, from which topic. The topic must hold the entity's join key.
    features
        :func:`Aggregate` and :func:`Last` features.
    tile
        The materialized-window granularity: every window must be a multiple of it. A window
        W read at time t covers events with ``floor(ts/tile) > floor(t/tile) - W/tile`` and
        ``ts <= t``, offline and online.
    ttl
        Values whose newest event is older than this at read time are missing.
    """

    name: str
    entity: Entity
    source: Source
    features: Sequence[Feature]
    tile: timedelta = timedelta(hours=1)
    ttl: timedelta | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name or ""):
            raise ValidationError(f"feature view name {self.name!r} is not a name")
        object.__setattr__(self, "features", tuple(self.features))
        if not self.features:
            raise ValidationError(f"feature view {self.name!r} has no features")
        if self.tile <= timedelta(0):
            raise ValidationError(f"feature view {self.name!r}: tile must be positive")
        if self.ttl is not None and self.ttl <= timedelta(0):
            raise ValidationError(f"feature view {self.name!r}: ttl must be positive")
        seen: set[str] = set()
        tile = _micros(self.tile)
        for f in self.features:
            if not isinstance(f, Feature):
                raise ValidationError(
                    f"feature view {self.name!r}: features must be Aggregate(...) or Last(...), "
                    f"got {type(f).__name__}"
                )
            if f.name in seen:
                raise ValidationError(
                    f"feature view {self.name!r}: feature name {f.name!r} is used twice"
                )
            seen.add(f.name)
            if f.window is not None and _micros(f.window) % tile:
                raise ValidationError(
                    f"feature view {self.name!r}, feature {f.name!r}: window "
                    f"{format_duration(f.window)} is not a multiple of the tile "
                    f"{format_duration(self.tile)}"
                )

    @property
    def tile_us(self) -> int:
        return _micros(self.tile)

    @property
    def ttl_us(self) -> int | None:
        return None if self.ttl is None else _micros(self.ttl)

    @property
    def max_tiles(self) -> int:
        """How many tiles back the longest window reaches (1 when only Last features)."""
        windows = [f.window_us for f in self.features if f.window_us is not None]
        return max(windows, default=self.tile_us) // self.tile_us

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise ValidationError(
            f"feature view {self.name!r} has no feature {name!r}"
            f"{did_you_mean(name, [f.name for f in self.features])}; it has "
            f"{', '.join(f.name for f in self.features)}"
        )

    def columns(self) -> list[str]:
        """The source columns the features read (besides key and event time)."""
        out: list[str] = []
        for f in self.features:
            if f.column is not None and f.column not in out:
                out.append(f.column)
        return out

    def normalized(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entity": {"name": self.entity.name, "join_key": self.entity.join_key},
            "source": {
                "topic": self.source.topic,
                "fields": dict(sorted(self.source.fields.items())),
                "allowed_lateness_s": self.source.allowed_lateness.total_seconds(),
                "transform": self.source.transform_code(),
            },
            "tile_s": self.tile.total_seconds(),
            "ttl_s": None if self.ttl is None else self.ttl.total_seconds(),
            "features": [f.to_dict() for f in self.features],
        }

    @property
    def fingerprint(self) -> str:
        """sha256 of the normalized definition (stable across processes and runs)."""
        blob = msgspec.json.encode(self.normalized(), order="sorted")
        return hashlib.sha256(blob).hexdigest()
