"""Every read the results database makes, one module per page, shaped for millions of trials.

Rules the queries follow, because the trials table is the one that grows:

- Lists of trials are keyset-paginated and filtered on a column that leads one
  of the trial indexes (``trials``); nothing counts all trials to draw page numbers.
- Aggregates over trials (a campaign's verdicts, trials per hour, trials per
  kernel) are read through the app's TTLCache and the pages say how old they
  may be; the statistics themselves live in farm.web.stats.
- Findings, finding counts, campaigns, kernels and workers are small tables:
  they are counted and sorted freely.

The names below are what the API, the pages and the actions use.
"""

from __future__ import annotations

from farm.web.queries.campaigns import (
    allowed_actions,
    campaign_detail,
    campaign_summary,
    list_campaigns,
    status_counts,
)
from farm.web.queries.common import MAX_PAGE, MAX_PER_PAGE, PER_PAGE, QueryError
from farm.web.queries.findings import (
    FINDING_STATUS_FILTERS,
    FindingQuery,
    finding_detail,
    list_findings,
)
from farm.web.queries.kernels import list_kernels
from farm.web.queries.overview import front_page
from farm.web.queries.trials import (
    CURSOR_HELP,
    CURSOR_PATTERN,
    TRIAL_STATUS_FILTERS,
    TrialFilter,
    list_trials,
    reproduce_command,
    trial_detail,
)
from farm.web.queries.workers import list_workers

__all__ = [
    "CURSOR_HELP",
    "CURSOR_PATTERN",
    "FINDING_STATUS_FILTERS",
    "MAX_PAGE",
    "MAX_PER_PAGE",
    "PER_PAGE",
    "TRIAL_STATUS_FILTERS",
    "FindingQuery",
    "QueryError",
    "TrialFilter",
    "allowed_actions",
    "campaign_detail",
    "campaign_summary",
    "finding_detail",
    "front_page",
    "list_campaigns",
    "list_findings",
    "list_kernels",
    "list_trials",
    "list_workers",
    "reproduce_command",
    "status_counts",
    "trial_detail",
]
