"""Every page and read endpoint against a database the real recorder filled, on both backends."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import HOSTILE, Filled
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from farm.store import db
from farm.store.models import Trial, Worker

PAGES = [
    "/",
    "/findings",
    "/findings?status=all&sort=count&order=asc",
    "/findings?kind=kernel-report&q=rss&kernel=debian-6.1.0-26",
    "/campaigns",
    "/campaigns?status=running&kind=fuzz",
    "/campaigns/nightly-6.1",
    "/campaigns/sweep-5.10",
    "/campaigns/repro-rss",
    "/trials",
    "/trials?campaign=nightly-6.1&verdict=kernel-report",
    "/trials?status=queued",
    "/kernels",
    "/workers",
]


def _page(client: TestClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.text[:500])
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    # no inline scripts: every <script> has a src (the CSP would block them anyway)
    assert not re.search(r"<script(?![^>]*\bsrc=)", response.text), path
    return response.text


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders(client: TestClient, path: str) -> None:
    _page(client, path)


def test_pages_for_each_object_render(client: TestClient, web_db: Filled) -> None:
    for finding_id in web_db.findings.values():
        _page(client, f"/findings/{finding_id}")
    for trial_pk in list(web_db.trials.values())[::5]:
        _page(client, f"/trials/{trial_pk}")


def test_findings_table(client: TestClient, web_db: Filled) -> None:
    html = _page(client, "/findings")
    for title in ("WARNING in zap_pte_range", "BUG: Bad rss-counter state", "smaps: memfd VMA"):
        assert title in html
    rss = web_db.findings["rss"]
    row = html[html.index(f'href="/findings/{rss}"') :].split("</tr>")[0]
    assert "3/4" in row  # the reproduce campaign: 3 of 4 runs hit it
    assert web_db.tokens["rss"] in row  # best seed
    assert "debian-6.1.0-26" in row and "debian-bullseye-5.10.0-32" in row

    data = client.get("/api/findings").json()
    assert data["total"] == 4
    by_id = {f["id"]: f for f in data["items"]}
    assert by_id[rss]["reproducibility"] == {
        "hits": 3,
        "runs": 4,
        "pending": 0,
        "campaigns": ["repro-rss"],
        "reliable": True,
        "label": "3/4",
    }
    assert by_id[rss]["count"] == 9  # 6 in nightly + 3 reproduced
    assert by_id[web_db.findings["warning"]]["reproducibility"] is None


def test_findings_filters_sorting_and_paging(client: TestClient, web_db: Filled) -> None:
    def ids(**params: Any) -> list[int]:
        return [f["id"] for f in client.get("/api/findings", params=params).json()["items"]]

    assert ids(kind="smaps-mismatch") == [web_db.findings["smaps-mismatch"]]
    assert ids(q="zap_pte") == [web_db.findings["warning"]]
    assert ids(q="%") == []  # LIKE wildcards are literal
    assert ids(kernel="debian-trixie-6.12.107") == []
    assert set(ids(kernel="debian-bullseye-5.10.0-32")) == {
        web_db.findings["rss"],
        web_db.findings["smaps-mismatch"],
    }
    counts = [f["count"] for f in client.get("/api/findings?sort=count&order=asc").json()["items"]]
    assert counts == sorted(counts)
    titles = [f["title"] for f in client.get("/api/findings?sort=title").json()["items"]]
    assert titles == sorted(titles, reverse=True)
    first, second = (
        client.get("/api/findings", params={"per_page": 3, "page": p}).json() for p in (1, 2)
    )
    assert (first["pages"], len(first["items"]), len(second["items"])) == (2, 3, 1)
    assert not {f["id"] for f in first["items"]} & {f["id"] for f in second["items"]}
    assert ids(status="fixed") == []
    html = _page(client, "/findings?sort=count&order=asc")
    assert "sort=count&amp;order=desc" in html  # clicking the sorted column flips the order
    assert client.get("/findings?sort=nope").status_code == 400
    assert client.get("/api/findings?sort=nope").status_code == 422


def test_finding_page(client: TestClient, web_db: Filled) -> None:
    rss = web_db.findings["rss"]
    html = _page(client, f"/findings/{rss}")
    assert "MM_SHMEMPAGES val:-1" in html  # report and console excerpt
    assert "zapfarm: trial begin" in html  # the example trial's console around it
    assert f"farm reproduce {web_db.tokens['rss']} --kernel" in html
    assert 'action="/findings/' in html and 'name="web_token"' in html
    assert "repro-rss" in html  # reproductions table
    detail = client.get(f"/api/findings/{rss}").json()
    assert {k["kernel"]: k["count"] for k in detail["per_kernel"]} == {
        "debian-bullseye-5.10.0-32": 6,
        "debian-6.1.0-26": 3,
    }
    assert {c["campaign"]: c["count"] for c in detail["per_campaign"]} == {
        "nightly-6.1": 6,
        "repro-rss": 3,
    }
    assert detail["reproductions"] == [
        {
            "campaign": "repro-rss",
            "status": "running",
            "kernels": ["debian-6.1.0-26"],
            "hits": 3,
            "runs": 4,
            "pending": 0,
        }
    ]
    assert "BUG: Bad rss-counter state" in detail["report"]
    assert "example_trial" not in detail
    assert client.get("/api/findings/999999").status_code == 404
    assert client.get("/findings/999999").status_code == 404


def _walk(client: TestClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a keyset-paged trial list, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})}).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_trials_keyset_pagination(client: TestClient, web_db: Filled) -> None:
    engine = db.make_engine(web_db.url)
    with engine.connect() as conn:
        done = conn.scalar(select(func.count()).select_from(Trial).where(Trial.status == "done"))
    engine.dispose()
    items = _walk(client, "/api/trials", limit=7)
    assert len(items) == done == len({t["id"] for t in items})
    keys = [(t["finished_at"], t["id"]) for t in items]
    assert keys == sorted(keys, reverse=True)
    finding = web_db.findings["rss"]
    behind = _walk(client, f"/api/findings/{finding}/trials", limit=2)
    assert len(behind) == 9 and {t["finding_id"] for t in behind} == {finding}
    assert [t["trial_id"] for t in _walk(client, "/api/trials", status="queued", limit=1)] == [
        "nightly-q1",
        "nightly-q0",
    ]
    assert [t["trial_id"] for t in _walk(client, "/api/trials", status="running")] == [
        "nightly-run"
    ]
    nightly_reports = _walk(client, "/api/trials", campaign="nightly-6.1", verdict="kernel-report")
    assert len(nightly_reports) == 9
    assert {t["kernel"] for t in _walk(client, "/api/trials", kernel="debian-6.1.0-26")} == {
        "debian-6.1.0-26"
    }
    token = web_db.tokens["rss"]
    assert len(_walk(client, "/api/trials", token=token)) == 5  # the example and 4 repro runs
    assert client.get("/api/trials", params={"campaign": "no-such"}).json()["items"] == []
    assert client.get("/api/trials?cursor=garbage").status_code == 422  # the schema says why
    assert client.get("/trials?cursor=garbage").status_code == 400
    html = _page(client, "/trials?campaign=nightly-6.1&limit=10")
    assert "cursor=" in html  # an "older" link


def test_trial_page(client: TestClient, web_db: Filled) -> None:
    pk = web_db.trials["nightly-0007"]  # a Bad rss-counter trial
    html = _page(client, f"/trials/{pk}")
    trial = client.get(f"/api/trials/{pk}").json()
    assert trial["reproduce_command"] == (
        f"farm reproduce {trial['token']} --kernel debian-bullseye-5.10.0-32"
    )
    assert trial["reproduce_command"] in html
    assert trial["verdict"] == "kernel-report" and trial["finding_id"] == web_db.findings["rss"]
    assert f'href="/findings/{web_db.findings["rss"]}"' in html
    oracles = trial["oracles"]
    assert (oracles["rss_shmem_before_kb"], oracles["rss_shmem_punched_kb"]) == (0, -4)
    assert oracles["counter_ok"] is False and oracles["vma_ok"] is True
    assert "mismatch" in html and "-ENOENT" in html
    assert trial["params"]["pages"] > 0 and "evict_delay_max_us" in html
    assert "Bad rss-counter state mm:" in trial["console"]
    smaps = client.get(f"/api/trials/{web_db.trials['nightly-0009']}").json()
    assert smaps["verdict"] == "smaps-mismatch" and smaps["oracles"]["vma_ok"] is False
    assert trial["window"] is None and "not counted" in html
    queued = _page(client, f"/trials/{web_db.trials['nightly-q0']}")
    assert "has not finished" in queued
    assert client.get("/api/trials/999999").status_code == 404


def test_trial_window(client: TestClient, web_db: Filled) -> None:
    """A count kernel's window counters on the trial page and in the trial API."""
    pk = web_db.trials["nightly-0006"]
    trial = client.get(f"/api/trials/{pk}").json()
    assert trial["window"] == {"entries": 18, "skipped": 3, "swap_entries": 1, "swap_skipped": 0}
    html = _page(client, f"/trials/{pk}")
    section = html[html.index("race window") :]
    cells = re.findall(r'<td class="num">([^<]*)</td>', section)[:4]
    assert cells == ["18", "3", "1", "0"]
    assert "not counted" not in section


def test_campaign_page(client: TestClient) -> None:
    html = _page(client, "/campaigns/nightly-6.1")
    assert html.count('<svg class="chart"') >= 2  # verdicts over time + parameter plots
    assert 'value="pause"' in html and 'value="stop"' in html and 'value="start"' not in html
    campaign = client.get("/api/campaigns/nightly-6.1").json()
    assert (campaign["done"], campaign["queued"], campaign["running"]) == (42, 2, 1)
    assert campaign["budget_trials"] == 200 and campaign["progress"] == pytest.approx(0.21)
    assert campaign["verdicts"] == {  # verdicts about the kernel; infra errors apart
        "clean": 24,
        "invalid": 3,
        "smaps-mismatch": 3,
        "kernel-report": 9,
    }
    assert campaign["infra_errors"] == 3
    assert "Infra errors:" in html and ">3</a> attempts failed on the farm" in html
    assert sum(sum(v) for v in campaign["series"]["counts"].values()) == 42
    rates = {p["name"]: p for p in campaign["param_rates"]}
    assert rates["src_node"]["fixed"] == "0" and "rng_seed" not in rates
    punch = {b["label"]: b for b in rates["punch"]["bins"]}
    assert set(punch) <= {"fallocate", "madvise"}
    assert sum(b["trials"] for b in punch.values()) == 36  # clean + findings, not invalid/infra
    assert sum(b["anomalies"] for b in punch.values()) == 12
    assert campaign["param_sample"] == 36  # the sample holds tested trials only
    assert campaign["actions"] == ["pause", "stop"]
    assert client.get("/api/campaigns/sweep-5.10").json()["actions"] == ["start", "stop"]
    assert client.get("/api/campaigns/no-such").status_code == 404
    assert client.get("/campaigns/no-such").status_code == 404
    listed = client.get("/api/campaigns", params={"kind": "reproduce"}).json()
    assert [c["name"] for c in listed["items"]] == ["repro-rss"]
    assert listed["items"][0]["token"] is not None


def test_kernels_workers_overview(client: TestClient, web_db: Filled) -> None:
    kernels = {k["name"]: k for k in client.get("/api/kernels").json()}
    assert kernels["debian-6.1.0-26"]["trials"] == 21 + 3 + 1 + 4  # nightly, queued, xss, repro
    assert kernels["debian-bullseye-5.10.0-32"]["findings"] == 2
    assert kernels["debian-trixie-6.12.107"]["last_trial"] is None
    workers = client.get("/api/workers").json()
    assert workers["source"] == "workers-table"
    assert [w["name"] for w in workers["items"]] == ["host-a"]
    assert workers["items"][0]["alive"] is True
    # before the scheduler recorded any heartbeat the page derives workers from results
    engine = db.make_engine(web_db.url)
    sessions = db.session_factory(engine)
    with sessions.begin() as s:
        heard = s.scalars(select(Worker)).all()
        saved = [(w.name, w.info, w.first_seen, w.last_seen) for w in heard]
        for w in heard:
            s.delete(w)
    try:
        derived = client.get("/api/workers").json()
        assert derived["source"] == "results"
        assert {w["name"] for w in derived["items"]} == {"host-a", "host-b"}
        assert "derived from the worker names" in _page(client, "/workers")
    finally:
        with sessions.begin() as s:
            for name, info, first, last in saved:
                s.add(Worker(name=name, info=info, first_seen=first, last_seen=last))
        engine.dispose()
    overview = client.get("/api/overview").json()
    assert overview["findings_open"] == 4
    assert overview["trials_total"] >= 0
    assert sum(sum(v) for v in overview["hourly"]["counts"].values()) == 47
    assert {c["name"] for c in overview["campaigns"]} >= {"nightly-6.1", "repro-rss"}


def test_openapi_documents_reads_and_mutations(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for path in (
        "/api/overview",
        "/api/findings",
        "/api/findings/{finding_id}",
        "/api/findings/{finding_id}/trials",
        "/api/trials",
        "/api/trials/{pk}",
        "/api/campaigns",
        "/api/campaigns/{name}",
        "/api/kernels",
        "/api/workers",
    ):
        assert "get" in paths[path], path
    assert "post" in paths["/api/campaigns/{name}/{action}"]
    assert "post" in paths["/api/reproductions"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert not any(p.startswith("/findings") for p in paths)  # HTML pages are not API
    assert client.get("/docs").status_code == 404  # Swagger UI needs inline scripts


def test_guest_output_is_escaped_and_control_characters_visible(
    client: TestClient, web_db: Filled
) -> None:
    xss_finding = web_db.findings["xss"]
    pages = {
        "findings": _page(client, "/findings"),
        "overview": _page(client, "/"),
        "finding": _page(client, f"/findings/{xss_finding}"),
        "trial": _page(client, f"/trials/{web_db.trials['adhoc-xss']}"),
        "trials": _page(client, "/trials"),
    }
    for name, html in pages.items():
        assert "<script>alert" not in html, name
        assert "\x1b" not in html, name
        assert "&lt;script&gt;alert(" in html, name
    # the console shows the guest's bytes as text: <script> escaped, ESC as a marked \x1b
    trial = pages["trial"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in trial
    assert '<span class="ctl">\\x1b</span>[31mred<span class="ctl">\\x1b</span>[0m' in trial
    assert '<span class="ctl">\\x1b</span>[2J' in trial
    assert "\\x1b[31m" in re.sub(r"</?span[^>]*>", "", pages["finding"])  # report and excerpt
    # JSON returns the raw text, as JSON: never sniffed or rendered as HTML
    response = client.get(f"/api/trials/{web_db.trials['adhoc-xss']}")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert HOSTILE.splitlines()[0] in response.json()["console"]
