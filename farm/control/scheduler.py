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
    kernel_queue,
    trial_message,
    validate_result,
)
from farm.store.models import Campaign, CampaignStatus, Kernel, Trial, TrialStatus, Worker
from farm.store.recorder import NewTrial, enqueue_many, parse_token, record_many
from farm.triage.verdict import judge

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 15.0


def observation_of(result: TrialResult, finding: bool) -> Observation:
    """What the search learns from a result: its finding, window signal and guest-seconds."""
    seconds = max(result.finished_at - result.started_at, 0.001)
    return Observation(finding=finding, seconds=seconds)


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
    finished_campaigns: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        app: Celery,
        sessions: sessionmaker[Session],
        *,
        batch_size: int = 4,
        deadline_s: float = 120.0,
        on_record: Callable[[TrialResult, str], None] = lambda r, v: None,
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.batch_size = batch_size
        self.deadline_s = deadline_s
        self.on_record = on_record
        self.pending: dict[str, AsyncResult] = {}
        self._last_heartbeat = 0.0
        self._resume()

    def _resume(self) -> None:
        """Adopt what a previous scheduler left: batches in flight, and batches it committed
        but may have died before sending (those the broker never saw are sent now)."""
        with self.sessions() as session:
            rows = session.execute(
                select(Trial.batch_id, Trial.trial_id, Trial.token, Kernel.name, Kernel.image_path)
                .join(Kernel, Trial.kernel_id == Kernel.id)
                .where(Trial.status == TrialStatus.RUNNING, Trial.batch_id.is_not(None))
                .order_by(Trial.id)
            ).all()
        batches: dict[str, Batch] = {}
        for batch_id, trial_id, token, kernel_name, path in rows:
            batch = batches.setdefault(
                batch_id, Batch(batch_id, kernel_queue(kernel_name) + route_suffix(token), [])
            )
            batch.messages.append(
                trial_message(trial_id, token, kernel_name, path or "", self.deadline_s)
            )
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
            else:
                self._send(batch)
                resent += 1
        log.info("resumed %d batches in flight, sent %d never sent", len(batches), resent)

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
        if time.monotonic() - self._last_heartbeat > HEARTBEAT_EVERY_S:
            # a broadcast waits ~1 s for replies: never on the scheduling path
            self._last_heartbeat = time.monotonic()
            threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
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
            select(Trial.trial_id, Trial.token, Kernel.name, Kernel.image_path)
            .join(Kernel, Trial.kernel_id == Kernel.id)
            .where(Trial.campaign_id == campaign.id, Trial.status == TrialStatus.QUEUED)
            .order_by(Trial.id)
        ).all()
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for trial_id, token, kernel_name, path in queued:
            message = trial_message(trial_id, token, kernel_name, path or "", self.deadline_s)
            queue = kernel_queue(kernel_name) + route_suffix(token)
            by_queue.setdefault(queue, []).append(message)
        for queue, messages in by_queue.items():
            for start in range(0, len(messages), self.batch_size):
                batch = Batch(uuid.uuid4().hex, queue, messages[start : start + self.batch_size])
                session.execute(
                    update(Trial)
                    .where(Trial.trial_id.in_([m["trial_id"] for m in batch.messages]))
                    .values(status=TrialStatus.RUNNING, batch_id=batch.batch_id)
                )
                outbox.append(batch)

    def _send(self, batch: Batch) -> None:
        limit = len(batch.messages) * (self.deadline_s + 60)
        self.pending[batch.batch_id] = self.app.send_task(
            BATCH_TASK,
            args=[batch.messages],
            queue=batch.queue,
            task_id=batch.batch_id,
            soft_time_limit=limit + 120,
            time_limit=limit + 180,
        )

    # -- receiving -----------------------------------------------------------

    def _collect(self, report: TickReport) -> None:
        ready = [(bid, h) for bid, h in self.pending.items() if h.ready()]
        if not ready:
            return
        pairs: list[tuple[TrialResult, Any]] = []
        for batch_id, handle in ready:
            pairs += self._results_of(batch_id, handle)
        if pairs:
            outcomes = record_many(self.sessions, pairs)
            report.recorded += len(pairs)
            report.duplicates += sum(1 for o in outcomes if o == "duplicate")
            self._observe(pairs)
            for result, verdict in pairs:
                self.on_record(result, verdict.kind)
        for batch_id, handle in ready:
            handle.forget()
            del self.pending[batch_id]

    def _results_of(self, batch_id: str, handle: AsyncResult) -> list[tuple[TrialResult, Any]]:
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
        for trial_id, row in expected.items():
            result = got.get(trial_id) or _infra_result(
                trial_id, row.token, row.name, error or "the worker returned no result for it"
            )
            pairs.append((result, judge(result)))
        return pairs

    def _observe(self, pairs: Iterable[tuple[TrialResult, Any]]) -> None:
        """Feed verdicts back to each campaign's search (untested trials teach nothing)."""
        by_campaign: dict[str, list[tuple[str, Observation]]] = {}
        for result, verdict in pairs:
            if not verdict.kind.tested:
                continue
            campaign_name = result.trial_id.rsplit("-", 1)[0]
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
        try:
            replies = self.app.control.inspect(timeout=1.0).active_queues() or {}
        except Exception as exc:  # a broker hiccup must not stop scheduling
            log.warning("worker heartbeat failed: %s", exc)
            return []
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            for name, queues in replies.items():
                info = {"queues": sorted(q.get("name", "") for q in queues)}
                worker = session.scalars(select(Worker).where(Worker.name == name)).one_or_none()
                if worker is None:
                    session.add(Worker(name=name, first_seen=now, last_seen=now, info=info))
                else:
                    worker.last_seen, worker.info = now, info
        return sorted(replies)


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
    spec = campaigns.spec_of(campaign)
    return {
        "name": campaign.name,
        "status": campaign.status,
        "budget": spec.budget.trials,
        "queued": by_status.get("queued", 0),
        "running": by_status.get("running", 0),
        "done": by_status.get("done", 0),
        "verdicts": verdicts,
        "trials_last_hour": last_hour or 0,
    }
