"""Scheduler state: batch ids, campaign state, workers, compressed console samples.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of farm.store.models' types: a migration must not change when the models do.
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("state", JSON, nullable=True))
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("console_z", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("console_bytes", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("batch_id", sa.String(length=64), nullable=True))
    op.create_index("ix_trials_batch", "trials", ["batch_id"])
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("first_seen", TIMESTAMP, nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
        sa.Column("info", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
        sa.UniqueConstraint("name", name=op.f("uq_workers_name")),
    )
    op.create_index(op.f("ix_workers_last_seen"), "workers", ["last_seen"])


def downgrade() -> None:
    op.drop_index(op.f("ix_workers_last_seen"), table_name="workers")
    op.drop_table("workers")
    op.drop_index("ix_trials_batch", table_name="trials")
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("batch_id")
        batch.drop_column("console_bytes")
        batch.drop_column("console_z")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("state")
