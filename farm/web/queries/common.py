"""What every query module shares: page sizes, the error a bad parameter raises,
and readers of a campaign's stored spec (JSON written by farm.control.campaigns,
read defensively: an old or hand-edited row must not break a page)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

PER_PAGE = 50
MAX_PER_PAGE = 500
MAX_PAGE = 1_000_000  # page numbers above this are refused (the offset must stay a small integer)


class QueryError(ValueError):
    """A request parameter the queries cannot use (bad cursor, sort, ...); shown as a 400."""


def storable(*texts: str | None) -> bool:
    """Whether a database could hold these strings: a string that none can hold matches
    nothing (PostgreSQL refuses NUL characters; neither backend stores lone surrogates)."""
    for text in texts:
        if text is None:
            continue
        if "\x00" in text:
            return False
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def utc_now() -> datetime:
    return datetime.now(UTC)


def spec_kind(spec: dict[str, Any] | None) -> str:
    kind = (spec or {}).get("kind", "fuzz")
    return kind if isinstance(kind, str) else "fuzz"


def spec_budget(spec: dict[str, Any] | None) -> tuple[int | None, float | None]:
    budget = (spec or {}).get("budget")
    if not isinstance(budget, dict):
        return None, None
    trials, hours = budget.get("trials"), budget.get("hours")
    return (
        trials if isinstance(trials, int) and not isinstance(trials, bool) else None,
        float(hours) if isinstance(hours, int | float) and not isinstance(hours, bool) else None,
    )


def spec_kernels(spec: dict[str, Any] | None) -> list[str]:
    kernels = (spec or {}).get("kernels")
    return [k for k in kernels if isinstance(k, str)] if isinstance(kernels, list) else []


def spec_token(spec: dict[str, Any] | None) -> str | None:
    token = (spec or {}).get("token")
    return token if isinstance(token, str) else None


def page_count(total: int, per_page: int) -> int:
    return max(1, math.ceil(total / per_page))
