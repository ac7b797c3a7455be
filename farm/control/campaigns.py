"""Campaigns: the spec people write, and the one state machine their status follows.

A spec is a TOML file (or CLI flags)::

    name = "nightly-6.1"
    kernels = ["debian-6.1.0-56-amd64", "debian-bullseye-5.10.0-46-amd64"]  # farm kernels list
    search = "thompson"           # or "uniform"
    preset = "seed-2022"          # optional: a named set of fixed parameters
    concurrency = 4               # trials in flight at once
    priority = 5                  # higher first
    [budget]
    trials = 1000
    hours = 12
    [params]                      # fixed values
    punch = "madvise"
    [ranges]                      # inclusive ranges the draws are confined to
    pages = [512, 4096]

Reproductions (``farm reproduce``, the web's "reproduce" action) are
campaigns too: one token, N runs per kernel, ``kind = "reproduce"``.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.params import KNOBS, PRESETS, SeedToken, TokenError
from farm.store.models import Campaign, CampaignStatus, Kernel

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

# status -> statuses it may move to; the only place transitions are decided
_S = CampaignStatus
TRANSITIONS: dict[str, frozenset[str]] = {
    _S.CREATED: frozenset({_S.RUNNING, _S.STOPPED}),
    _S.RUNNING: frozenset({_S.PAUSED, _S.STOPPED, _S.DONE}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.STOPPED}),
    _S.STOPPED: frozenset(),
    _S.DONE: frozenset(),
}
ACTIONS = {"start": _S.RUNNING, "pause": _S.PAUSED, "resume": _S.RUNNING, "stop": _S.STOPPED}


class CampaignError(ValueError):
    """A spec or a request that cannot be honoured; the message names the field and the fix."""


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trials: Annotated[int, Field(ge=1, le=100_000_000)] | None = None
    hours: Annotated[float, Field(gt=0, le=24 * 365)] | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.trials is None and self.hours is None:
            raise ValueError("give budget.trials, budget.hours or both")
        return self


# What a campaign does: draw seeds (fuzz, demo), rerun one token (reproduce), or hold the
# recorded runs of a reported C program (program: farm reproduce --program).
CampaignKind = Literal["fuzz", "reproduce", "demo", "program"]
CAMPAIGN_KINDS: tuple[str, ...] = get_args(CampaignKind)


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: CampaignKind = "fuzz"
    kernels: Annotated[list[str], Field(min_length=1, max_length=64)]
    search: Literal["uniform", "thompson"] = "uniform"
    preset: str | None = None
    token: str | None = None  # reproduce: the one token every trial runs
    # program: a reported C program's runs (farm reproduce --program), recorded as they ran;
    # file, sha256, args and build command. Created done: the scheduler never runs it.
    program: dict[str, Any] | None = None
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 2
    priority: Annotated[int, Field(ge=0, le=100)] = 5
    budget: Budget = Field(default_factory=lambda: Budget(trials=100))
    params: dict[str, int | str] = Field(default_factory=dict)
    ranges: dict[str, Annotated[list[int], Field(min_length=2, max_length=2)]] = Field(
        default_factory=dict
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(sorted(PRESETS))}")
        return value

    @field_validator("params", "ranges")
    @classmethod
    def _known_knobs(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(KNOBS))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(KNOBS)}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CampaignSpec:
        for name, (lo, hi) in self.ranges.items():
            if lo > hi:
                raise ValueError(f"ranges.{name}: {lo} is above {hi}")
            if not (KNOBS[name].valid(lo) and KNOBS[name].valid(hi)):
                raise ValueError(f"ranges.{name}: [{lo}, {hi}] leaves the valid values")
        if self.kind == "reproduce" and not self.token:
            raise ValueError("a reproduce campaign needs token")
        if (self.kind == "program") != (self.program is not None):
            raise ValueError("a program campaign needs program, and only it has one")
        try:
            self.base_token(seed=0).params()
        except (TokenError, ValueError) as exc:
            raise ValueError(f"params/preset do not make valid trials: {exc}") from exc
        if self.token:
            try:
                SeedToken.parse(self.token)
            except TokenError as exc:
                raise ValueError(str(exc)) from exc
        return self

    def base_token(self, seed: int) -> SeedToken:
        """A seed with the campaign's preset and fixed parameters applied."""
        if self.token:
            return SeedToken.parse(self.token)
        token = SeedToken(seed=seed)
        if self.preset:
            token = token.with_preset(self.preset)
        return token.with_overrides(self.params) if self.params else token


def parse_spec(data: dict[str, Any], source: str = "campaign spec") -> CampaignSpec:
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:6]:
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise CampaignError(f"{source}: " + "; ".join(problems)) from exc


def load_spec(path: Path) -> CampaignSpec:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise CampaignError(f"cannot read campaign spec {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(f"{path} is not valid TOML: {exc}") from exc
    return parse_spec(data, str(path))


def check_kernels(session: Session, spec: CampaignSpec) -> list[Kernel]:
    """The spec's kernels, or an error naming the unknown ones and how to add them."""
    rows = {k.name: k for k in session.scalars(select(Kernel).where(Kernel.name.in_(spec.kernels)))}
    missing = [name for name in spec.kernels if name not in rows or not rows[name].image_path]
    if missing:
        known = session.scalars(select(Kernel.name).where(Kernel.image_path.is_not(None))).all()
        raise CampaignError(
            f"kernels: unknown kernel(s) {', '.join(missing)}; known: "
            f"{', '.join(sorted(known)) or '(none)'}. Add one with `farm kernels fetch` "
            "or `farm kernels add`"
        )
    return [rows[name] for name in spec.kernels]


def create(session: Session, spec: CampaignSpec) -> Campaign:
    check_kernels(session, spec)
    if session.scalars(select(Campaign.id).where(Campaign.name == spec.name)).first():
        raise CampaignError(f"name: a campaign called {spec.name!r} exists; pick another name")
    campaign = Campaign(name=spec.name, spec=spec.model_dump(mode="json"), status="created")
    session.add(campaign)
    session.flush()
    return campaign


def spec_of(campaign: Campaign) -> CampaignSpec:
    return parse_spec(campaign.spec, f"campaign {campaign.name}")


def get(session: Session, name: str) -> Campaign:
    campaign = session.scalars(select(Campaign).where(Campaign.name == name)).one_or_none()
    if campaign is None:
        raise CampaignError(f"no campaign called {name!r}: see `farm campaign list`")
    return campaign


def transition(campaign: Campaign, target: str) -> None:
    """Move a campaign to ``target`` if its state machine allows it."""
    if target == campaign.status:
        return
    if target not in TRANSITIONS.get(campaign.status, frozenset()):
        raise CampaignError(
            f"campaign {campaign.name} is {campaign.status}; it cannot become {target}"
        )
    now = datetime.now(UTC)
    if target == "running" and campaign.started_at is None:
        campaign.started_at = now
    if target in ("stopped", "done"):
        campaign.finished_at = now
    campaign.status = target


def act(session: Session, name: str, action: str) -> Campaign:
    """Apply a user action (start, pause, resume, stop) by campaign name."""
    if action not in ACTIONS:
        raise CampaignError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    campaign = get(session, name)
    transition(campaign, ACTIONS[action])
    return campaign


def create_reproduction(
    session: Session, token: str, kernels: list[str], runs: int = 10, *, name: str | None = None
) -> Campaign:
    """A campaign that runs one token ``runs`` times on each kernel, started at once."""
    parsed = SeedToken.parse(token)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    spec = parse_spec(
        {
            "name": name or f"repro-{parsed.seed:016x}-{stamp}",
            "kind": "reproduce",
            "token": str(parsed),
            "kernels": kernels,
            "concurrency": min(runs * len(kernels), 16),
            "priority": 50,
            "budget": {"trials": runs * len(kernels)},
        },
        "reproduction",
    )
    campaign = create(session, spec)
    transition(campaign, "running")
    return campaign
