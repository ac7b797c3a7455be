"""Kernels: the provenance of a farm build (source, patches with sha256, instrumentation).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

A kernel built by `farm kernels build` records what went into it, so that a
finding on a developer's patched kernel names the exact patches. NULL for
kernels the farm did not build (Debian's, `farm kernels add`, placeholders).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of farm.store.models' JSON type: a migration must not change when the models do.
JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("kernels") as batch:
        batch.add_column(sa.Column("provenance", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("kernels") as batch:
        batch.drop_column("provenance")
