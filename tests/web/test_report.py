"""farm report and the finding page's report: one renderer, 80 columns, from real recorded data."""

from __future__ import annotations

import html
import json
import re

import pytest
from click.testing import CliRunner
from conftest import Filled
from fastapi.testclient import TestClient

from farm.cli.main import main
from farm.control.reproduce import wilson
from farm.store import db
from farm.web.report import WIDTH, finding_report, render_text


def report_of(web_db: Filled, short: str) -> str:
    engine = db.make_engine(web_db.url)
    try:
        with db.session_factory(engine)() as session:
            report = finding_report(session, web_db.findings[short])
    finally:
        engine.dispose()
    assert report is not None
    return render_text(report)


def test_text_report_has_every_part_in_80_columns(web_db: Filled) -> None:
    text = report_of(web_db, "rss")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert lines[0].startswith("BUG: Bad rss-counter state")
    headings = ["Kernels:", "Reproducibility:", "Console excerpt:", "Seed token:"]
    headings += ["Reproduce with the farm:", "Standalone reproducer (C, no farm needed):"]
    assert [line for line in lines if line in headings] == headings
    assert re.search(r"^  debian-6\.1\.0-26 +\d+  first 20\d\d-", text, re.M)
    # 3 of the 4 reproduction runs hit it: the rate and its Wilson interval
    lo, hi = wilson(3, 4)
    assert f"3 of 4 runs hit it (75%, 95% Wilson interval {100 * lo:.0f}%-{100 * hi:.0f}%)" in text
    assert f"{100 * hi:.0f}%), reliable." in text
    token = web_db.tokens["rss"]
    assert f"  {token}" in lines
    joined = text.replace(" \\\n    ", " ")  # shell continuations, as a shell reads them
    assert re.search(
        rf"^  farm reproduce {token} --kernel debian-\S+ --kernel debian-\S+ --runs 10$",
        joined,
        re.M,
    )
    assert "--kernel debian-6.1.0-26 " in joined and "--kernel debian-bullseye-5.10.0-32 " in joined
    assert "gcc -O2 -static -pthread -o zapmigrate-repro reproducer.c" in text
    assert "  [" in text and "Bad rss-counter state mm:" in text  # the console excerpt


def test_never_measured_and_hostile_text(web_db: Filled) -> None:
    text = report_of(web_db, "warning")
    assert "not measured yet" in text
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    hostile = report_of(web_db, "xss") if "xss" in web_db.findings else text
    assert "\x1b" not in hostile and "\u202e" not in hostile


def test_cli_text_and_json_and_the_page_agree(web_db: Filled, client: TestClient) -> None:
    env = {"FARM_DATABASE_URL": web_db.url}
    fid = web_db.findings["rss"]
    text = CliRunner().invoke(main, ["report", str(fid)], env=env)
    assert text.exit_code == 0, text.output
    assert text.stdout == report_of(web_db, "rss")
    as_json = CliRunner().invoke(main, ["report", str(fid), "--format", "json"], env=env)
    data = json.loads(as_json.stdout)
    assert data["hits"] == 3 and data["runs"] == 4 and data["reliable"] is True
    assert data["ci95"] == [round(x, 4) for x in wilson(3, 4)]
    page = client.get(f"/findings/{fid}").text
    shown = re.search(r'<pre class="console" id="ml-report">(.*?)</pre>', page, re.S)
    assert shown is not None and html.unescape(shown[1]) == text.stdout
    missing = CliRunner().invoke(main, ["report", "999999"], env=env)
    assert missing.exit_code == 2 and "no finding 999999" in missing.output


@pytest.mark.parametrize("width", [80])
def test_long_console_lines_are_cut_not_lost(width: int) -> None:
    from farm.web.report import FindingReport

    long = "x" * 200
    cmd = "farm reproduce zf2-0000000000000001" + " --kernel debian-6.1.0-26-amd64" * 5
    r = FindingReport(1, "t" * 150, "kernel-report", "open", 1, "a", "b", [], None, None, None,
                      None, "zf2-0000000000000001", [long], cmd, [])  # fmt: skip
    lines = render_text(r, width).splitlines()
    assert max(len(line) for line in lines) <= width
    cut = [line for line in lines if set(line.strip(" +")) == {"x"}]
    assert sum(len(line.strip(" +")) for line in cut) == 200
