"""Window entries per guest-second per knob: the campaign page's second chart.

A campaign of known trials (kernel counts, a proxy-only trial, a trial with no
signal, an invalid trial that must not count) on both backends: the API's bins
carry the sums the search would have seen, the SQL twins of the signal agree
with farm.protocol on every trial, and the page draws the chart only for
campaigns whose trials have a window signal.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Filled, _record, result_dict
from fastapi.testclient import TestClient
from sqlalchemy import select

from farm.control import campaigns
from farm.params import SeedToken
from farm.protocol import guest_seconds, validate_result, window_entries
from farm.store import db, signal
from farm.store.models import Campaign, Kernel, Trial
from farm.store.recorder import enqueue
from farm.web import charts
from farm.web.stats import param_rates, tally

KERNEL = "debian-6.1.0-26"
CAMPAIGN = "window-known"
SILENT = "window-silent"  # varied knobs, no counters and no proxy: an older program's trials
# (punch, window counts or None, proxy overlapped or None, guest-seconds, numa nodes)
KNOWN: list[tuple[str, dict[str, int] | None, int | None, float, int]] = [
    ("fallocate", {"entries": 10, "skipped": 0, "swap_entries": 2, "swap_skipped": 0}, 7, 2.0, 2),
    ("fallocate", None, 5, 3.0, 2),  # no counters: the proxy is the signal
    ("madvise", {"entries": 1, "skipped": 0, "swap_entries": 0, "swap_skipped": 0}, None, 4.0, 2),
    ("madvise", None, None, 1.0, 2),  # no signal at all: costs time, adds nothing
    ("madvise", {"entries": 900, "skipped": 0, "swap_entries": 0, "swap_skipped": 0}, None, 1, 1),
]
# by hand from KNOWN: the invalid (one-node) trial tested nothing and is left out
EXPECTED = {"fallocate": (12 + 5, 2.0 + 3.0), "madvise": (1 + 0, 4.0 + 1.0)}


def _results(campaign: str, known: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    out = []
    for i, (punch, window, proxy, seconds, nodes) in enumerate(known):
        token = SeedToken.parse(f"{SeedToken(seed=0x3A1D_0000_0000_0000 + i)}~punch={punch}")
        data = result_dict(
            f"{campaign}-{i}", str(token), KERNEL, finished=1.8e9 + 60 * i, numa_nodes=nodes
        )
        data["window"] = window
        data["started_at"] = data["finished_at"] - seconds
        if proxy is not None:
            data["program"]["proxy"] = {"overlapped": proxy, "moved": proxy, "gone": 0}
        out.append(data)
    return out


@pytest.fixture(scope="module")
def known(web_db: Filled) -> list[dict[str, Any]]:
    """KNOWN recorded through the real recorder into a campaign of its own (and SILENT's)."""
    engine = db.make_engine(web_db.url)
    sessions = db.session_factory(engine)
    results = _results(CAMPAIGN, KNOWN)
    silent = _results(SILENT, [(p, None, None, 1.0, 2) for p in ("fallocate", "madvise") * 2])
    try:
        for name, batch in ((CAMPAIGN, results), (SILENT, silent)):
            with sessions.begin() as s:
                spec = campaigns.parse_spec(
                    {"name": name, "kernels": [KERNEL], "budget": {"trials": 10}}
                )
                campaign = campaigns.create(s, spec)
                kernel = s.scalars(select(Kernel).where(Kernel.name == KERNEL)).one()
                for data in batch:
                    enqueue(
                        s,
                        trial_id=data["trial_id"],
                        token=data["token"],
                        kernel=kernel,
                        campaign=campaign,
                    )
            for data in batch:
                _record(sessions, data)
        with sessions() as s:
            # the SQL twins agree with farm.protocol's definitions on every stored trial
            stored = dict(
                (tid, (w, sec))
                for tid, w, sec in s.execute(
                    select(Trial.trial_id, signal.window_signal(), signal.guest_seconds())
                    .join(Campaign, Campaign.id == Trial.campaign_id)
                    .where(Campaign.name == CAMPAIGN)
                )
            )
    finally:
        engine.dispose()
    for data in results:
        result = validate_result(data)
        window, seconds = stored[data["trial_id"]]
        assert window == window_entries(result)
        assert seconds == pytest.approx(guest_seconds(result))
    return results


def test_known_trials_give_known_rates_per_bin(client: TestClient, known: Any) -> None:
    campaign = client.get(f"/api/campaigns/{CAMPAIGN}").json()
    assert campaign["param_sample"] == 4
    assert campaign["param_window_entries"] == sum(e for e, _ in EXPECTED.values())
    rates = {p["name"]: p for p in campaign["param_rates"]}
    punch = {b["label"]: b for b in rates["punch"]["bins"]}
    for label, (entries, seconds) in EXPECTED.items():
        assert punch[label]["window_entries"] == entries
        assert punch[label]["guest_seconds"] == pytest.approx(seconds)
        assert punch[label]["window_per_s"] == pytest.approx(entries / seconds)
    # every knob's bins share the same trials: the window sums add up on each
    for p in rates.values():
        if p["fixed"] is None:
            assert sum(b["window_entries"] for b in p["bins"]) == 18
            assert sum(b["guest_seconds"] for b in p["bins"]) == pytest.approx(10.0)


def test_page_draws_the_window_chart(client: TestClient, known: Any) -> None:
    html = client.get(f"/campaigns/{CAMPAIGN}").text
    assert 'aria-label="window entries per guest-second by punch"' in html
    assert 'class="bar s-window"' in html
    assert "17 window entries in 5 guest-s = 3.4/s" in html  # fallocate's bar
    # the fill's nightly campaign: count-build warnings at i = 6, 20, 34 (12 + i entries, 1 swap)
    nightly = client.get("/api/campaigns/nightly-6.1").json()
    assert nightly["param_window_entries"] == (12 + 6) + (12 + 20) + (12 + 34) + 3


def test_campaign_without_window_signal_has_no_window_chart(client: TestClient, known: Any) -> None:
    campaign = client.get(f"/api/campaigns/{SILENT}").json()
    assert campaign["param_sample"] == 4 and campaign["param_window_entries"] == 0
    punch = {p["name"]: p for p in campaign["param_rates"]}["punch"]["bins"]
    assert [(b["window_entries"], b["window_per_s"]) for b in punch] == [(0, 0.0), (0, 0.0)]
    html = client.get(f"/campaigns/{SILENT}").text
    assert "s-window" not in html and "per guest-second" not in html
    assert 'class="bar s-anomaly"' in html  # the anomaly charts stay


def test_param_rates_sums_window_and_cost_in_the_anomaly_bins() -> None:
    rows = [("clean", {"pages": p, "punch": "madvise"}, p // 64, 0.5) for p in range(64, 8192, 64)]
    rows += [("kernel-report", {"pages": 100, "punch": "fallocate"}, 40, 2.0)]
    rows += [("invalid", {"pages": 100, "punch": "fallocate"}, 1000, 9.0)]
    rates = {r.name: r for r in param_rates(tally(rows))}
    pages = rates["pages"].bins
    assert sum(b.window_entries for b in pages) == sum(range(1, 128)) + 40
    assert sum(b.guest_seconds for b in pages) == pytest.approx(127 * 0.5 + 2.0)
    assert [(b.label, b.window_entries, b.window_per_s) for b in rates["punch"].bins] == [
        ("fallocate", 40, 20.0),
        ("madvise", sum(range(1, 128)), pytest.approx(sum(range(1, 128)) / 63.5)),
    ]


def test_window_bars_escape_and_scale() -> None:
    svg = str(charts.window_bars([("<b>", 30, 10.0), ("x", 0, 0.0)], title="w<i>"))
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "w&lt;i&gt;" in svg
    assert svg.count('class="bar s-window"') == 2 and "30 window entries in 10 guest-s = 3/s" in svg
    assert ">5</text>" in svg  # the axis tops at the next 1/2/5 step above 3/s
    assert "style=" not in svg
    assert "no data" in str(charts.window_bars([], title="w"))
