"""The farm's SQL schema: kernels, campaigns, trials and findings.

One schema for SQLite (a single host, development) and PostgreSQL (the farm).
Changes go through Alembic (migrations/versions); tests check that the
migrated schema and these models never drift apart.

Trials are keyed by ``trial_id``, the idempotency key: Celery delivers at
least once, and farm.store.recorder stores each result exactly once against it.
Findings are keyed by their signature (verdict kind + normalised title) and
are maintained by farm.store.findings, which also rebuilds them from the trials.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from farm.params import MAX_TOKEN_CHARS


class CampaignStatus(StrEnum):
    """A campaign's state; farm.control.campaigns.TRANSITIONS decides the moves."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DONE = "done"


class TrialStatus(StrEnum):
    """Where a trial is: created, sent to a worker (in a batch), recorded."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class FindingStatus(StrEnum):
    """``gone``: no trial has the signature any more (after ``farm triage rerun``); the row
    stays so that links from bug reports keep working. fixed/invalid are set by people."""

    OPEN = "open"
    FIXED = "fixed"
    INVALID = "invalid"
    GONE = "gone"


CAMPAIGN_STATUSES = tuple(CampaignStatus)
TRIAL_STATUSES = tuple(TrialStatus)
FINDING_STATUSES = tuple(FindingStatus)
# Verdicts are farm.triage.kinds.VerdictKind values; deliberately not a constraint, so
# that adding a kind needs no migration.
MAX_TITLE_CHARS = 512

# Stable constraint names: Alembic needs them to alter constraints (batch mode on SQLite).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite. None is SQL NULL,
# not the JSON text 'null', so that "IS NULL" finds rows without a value.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# 64-bit ids on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on both backends, stored as UTC.

    SQLite has no timezone type: SQLAlchemy would silently drop the offset.
    Storing UTC (naive text there) keeps values comparable and sortable, and
    values always come back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use an aware one, e.g. datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads it as a class attribute)
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
    }


class Kernel(Base):
    """A kernel image trials boot; the name is what workers and results refer to."""

    __tablename__ = "kernels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    release: Mapped[str] = mapped_column(String(256))  # uname -r
    image_path: Mapped[str | None] = mapped_column(Text)  # NULL: only known from a result
    sha256: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))  # "debian:bookworm", "custom", "reported"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # a farm build's inputs: source, patches (name, sha256, farm or user), instrumentation
    provenance: Mapped[dict[str, Any] | None]

    def __repr__(self) -> str:
        return f"Kernel(id={self.id!r}, name={self.name!r}, release={self.release!r})"


class Campaign(Base):
    """A named batch of trials with its scheduling spec."""

    __tablename__ = "campaigns"
    __table_args__ = (CheckConstraint(_in("status", CAMPAIGN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="created")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # the scheduler's memory: trials created so far, the search's state (resumes after restarts)
    state: Mapped[dict[str, Any] | None]

    def __repr__(self) -> str:
        return f"Campaign(id={self.id!r}, name={self.name!r}, status={self.status!r})"


class Trial(Base):
    """One trial: queued by the scheduler, done once its result is recorded.

    Counters are BIGINT: TrialResult allows values up to 2**40, and a value the
    column cannot hold would make a valid result unrecordable.
    """

    __tablename__ = "trials"
    __table_args__ = (
        CheckConstraint(_in("status", TRIAL_STATUSES), name="status"),
        CheckConstraint("status != 'done' OR outcome IS NOT NULL", name="done_has_outcome"),
        # the results browser: a campaign's latest trials, findings by verdict, per kernel
        Index("ix_trials_campaign_finished", "campaign_id", "finished_at"),
        Index("ix_trials_campaign_status", "campaign_id", "status"),
        Index("ix_trials_verdict_finished", "verdict", "finished_at"),
        Index("ix_trials_kernel_finished", "kernel_id", "finished_at"),
        Index("ix_trials_finished_at", "finished_at"),
        # a finding's trials, latest first (also serves the FK)
        Index("ix_trials_finding_finished", "finding_id", "finished_at"),
        Index("ix_trials_batch", "batch_id"),
        # a campaign's verdict counts without walking the whole table (web)
        Index("ix_trials_campaign_verdict_finished", "campaign_id", "verdict", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    trial_id: Mapped[str] = mapped_column(String(256), unique=True)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    kernel_id: Mapped[int] = mapped_column(ForeignKey("kernels.id"))
    token: Mapped[str] = mapped_column(String(MAX_TOKEN_CHARS), index=True)
    params: Mapped[dict[str, Any] | None]  # NULL only if a recorded token could not be parsed
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # TrialResult.outcome; not a constraint, the result model already validates it
    outcome: Mapped[str | None] = mapped_column(String(32))
    verdict: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str | None] = mapped_column(String(MAX_TITLE_CHARS))  # the verdict's title
    verdict_detail: Mapped[str | None] = mapped_column(Text)
    # NULL unless the verdict is a finding; use_alter: findings.example_trial_id points back
    finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id", use_alter=True))
    worker: Mapped[str | None] = mapped_column(String(256))
    boot_id: Mapped[str | None] = mapped_column(String(256))
    booted: Mapped[bool | None]
    numa_nodes: Mapped[int | None]
    exit_code: Mapped[int | None]
    signal: Mapped[int | None]
    elapsed_ms: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    console: Mapped[str | None] = mapped_column(Text)  # bounded excerpt (result.MAX_CONSOLE_BYTES)
    # clean trials keep their console only as a zlib-compressed sample (farm.store.storage)
    console_z: Mapped[bytes | None] = mapped_column(LargeBinary)
    console_bytes: Mapped[int | None]  # the excerpt's size before any of that
    batch_id: Mapped[str | None] = mapped_column(String(64))  # the Celery task that carries it
    result: Mapped[dict[str, Any] | None]  # the validated TrialResult without its console

    # oracle columns, copied from result.program for queries and plots
    vma_rss_kb: Mapped[int | None] = mapped_column(BigInteger)
    vma_pss_shmem_kb: Mapped[int | None] = mapped_column(BigInteger)
    rss_shmem_before_kb: Mapped[int | None] = mapped_column(BigInteger)
    rss_shmem_populated_kb: Mapped[int | None] = mapped_column(BigInteger)
    rss_shmem_punched_kb: Mapped[int | None] = mapped_column(BigInteger)
    rollup_pss_shmem_kb: Mapped[int | None] = mapped_column(BigInteger)
    migrate_moved: Mapped[int | None] = mapped_column(BigInteger)
    migrate_enoent: Mapped[int | None] = mapped_column(BigInteger)
    migrate_ebusy: Mapped[int | None] = mapped_column(BigInteger)
    migrate_other: Mapped[int | None] = mapped_column(BigInteger)
    migrate_call_errors: Mapped[int | None] = mapped_column(BigInteger)
    # the race window from result.window (--instrument count kernels; NULL on others)
    window_entries: Mapped[int | None] = mapped_column(BigInteger)
    window_skipped: Mapped[int | None] = mapped_column(BigInteger)
    window_swap_entries: Mapped[int | None] = mapped_column(BigInteger)
    window_swap_skipped: Mapped[int | None] = mapped_column(BigInteger)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    recorded_at: Mapped[datetime | None]

    kernel: Mapped[Kernel] = relationship()
    campaign: Mapped[Campaign | None] = relationship()
    finding: Mapped[Finding | None] = relationship(foreign_keys=[finding_id])

    def __repr__(self) -> str:
        return (
            f"Trial(id={self.id!r}, trial_id={self.trial_id!r}, status={self.status!r}, "
            f"verdict={self.verdict!r})"
        )


class Finding(Base):
    """One deduplicated bug: every trial whose verdict has this signature.

    The signature is sha256 of the verdict kind and the normalised title
    (farm.store.findings.signature), so it is stable across kernels, campaigns and
    re-triage. Counters are maintained by farm.store.findings, never by hand.
    """

    __tablename__ = "findings"
    __table_args__ = (
        CheckConstraint(_in("status", FINDING_STATUSES), name="status"),
        # the findings table: open ones by last seen, or by count
        Index("ix_findings_status_last_seen", "status", "last_seen"),
        Index("ix_findings_last_seen", "last_seen"),
        Index("ix_findings_trial_count", "trial_count"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    signature: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(MAX_TITLE_CHARS))
    status: Mapped[str] = mapped_column(String(16), default="open")
    trial_count: Mapped[int] = mapped_column(BigInteger, default=0)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    # the first trial seen with this signature (its token reproduces it) and its report
    example_trial_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("trials.id"))
    report: Mapped[str | None] = mapped_column(
        Text
    )  # bounded (farm.store.findings.MAX_REPORT_CHARS)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    example_trial: Mapped[Trial | None] = relationship(
        foreign_keys=[example_trial_id], post_update=True
    )

    def __repr__(self) -> str:
        return (
            f"Finding(id={self.id!r}, kind={self.kind!r}, title={self.title!r}, "
            f"trial_count={self.trial_count!r})"
        )


class FindingCount(Base):
    """How often a finding was seen on one kernel in one campaign (or in none).

    campaign_id is NULL for trials recorded outside a campaign. NULLs are
    distinct in a plain UNIQUE on both backends, so uniqueness is two partial
    unique indexes: (finding, kernel, campaign) where campaign IS NOT NULL, and
    (finding, kernel) where it IS NULL. Upserts name the matching one.
    """

    __tablename__ = "finding_counts"
    __table_args__ = (
        Index(
            "uq_finding_counts_campaign",
            "finding_id",
            "kernel_id",
            "campaign_id",
            unique=True,
            sqlite_where=text("campaign_id IS NOT NULL"),
            postgresql_where=text("campaign_id IS NOT NULL"),
        ),
        Index(
            "uq_finding_counts_no_campaign",
            "finding_id",
            "kernel_id",
            unique=True,
            sqlite_where=text("campaign_id IS NULL"),
            postgresql_where=text("campaign_id IS NULL"),
        ),
        Index("ix_finding_counts_kernel", "kernel_id", "finding_id"),
        Index("ix_finding_counts_campaign", "campaign_id", "finding_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"))
    kernel_id: Mapped[int] = mapped_column(ForeignKey("kernels.id"))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]

    finding: Mapped[Finding] = relationship()
    kernel: Mapped[Kernel] = relationship()
    campaign: Mapped[Campaign | None] = relationship()

    def __repr__(self) -> str:
        return (
            f"FindingCount(finding_id={self.finding_id!r}, kernel_id={self.kernel_id!r}, "
            f"campaign_id={self.campaign_id!r}, count={self.count!r})"
        )


class Worker(Base):
    """A worker process as the scheduler last heard of it (workers never write here)."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    info: Mapped[dict[str, Any] | None]  # kernels, capabilities, slots, virt type

    def __repr__(self) -> str:
        return f"Worker(name={self.name!r}, last_seen={self.last_seen!r})"
