"""Shrink a seed while it keeps reproducing: the smallest trial a maintainer has to read.

Greedy and deterministic, in the spirit of syzkaller's program minimisation:
knobs are tried from the most expensive down (buffer pages, rounds, threads,
memory pressure, throttling, delays); each candidate is the current token
with one knob made smaller; it is kept when its reproduction rate stays at or
above the threshold. Every candidate is an ordinary token (overrides inside),
so each step can be re-run by anyone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from farm.params import KNOBS, SeedToken, TrialParams

# knob -> the next smaller value to try, or None when it cannot shrink further
SHRINK: dict[str, Callable[[TrialParams], object | None]] = {
    "pages": lambda p: p.pages // 2 if p.pages > 64 else None,
    "rounds": lambda p: 1 if p.rounds > 1 else None,
    "evictors": lambda p: 1 if p.evictors > 1 else None,
    "pressure_mb": lambda p: 0 if p.pressure_mb else None,
    "cpu_quota_pct": lambda p: 100 if p.cpu_quota_pct < 100 else None,
    "vcpu_pin": lambda p: "none" if p.vcpu_pin != "none" else None,
    "placement": lambda p: "any" if p.placement != "any" else None,
    "batch": lambda p: 1 if p.batch > 1 else None,
    "kick_delay_us": lambda p: p.kick_delay_us // 2 if p.kick_delay_us else None,
    "evict_delay_max_us": lambda p: (
        max(p.evict_delay_min_us, p.evict_delay_max_us // 2)
        if p.evict_delay_max_us > p.evict_delay_min_us
        else None
    ),
}


@dataclass(frozen=True)
class Minimized:
    token: SeedToken
    rate: float
    tried: int


def candidates(token: SeedToken) -> Iterator[tuple[str, SeedToken]]:
    """One-knob reductions of ``token``, most expensive knob first."""
    params = token.params()
    for name, shrink in SHRINK.items():
        if KNOBS[name].since > token.version:
            continue
        value = shrink(params)
        if value is not None:
            yield name, token.with_overrides({name: value})


def minimize(
    token: SeedToken, rate_of: Callable[[SeedToken], float], threshold: float = 0.5
) -> Minimized:
    """The smallest token whose ``rate_of`` stays >= threshold (the start must reach it)."""
    rate = rate_of(token)
    tried = 1
    if rate < threshold:
        return Minimized(token, rate, tried)
    improved = True
    while improved:
        improved = False
        for _name, candidate in candidates(token):
            candidate_rate = rate_of(candidate)
            tried += 1
            if candidate_rate >= threshold:
                token, rate, improved = candidate, candidate_rate, True
                break  # restart from the most expensive knob with the smaller token
    return Minimized(token, rate, tried)
