"""Trials: tokens of up to 512 characters.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

A token names every knob it overrides; on parameter space v3 the seed-2022
preset's token has 257 characters and the longest valid one 322, over the
256 that ``trials.token`` took. PostgreSQL enforces the width (SQLite does
not); the batch form rebuilds the table on SQLite and keeps its index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.alter_column(
            "token", existing_type=sa.String(256), type_=sa.String(512), existing_nullable=False
        )


def downgrade() -> None:
    # a token longer than 256 characters cannot survive the narrower column
    with op.batch_alter_table("trials") as batch:
        batch.alter_column(
            "token", existing_type=sa.String(512), type_=sa.String(256), existing_nullable=False
        )
