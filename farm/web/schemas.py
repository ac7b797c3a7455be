"""What the results database shows, as pydantic models: the JSON API returns them
as they are and the HTML templates render the same objects, so the two views
of the data cannot drift apart (and /openapi.json documents both).

Strings from guests (titles, consoles, worker names) are returned raw in JSON,
where the encoder escapes them; the templates escape and mark them up.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field
from sqlalchemy import BigInteger

from farm.store.models import Finding, Trial


def _id_limit(column: Any) -> int:
    """The largest id ``column`` holds on both backends (PostgreSQL's INTEGER is 32-bit)."""
    return 2**63 - 1 if isinstance(column.type, BigInteger) else 2**31 - 1


# Larger ids are refused by the API's schema: on SQLite they overflow the integer
# binding, on PostgreSQL the column's type.
MAX_FINDING_ID = _id_limit(Finding.id)
MAX_TRIAL_ID = _id_limit(Trial.id)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class KernelCount(_Out):
    kernel: str
    count: int
    first_seen: datetime | None = None
    last_seen: datetime | None = None


class CampaignCount(_Out):
    campaign: str | None  # None: trials recorded outside any campaign
    count: int


class Reproducibility(_Out):
    """Runs of a finding's best seed in reproduce campaigns (ClusterFuzz: reliable if >= 50%)."""

    hits: int  # runs whose trial landed in this finding
    runs: int  # done runs that tested something (invalid and infra-error excluded)
    pending: int  # runs the campaigns still have to do
    campaigns: list[str]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reliable(self) -> bool | None:
        return None if self.runs == 0 else 2 * self.hits >= self.runs

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        if self.runs == 0:
            return "pending" if self.pending else "—"
        return f"{self.hits}/{self.runs}"


class FindingSummary(_Out):
    id: int
    kind: str
    title: str
    status: str
    count: int
    first_seen: datetime
    last_seen: datetime
    kernels: list[KernelCount]
    reproducibility: Reproducibility | None  # None: never sent to a reproduce campaign
    best_seed: str | None  # the example trial's token
    example_trial_id: int | None


class FindingList(_Out):
    items: list[FindingSummary]
    total: int
    page: int
    per_page: int
    pages: int


class TrialSummary(_Out):
    id: int  # the row id: trial pages and API paths use it
    trial_id: str
    token: str
    campaign: str | None
    kernel: str
    status: str
    verdict: str | None
    title: str | None
    finding_id: int | None
    worker: str | None
    finished_at: datetime | None
    elapsed_ms: int | None


class TrialList(_Out):
    items: list[TrialSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


class Oracles(_Out):
    """The four oracles' numbers (README, "What a trial is")."""

    vma_rss_kb: int | None
    vma_pss_shmem_kb: int | None
    rss_shmem_before_kb: int | None
    rss_shmem_populated_kb: int | None
    rss_shmem_punched_kb: int | None
    rollup_pss_shmem_kb: int | None
    migrate_moved: int | None
    migrate_enoent: int | None
    migrate_ebusy: int | None
    migrate_other: int | None
    migrate_call_errors: int | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def vma_ok(self) -> bool | None:
        if self.vma_rss_kb is None:
            return None
        return self.vma_rss_kb == 0 and (self.vma_pss_shmem_kb or 0) == 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def counter_ok(self) -> bool | None:
        if self.rss_shmem_before_kb is None or self.rss_shmem_punched_kb is None:
            return None
        return self.rss_shmem_before_kb == self.rss_shmem_punched_kb


class WindowCounts(_Out):
    """The race window during the trial (--instrument count kernels; docs/kernels.md)."""

    entries: int = Field(description="migration entries a hole punch or truncation met")
    skipped: int = Field(description="of those, left in place (only --revert-fix kernels)")
    swap_entries: int = Field(description="swap entries a hole punch or truncation met")
    swap_skipped: int = Field(description="of those, left in place (only --revert-fix kernels)")

    @classmethod
    def of(cls, trial: Any) -> WindowCounts | None:
        """From a trial row's window_* columns; None when its kernel has no counters."""
        values = {name: getattr(trial, f"window_{name}") for name in cls.model_fields}
        if any(v is None for v in values.values()):
            return None
        return cls(**values)


class TrialDetail(TrialSummary):
    params: dict[str, Any] | None
    reproduce_command: str
    outcome: str | None
    verdict_detail: str | None
    error: str | None
    boot_id: str | None
    booted: bool | None
    numa_nodes: int | None
    exit_code: int | None
    signal: int | None
    started_at: datetime | None
    oracles: Oracles
    window: WindowCounts | None = Field(description="null: the kernel has no window counters")
    console: str = Field(description="the stored console excerpt ('' if not kept)")
    console_kept: bool = Field(description="false: a clean trial outside the console sample")
    output: str = Field(
        default="", description="the program's stdout kept raw (a reported program's output)"
    )


class FindingDetail(FindingSummary):
    signature: str
    report: str | None
    example_trial: TrialDetail | None = Field(exclude=True)  # the page shows parts of it
    console_excerpt: str | None
    per_kernel: list[KernelCount]
    per_campaign: list[CampaignCount]
    reproductions: list[ReproductionRun]
    kernels_available: list[str] = Field(description="kernels a reproduction can run on")


class ReproductionRun(_Out):
    campaign: str
    status: str
    kernels: list[str]
    hits: int
    runs: int
    pending: int


class Series(_Out):
    """Counts per time bucket, one list per series (verdict)."""

    bucket_seconds: int
    starts: list[datetime]
    counts: dict[str, list[int]]


class ParamBin(_Out):
    label: str
    trials: int  # trials that tested something (clean or a finding kind)
    anomalies: int
    window_entries: int = Field(
        0,
        description="the bin's trials' race-window signal, the search's (docs/search.md): "
        "in-kernel counts on --instrument count kernels, else the program's proxy",
    )
    guest_seconds: float = Field(0.0, description="the bin's trials' cost in guest time")

    @computed_field(  # type: ignore[prop-decorator]
        description="window entries per guest-second; null: no guest time in the bin"
    )
    @property
    def window_per_s(self) -> float | None:
        return self.window_entries / self.guest_seconds if self.guest_seconds > 0 else None


class ParamRates(_Out):
    name: str
    help: str
    bins: list[ParamBin]
    fixed: str | None = None  # the one value every sampled trial had


class CampaignSummary(_Out):
    id: int
    name: str
    kind: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    kernels: list[str]
    token: str | None  # reproduce campaigns: the seed they run
    budget_trials: int | None
    budget_hours: float | None
    done: int
    queued: int
    running: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def progress(self) -> float | None:
        if not self.budget_trials:
            return None
        return min(1.0, self.done / self.budget_trials)


class CampaignList(_Out):
    items: list[CampaignSummary]
    total: int
    page: int
    per_page: int
    pages: int


class CampaignFinding(_Out):
    id: int
    kind: str
    title: str
    count: int


class CampaignDetail(CampaignSummary):
    spec: dict[str, Any]
    verdicts: dict[str, int]  # done trials per verdict about the kernel (infra errors apart)
    infra_errors: int  # attempts that failed on the farm's side; retried, never the kernel's
    series: Series
    param_rates: list[ParamRates]
    param_sample: int  # trials the parameter plots are drawn from (the latest ones)
    param_window_entries: int = Field(
        0,
        description="window entries of the sampled trials; 0: the campaign's trials have "
        "no window signal and the page shows no window charts",
    )
    findings: list[CampaignFinding]
    actions: list[str]  # what the state machine allows next
    stats_max_age_s: float  # aggregates are recounted after this many seconds (cache)
    stats_as_of: datetime | None  # when the shown aggregates were counted (None: just now)
    unserved_kernels: list[str] = Field(
        default_factory=list,
        description="kernels of this active campaign that no live worker serves: "
        "its trials on them wait until a worker that has the kernel starts",
    )
    warnings: list[str] = Field(
        default_factory=list, description="why the campaign may stall, each naming the fix"
    )


class KernelInfo(_Out):
    id: int
    name: str
    release: str
    source: str
    sha256: str | None
    image_path: str | None
    created_at: datetime
    # a farm build's inputs: source, patches (name, sha256, origin), instrumentation
    provenance: dict[str, Any] | None = None
    trials: int | None  # None: not counted (see stats_max_age_s on the page)
    findings: int
    last_trial: datetime | None


class WorkerInfo(_Out):
    name: str
    alive: bool
    last_seen: datetime | None
    first_seen: datetime | None = None
    info: dict[str, Any] | None = None
    trials_24h: int | None = None


class Workers(_Out):
    source: Literal["workers-table", "results"] = Field(
        description="workers-table: the scheduler's heartbeat table; results: derived from "
        "the worker names in the last 24 h of trial results"
    )
    alive_after: datetime
    items: list[WorkerInfo]


class Overview(_Out):
    trials_total: int
    trials_total_exact: bool
    findings_open: int
    campaigns: list[CampaignSummary]
    hourly: Series
    recent_findings: list[FindingSummary]
    workers: Workers


class ReproductionRequest(BaseModel):
    """Reproduce a seed: give ``token``, or ``finding_id`` to use that finding's best seed."""

    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(default=None, description="a seed token, e.g. zf2-8188e2f542964e0c")
    finding_id: int | None = Field(default=None, ge=1, le=MAX_FINDING_ID)
    kernels: list[str] | None = Field(
        default=None, description="default: the kernels the finding was seen on"
    )
    runs: int = Field(default=10, ge=1, le=100, description="runs per kernel")


class MutationResult(_Out):
    message: str
    campaign: CampaignSummary


class Problem(_Out):
    detail: str


FindingDetail.model_rebuild()
