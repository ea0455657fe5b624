"""One error hierarchy for all of Keel.

Every error is a :class:`KeelError`; each subclass carries the HTTP status it maps to at the
serving boundary, so a not-found is a 404 and bad input a 400 wherever it is raised.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "ConflictError",
    "KeelError",
    "NotFoundError",
    "RecordError",
    "TopicNotFoundError",
    "UnavailableError",
    "ValidationError",
    "did_you_mean",
]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return `` — did you mean 'x'?`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


class KeelError(Exception):
    """Root of every error Keel raises on purpose."""

    status_code: int = 500


class ConfigError(KeelError):
    """The configuration (``keel.toml`` or a ``KEEL_*`` variable) is invalid."""

    status_code = 400


class ValidationError(KeelError):
    """An argument or a record does not have the expected shape or type."""

    status_code = 400


class NotFoundError(KeelError):
    """A named object (topic, model, route…) does not exist."""

    status_code = 404


class ConflictError(KeelError):
    """The object already exists, or a concurrent change won the race."""

    status_code = 409


class UnavailableError(KeelError):
    """A backend or service cannot answer now; retrying later may succeed."""

    status_code = 503


class TopicNotFoundError(NotFoundError):
    """No topic of that name exists in the log."""

    def __init__(self, topic: str, known: Iterable[str] = ()) -> None:
        self.topic = topic
        hint = did_you_mean(topic, known)
        super().__init__(
            f"topic {topic!r} does not exist{hint} (create it with Log.create_topic, "
            "or list topics with `keel log topics`)"
        )


class RecordError(ValidationError):
    """A record given to the log does not fit the topic's schema.

    The message names the topic, the row (0-based within the call), the field and what was
    expected; nothing from the call has been appended.
    """

    def __init__(self, topic: str, row: int | None, field: str | None, problem: str) -> None:
        self.topic = topic
        self.row = row
        self.field = field
        where = f"topic {topic!r}"
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}; nothing from this call was appended")
