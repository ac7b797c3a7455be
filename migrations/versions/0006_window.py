"""Trials: the race window counters of --instrument count kernels.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

TrialResult.window (docs/protocol.md) as four columns, for queries and plots
per parameter: migration and swap entries a zap with details met during the
trial, and those it left in place (only on --revert-fix kernels). NULL for
trials on kernels without the counters and for every trial recorded before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("window_entries", "window_skipped", "window_swap_entries", "window_swap_skipped")


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
