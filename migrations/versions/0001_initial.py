"""Initial schema: kernels, campaigns, trials.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of farm.store.models' types: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kernels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("release", sa.String(length=256), nullable=False),
        sa.Column("image_path", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kernels")),
        sa.UniqueConstraint("name", name=op.f("uq_kernels_name")),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "status IN ('created', 'running', 'paused', 'stopped', 'done')",
            name=op.f("ck_campaigns_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
        sa.UniqueConstraint("name", name=op.f("uq_campaigns_name")),
    )
    op.create_table(
        "trials",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("trial_id", sa.String(length=256), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("kernel_id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=256), nullable=False),
        sa.Column("params", JSON, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("verdict", sa.String(length=64), nullable=True),
        sa.Column("worker", sa.String(length=256), nullable=True),
        sa.Column("boot_id", sa.String(length=256), nullable=True),
        sa.Column("booted", sa.Boolean(), nullable=True),
        sa.Column("numa_nodes", sa.Integer(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("signal", sa.Integer(), nullable=True),
        sa.Column("elapsed_ms", sa.BigInteger(), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("console", sa.Text(), nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("vma_rss_kb", sa.BigInteger(), nullable=True),
        sa.Column("vma_pss_shmem_kb", sa.BigInteger(), nullable=True),
        sa.Column("rss_shmem_before_kb", sa.BigInteger(), nullable=True),
        sa.Column("rss_shmem_populated_kb", sa.BigInteger(), nullable=True),
        sa.Column("rss_shmem_punched_kb", sa.BigInteger(), nullable=True),
        sa.Column("rollup_pss_shmem_kb", sa.BigInteger(), nullable=True),
        sa.Column("migrate_moved", sa.BigInteger(), nullable=True),
        sa.Column("migrate_enoent", sa.BigInteger(), nullable=True),
        sa.Column("migrate_ebusy", sa.BigInteger(), nullable=True),
        sa.Column("migrate_other", sa.BigInteger(), nullable=True),
        sa.Column("migrate_call_errors", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("recorded_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done')", name=op.f("ck_trials_status")
        ),
        sa.CheckConstraint(
            "status != 'done' OR outcome IS NOT NULL", name=op.f("ck_trials_done_has_outcome")
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_trials_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(
            ["kernel_id"], ["kernels.id"], name=op.f("fk_trials_kernel_id_kernels")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        sa.UniqueConstraint("trial_id", name=op.f("uq_trials_trial_id")),
    )
    op.create_index("ix_trials_token", "trials", ["token"])
    op.create_index("ix_trials_campaign_finished", "trials", ["campaign_id", "finished_at"])
    op.create_index("ix_trials_campaign_status", "trials", ["campaign_id", "status"])
    op.create_index("ix_trials_verdict_finished", "trials", ["verdict", "finished_at"])
    op.create_index("ix_trials_kernel_finished", "trials", ["kernel_id", "finished_at"])
    op.create_index("ix_trials_finished_at", "trials", ["finished_at"])


def downgrade() -> None:
    op.drop_table("trials")  # its indexes go with it
    op.drop_table("campaigns")
    op.drop_table("kernels")
