"""Findings: deduplicated bugs, their per-kernel/campaign counts, and trial links.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

finding_counts.campaign_id is NULL for trials outside a campaign, and NULLs
are distinct in a plain UNIQUE on both backends: uniqueness is two partial
unique indexes instead (SQLite and PostgreSQL both have them, and both accept
them as ON CONFLICT targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of farm.store.models' types: a migration must not change when the models do.
TIMESTAMP = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
HAS_CAMPAIGN = "campaign_id IS NOT NULL"
NO_CAMPAIGN = "campaign_id IS NULL"


def upgrade() -> None:
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("signature", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trial_count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", TIMESTAMP, nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
        sa.Column("example_trial_id", BIGID, nullable=True),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "status IN ('open', 'fixed', 'invalid', 'gone')", name=op.f("ck_findings_status")
        ),
        sa.ForeignKeyConstraint(
            ["example_trial_id"], ["trials.id"], name=op.f("fk_findings_example_trial_id_trials")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_findings")),
        sa.UniqueConstraint("signature", name=op.f("uq_findings_signature")),
    )
    op.create_index("ix_findings_status_last_seen", "findings", ["status", "last_seen"])
    op.create_index("ix_findings_last_seen", "findings", ["last_seen"])
    op.create_index("ix_findings_trial_count", "findings", ["trial_count"])

    op.create_table(
        "finding_counts",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=False),
        sa.Column("kernel_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", TIMESTAMP, nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_finding_counts_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(
            ["finding_id"], ["findings.id"], name=op.f("fk_finding_counts_finding_id_findings")
        ),
        sa.ForeignKeyConstraint(
            ["kernel_id"], ["kernels.id"], name=op.f("fk_finding_counts_kernel_id_kernels")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finding_counts")),
    )
    op.create_index(
        "uq_finding_counts_campaign",
        "finding_counts",
        ["finding_id", "kernel_id", "campaign_id"],
        unique=True,
        sqlite_where=sa.text(HAS_CAMPAIGN),
        postgresql_where=sa.text(HAS_CAMPAIGN),
    )
    op.create_index(
        "uq_finding_counts_no_campaign",
        "finding_counts",
        ["finding_id", "kernel_id"],
        unique=True,
        sqlite_where=sa.text(NO_CAMPAIGN),
        postgresql_where=sa.text(NO_CAMPAIGN),
    )
    op.create_index("ix_finding_counts_kernel", "finding_counts", ["kernel_id", "finding_id"])
    op.create_index("ix_finding_counts_campaign", "finding_counts", ["campaign_id", "finding_id"])

    # SQLite rebuilds the table for the new foreign key (batch mode); PostgreSQL alters it
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("title", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("verdict_detail", sa.Text(), nullable=True))
        batch.add_column(sa.Column("finding_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_trials_finding_id_findings"), "findings", ["finding_id"], ["id"]
        )
        batch.create_index("ix_trials_finding_finished", ["finding_id", "finished_at"])


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_index("ix_trials_finding_finished")
        batch.drop_constraint(batch.f("fk_trials_finding_id_findings"), type_="foreignkey")
        batch.drop_column("finding_id")
        batch.drop_column("verdict_detail")
        batch.drop_column("title")
    op.drop_table("finding_counts")  # its indexes go with it
    op.drop_table("findings")
