"""farm reproduce --program in real TCG guests, with small foreign programs of our own.

Each program is built by the command, appended to the guest image and run
under the agent: one exits cleanly (its output kept), one is killed by
SIGSEGV, one never exits (killed at its deadline). The runs land in the
database as a done campaign of kind "program", visible like any other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from farm.cli.main import main
from farm.store import db
from farm.store.models import Campaign, Trial

pytestmark = pytest.mark.vm

PROGRAMS = {
    "clean": "#include <stdio.h>\n"
    'int main(int c, char **v) { printf("hello %s\\n", c > 1 ? v[1] : "-"); return 0; }\n',
    "segv": "#include <stdio.h>\n"
    'int main(void) { puts("about to fault"); fflush(stdout); return *(volatile int *)0; }\n',
    "forever": "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
}


@pytest.mark.parametrize(
    ("name", "extra", "verdict", "words"),
    [
        ("clean", ["--arg", "farm"], "clean", "exit status 0"),
        ("segv", [], "program-crash", "program killed by SIGSEGV"),
        ("forever", ["--deadline", "15"], "invalid", "never exited"),
    ],
)
def test_foreign_programs_in_a_guest(
    tmp_path: Path,
    farm_domains: Callable[..., list[str]],
    name: str,
    extra: list[str],
    verdict: str,
    words: str,
) -> None:
    before = frozenset(farm_domains(settle=0))
    source = tmp_path / f"{name}.c"
    source.write_text(PROGRAMS[name])
    url = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    done = CliRunner().invoke(
        main,
        ["reproduce", "--program", str(source), "--runs", "1", "--json", *extra],
        env={"FARM_DATABASE_URL": url},
    )
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    [run] = summary["runs_detail"]
    assert run["verdict"] == verdict, run
    assert words in f"{run['title']} {run['detail']}"
    if name == "clean":
        assert run["output"] == "hello farm\n" and run["exit_code"] == 0
        assert summary["runs"] == 1 and summary["hits"] == 0 and summary["ci95"][0] == 0.0
    if name == "segv":
        assert run["signal"] == 11 and run["output"] == "about to fault\n"
        assert summary["hits"] == 1
    # stored: a done campaign of kind program, its trial with the program's output
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as session:
            campaign = session.scalars(select(Campaign)).one()
            trial = session.scalars(select(Trial)).one()
            assert campaign.status == "done" and campaign.spec["kind"] == "program"
            assert campaign.spec["program"]["sha256"] == summary["sha256"]
            assert trial.campaign_id == campaign.id and trial.verdict == verdict
            assert trial.result is not None and trial.result["output"] == run["output"]
    finally:
        engine.dispose()
    mine = f"zapfarm-{os.getpid()}-"
    assert [n for n in farm_domains(ignore=before) if n.startswith(mine)] == []
