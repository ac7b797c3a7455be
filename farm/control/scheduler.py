"""The scheduler: running campaigns -> trials -> Celery batches -> recorded results.

All of its state lives in the database, so a restart (or a second scheduler
after a crash) resumes every campaign without losing or repeating a trial:

- a trial row is created (``queued``) before anything is sent; its id is
  ``<campaign>-<n>`` with ``n`` counted in the campaign's state, so a restart
  never creates a second trial for the same slot;
- a batch of queued trials is sent as one Celery message whose task id is
  stored on the trials (``batch_id``, status ``running``) in the same commit
  that follows the send; queued trials found at start are sent again, and
  the recorder's idempotency makes a double send harmless;
- a running batch's result is read from the result backend by its id, so a
  restarted scheduler picks up answers that arrived while it was down.

Backpressure: each campaign keeps at most ``concurrency`` trials in flight.
Routing: one Celery queue per kernel (``zapfarm.k.<kernel>``), plus a
``.cpu`` variant for trials that need vCPU bandwidth control, which only
hosts that can apply it consume.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from farm.control import campaigns
from farm.control.broker import known_task_ids
from farm.control.campaigns import CampaignSpec
from farm.control.search import Observation, Sampler, ThompsonSampler, UniformSampler
from farm.params import PRESETS, SeedToken
from farm.protocol import (
    BATCH_TASK,
    ResultError,
    TrialResult,
    guest_seconds,
    kernel_queue,
    trial_message,
    validate_result,
    window_entries,
)
from farm.store.models import Campaign, CampaignStatus, Kernel, Trial, TrialStatus, Worker
from farm.store.recorder import NewTrial, enqueue_many, parse_token, record_many
from farm.timing import (
    RECONCILE_GRACE_S,
    BudgetError,
    batch_limits,
    max_deadline_s,
    split_batch,
    trial_deadline_s,
)
from farm.triage.verdict import VerdictKind, judge

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 15.0
INFRA_RETRIES = 2  # attempts after the first for a trial that ended in an infra error
RECONCILE_EVERY_S = 10.0  # how often the tick asks the broker about batches it waits for
_ATTEMPT_RE = re.compile(r"^(?P<trial>.+)\.r(?P<n>[1-9][0-9]{0,2})$")


def observation_of(result: TrialResult, finding: bool) -> Observation:
    """What the search learns from a result: its finding, window signal and guest-seconds."""
    return Observation(
        finding=finding, seconds=guest_seconds(result), window=window_entries(result)
    )


def make_sampler(spec: CampaignSpec, state: dict[str, Any] | None) -> Sampler | None:
    """The campaign's search, resumed from its stored state; None for reproductions."""
    if spec.kind == "reproduce":
        return None
    if state:
        cls = ThompsonSampler if state.get("kind") == "thompson" else UniformSampler
        return cls.from_state(state)
    fixed = {**(PRESETS[spec.preset] if spec.preset else {}), **spec.params}
    ranges = {name: list(bounds) for name, bounds in spec.ranges.items()}
    if spec.search == "thompson":
        return ThompsonSampler(fixed=fixed, ranges=ranges)
    return UniformSampler(fixed=fixed, ranges=ranges)


@dataclass
class Batch:
    """Trials that travel in one Celery message; its task id is stored on each trial."""

    batch_id: str
    queue: str
    messages: list[dict[str, Any]]


@dataclass
class TickReport:
    created: int = 0
    sent: int = 0
    recorded: int = 0
    duplicates: int = 0
    retried: int = 0  # infra errors queued for another attempt
    requeued: int = 0  # trials a batch did not run (time limit): queued again
    finished_campaigns: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        app: Celery,
        sessions: sessionmaker[Session],
        *,
        batch_size: int = 4,
        deadline_s: float = 120.0,
        boot_s: float = 90.0,
        on_record: Callable[[TrialResult, str], None] = lambda r, v: None,
        infra_retries: int = INFRA_RETRIES,
        reconcile_grace_s: float = RECONCILE_GRACE_S,
        deadline_cap_s: float | None = None,
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.batch_size = batch_size
        self.deadline_s = deadline_s  # the floor of every trial's cost-scaled deadline
        self.boot_s = boot_s
        self.visibility_s = float(
            (app.conf.broker_transport_options or {}).get("visibility_timeout", 3600)
        )
        self.max_deadline_s = max_deadline_s(boot_s, self.visibility_s)  # fits one batch
        if self.max_deadline_s < 1:
            raise BudgetError(
                f"the broker's visibility timeout ({self.visibility_s:.0f} s) leaves no time "
                f"for a trial after a {boot_s:.0f} s boot and the grace periods: raise "
                "FARM_VISIBILITY_TIMEOUT_S"
            )
        if deadline_cap_s is not None:  # an operator's (or a test's) tighter cap
            self.max_deadline_s = min(self.max_deadline_s, deadline_cap_s)
        self.on_record = on_record
        self.infra_retries = infra_retries
        self.reconcile_grace_s = reconcile_grace_s
        self.pending: dict[str, AsyncResult] = {}
        self.queues: dict[str, str] = {}  # batch id -> queue, for the reconcile step
        self.missing_since: dict[str, float] = {}  # batch id -> when the broker lost sight of it
        self._last_heartbeat = 0.0
        self._replies: dict[str, Any] | None = None  # the heartbeat thread's latest answer
        self._last_reconcile = time.monotonic()
        self._resume()

    def message(
        self, trial_id: str, token: str, kernel_name: str, sha256: str | None
    ) -> dict[str, Any]:
        """A trial's message, with its deadline from the cost model (farm/timing.py)."""
        deadline = trial_deadline_s(
            parse_token(token).params(), self.deadline_s, self.max_deadline_s
        )
        return trial_message(trial_id, token, kernel_name, sha256, deadline)

    def _resume(self) -> None:
        """Adopt what a previous scheduler left: batches in flight, and batches it committed
        but may have died before sending (those the broker never saw are sent now)."""
        with self.sessions() as session:
            rows = session.execute(
                select(Trial.batch_id, Trial.trial_id, Trial.token, Kernel.name, Kernel.sha256)
                .join(Kernel, Trial.kernel_id == Kernel.id)
                .where(Trial.status == TrialStatus.RUNNING, Trial.batch_id.is_not(None))
                .order_by(Trial.id)
            ).all()
        batches: dict[str, Batch] = {}
        for batch_id, trial_id, token, kernel_name, sha256 in rows:
            batch = batches.setdefault(
                batch_id, Batch(batch_id, kernel_queue(kernel_name) + route_suffix(token), [])
            )
            batch.messages.append(self.message(trial_id, token, kernel_name, sha256))
        if not batches:
            return
        known = known_task_ids(
            self.app.conf.broker_url, sorted({b.queue for b in batches.values()})
        )
        resent = 0
        for batch in batches.values():
            handle = AsyncResult(batch.batch_id, app=self.app)
            if batch.batch_id in known or handle.state != "PENDING":
                self.pending[batch.batch_id] = handle
                self.queues[batch.batch_id] = batch.queue
            else:
                self._send(batch)
                resent += 1
        log.info("resumed %d batches in flight, sent %d never sent", len(batches), resent)

    def reconcile(self, now: float | None = None) -> int:
        """Re-send batches the broker lost: sent, yet neither waiting in their queue, nor
        delivered and unacknowledged, nor with a state in the result backend, for longer than
        the grace period (a Redis crash between a worker's pop and its bookkeeping).

        Returns how many were re-sent. The recorder makes a double run harmless.
        """
        now = time.monotonic() if now is None else now
        waiting = [b for b, h in self.pending.items() if b in self.queues and h.state == "PENDING"]
        for gone in set(self.missing_since) - set(waiting):
            del self.missing_since[gone]
        if not waiting:
            return 0
        known = known_task_ids(self.app.conf.broker_url, sorted({self.queues[b] for b in waiting}))
        resent = 0
        for batch_id in waiting:
            if batch_id in known:
                self.missing_since.pop(batch_id, None)
                continue
            since = self.missing_since.setdefault(batch_id, now)
            if now - since < self.reconcile_grace_s:
                continue
            if AsyncResult(batch_id, app=self.app).state != "PENDING":
                self.missing_since.pop(batch_id, None)  # a worker took it meanwhile
                continue
            batch = self._stored_batch(batch_id)
            if batch is None:
                continue
            log.warning("batch %s vanished from the broker; sending it again", batch_id)
            del self.missing_since[batch_id]
            self._send(batch)
            resent += 1
        return resent

    def _stored_batch(self, batch_id: str) -> Batch | None:
        with self.sessions() as session:
            rows = session.execute(
                select(Trial.trial_id, Trial.token, Kernel.name, Kernel.sha256)
                .join(Kernel, Trial.kernel_id == Kernel.id)
                .where(Trial.batch_id == batch_id, Trial.status == TrialStatus.RUNNING)
                .order_by(Trial.id)
            ).all()
        if not rows:
            return None
        messages = [self.message(t, token, k, sha) for t, token, k, sha in rows]
        return Batch(batch_id, kernel_queue(rows[0][2]) + route_suffix(rows[0][1]), messages)

    # -- one step ------------------------------------------------------------

    def tick(self) -> TickReport:
        report = TickReport()
        self._collect(report)
        outbox: list[Batch] = []
        with self.sessions.begin() as session:
            running = session.scalars(
                select(Campaign)
                .where(Campaign.status == CampaignStatus.RUNNING)
                .order_by(Campaign.id)
            ).all()
            ordered = sorted(running, key=lambda c: -int(c.spec.get("priority", 5)))
            for campaign in ordered:
                self._fill(session, campaign, report, outbox)
        # only now, with the batches committed, do messages leave: a crash in between
        # leaves batches the broker never saw, which the next scheduler sends (_resume)
        for batch in outbox:
            self._send(batch)
            report.sent += len(batch.messages)
        if time.monotonic() - self._last_reconcile > RECONCILE_EVERY_S:
            self._last_reconcile = time.monotonic()
            self.reconcile()
        replies, self._replies = self._replies, None
        if replies is not None:
            self._record_workers(replies)
        if time.monotonic() - self._last_heartbeat > HEARTBEAT_EVERY_S:
            # a broadcast waits ~1 s for replies: never on the scheduling path. The thread
            # only asks; the next tick writes, so this process has one database writer
            # (two writers' transactions in one process lock each other out on SQLite)
            self._last_heartbeat = time.monotonic()
            threading.Thread(target=self._poll_workers, name="heartbeat", daemon=True).start()
        return report

    def run(self, stop: Callable[[], bool], idle_s: float = 0.2) -> None:
        while not stop():
            report = self.tick()
            if not (report.recorded or report.sent):
                time.sleep(idle_s)

    # -- sending -------------------------------------------------------------

    def _fill(
        self, session: Session, campaign: Campaign, report: TickReport, outbox: list[Batch]
    ) -> None:
        spec = campaigns.spec_of(campaign)
        state = dict(campaign.state or {})
        created = int(state.get("created", 0))
        in_flight = session.scalar(
            select(func.count())
            .select_from(Trial)
            .where(Trial.campaign_id == campaign.id, Trial.status != TrialStatus.DONE)
        )
        if self._exhausted(spec, campaign, created):
            if not in_flight:
                campaigns.transition(campaign, CampaignStatus.DONE)
                report.finished_campaigns.append(campaign.name)
            else:
                self._assign(session, campaign, outbox)
            return
        room = spec.concurrency - int(in_flight or 0)
        if spec.budget.trials is not None:
            room = min(room, spec.budget.trials - created)
        if room > 0:
            kernels = campaigns.check_kernels(session, spec)
            sampler = make_sampler(spec, state.get("search"))
            new: list[NewTrial] = []
            for _ in range(room):
                kernel = kernels[created % len(kernels)]
                token = self._propose(spec, sampler, campaign.id, created)
                trial_id = f"{campaign.name}-{created:06d}"
                new.append(NewTrial(trial_id, token, kernel.id, campaign.id))
                created += 1
                report.created += 1
            enqueue_many(session, new)
            state["created"] = created
            if sampler is not None:
                state["search"] = sampler.state()
            campaign.state = state
            session.flush()
        self._assign(session, campaign, outbox)

    def _exhausted(self, spec: CampaignSpec, campaign: Campaign, created: int) -> bool:
        if spec.budget.trials is not None and created >= spec.budget.trials:
            return True
        if spec.budget.hours is not None and campaign.started_at is not None:
            started = campaign.started_at
            if started.tzinfo is None:
                started = started.replace(tzinfo=UTC)
            return datetime.now(UTC) - started > timedelta(hours=spec.budget.hours)
        return False

    @staticmethod
    def _propose(
        spec: CampaignSpec, sampler: Sampler | None, campaign_id: int, n: int
    ) -> SeedToken:
        if sampler is None:
            return spec.base_token(seed=0)
        return sampler.propose(random.Random(f"zapfarm:{campaign_id}:{n}"))

    def _assign(self, session: Session, campaign: Campaign, outbox: list[Batch]) -> None:
        """Group the campaign's queued trials into batches per queue, marked as running."""
        queued = session.execute(
            select(Trial.trial_id, Trial.token, Kernel.name, Kernel.sha256)
            .join(Kernel, Trial.kernel_id == Kernel.id)
            .where(Trial.campaign_id == campaign.id, Trial.status == TrialStatus.QUEUED)
            .order_by(Trial.id)
        ).all()
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for trial_id, token, kernel_name, sha256 in queued:
            message = self.message(trial_id, token, kernel_name, sha256)
            queue = kernel_queue(kernel_name) + route_suffix(token)
            by_queue.setdefault(queue, []).append(message)
        for queue, messages in by_queue.items():
            deadlines = [m["deadline_s"] for m in messages]
            start = 0
            # batches no longer than batch_size whose hard time limit fits the visibility timeout
            for size in split_batch(deadlines, self.batch_size, self.boot_s, self.visibility_s):
                batch = Batch(uuid.uuid4().hex, queue, messages[start : start + size])
                start += size
                session.execute(
                    update(Trial)
                    .where(Trial.trial_id.in_([m["trial_id"] for m in batch.messages]))
                    .values(status=TrialStatus.RUNNING, batch_id=batch.batch_id)
                )
                outbox.append(batch)

    def _send(self, batch: Batch) -> None:
        soft, hard = batch_limits([m["deadline_s"] for m in batch.messages], self.boot_s)
        self.queues[batch.batch_id] = batch.queue
        self.pending[batch.batch_id] = self.app.send_task(
            BATCH_TASK,
            args=[batch.messages],
            queue=batch.queue,
            task_id=batch.batch_id,
            soft_time_limit=soft,
            time_limit=hard,
        )

    # -- receiving -----------------------------------------------------------

    def _collect(self, report: TickReport) -> None:
        ready = [(bid, h) for bid, h in self.pending.items() if h.ready()]
        if not ready:
            return
        pairs: list[tuple[TrialResult, Any]] = []
        not_run: list[str] = []
        for batch_id, handle in ready:
            got, missing = self._results_of(batch_id, handle)
            pairs += got
            not_run += missing
        if not_run:  # the batch hit its time limit before these: back in the queue, unrecorded
            with self.sessions.begin() as session:
                session.execute(
                    update(Trial)
                    .where(Trial.trial_id.in_(not_run), Trial.status == TrialStatus.RUNNING)
                    .values(status=TrialStatus.QUEUED, batch_id=None)
                )
            report.requeued += len(not_run)
        if pairs:
            outcomes = record_many(self.sessions, pairs)
            report.recorded += len(pairs)
            report.duplicates += sum(1 for o in outcomes if o == "duplicate")
            report.retried += self._retry_infra(
                [p for p, o in zip(pairs, outcomes, strict=True) if o != "duplicate"]
            )
            self._observe(pairs)
            for result, verdict in pairs:
                self.on_record(result, verdict.kind)
        for batch_id, handle in ready:
            handle.forget()
            del self.pending[batch_id]
            self.queues.pop(batch_id, None)
            self.missing_since.pop(batch_id, None)

    def _retry_infra(self, pairs: list[tuple[TrialResult, Any]]) -> int:
        """Queue a new attempt of each campaign trial that ended in an infra error, up to
        ``infra_retries`` attempts after the first. Attempts are new trials named
        ``<trial>.r<n>`` that do not count against the campaign's budget."""
        failed = [r.trial_id for r, v in pairs if v.kind == VerdictKind.INFRA_ERROR]
        if not failed:
            return 0
        new: list[NewTrial] = []
        with self.sessions.begin() as session:
            rows = session.execute(
                select(Trial.trial_id, Trial.token, Trial.kernel_id, Trial.campaign_id).where(
                    Trial.trial_id.in_(failed), Trial.campaign_id.is_not(None)
                )
            ).all()
            for trial_id, token, kernel_id, campaign_id in rows:
                original, attempt = split_attempt(trial_id)
                if attempt >= self.infra_retries:
                    continue
                retry_id = f"{original}.r{attempt + 1}"
                new.append(NewTrial(retry_id, parse_token(token), kernel_id, campaign_id))
            if new:
                enqueue_many(session, new)
        for trial in new:
            log.info("infra error: trial %s queued again", trial.trial_id)
        return len(new)

    def _results_of(
        self, batch_id: str, handle: AsyncResult
    ) -> tuple[list[tuple[TrialResult, Any]], list[str]]:
        """The batch's results with their verdicts, and the trials it did not run.

        A batch that failed as a whole (worker lost, hard time limit) gives each
        trial an infra-error, which is retried; a batch that returned fewer
        results than trials stopped at its soft time limit: the rest never ran.
        """
        with self.sessions() as session:
            trials = session.execute(
                select(Trial.trial_id, Trial.token, Kernel.name)
                .join(Kernel, Trial.kernel_id == Kernel.id)
                .where(Trial.batch_id == batch_id, Trial.status != TrialStatus.DONE)
            ).all()
        expected = {t.trial_id: t for t in trials}
        got: dict[str, TrialResult] = {}
        error = None
        try:
            data = handle.get(timeout=5, propagate=True)
            items = data if isinstance(data, list) else []
            for item in items[: len(expected) + 1]:
                try:
                    result = validate_result(item)
                except ResultError as exc:
                    error = f"worker result rejected: {exc}"
                    continue
                if result.trial_id in expected:
                    got[result.trial_id] = result
        except (
            Exception
        ) as exc:  # the batch task failed as a whole: every trial still gets a record
            error = f"worker batch failed: {type(exc).__name__}: {exc}"
        pairs = []
        not_run = []
        for trial_id, row in expected.items():
            result = got.get(trial_id)
            if result is None and error is None:
                not_run.append(trial_id)
                continue
            result = result or _infra_result(trial_id, row.token, row.name, error or "")
            pairs.append((result, judge(result)))
        return pairs, not_run

    def _observe(self, pairs: Iterable[tuple[TrialResult, Any]]) -> None:
        """Feed verdicts back to each campaign's search (untested trials teach nothing)."""
        by_campaign: dict[str, list[tuple[str, Observation]]] = {}
        for result, verdict in pairs:
            if not verdict.kind.tested:
                continue
            campaign_name = split_attempt(result.trial_id)[0].rsplit("-", 1)[0]
            by_campaign.setdefault(campaign_name, []).append(
                (result.token, observation_of(result, verdict.is_finding))
            )
        if not by_campaign:
            return
        with self.sessions.begin() as session:
            for name, observations in by_campaign.items():
                campaign = session.scalars(
                    select(Campaign).where(Campaign.name == name).with_for_update()
                ).one_or_none()
                if campaign is None:
                    continue
                state = dict(campaign.state or {})
                sampler = make_sampler(campaigns.spec_of(campaign), state.get("search"))
                if sampler is None:
                    continue
                for token, seen in observations:
                    sampler.observe(parse_token(token), seen)
                state["search"] = sampler.state()
                campaign.state = state

    # -- workers -------------------------------------------------------------

    def heartbeat(self) -> list[str]:
        """Record which workers answer and which queues (kernels, capabilities) they serve."""
        self._last_heartbeat = time.monotonic()
        replies = self._ask_workers()
        if replies is None:
            return []
        self._record_workers(replies)
        return sorted(replies)

    def _poll_workers(self) -> None:
        self._replies = self._ask_workers()

    def _ask_workers(self) -> dict[str, Any] | None:
        try:
            return self.app.control.inspect(timeout=1.0).active_queues() or {}
        except Exception as exc:  # a broker hiccup must not stop scheduling
            log.warning("worker heartbeat failed: %s", exc)
            return None

    def _record_workers(self, replies: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            for name, queues in replies.items():
                info = {"queues": sorted(q.get("name", "") for q in queues)}
                worker = session.scalars(select(Worker).where(Worker.name == name)).one_or_none()
                if worker is None:
                    session.add(Worker(name=name, first_seen=now, last_seen=now, info=info))
                else:
                    worker.last_seen, worker.info = now, info


def split_attempt(trial_id: str) -> tuple[str, int]:
    """``("<campaign>-000012", 2)`` for ``<campaign>-000012.r2``; attempt 0 is the first."""
    m = _ATTEMPT_RE.match(trial_id)
    return (m["trial"], int(m["n"])) if m else (trial_id, 0)


def route_suffix(token: str) -> str:
    """Trials that need vCPU bandwidth control go to hosts that can apply it."""
    params = parse_token(token).params()
    return ".cpu" if getattr(params, "cpu_quota_pct", 100) < 100 else ""


def _infra_result(trial_id: str, token: str, kernel: str, error: str) -> TrialResult:
    now = time.time()
    return TrialResult(
        trial_id=trial_id,
        token=token,
        kernel=kernel,
        worker="(scheduler)",
        outcome="infra-error",
        error=error[:2000],
        started_at=now,
        finished_at=now,
    )


def progress(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Counts a person watches: trials by status and verdict, and trials per hour."""
    by_status = Counter(
        dict(
            session.execute(
                select(Trial.status, func.count())
                .where(Trial.campaign_id == campaign.id)
                .group_by(Trial.status)
            ).all()
        )
    )
    verdicts = dict(
        session.execute(
            select(Trial.verdict, func.count())
            .where(Trial.campaign_id == campaign.id, Trial.status == TrialStatus.DONE)
            .group_by(Trial.verdict)
        ).all()
    )
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    last_hour = session.scalar(
        select(func.count())
        .select_from(Trial)
        .where(Trial.campaign_id == campaign.id, Trial.finished_at >= hour_ago)
    )
    retries = session.scalar(
        select(func.count())
        .select_from(Trial)
        .where(Trial.campaign_id == campaign.id, Trial.trial_id.like("%.r%"))
    )
    infra = verdicts.pop(VerdictKind.INFRA_ERROR.value, 0)
    spec = campaigns.spec_of(campaign)
    return {
        "name": campaign.name,
        "status": campaign.status,
        "budget": spec.budget.trials,
        "queued": by_status.get("queued", 0),
        "running": by_status.get("running", 0),
        # trials the kernel was tested by (or that tried); infra errors are counted apart
        "done": by_status.get("done", 0) - infra,
        "verdicts": verdicts,
        "infra_errors": infra,  # attempts that failed on the farm's side, not the kernel's
        "retries": retries or 0,  # attempts queued again after an infra error
        "trials_last_hour": last_hour or 0,
    }
