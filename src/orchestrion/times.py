"""Times as users type them: one rule for every entry point (CLI, shell, run metadata, API)."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrion.errors import InputError


def parse_time(value: datetime | str, what: str = "time") -> datetime:
    """An ISO-8601 time (``2026-11-21T05:00``, ``...Z``, ``...+01:00``) as an aware datetime.

    A time without an offset is UTC, the parameter store's clock, whoever types it: a
    lab's machines may sit in different zones, the store's history does not.
    """
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise InputError(f"{what} '{value}': not an ISO-8601 time (for example 2026-11-21T05:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
