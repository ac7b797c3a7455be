"""Adaptive search: which seed token to run next.

The race is rare (think one anomaly in a thousand trials) and depends on timing
knobs whose good values nobody knows, so the scheduler asks a :class:`Sampler`
for each next trial and tells it what came of it. A sampler may only choose a
random 64-bit seed plus explicit overrides, and both travel inside the
:class:`~farm.params.SeedToken`: a trial stays reproducible from its token alone,
whatever the search state was when it was proposed.

Two samplers:

- :class:`UniformSampler`: a random seed; knobs the campaign fixes or confines
  to a range are pinned as overrides, every other knob comes from the seed.
- :class:`ThompsonSampler`: each chosen knob's domain is cut into bins; each bin
  keeps two Gamma posteriors over *rates per guest-second*: findings, and
  race-window entries (the graded signal every trial reports). A proposal
  samples both rates of every bin, scores a bin ``FINDING_WEIGHT * findings/s
  + window/s``, takes the best bin per knob and pins the knob there (the value
  inside the bin comes from the seed). A 70 s trial costs 70 times a 1 s one:
  the search buys signal per second, not per trial. With probability
  ``epsilon`` it proposes uniformly instead. docs/search.md explains the model
  and the choice of independent per-knob bins over joint regions.

Both keep a JSON-serialisable :meth:`~Sampler.state` so a scheduler can store it
in the database and :func:`sampler_from_state` resumes it after a restart.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Protocol, Self, runtime_checkable

from farm.params import KNOBS, LOG_KNOBS, SPACE_VERSION, SeedToken, TrialParams

STATE_FORMAT = 2
# A finding is worth this many window entries: far above them, as a finding is what the
# farm exists for, yet a bin rich in window entries is where findings are likeliest.
FINDING_WEIGHT = 1000.0

# (low, high) knob pairs TrialParams requires in order (low <= high). params()
# silently raises `high` to `low`, which would move a pinned value out of its bin.
ORDERED_PAIRS: tuple[tuple[str, str], ...] = (("evict_delay_min_us", "evict_delay_max_us"),)

# Knob -> number of bins (categorical knobs get one bin per allowed option).
# 4 + 3 + 4 + 3 + 2 + 3 + 2 = 21 arms, plus 3 + 3 + 2 for the VM-level knobs of
# parameter space v2: few enough to learn at ~1e-3 hit rates.
DEFAULT_BINS: dict[str, int] = {
    "pages": 4,
    "evict_delay_max_us": 3,
    "kick_delay_us": 4,
    "batch": 3,
    "punch": 2,
    "placement": 3,
    "evictors": 2,
    "cpu_quota_pct": 3,
    "vcpu_pin": 3,
    "pressure_mb": 2,
}
DEFAULT_EPSILON = 0.1
# Gamma(shape, rate) prior of a bin's window entries per guest-second: mean 1/s, i.e.
# optimistic (every bin gets tried) and washed out after a few guest-seconds of evidence.
# Findings get the same Gamma(shape, rate) prior: one finding doubles a bin's expected
# findings rate (as a Beta(1, 1) prior per trial did), and until a bin has spent enough
# guest-seconds, the weighted findings prior dominates its score: that is exploration.
DEFAULT_PRIOR = (1.0, 1.0)
MAX_TRIES = 64  # fresh seeds tried before a constraint set is declared unsatisfiable


# --------------------------------------------------------------------------- domains


@dataclass(frozen=True)
class IntDomain:
    """Inclusive integer interval; ``log`` draws and splits it geometrically."""

    lo: int
    hi: int
    log: bool = False

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi
        )

    def pick(self, u: int) -> int:
        """A value from a uniform 64-bit integer: log-uniform or uniform, as the knob draws."""
        if self.log and self.lo >= 1 and self.hi > self.lo:
            x = (u >> 11) / float(1 << 53)
            span = math.log(self.hi + 1) - math.log(self.lo)
            value = math.floor(math.exp(math.log(self.lo) + x * span))
            return min(max(value, self.lo), self.hi)
        return self.lo + u % self.size

    def split(self, count: int) -> list[IntDomain]:
        """At most ``count`` contiguous, non-empty bins covering the interval."""
        count = max(1, min(count, self.size))
        if self.log and self.lo >= 1:
            ratio = (self.hi + 1) / self.lo
            cuts = [round(self.lo * ratio ** (i / count)) for i in range(count + 1)]
        else:
            cuts = [self.lo + (i * self.size) // count for i in range(count + 1)]
        cuts[0], cuts[-1] = self.lo, self.hi + 1
        edges = sorted(set(cuts))
        return [IntDomain(a, b - 1, self.log) for a, b in itertools.pairwise(edges)]

    def to_json(self) -> list[int]:
        return [self.lo, self.hi]

    def label(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


@dataclass(frozen=True)
class ChoiceDomain:
    """A set of allowed options of a categorical knob."""

    options: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.options)

    def contains(self, value: Any) -> bool:
        return value in self.options

    def pick(self, u: int) -> str:
        return self.options[u % len(self.options)]

    def split(self, count: int) -> list[ChoiceDomain]:
        return [ChoiceDomain((option,)) for option in self.options]

    def to_json(self) -> list[str]:
        return list(self.options)

    def label(self) -> str:
        return "|".join(self.options)


Domain = IntDomain | ChoiceDomain

# Probing a draw at both ends of the 64-bit input finds the exact range of the
# KNOBS draw helpers (modulo draws need small inputs, log draws use the high bits).
_PROBES = (*range(4096), *((1 << 64) - 1 - i for i in range(4096)))


@cache
def default_domain(name: str) -> Domain:
    """The values a plain seed draws for ``name``, found from KNOBS itself so they never drift."""
    values = [KNOBS[name].draw(u) for u in _PROBES]
    if isinstance(values[0], str):
        return ChoiceDomain(tuple(dict.fromkeys(values)))
    return IntDomain(min(values), max(values), name in LOG_KNOBS)


@lru_cache(maxsize=4096)
def cached_params(token: SeedToken) -> TrialParams:
    """Derivation is pure; a scheduler observes soon after it proposes, so cache recent tokens."""
    return token.params()


def _u64(version: int, seed: int, name: str) -> int:
    """Uniform 64 bits per (seed, knob), independent of the knob's own draw in params.py."""
    digest = hashlib.blake2b(f"zapfarm-search:{version}:{seed:016x}:{name}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def _range_domain(name: str, spec: Sequence[Any]) -> Domain:
    default = default_domain(name)
    knob = KNOBS[name]
    if isinstance(default, ChoiceDomain):
        options = tuple(dict.fromkeys(str(o) for o in spec))
        bad = [o for o in options if not knob.valid(o)]
        if not options or bad:
            raise ValueError(
                f"ranges.{name}: options {list(spec)!r} must be some of {default.options}"
            )
        return ChoiceDomain(options)
    if len(spec) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
        raise ValueError(f"ranges.{name}: give [low, high] integers, not {list(spec)!r}")
    lo, hi = spec
    if lo > hi:
        raise ValueError(f"ranges.{name}: {lo} is above {hi}")
    if not (knob.valid(lo) and knob.valid(hi)):
        raise ValueError(f"ranges.{name}: [{lo}, {hi}] leaves the valid values ({knob.help})")
    return IntDomain(lo, hi, default.log if isinstance(default, IntDomain) else False)


class _Space:
    """A campaign's constraints: fixed values and ranges, turned into one domain per knob."""

    def __init__(
        self,
        fixed: Mapping[str, Any] | None,
        ranges: Mapping[str, Sequence[Any]] | None,
        version: int,
    ) -> None:
        self.version = version
        self.fixed: dict[str, Any] = dict(sorted((fixed or {}).items()))
        self.ranges: dict[str, list[Any]] = {k: list(v) for k, v in sorted((ranges or {}).items())}
        for name in (*self.fixed, *self.ranges):
            if name not in KNOBS:
                raise ValueError(f"unknown parameter {name!r}; known: {', '.join(KNOBS)}")
        for name, value in self.fixed.items():
            if not KNOBS[name].valid(value):
                raise ValueError(f"fixed {name}={value!r} is not valid ({KNOBS[name].help})")
            if name in self.ranges:
                raise ValueError(f"{name} is both fixed and given a range; pick one")
        domains: dict[str, Domain] = {}
        for name in KNOBS:
            if name in self.fixed:
                value = self.fixed[name]
                domains[name] = (
                    ChoiceDomain((value,)) if isinstance(value, str) else IntDomain(value, value)
                )
            elif name in self.ranges:
                domains[name] = _range_domain(name, self.ranges[name])
            else:
                domains[name] = default_domain(name)
        for low, high in ORDERED_PAIRS:
            a, b = domains[low], domains[high]
            assert isinstance(a, IntDomain) and isinstance(b, IntDomain)
            if high in self.fixed:
                a = IntDomain(a.lo, min(a.hi, b.hi), a.log)
            else:
                b = IntDomain(max(b.lo, a.hi), b.hi, b.log)
            if a.lo > a.hi or b.lo > b.hi:
                raise ValueError(f"constraints leave no value with {low} <= {high}")
            domains[low], domains[high] = a, b
        self.domains = domains
        # Knobs a uniform proposal must pin: everything not left to the seed's own draw.
        self.pinned = tuple(n for n in KNOBS if n in self.fixed or domains[n] != default_domain(n))

    def to_json(self) -> dict[str, Any]:
        return {"fixed": dict(self.fixed), "ranges": {k: list(v) for k, v in self.ranges.items()}}

    def pins(self, seed: int, chosen: Mapping[str, Domain]) -> dict[str, Any]:
        """Overrides for ``seed``: constrained knobs in their domain, ``chosen`` ones in a bin."""
        values = dict(self.fixed)
        for name in (*self.pinned, *chosen):
            if name not in self.fixed:
                domain = chosen.get(name, self.domains[name])
                values[name] = domain.pick(_u64(self.version, seed, name))
        return values

    def admits(self, params: TrialParams) -> bool:
        return all(d.contains(getattr(params, n)) for n, d in self.domains.items())

    def token(self, rng: random.Random, chosen: Mapping[str, Domain]) -> SeedToken:
        """A fresh-seed token obeying the constraints, validated by TrialParams; else ValueError."""
        problem = "no attempt"
        for _ in range(MAX_TRIES):
            seed = rng.getrandbits(64)
            pins = self.pins(seed, chosen)
            token = SeedToken(seed=seed, version=self.version).with_overrides(pins)
            try:
                params = cached_params(token)
            except ValueError as exc:
                problem = str(exc)
                continue
            # Unpinned knobs come from the seed's own draw, inside their default domain.
            if all(getattr(params, k) == v for k, v in pins.items()):
                return token
            problem = f"{token} leaves the campaign's constraints"
        raise ValueError(f"constraints admit no valid trial after {MAX_TRIES} seeds: {problem}")


# --------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class Observation:
    """What one finished, valid trial taught: did it find something, its signal, its cost."""

    finding: bool
    window: int = 0  # race-window entries it saw (farm.protocol.window_entries)
    seconds: float = 1.0  # guest-seconds it cost

    def __post_init__(self) -> None:
        if self.window < 0 or not self.seconds > 0 or math.isinf(self.seconds):
            raise ValueError(f"window >= 0 and 0 < seconds < inf, not {self}")


@runtime_checkable
class Sampler(Protocol):
    """What a scheduler needs from a search strategy."""

    def propose(self, rng: random.Random) -> SeedToken:
        """The next trial's token; all randomness comes from ``rng``."""
        ...

    def observe(self, token: SeedToken, seen: Observation) -> None:
        """Learn from one finished, valid trial (invalid ones, e.g. one NUMA node, are skipped)."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON-serialisable; ``from_state(state())`` continues identically."""
        ...

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self: ...


@dataclass(frozen=True)
class Proposal:
    """A token and why: ``region`` maps each binned knob to its bin index, None when exploring."""

    token: SeedToken
    region: dict[str, int] | None


def _check_state(state: Mapping[str, Any], kind: str, formats: tuple[int, ...] = (1, 2)) -> None:
    if state.get("kind") != kind or state.get("format") not in formats:
        raise ValueError(
            f"not a {kind} sampler state (format {STATE_FORMAT}): "
            f"kind={state.get('kind')!r} format={state.get('format')!r}"
        )


class UniformSampler:
    """The baseline: random seeds, the campaign's fixed values and ranges, nothing learnt."""

    kind = "uniform"

    def __init__(
        self,
        *,
        fixed: Mapping[str, Any] | None = None,
        ranges: Mapping[str, Sequence[Any]] | None = None,
        version: int = SPACE_VERSION,
    ) -> None:
        self._space = _Space(fixed, ranges, version)
        self._space.token(random.Random(0), {})  # fail now, not at the first proposal
        self.trials = 0
        self.anomalies = 0  # trials with a finding
        self.window = 0
        self.seconds = 0.0

    def propose(self, rng: random.Random) -> SeedToken:
        return self._space.token(rng, {})

    def observe(self, token: SeedToken, seen: Observation) -> None:
        self.trials += 1
        self.anomalies += seen.finding
        self.window += seen.window
        self.seconds += seen.seconds

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format": STATE_FORMAT,
            "version": self._space.version,
            **self._space.to_json(),
            "trials": self.trials,
            "anomalies": self.anomalies,
            "window": self.window,
            "seconds": self.seconds,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        _check_state(state, cls.kind)
        sampler = cls(fixed=state["fixed"], ranges=state["ranges"], version=state["version"])
        sampler.trials, sampler.anomalies = int(state["trials"]), int(state["anomalies"])
        # format 1 kept no signal or cost: its trials count as one guest-second each
        sampler.window = int(state.get("window", 0))
        sampler.seconds = float(state.get("seconds", sampler.trials))
        return sampler


class ThompsonSampler:
    """Thompson sampling of signal per guest-second over independent per-knob bins.

    Each bin's findings and window entries are Poisson processes in guest time
    with Gamma(prior) rates; the conjugate posterior after ``n`` events in ``t``
    guest-seconds is Gamma(shape + n, rate + t). Sampling both rates per bin and
    scoring ``FINDING_WEIGHT * findings/s + window/s`` is Thompson sampling of
    that objective; a uniform exploration floor keeps the search honest.
    """

    kind = "thompson"

    def __init__(
        self,
        *,
        fixed: Mapping[str, Any] | None = None,
        ranges: Mapping[str, Sequence[Any]] | None = None,
        bins: Mapping[str, int] | None = None,
        epsilon: float = DEFAULT_EPSILON,
        prior: tuple[float, float] = DEFAULT_PRIOR,
        version: int = SPACE_VERSION,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be within [0, 1], not {epsilon}")
        if len(prior) != 2 or min(prior) <= 0:
            raise ValueError(f"prior must be two positive numbers (shape, rate), not {prior}")
        self._space = _Space(fixed, ranges, version)
        self.epsilon = float(epsilon)
        self.prior = (float(prior[0]), float(prior[1]))
        self.bin_counts = dict(DEFAULT_BINS if bins is None else bins)
        self.bins: dict[str, list[Domain]] = {}
        for name, count in self.bin_counts.items():
            if name not in KNOBS:
                raise ValueError(f"bins: unknown parameter {name!r}")
            if not isinstance(count, int) or count < 1:
                raise ValueError(f"bins.{name}: give a positive number of bins, not {count!r}")
            cut = self._space.domains[name].split(count)
            if len(cut) > 1:  # fixed or single-valued knobs have nothing to learn
                self.bins[name] = cut
        for pair in ORDERED_PAIRS:
            if all(n in self.bins for n in pair):
                raise ValueError(f"bin at most one of {' and '.join(pair)}: their values interact")
        self.trials = {name: [0] * len(cut) for name, cut in self.bins.items()}
        self.hits = {name: [0] * len(cut) for name, cut in self.bins.items()}  # findings
        self.window = {name: [0] * len(cut) for name, cut in self.bins.items()}
        self.seconds = {name: [0.0] * len(cut) for name, cut in self.bins.items()}
        self.ignored = 0  # observed tokens outside this campaign's constraints
        probe = random.Random(0)
        for name, cut in self.bins.items():  # every bin must admit a trial
            for domain in cut:
                self._space.token(probe, {name: domain})

    # -- proposing

    def draw(self, rng: random.Random) -> Proposal:
        """Like propose(), also saying which region was chosen (None: exploration floor)."""
        if rng.random() < self.epsilon:
            return Proposal(self._space.token(rng, {}), None)
        shape, rate = self.prior
        region: dict[str, int] = {}
        for name, seconds in self.seconds.items():
            scores = [
                FINDING_WEIGHT * rng.gammavariate(shape + h, 1.0 / (rate + t))
                + rng.gammavariate(shape + w, 1.0 / (rate + t))
                for h, w, t in zip(self.hits[name], self.window[name], seconds, strict=True)
            ]
            region[name] = max(range(len(scores)), key=scores.__getitem__)
        chosen = {name: self.bins[name][i] for name, i in region.items()}
        return Proposal(self._space.token(rng, chosen), region)

    def propose(self, rng: random.Random) -> SeedToken:
        return self.draw(rng).token

    # -- learning

    def region_of(self, params: TrialParams) -> dict[str, int] | None:
        """The bin index of each binned knob, or None if the trial is outside the campaign."""
        if not self._space.admits(params):
            return None
        region = {}
        for name, cut in self.bins.items():
            value = getattr(params, name)
            region[name] = next(i for i, d in enumerate(cut) if d.contains(value))
        return region

    def observe(self, token: SeedToken, seen: Observation) -> None:
        """Credit the trial's bins, wherever the token came from (exploration, replays too)."""
        region = (
            self.region_of(cached_params(token)) if token.version == self._space.version else None
        )
        if region is None:
            self.ignored += 1
            return
        for name, i in region.items():
            self.trials[name][i] += 1
            self.hits[name][i] += seen.finding
            self.window[name][i] += seen.window
            self.seconds[name][i] += seen.seconds

    def posterior(self) -> dict[str, list[dict[str, Any]]]:
        """Per knob and bin: trials, findings, window entries, guest-seconds and posterior
        mean rates per guest-second, for reports and the web."""
        shape, rate = self.prior
        return {
            name: [
                {
                    "bin": d.label(),
                    "trials": n,
                    "hits": h,
                    "window": w,
                    "seconds": round(t, 3),
                    "findings_per_s": (shape + h) / (rate + t),
                    "window_per_s": (shape + w) / (rate + t),
                }
                for d, n, h, w, t in zip(
                    self.bins[name],
                    self.trials[name],
                    self.hits[name],
                    self.window[name],
                    self.seconds[name],
                    strict=True,
                )
            ]
            for name in self.bins
        }

    # -- persistence

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format": STATE_FORMAT,
            "version": self._space.version,
            **self._space.to_json(),
            "bins": dict(self.bin_counts),
            "epsilon": self.epsilon,
            "prior": list(self.prior),
            "edges": {name: [d.to_json() for d in cut] for name, cut in self.bins.items()},
            "trials": {name: list(v) for name, v in self.trials.items()},
            "hits": {name: list(v) for name, v in self.hits.items()},
            "window": {name: list(v) for name, v in self.window.items()},
            "seconds": {name: list(v) for name, v in self.seconds.items()},
            "ignored": self.ignored,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        _check_state(state, cls.kind)
        # format 1 held a Beta(hits, misses) prior per trial: its counts carry over, each
        # trial as one guest-second, and the Gamma prior starts at the default
        prior = state["prior"] if state["format"] == STATE_FORMAT else DEFAULT_PRIOR
        sampler = cls(
            fixed=state["fixed"],
            ranges=state["ranges"],
            bins=state["bins"],
            epsilon=state["epsilon"],
            prior=(prior[0], prior[1]),
            version=state["version"],
        )
        edges = {name: [d.to_json() for d in cut] for name, cut in sampler.bins.items()}
        if edges != state["edges"]:
            raise ValueError("the stored bins differ from this zapfarm's binning; start afresh")
        for name in sampler.bins:
            trials, hits = (
                [int(v) for v in state["trials"][name]],
                [int(v) for v in state["hits"][name]],
            )
            if len(trials) != len(sampler.bins[name]) or len(hits) != len(trials):
                raise ValueError(f"stored counts for {name} do not match its bins")
            if any(h < 0 or h > n for n, h in zip(trials, hits, strict=True)):
                raise ValueError(f"stored counts for {name} are inconsistent")
            window = [int(v) for v in state.get("window", {}).get(name, [0] * len(trials))]
            seconds = [float(v) for v in state.get("seconds", {}).get(name, trials)]
            if len(window) != len(trials) or len(seconds) != len(trials):
                raise ValueError(f"stored signal or cost for {name} does not match its bins")
            if any(w < 0 for w in window) or any(t < 0 for t in seconds):
                raise ValueError(f"stored signal or cost for {name} is negative")
            sampler.trials[name], sampler.hits[name] = trials, hits
            sampler.window[name], sampler.seconds[name] = window, seconds
        sampler.ignored = int(state["ignored"])
        return sampler


SAMPLERS: dict[str, type[UniformSampler] | type[ThompsonSampler]] = {
    UniformSampler.kind: UniformSampler,
    ThompsonSampler.kind: ThompsonSampler,
}


def make_sampler(
    kind: str,
    *,
    fixed: Mapping[str, Any] | None = None,
    ranges: Mapping[str, Sequence[Any]] | None = None,
) -> UniformSampler | ThompsonSampler:
    """A fresh sampler for a campaign's ``search`` setting."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown search {kind!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[kind](fixed=fixed, ranges=ranges)


def sampler_from_state(state: Mapping[str, Any]) -> UniformSampler | ThompsonSampler:
    """Resume whichever sampler ``state`` came from."""
    kind = state.get("kind")
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler state kind {kind!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[kind].from_state(state)
