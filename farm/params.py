"""Trial parameters, derived deterministically from a printable seed token.

A seed token is what people paste from a bug report::

    zf1-8188e2f542964e0c                     parameter space v1, 64-bit seed
    zf1-8188e2f542964e0c~pages=512,rounds=1  the same, with explicit overrides

Every parameter is drawn from its own hash of ``(version, seed, field)``, so
adding a field to a future space never shifts the values of the others, and
the derivation does not depend on Python's ``random`` implementation.

This module is the one place that defines what a trial's parameters are:
their ranges, how they are drawn, how they are checked and how they become
the trial program's command line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SPACE_VERSION = 3
KNOWN_VERSIONS = frozenset({1, 2, 3})

PUNCH_METHODS = ("fallocate", "madvise")
PLACEMENTS = ("any", "same", "split")  # threads unpinned, all on one CPU, spread over CPUs
VCPU_PINS = ("none", "same", "split")  # guest vCPUs on any host CPU, all on one, one each
# v3: what is zapped and how the pages are mapped (guest/README.md), and what moves them
SCENARIOS = (
    "shared-punch",  # the seed: a MAP_SHARED memfd mapping under hole punch
    "shared-truncate",
    "private-truncate",  # MAP_PRIVATE, every other page COWed: truncation must discard them
    "private-punch",  # the same under hole punch: COWed data must survive
    "swapped-private-truncate",  # private COWs pushed to swap (MADV_PAGEOUT) first
    "swapped-private-punch",
)
MOVERS = ("move_pages", "mbind", "numa-balancing")
SWAPPED_SCENARIOS = frozenset(s for s in SCENARIOS if s.startswith("swapped-"))

# The longest valid token of parameter space v3 (every knob overridden with its
# longest value) has 322 characters; the seed-2022 preset's has 257. Wire messages
# and the trials table take this many, with room for knobs to come.
MAX_TOKEN_CHARS = 512

_TOKEN_RE = re.compile(r"^zf(?P<version>\d+)-(?P<seed>[0-9a-f]{16})(?:~(?P<overrides>.*))?$")
_INT_RE = re.compile(r"^-?\d+$")  # "--5" is a malformed value, not an integer
_OVERRIDE_RE = re.compile(r"^[a-z_]+=[A-Za-z0-9_.-]+$")


class TokenError(ValueError):
    """A seed token that cannot be read; the message says what is wrong."""


@dataclass(frozen=True)
class Knob:
    """How one parameter is drawn from a seed and which values are valid."""

    draw: Callable[[int], Any]  # uniform 64-bit integer -> value
    valid: Callable[[Any], bool]
    help: str
    since: int = 1  # the parameter space version that introduced it
    default: Any = None  # its value in older spaces
    level: str = "program"  # "program": a zapmigrate flag; "vm": applied by the worker to the guest


def _int_range(lo: int, hi: int) -> Callable[[int], int]:
    return lambda u: lo + u % (hi - lo + 1)


def _log_range(lo: int, hi: int) -> Callable[[int], int]:
    """Log-uniform integers: small buffers are as interesting as large ones."""

    def draw(u: int) -> int:
        x = (u >> 11) / float(1 << 53)
        return min(hi, round(math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo)))))

    return draw


def _choice(options: tuple[Any, ...]) -> Callable[[int], Any]:
    return lambda u: options[u % len(options)]


def _between(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _one_of(options: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: v in options


# The cost model's constants (TrialParams.expected_s, docs/timing.md): seconds of a
# 2-vCPU TCG guest at full speed. Measured: 4096 pages x 2 rounds with batch 1 ~6 s,
# x 4 rounds ~10 s; 4096 pages with mixed batches ~2 s; a 30 % quota ~3x slower.
COST_BASE_S = 1.0  # program start, populate, oracles, teardown
COST_PAGE_S = 0.25e-3  # per page and round: populate, punch, migration of one page
COST_CALL_S = 0.5e-3  # per move_pages() call (pages / batch of them per round)
COST_EXTRA_EVICTOR = 0.25  # each evictor thread after the first
COST_PRESSURE_MB = 128.0  # pressure_mb of churn doubles the work

# Hard limits: what the trial program and the guest accept. Draws stay inside
# a narrower default range; overrides (presets, minimization) may use the rest.
MAX_PAGES = 1 << 16  # 256 MiB of 4 KiB pages: the seed program's buffer

KNOBS: dict[str, Knob] = {
    "pages": Knob(_log_range(64, 8192), _between(1, MAX_PAGES), "buffer size in pages"),
    "evict_delay_min_us": Knob(
        _int_range(0, 10), _between(0, 1_000_000), "evictor sleep before each punch, lower bound"
    ),
    "evict_delay_max_us": Knob(
        _int_range(10, 60), _between(0, 1_000_000), "evictor sleep before each punch, upper bound"
    ),
    "kick_delay_us": Knob(
        _int_range(0, 30), _between(0, 1_000_000), "main thread sleep after waking the evictor"
    ),
    "batch": Knob(_log_range(1, 64), _between(1, MAX_PAGES), "pages per move_pages() call"),
    "src_node": Knob(lambda u: 0, _between(0, 63), "node everything is first moved to"),
    "dst_node": Knob(lambda u: 1, _between(0, 63), "node each page is then moved to"),
    "rounds": Knob(_int_range(1, 3), _between(1, 64), "ping-pong rounds between the two nodes"),
    "punch": Knob(_choice(PUNCH_METHODS), _one_of(PUNCH_METHODS), "how pages are punched"),
    "evictors": Knob(_int_range(1, 2), _between(1, 16), "evictor threads"),
    "placement": Knob(_choice(PLACEMENTS), _one_of(PLACEMENTS), "CPU placement of the threads"),
    "rng_seed": Knob(lambda u: u & 0xFFFFFFFF, _between(0, 0xFFFFFFFF), "trial program RNG seed"),
    # v2: timing knobs at the VM level (applied by the worker to the running guest) and
    # memory pressure inside the guest. Half of all v2 trials run unthrottled.
    "cpu_quota_pct": Knob(
        _choice((100, 100, 100, 100, 60, 40, 25, 15)),
        _between(10, 100),
        "vCPU bandwidth, percent of each period (100: unlimited)",
        since=2,
        default=100,
        level="vm",
    ),
    "vcpu_pin": Knob(
        _choice(VCPU_PINS),
        _one_of(VCPU_PINS),
        "host CPUs of the guest's vCPUs",
        since=2,
        default="none",
        level="vm",
    ),
    "pressure_mb": Knob(
        _choice((0, 0, 32, 128)),
        _between(0, 512),
        "anonymous memory churned in the guest during the race",
        since=2,
        default=0,
    ),
    # v3: scenarios with lasting damage and other movers. Their flags are left out of
    # the command line at their defaults, so v1 and v2 tokens keep their exact argv.
    "scenario": Knob(
        _choice(SCENARIOS),
        _one_of(SCENARIOS),
        "mapping and zap (docs/protocol.md)",
        since=3,
        default="shared-punch",
    ),
    "mover": Knob(
        _choice(MOVERS), _one_of(MOVERS), "what moves the pages", since=3, default="move_pages"
    ),
}

# Knobs drawn log-uniformly above (_log_range): statistics over them (the search's
# bins, the web's rate plots) cut geometric bins, not arithmetic ones.
LOG_KNOBS = frozenset({"pages", "batch"})


def knobs_of(version: int) -> list[str]:
    """The parameters a seed of this parameter space version draws."""
    return [name for name, knob in KNOBS.items() if knob.since <= version]


# The seed thread's program, exactly: 256 MiB, usleep(random() % 30) in the
# evictor, usleep(10) after each kick, everything to node 0, then each page to 1.
PRESETS: dict[str, dict[str, Any]] = {
    "seed-2022": {
        "pages": MAX_PAGES,
        "evict_delay_min_us": 0,
        "evict_delay_max_us": 29,
        "kick_delay_us": 10,
        "batch": 1,
        "src_node": 0,
        "dst_node": 1,
        "rounds": 1,
        "punch": "fallocate",
        "evictors": 1,
        "placement": "any",
        "cpu_quota_pct": 100,
        "vcpu_pin": "none",
        "pressure_mb": 0,
        "scenario": "shared-punch",
        "mover": "move_pages",
    },
}


def _uniform(version: int, seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"zapfarm:{version}:{seed:016x}:{name}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


@dataclass(frozen=True)
class TrialParams:
    """Everything that decides what one trial does (knobs of every parameter space version)."""

    pages: int
    evict_delay_min_us: int
    evict_delay_max_us: int
    kick_delay_us: int
    batch: int
    src_node: int
    dst_node: int
    rounds: int
    punch: str
    evictors: int
    placement: str
    rng_seed: int
    cpu_quota_pct: int = 100
    vcpu_pin: str = "none"
    pressure_mb: int = 0
    scenario: str = "shared-punch"
    mover: str = "move_pages"

    def __post_init__(self) -> None:
        problems = [
            f"{f.name}={getattr(self, f.name)!r} ({KNOBS[f.name].help})"
            for f in dataclasses.fields(self)
            if not KNOBS[f.name].valid(getattr(self, f.name))
        ]
        if self.evict_delay_min_us > self.evict_delay_max_us:
            problems.append("evict_delay_min_us is above evict_delay_max_us")
        if self.src_node == self.dst_node:
            problems.append("src_node and dst_node must differ")
        if problems:
            raise ValueError("invalid trial parameters: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialParams:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown trial parameters: {', '.join(sorted(unknown))}")
        missing = names - set(data)
        if missing:
            raise ValueError(f"missing trial parameters: {', '.join(sorted(missing))}")
        return cls(**data)

    def argv(self) -> list[str]:
        """The trial program's command line (guest/zapmigrate.c reads these flags)."""
        args: list[str] = []
        for name, value in self.to_dict().items():
            knob = KNOBS[name]
            if knob.level == "program" and not (knob.since >= 3 and value == knob.default):
                args += ["--" + name.replace("_", "-"), str(value)]
        return args

    def vm_knobs(self) -> dict[str, Any]:
        """What the worker applies to the guest before the trial (``level="vm"`` knobs)."""
        return {n: v for n, v in self.to_dict().items() if KNOBS[n].level == "vm"}

    @property
    def buffer_bytes(self) -> int:
        return self.pages * 4096

    def expected_s(self) -> float:
        """What this trial is expected to take in a TCG guest, in seconds: the cost model.

        Calibrated on measurements in a 2-vCPU TCG guest on a 2-core host
        (docs/timing.md): the race costs ~0.25 ms per page and round plus
        ~0.5 ms per ``move_pages()`` call (so single-page batches cost three
        times as much), a vCPU quota divides the guest's speed by its fraction,
        both vCPUs on one host CPU halve it, memory pressure and a second evictor
        compete for the same vCPUs. It is an estimate, deliberately on the slow
        side: the deadline built from it (``farm.timing.trial_deadline_s``) must
        leave a merely slow trial time to finish.
        """
        page_rounds = self.pages * self.rounds
        work = COST_BASE_S + page_rounds * (COST_PAGE_S + COST_CALL_S / self.batch)
        work *= 1.0 + COST_EXTRA_EVICTOR * (self.evictors - 1)
        work *= 1.0 + self.pressure_mb / COST_PRESSURE_MB
        if self.vcpu_pin == "same":
            work *= 2.0
        return work * 100.0 / self.cpu_quota_pct


@dataclass(frozen=True)
class SeedToken:
    """A versioned 64-bit seed plus explicit overrides: the name of a trial."""

    seed: int
    version: int = SPACE_VERSION
    overrides: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def random(cls, version: int = SPACE_VERSION) -> SeedToken:
        return cls(seed=secrets.randbits(64), version=version)

    @classmethod
    def parse(cls, text: str) -> SeedToken:
        text = text.strip()
        if len(text) > MAX_TOKEN_CHARS:
            raise TokenError(
                f"seed token {text[:80]!r}... has {len(text)} characters; the most a token "
                f"can have is {MAX_TOKEN_CHARS}"
            )
        m = _TOKEN_RE.match(text)
        if not m:
            raise TokenError(
                f"malformed seed token {text[:80]!r}: expected zf<version>-<16 hex digits>"
                "[~name=value,...], e.g. zf1-8188e2f542964e0c"
            )
        version = int(m["version"])
        if version not in KNOWN_VERSIONS:
            raise TokenError(
                f"seed token {text[:80]!r} uses parameter space v{version}; this farm knows "
                f"v{', v'.join(str(v) for v in sorted(KNOWN_VERSIONS))} (upgrade zapfarm)"
            )
        overrides: list[tuple[str, Any]] = []
        if m["overrides"]:
            for item in m["overrides"].split(","):
                if not _OVERRIDE_RE.match(item):
                    raise TokenError(f"malformed override {item[:40]!r} in seed token")
                name, raw = item.split("=", 1)
                if name not in KNOBS:
                    raise TokenError(f"unknown parameter {name!r} in seed token overrides")
                if KNOBS[name].since > version:
                    raise TokenError(
                        f"parameter {name!r} does not exist in parameter space v{version} "
                        f"(it came with v{KNOBS[name].since}): use a zf{KNOBS[name].since} token"
                    )
                overrides.append((name, int(raw) if _INT_RE.match(raw) else raw))
        token = cls(seed=int(m["seed"], 16), version=version, overrides=tuple(overrides))
        try:
            token.params()
        except ValueError as exc:
            raise TokenError(f"seed token {text[:80]!r}: {exc}") from exc
        return token

    def with_overrides(self, values: Mapping[str, Any]) -> SeedToken:
        newer = sorted(n for n in values if n in KNOBS and KNOBS[n].since > self.version)
        if newer:
            raise TokenError(f"{', '.join(newer)} need parameter space v{KNOBS[newer[0]].since}")
        merged = dict(self.overrides) | dict(values)
        return dataclasses.replace(self, overrides=tuple(sorted(merged.items())))

    def with_preset(self, name: str) -> SeedToken:
        if name not in PRESETS:
            raise TokenError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        # A preset names every knob; those newer than this token keep their default anyway.
        values = {
            n: v
            for n, v in PRESETS[name].items()
            if KNOBS[n].since <= self.version or v != KNOBS[n].default
        }
        return self.with_overrides(values)

    def params(self) -> TrialParams:
        values = {
            name: knob.draw(_uniform(self.version, self.seed, name))
            if knob.since <= self.version
            else knob.default
            for name, knob in KNOBS.items()
        }
        values.update(self.overrides)
        if values["evict_delay_min_us"] > values["evict_delay_max_us"]:
            values["evict_delay_max_us"] = values["evict_delay_min_us"]
        return TrialParams(**values)

    def __str__(self) -> str:
        text = f"zf{self.version}-{self.seed:016x}"
        if self.overrides:
            text += "~" + ",".join(f"{k}={v}" for k, v in sorted(self.overrides))
        return text


def params_for(token: str) -> TrialParams:
    """Parse a token and derive its parameters in one step."""
    return SeedToken.parse(token).params()
