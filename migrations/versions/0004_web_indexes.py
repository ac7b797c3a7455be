"""Web: a campaign's verdicts and verdicts over time from the index alone.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

The campaign page counts a campaign's done trials per verdict and per time
bucket. With (campaign_id, finished_at) or (campaign_id, status) alone every
counted trial is a heap visit, and a campaign's rows are spread over the whole
table (campaigns run side by side): measured on 1,000,000 trials, 420 ms for
a 50,000-trial campaign. (campaign_id, verdict, finished_at) answers both
counts as index-only scans (bench/web.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_trials_campaign_verdict_finished", "trials", ["campaign_id", "verdict", "finished_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_trials_campaign_verdict_finished", table_name="trials")
