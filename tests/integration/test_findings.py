"""Findings against real SQLite and PostgreSQL: dedup, counts, concurrency, migrations, rerun."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, inspect, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from test_db import TOKEN, result_dict, schema_diff, table_names
from threads import run_threads

from farm.protocol import TrialResult, validate_result
from farm.store import db
from farm.store.findings import (
    MAX_REPORT_CHARS,
    attach,
    key_title,
    rerun,
    signature,
)
from farm.store.models import Campaign, Finding, FindingCount, Kernel, Trial
from farm.store.recorder import RecordOutcome, enqueue, record, record_many
from farm.triage.verdict import Verdict, judge

RSS_SPLAT = "BUG: Bad rss-counter state mm:00000000 type:MM_SHMEMPAGES val:-1\n"
T0 = 1_764_300_000.0


def warning(fn: str) -> str:
    """A console with a WARNING whose title is "WARNING in <fn>"."""
    return (
        "------------[ cut here ]------------\n"
        f"WARNING: CPU: 1 PID: 245 at mm/memory.c:1435 {fn}+0x4c3/0x8f0\n"
        "Modules linked in:\n"
        f"RIP: 0010:{fn}+0x4c3/0x8f0\n"
        "---[ end trace 0000000000000000 ]---\n"
    )


def make(
    trial_id: str,
    *,
    console: str = RSS_SPLAT,
    at: float = T0,
    kernel: str = "debian-6.1.0-26",
    clean: bool = False,
    **overrides: Any,
) -> TrialResult:
    """A result finished at ``at``; ``clean`` makes its oracles pass."""
    data = result_dict(trial_id, console=console, kernel=kernel, **overrides)
    data["started_at"], data["finished_at"] = at - 2, at
    if clean and data.get("program"):
        data["program"]["vma"] = {"found": True, "rss_kb": 0, "pss_shmem_kb": 0}
        data["program"]["rss_shmem_kb"] = {"before": 0, "populated": 16384, "punched": 0}
    return validate_result(data)


def when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def rec(sessions: sessionmaker[Session], r: TrialResult) -> RecordOutcome:
    return record(sessions, r, verdict=judge(r))


def queue(sessions: sessionmaker[Session], trial_id: str, kernel: str, campaign: str) -> None:
    with sessions.begin() as s:
        k = db.ensure_kernel(s, kernel, kernel, None, None, "custom")
        c = s.scalar(select(Campaign).where(Campaign.name == campaign))
        if c is None:
            c = Campaign(name=campaign, spec={})
            s.add(c)
        enqueue(s, trial_id=trial_id, token=TOKEN, kernel=k, campaign=c)


def findings(sessions: sessionmaker[Session]) -> list[Finding]:
    with sessions() as s:
        return list(s.scalars(select(Finding).order_by(Finding.id)))


def counts(sessions: sessionmaker[Session]) -> dict[tuple[str, str | None], tuple[int, int]]:
    """(kernel name, campaign name) -> (finding id, count)."""
    with sessions() as s:
        rows = s.execute(
            select(Kernel.name, Campaign.name, FindingCount.finding_id, FindingCount.count)
            .join(Kernel, Kernel.id == FindingCount.kernel_id)
            .outerjoin(Campaign, Campaign.id == FindingCount.campaign_id)
        ).all()
    return {(k, c): (f, n) for k, c, f, n in rows}


def trial(sessions: sessionmaker[Session], trial_id: str) -> Trial:
    with sessions() as s:
        return s.scalars(select(Trial).where(Trial.trial_id == trial_id)).one()


# --- signatures -------------------------------------------------------------


def test_titles_are_normalised_for_the_signature() -> None:
    """Findings key titles with the parser's normaliser (syzkaller's rewrites, 120 bytes)."""
    assert key_title("  WARNING in   zap_pte_range\n") == "WARNING in zap_pte_range"
    assert key_title("BUG: x at 0xffffffff81234567 on CPU#1") == "BUG: x at ADDR on CPU"
    # control and non-ASCII characters never reach the key (nor the database)
    assert key_title("BUG: mm:ffff888012345678\tbad\x00\ufffd") == "BUG: mm:ADDR bad"
    assert key_title("") == key_title("\x00\x01") == "(no title)"
    assert len(key_title("BUG: " + "x" * 5000)) == 120
    assert signature("kernel-report", "WARNING in  f") == signature("kernel-report", "WARNING in f")
    assert signature("kernel-report", "WARNING in f") != signature("guest-crash", "WARNING in f")
    assert len(signature("hang", "x" * 5000)) == 64


# --- recording --------------------------------------------------------------


def test_one_finding_counted_per_kernel_and_campaign(db_sessions: sessionmaker[Session]) -> None:
    queue(db_sessions, "a-1", "k-a", "camp-x")
    queue(db_sessions, "a-2", "k-a", "camp-x")
    queue(db_sessions, "b-1", "k-b", "camp-y")
    # recorded out of time order: first_seen and the example follow finish times
    assert rec(db_sessions, make("a-1", at=T0 + 100)) == RecordOutcome.UPDATED
    assert rec(db_sessions, make("b-1", at=T0 + 10)) == RecordOutcome.UPDATED
    assert rec(db_sessions, make("a-2", at=T0 + 300)) == RecordOutcome.UPDATED
    # outside any campaign (campaign NULL), twice on k-a: one count row, not two
    assert rec(db_sessions, make("adhoc-1", kernel="k-a", at=T0 + 50)) == RecordOutcome.INSERTED
    assert rec(db_sessions, make("adhoc-2", kernel="k-a", at=T0 + 60)) == RecordOutcome.INSERTED

    [finding] = findings(db_sessions)
    assert (finding.kind, finding.title, finding.status) == (
        "kernel-report",
        "BUG: Bad rss-counter state",
        "open",
    )
    assert finding.signature == signature("kernel-report", "BUG: Bad rss-counter state")
    assert finding.trial_count == 5
    assert (finding.first_seen, finding.last_seen) == (when(T0 + 10), when(T0 + 300))
    assert finding.example_trial_id == trial(db_sessions, "b-1").id
    assert finding.report is not None and "MM_SHMEMPAGES val:-1" in finding.report
    fid = finding.id
    assert counts(db_sessions) == {
        ("k-a", "camp-x"): (fid, 2),
        ("k-b", "camp-y"): (fid, 1),
        ("k-a", None): (fid, 2),
    }
    with db_sessions() as s:
        row = s.scalars(select(FindingCount).where(FindingCount.campaign_id.is_(None))).one()
        assert (row.first_seen, row.last_seen) == (when(T0 + 50), when(T0 + 60))
    a1 = trial(db_sessions, "a-1")
    assert (a1.finding_id, a1.verdict, a1.title) == (fid, "kernel-report", finding.title)
    assert a1.verdict_detail == "BUG: Bad rss-counter state"


def test_duplicate_delivery_never_double_counts(db_sessions: sessionmaker[Session]) -> None:
    r = make("dup-1")
    assert rec(db_sessions, r) == RecordOutcome.INSERTED
    assert rec(db_sessions, r) == RecordOutcome.DUPLICATE
    batch = [(r, judge(r)), (make("dup-2"), judge(r)), (make("dup-2"), judge(r))]
    assert record_many(db_sessions, batch) == [
        RecordOutcome.DUPLICATE,
        RecordOutcome.INSERTED,
        RecordOutcome.DUPLICATE,
    ]
    [finding] = findings(db_sessions)
    assert finding.trial_count == 2
    assert [n for _, n in counts(db_sessions).values()] == [2]


def test_different_titles_and_kinds_are_different_findings(
    db_sessions: sessionmaker[Session],
) -> None:
    rec(db_sessions, make("t-1", console=warning("zap_pte_range")))
    rec(db_sessions, make("t-2", console=warning("unmap_page_range")))
    rec(db_sessions, make("t-3", console=warning("zap_pte_range")))
    rec(db_sessions, make("t-4", console=warning("zap_pte_range"), outcome="timeout"))  # a hang
    rec(db_sessions, make("t-5", console=""))  # smaps oracle: Rss 4 kB after punch
    got = {(f.kind, f.title): f.trial_count for f in findings(db_sessions)}
    assert got == {
        ("kernel-report", "WARNING in zap_pte_range"): 2,
        ("kernel-report", "WARNING in unmap_page_range"): 1,
        ("hang", "hang: no answer from the trial within its deadline"): 1,
        ("smaps-mismatch", "smaps: memfd VMA keeps pages after punching every page"): 1,
    }
    smaps = next(f for f in findings(db_sessions) if f.kind == "smaps-mismatch")
    assert smaps.report == "Rss 4 kB, Pss_Shmem 4 kB after punch (want 0)"


def test_infra_errors_invalid_and_clean_are_never_findings(
    db_sessions: sessionmaker[Session],
) -> None:
    infra = make("i-1", outcome="infra-error", error="libvirt: no domain", program=None)
    assert judge(infra).kind == "infra-error"  # even with a BUG on its console
    rec(db_sessions, infra)
    rec(db_sessions, make("i-2", outcome="invalid-guest", error="1 NUMA node", program=None))
    rec(db_sessions, make("i-3", console="", clean=True))
    record(db_sessions, make("i-4"), verdict="infra-error")  # a plain kind string still works
    # a hand-made verdict of a non-finding kind with a title is still no finding
    record(db_sessions, make("i-5"), verdict=Verdict("invalid", title="WARNING in x"))
    assert findings(db_sessions) == []
    assert counts(db_sessions) == {}
    assert {trial(db_sessions, f"i-{i}").verdict for i in range(1, 6)} == {
        "infra-error",
        "invalid",
        "clean",
    }
    assert trial(db_sessions, "i-1").verdict_detail == "libvirt: no domain"
    assert all(trial(db_sessions, f"i-{i}").finding_id is None for i in range(1, 6))
    with pytest.raises(ValueError, match="finding kind: pass the Verdict"):
        record(db_sessions, make("i-6"), verdict="kernel-report")
    with pytest.raises(ValueError, match="not a verdict name"):
        record(db_sessions, make("i-7"), verdict=Verdict("Kernel Report"))


def test_hostile_titles_and_reports_are_stored(db_sessions: sessionmaker[Session]) -> None:
    console = warning("evil\x00func") + "x" * 100 + "\n"
    r = make("h-1", console=console)
    huge = Verdict("kernel-report", title="WARNING in \x00evil", detail="d\x00" * 10_000)
    record(db_sessions, r, verdict=huge)
    record(
        db_sessions,
        make("h-2"),
        verdict=Verdict("guest-crash", title="t" * 2000, detail="y" * (MAX_REPORT_CHARS * 2)),
    )
    by_kind = {f.kind: f for f in findings(db_sessions)}
    # the finding's title is the key title (farm.triage.titles: no NULs, at most 120 bytes);
    # the trial keeps its own title, cleaned and bounded by the column
    assert by_kind["kernel-report"].title == "WARNING in evil"
    assert len(by_kind["guest-crash"].title) == 120
    assert trial(db_sessions, "h-1").title == "WARNING in \ufffdevil"
    assert len(trial(db_sessions, "h-2").title or "") == 512
    assert len(by_kind["guest-crash"].report or "") <= MAX_REPORT_CHARS
    assert len(trial(db_sessions, "h-1").verdict_detail or "") <= 4096


def test_attach_an_orm_trial(db_sessions: sessionmaker[Session]) -> None:
    queue(db_sessions, "orm-1", "k-a", "camp-x")
    verdict = Verdict("counter-mismatch", title="RssShmem does not return", detail="4 kB")
    with db_sessions.begin() as s:
        row = s.scalars(select(Trial).where(Trial.trial_id == "orm-1")).one()
        row.status, row.outcome = "done", "ok"
        fid = attach(s, row, verdict, when(T0))
        assert fid is not None and row.finding_id == fid
        assert row.title == "RssShmem does not return"
        with pytest.raises(ValueError, match="already counted"):
            attach(s, row, verdict, when(T0))
    [finding] = findings(db_sessions)
    assert (finding.id, finding.trial_count, finding.report) == (fid, 1, "4 kB")
    assert counts(db_sessions) == {("k-a", "camp-x"): (fid, 1)}


def test_finding_counts_are_unique_with_and_without_campaign(db_engine: Engine) -> None:
    """The partial unique indexes hold on both backends, NULL campaign included."""
    with db_engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO kernels (name, release, source, created_at) "
                "VALUES ('k', 'r', 's', CURRENT_TIMESTAMP)"
            )
        )
        c.execute(
            text(
                "INSERT INTO campaigns (name, spec, status, created_at) "
                "VALUES ('c', '{}', 'created', CURRENT_TIMESTAMP)"
            )
        )
        c.execute(
            text(
                "INSERT INTO findings (signature, kind, title, status, trial_count, first_seen, "
                "last_seen, created_at) VALUES ('s', 'hang', 't', 'open', 0, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    row = (
        "INSERT INTO finding_counts (finding_id, kernel_id, campaign_id, count, first_seen, "
        "last_seen) VALUES ((SELECT id FROM findings), (SELECT id FROM kernels), {}, 1, "
        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )
    none, camp = row.format("NULL"), row.format("(SELECT id FROM campaigns)")
    with db_engine.begin() as c:  # one of each is fine
        c.execute(text(none))
        c.execute(text(camp))
    for stmt in (none, camp):
        with pytest.raises(IntegrityError), db_engine.begin() as c:
            c.execute(text(stmt))
    with db_engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM finding_counts")).scalar() == 2


# --- concurrency (PostgreSQL: real parallel writers) ------------------------


@pytest.mark.postgres
def test_concurrent_recorders_make_one_finding(postgres_url: str) -> None:
    db.upgrade(postgres_url)
    engine = db.make_engine(postgres_url, pool_size=10)
    sessions = db.session_factory(engine)
    try:
        for rnd in range(4):  # a new signature each round
            results = [make(f"c{rnd}-{i}", console=warning(f"race_{rnd}")) for i in range(8)]
            outcomes = run_threads(8, lambda i, rs=results: rec(sessions, rs[i]))
            assert outcomes == [RecordOutcome.INSERTED] * 8
            with sessions() as s:
                found = s.scalars(select(Finding).where(Finding.title == f"WARNING in race_{rnd}"))
                [finding] = found.all()
                assert finding.trial_count == 8
                linked = s.scalar(select(func.count()).where(Trial.finding_id == finding.id))
                assert linked == 8
                assert (
                    s.scalar(
                        select(FindingCount.count).where(FindingCount.finding_id == finding.id)
                    )
                    == 8
                )
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_concurrent_batches_of_many_signatures_do_not_deadlock(postgres_url: str) -> None:
    """record_many attaches in signature order, whatever order its trial ids come in."""
    db.upgrade(postgres_url)
    engine = db.make_engine(postgres_url, pool_size=10)
    sessions = db.session_factory(engine)
    funcs = ["alpha", "beta", "gamma", "delta"]
    try:

        def batch(i: int) -> list[RecordOutcome]:
            # thread i's trial ids sort in a different signature order than thread i+1's
            order = funcs[i % 4 :] + funcs[: i % 4]
            pairs = []
            for j, fn in enumerate(order):
                r = make(f"m{i}-{j}", console=warning(fn), kernel=f"k{j % 2}")
                pairs.append((r, judge(r)))
            return record_many(sessions, pairs)

        for _ in range(3):
            with sessions.begin() as s:
                s.execute(update(Trial).values(finding_id=None))
                s.execute(text("DELETE FROM finding_counts"))
                s.execute(text("DELETE FROM findings"))
                s.execute(text("DELETE FROM trials"))
            run_threads(8, batch)
            got = {f.title: f.trial_count for f in findings(sessions)}
            assert got == {f"WARNING in {fn}": 8 for fn in funcs}
            with sessions() as s:
                assert s.scalar(select(func.sum(FindingCount.count))) == 32
    finally:
        engine.dispose()


def test_sqlite_threads_make_one_finding(db_sessions: sessionmaker[Session], db_url: str) -> None:
    """Both backends: concurrent recorders, one finding, exact counts."""
    results = [make(f"s-{i}", console=warning("both_backends")) for i in range(8)]
    run_threads(8, lambda i: rec(db_sessions, results[i]))
    [finding] = findings(db_sessions)
    assert finding.trial_count == 8


# --- migrations -------------------------------------------------------------


def trial_checks(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_check_constraints("trials")}


def test_findings_migration_down_and_up_keeps_trials(db_url: str) -> None:
    """An existing farm upgrades, then `farm triage rerun` finds its old findings."""
    db.upgrade(db_url)
    engine = db.make_engine(db_url)
    sessions = db.session_factory(engine)
    rec(sessions, make("mig-1"))
    rec(sessions, make("mig-2", console="", clean=True))
    engine.dispose()

    db.downgrade(db_url, "0001")
    assert table_names(db_url) & {"findings", "finding_counts"} == set()
    engine = db.make_engine(db_url)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM trials")).scalar() == 2
    assert trial_checks(engine) == {"ck_trials_status", "ck_trials_done_has_outcome"}
    engine.dispose()

    db.upgrade(db_url)
    assert schema_diff(db_url) == []
    engine = db.make_engine(db_url)
    sessions = db.session_factory(engine)
    try:
        # compare_metadata ignores CHECKs; SQLite's batch rebuild of trials must keep them
        assert trial_checks(engine) == {"ck_trials_status", "ck_trials_done_has_outcome"}
        assert findings(sessions) == []
        summary = rerun(sessions)
        assert (summary.trials, summary.findings_before, summary.findings_after) == (2, 0, 1)
        [finding] = findings(sessions)
        assert finding.trial_count == 1
        assert trial(sessions, "mig-1").finding_id == finding.id
    finally:
        engine.dispose()


# --- rerun ------------------------------------------------------------------


def test_rerun_fixes_stale_verdicts_and_rebuilds_counts(
    db_sessions: sessionmaker[Session],
) -> None:
    queue(db_sessions, "r-1", "k-a", "camp-x")
    # recorded before the parser knew about it: stored as clean, the console says otherwise
    # (its console was kept: clean consoles are a sample, farm.store.storage)
    record(
        db_sessions,
        make("r-1", console="boot ok\n" + RSS_SPLAT, clean=True),
        verdict="clean",
        clean_console_sample=1.0,
    )
    # a wrong title from an older parser: its own finding, which rerun leaves "gone"
    stale = Verdict("kernel-report", title="WARNING in old_parser_guess", detail="old")
    record(db_sessions, make("r-2", console=warning("zap_pte_range"), at=T0 + 5), verdict=stale)
    # right already: its finding must keep its id
    rec(db_sessions, make("r-3", console=warning("zap_pte_range"), at=T0 + 9))
    # stored as a finding but clean by its console
    record(
        db_sessions,
        make("r-4", console="", clean=True),
        verdict=Verdict("kernel-report", title="WARNING in ghost"),
    )
    # infra errors stay infra errors
    rec(db_sessions, make("r-5", outcome="infra-error", error="boot", program=None))
    # a finding a person marked fixed: loses its trials but keeps its status
    record(db_sessions, make("r-6", console=""), verdict=Verdict("hang", title="hang: fixed one"))
    with db_sessions.begin() as s:
        s.execute(update(Finding).where(Finding.kind == "hang").values(status="fixed"))
        # counts drifted (e.g. an older bug): rerun rebuilds them from the trials
        s.execute(update(FindingCount).values(count=99))
    before = {f.title: f for f in findings(db_sessions)}
    assert trial(db_sessions, "r-1").finding_id is None

    calls: list[tuple[int, int]] = []
    summary = rerun(db_sessions, progress=lambda done, total: calls.append((done, total)))

    assert (summary.trials, summary.rejudged, summary.kept) == (6, 6, 0)
    assert summary.changed == 4  # r-1, r-2, r-4, r-6
    assert (summary.findings_before, summary.findings_after) == (4, 3)
    assert (summary.new_findings, summary.gone_findings) == (2, 3)
    assert calls == [(6, 6)]
    assert "4 verdicts changed" in summary.describe()

    r1 = trial(db_sessions, "r-1")
    assert (r1.verdict, r1.title) == ("kernel-report", "BUG: Bad rss-counter state")
    after = {f.title: f for f in findings(db_sessions)}
    rss = after["BUG: Bad rss-counter state"]
    assert (rss.trial_count, rss.status, rss.example_trial_id) == (1, "open", r1.id)
    assert r1.finding_id == rss.id
    assert rss.report is not None and "val:-1" in rss.report

    zap = after["WARNING in zap_pte_range"]
    assert zap.id == before["WARNING in zap_pte_range"].id  # stable id for a stable signature
    assert zap.trial_count == 2
    assert (zap.first_seen, zap.last_seen) == (when(T0 + 5), when(T0 + 9))
    assert zap.example_trial_id == trial(db_sessions, "r-2").id
    assert trial(db_sessions, "r-2").finding_id == zap.id

    old = after["WARNING in old_parser_guess"]
    assert (old.id, old.trial_count, old.status) == (before[old.title].id, 0, "gone")
    assert after["WARNING in ghost"].status == "gone"
    assert trial(db_sessions, "r-4").verdict == "clean"
    assert trial(db_sessions, "r-4").finding_id is None
    # r-6's console has no hang: it is an smaps mismatch now; "fixed" stays fixed
    assert (after["hang: fixed one"].status, after["hang: fixed one"].trial_count) == ("fixed", 0)
    assert trial(db_sessions, "r-6").verdict == "smaps-mismatch"
    assert trial(db_sessions, "r-5").verdict == "infra-error"

    rss_id, zap_id = rss.id, zap.id
    smaps_id = after["smaps: memfd VMA keeps pages after punching every page"].id
    with db_sessions() as s:
        rows = s.execute(select(FindingCount.finding_id, FindingCount.count)).all()
    assert sorted(rows) == sorted([(rss_id, 1), (zap_id, 2), (smaps_id, 1)])

    # a second rerun changes nothing
    again = rerun(db_sessions, batch_size=2)
    assert (again.changed, again.new_findings, again.gone_findings) == (0, 0, 0)
    assert {f.title: (f.id, f.trial_count) for f in findings(db_sessions)} == {
        t: (f.id, f.trial_count) for t, f in after.items()
    }

    # a gone finding comes back to open when its signature is seen again
    record(db_sessions, make("r-7", at=T0 + 50), verdict=stale)
    revived = next(f for f in findings(db_sessions) if f.title == "WARNING in old_parser_guess")
    assert (revived.status, revived.trial_count, revived.first_seen) == ("open", 1, when(T0 + 50))
    assert revived.example_trial_id == trial(db_sessions, "r-7").id


def consistent(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Each finding's trial_count equals its linked trials and its per-kernel counts."""
    with sessions() as s:
        out = {}
        for f in s.scalars(select(Finding)):
            linked = s.scalar(select(func.count()).where(Trial.finding_id == f.id))
            counted = s.scalar(
                select(func.coalesce(func.sum(FindingCount.count), 0)).where(
                    FindingCount.finding_id == f.id
                )
            )
            assert f.trial_count == linked == counted, f
            out[f.title] = f.trial_count
        return out


def test_recording_during_a_rerun_stays_consistent(db_sessions: sessionmaker[Session]) -> None:
    """Recorders that attach while rerun rebuilds wait for it, and are counted after."""
    for i in range(12):
        rec(db_sessions, make(f"pre-{i}", console=warning("during_rerun")))
    paged = threading.Event()

    def slow(done: int, total: int) -> None:
        paged.set()
        threading.Event().wait(0.05)  # hold the rebuild open while recorders arrive

    def work(i: int) -> Any:
        if i == 0:
            return rerun(db_sessions, progress=slow, batch_size=3)
        assert paged.wait(10)
        return rec(db_sessions, make(f"live-{i}", console=warning("during_rerun")))

    out = run_threads(7, work)
    assert out[1:] == [RecordOutcome.INSERTED] * 6
    assert consistent(db_sessions) == {"WARNING in during_rerun": 18}
    assert rerun(db_sessions).changed == 0
    assert consistent(db_sessions) == {"WARNING in during_rerun": 18}


def test_rerun_keeps_what_it_cannot_rejudge(db_sessions: sessionmaker[Session]) -> None:
    rec(db_sessions, make("u-1", console=warning("zap_pte_range")))
    rec(db_sessions, make("u-2", console=warning("zap_pte_range")))
    with db_sessions.begin() as s:
        s.execute(update(Trial).where(Trial.trial_id == "u-1").values(result={"bogus": 1}))
        s.execute(update(Trial).where(Trial.trial_id == "u-2").values(result=None))
    summary = rerun(db_sessions)
    assert (summary.trials, summary.rejudged, summary.kept, summary.changed) == (2, 0, 2, 0)
    assert len(summary.errors) == 2 and "stored result invalid" in summary.errors[0]
    [finding] = findings(db_sessions)
    assert (finding.title, finding.trial_count) == ("WARNING in zap_pte_range", 2)


def test_rerun_of_an_empty_farm(db_sessions: sessionmaker[Session]) -> None:
    summary = rerun(db_sessions)
    assert (summary.trials, summary.findings_before, summary.findings_after) == (0, 0, 0)
