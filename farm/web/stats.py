"""Statistics over trials: verdicts over time, verdict counts, anomaly and window rate per knob.

The pages' charts are drawn from these. Rules, because the trials table is the
one that grows: a time series groups done trials by bucket and verdict in SQL
(at most ``MAX_SERIES_BUCKETS`` buckets), and parameter plots are drawn from
a campaign's latest ``PARAM_SAMPLE`` tested trials, not all of them, with the
database doing the counting. Callers read these through the app's TTLCache.

Verdicts are listed in ``display_order``: derived from farm.triage.kinds, so a
new kind takes its place in every table and chart without a change here.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    case,
    cast,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from farm.params import KNOBS, LOG_KNOBS, PLACEMENTS, PUNCH_METHODS
from farm.store import signal
from farm.store.models import Trial
from farm.triage.kinds import FINDING_KINDS, KINDS, UNTESTED_KINDS, is_finding, is_run, severity
from farm.web import schemas as s

PARAM_SAMPLE = 10_000  # latest trials of a campaign the parameter plots are drawn from
# every knob but the program's own RNG seed (a rate against it is noise)
PLOTTED = tuple(name for name in KNOBS if name != "rng_seed")
MAX_SERIES_BUCKETS = 48
_BUCKET_WIDTHS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
_CATEGORIES = {"punch": PUNCH_METHODS, "placement": PLACEMENTS}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def epoch_bucket(session: Session, column: Any, width: int) -> ColumnElement[int]:
    """floor(epoch seconds / width) of a timestamp column, on either backend."""
    if dialect(session) == "postgresql":
        seconds = cast(func.floor(func.extract("epoch", column)), BigInteger)
    else:  # SQLite keeps UTC as text; strftime('%s') reads it
        seconds = cast(func.strftime("%s", column), Integer)
    return seconds // width  # integer division on both


def from_bucket(bucket: int, width: int) -> datetime:
    return EPOCH + timedelta(seconds=bucket * width)


def display_order(verdict: str) -> tuple[int, int, str]:
    """Sort key of verdicts in tables and stacked charts: the usual at the bottom.

    ``clean`` first, then the kinds that tested nothing, then the finding kinds
    from least to most severe (farm.triage.kinds.severity), unknown strings last.
    """
    if verdict not in KINDS:
        group = 3
    elif verdict in UNTESTED_KINDS:
        group = 1
    elif is_finding(verdict):
        group = 2
    else:
        group = 0
    return group, -severity(verdict), verdict


def bucket_width(span_s: float) -> int:
    for width in _BUCKET_WIDTHS:
        if span_s / width < MAX_SERIES_BUCKETS:
            return width
    return math.ceil(span_s / MAX_SERIES_BUCKETS)


def series(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    first: datetime,
    last: datetime,
    width: int | None = None,
) -> s.Series:
    """Done trials per time bucket and verdict between ``first`` and ``last``."""
    width = width or bucket_width((last - first).total_seconds())
    lo = math.floor((first - EPOCH).total_seconds() / width)
    hi = math.floor((last - EPOCH).total_seconds() / width)
    bucket = epoch_bucket(session, Trial.finished_at, width).label("bucket")
    rows = session.execute(
        select(bucket, Trial.verdict, func.count())
        .where(*where, Trial.finished_at >= from_bucket(lo, width))
        .group_by(bucket, Trial.verdict)
    ).all()
    counts: dict[str, list[int]] = {}
    n = hi - lo + 1
    for b, verdict, c in rows:
        i = int(b) - lo
        if 0 <= i < n:
            counts.setdefault(verdict or "none", [0] * n)[i] += c
    ordered = dict(sorted(counts.items(), key=lambda kv: display_order(kv[0])))
    return s.Series(
        bucket_seconds=width,
        starts=[from_bucket(lo + i, width) for i in range(n)],
        counts=ordered,
    )


def _int_bins(values: list[int], log: bool, count: int = 10) -> list[tuple[int, int]]:
    """Inclusive integer ranges covering ``values``: geometric for log-drawn knobs."""
    lo, hi = min(values), max(values)
    if log and lo > 0:
        ratio = (hi + 1) / lo
        edges = sorted({round(lo * ratio ** (i / count)) for i in range(count + 1)})
    else:
        edges = sorted({lo + round((hi + 1 - lo) * i / count) for i in range(count + 1)})
    edges[-1] = hi + 1
    return [(a, b - 1) for a, b in pairwise(edges) if b > a]


# (knob, value, tested trials, anomalous trials, window entries, guest-seconds)
Tally = tuple[str, Any, int, int, int, float]
Sampled = tuple[str | None, dict[str, Any] | None, int, float]  # verdict, params, window, cost


def tally(rows: Iterable[Sampled]) -> list[Tally]:
    """Tallies from (verdict, params, window entries, guest-seconds) of trials: what
    campaign_params has SQL count."""
    counts: dict[tuple[str, Any], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for verdict, params, window, seconds in rows:
        if not params or verdict is None or not is_run(verdict):
            continue
        for name in PLOTTED:
            if name in params:
                t = counts[(name, params[name])]
                t[0] += 1
                t[1] += is_finding(verdict)
                t[2] += window
                t[3] += seconds
    return [
        (name, value, int(n), int(hits), int(window), seconds)
        for (name, value), (n, hits, window, seconds) in counts.items()
    ]


def _as_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _param_bin(label: str, sums: Sequence[float]) -> s.ParamBin:
    n, hits, window, seconds = sums
    return s.ParamBin(
        label=label,
        trials=int(n),
        anomalies=int(hits),
        window_entries=int(window),
        guest_seconds=round(seconds, 3),
    )


def param_rates(tallies: Iterable[Tally]) -> list[s.ParamRates]:
    """Anomaly rate and window entries per guest-second against each knob, from
    per-value tallies of tested trials.

    Only trials that tested something count (clean or a finding kind). Knobs
    with a dozen values or fewer get one bin per value; wider ones ten bins,
    geometric for the knobs farm.params draws log-uniformly. Both rates share
    the bins, so the two charts of a knob line up.
    """
    by_knob: dict[str, list[tuple[Any, list[float]]]] = defaultdict(list)
    for name, value, n, hits, window, seconds in tallies:
        if value is not None:
            by_knob[name].append((value, [n, hits, window, seconds]))
    out = []
    for name in PLOTTED:
        values = by_knob.get(name)
        if not values:
            continue
        help_ = KNOBS[name].help
        if len(values) == 1:
            out.append(s.ParamRates(name=name, help=help_, bins=[], fixed=str(values[0][0])))
            continue
        ints = [(_as_int(v), sums) for v, sums in values]
        bins: list[s.ParamBin] = []
        if name not in _CATEGORIES and all(i is not None for i, _ in ints):
            numeric = [(int(i), sums) for i, sums in ints if i is not None]
            numeric.sort(key=itemgetter(0))
            distinct_values = [v for v, _ in numeric]
            if len(distinct_values) <= 12:
                ranges = [(v, v) for v in distinct_values]
            else:
                ranges = _int_bins(distinct_values, name in LOG_KNOBS)
            counts = [[0.0] * 4 for _ in ranges]
            starts = [a for a, _ in ranges]
            for value, sums in numeric:
                _add(counts[bisect_right(starts, value) - 1], sums)
            for (a, b), sums in zip(ranges, counts, strict=True):
                bins.append(_param_bin(str(a) if a == b else f"{a}–{b}", sums))
        else:
            known = _CATEGORIES.get(name, ())
            merged: dict[str, list[float]] = defaultdict(lambda: [0.0] * 4)
            for value, sums in values:
                _add(merged[str(value)], sums)
            order = [v for v in known if v in merged] + sorted(v for v in merged if v not in known)
            bins = [_param_bin(v, merged[v]) for v in order]
        out.append(s.ParamRates(name=name, help=help_, bins=bins))
    return out


def _add(into: list[float], sums: Sequence[float]) -> None:
    for i, value in enumerate(sums):
        into[i] += value


def campaign_verdicts(cid: int, session: Session) -> dict[str, int]:
    """Done trials per verdict (index-only on ix_trials_campaign_verdict_finished)."""
    rows = session.execute(
        select(Trial.verdict, func.count())
        .where(Trial.campaign_id == cid, Trial.finished_at.is_not(None))
        .group_by(Trial.verdict)
    ).all()
    return dict(sorted(((v or "none", n) for v, n in rows), key=lambda kv: display_order(kv[0])))


def campaign_series(cid: int, session: Session) -> s.Series:
    """Verdicts over the campaign's life, in at most MAX_SERIES_BUCKETS buckets."""
    first, last = session.execute(
        select(func.min(Trial.finished_at), func.max(Trial.finished_at)).where(
            Trial.campaign_id == cid
        )
    ).one()
    if first is None or last is None:
        return s.Series(bucket_seconds=3600, starts=[], counts={})
    return series(session, [Trial.campaign_id == cid], first, last)


def campaign_params(cid: int, session: Session) -> tuple[list[s.ParamRates], int, int]:
    """Anomaly rate and window entries per guest-second per knob over the latest
    PARAM_SAMPLE tested trials; how many trials, and their window entries (0: no
    window charts).

    The database does the counting (one GROUP BY per knob over the sample), so
    Python sees a few thousand (knob, value) tallies instead of every trial's
    parameters as JSON. The window signal and cost are the search's own
    (farm.store.signal, the SQL of farm.protocol's definitions).
    """
    tested = [k for k in KINDS if is_run(k)]
    sample = (
        select(
            Trial.params.label("params"),
            case((Trial.verdict.in_(sorted(FINDING_KINDS)), 1), else_=0).label("hit"),
            signal.window_signal().label("window"),
            signal.guest_seconds().label("seconds"),
        )
        .where(
            Trial.campaign_id == cid,
            Trial.verdict.in_(tested),
            Trial.finished_at.is_not(None),
            Trial.params.is_not(None),
        )
        .order_by(Trial.finished_at.desc())
        .limit(PARAM_SAMPLE)
        .cte("sample")
    )
    size = select(func.count(), func.sum(sample.c.window)).select_from(sample)
    per_knob = []
    for name in PLOTTED:
        # one expression object in SELECT and GROUP BY: PostgreSQL must see the same bind
        value = sample.c.params[name].as_string()
        per_knob.append(
            select(
                literal(name).label("knob"),
                value,
                func.count(),
                func.sum(sample.c.hit),
                func.sum(sample.c.window),
                func.sum(sample.c.seconds),
            ).group_by(value)
        )
    rows = session.connection().execute(union_all(*per_knob)).all()
    n, window = session.connection().execute(size).one()
    tallies = ((k, v, int(c), int(h or 0), int(w or 0), float(t or 0)) for k, v, c, h, w, t in rows)
    return param_rates(tallies), int(n or 0), int(window or 0)
