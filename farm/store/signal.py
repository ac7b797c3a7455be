"""The search's per-trial signal and cost as SQL over stored trials.

farm.protocol.window_entries and farm.protocol.guest_seconds define them on a
TrialResult; these are their SQL twins, so that the database can sum them per
group (the campaign page's window rate per knob) without loading every result.
Both read what the recorder stored: the window_* columns (from result.window)
and the result JSON (its proxy and timestamps). tests/web/test_window.py checks
that they agree with the Python definitions on both backends.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Float, case, func, literal

from farm.protocol import MIN_GUEST_SECONDS
from farm.store.models import Trial


def window_signal() -> ColumnElement[int]:
    """farm.protocol.window_entries in SQL: the kernel's count, else the program's proxy, else 0."""
    proxy = Trial.result[("program", "proxy", "overlapped")].as_integer()
    return case(
        (
            Trial.window_entries.is_not(None),
            Trial.window_entries + func.coalesce(Trial.window_swap_entries, 0),
        ),
        else_=func.coalesce(proxy, 0),
    )


def guest_seconds() -> ColumnElement[float]:
    """farm.protocol.guest_seconds in SQL: finished_at - started_at of the stored result."""
    spent = Trial.result["finished_at"].as_float() - Trial.result["started_at"].as_float()
    floor = literal(MIN_GUEST_SECONDS, Float)
    return case((spent > floor, spent), else_=floor)
