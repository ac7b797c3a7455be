"""The campaign command line: clear errors that name the field, and the state machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from farm.cli.main import main
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade


@pytest.fixture
def farm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    url = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    monkeypatch.setenv("FARM_DATABASE_URL", url)
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path / "cache"))
    upgrade(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        ensure_kernel(session, "k61", "6.1.0-56-amd64", "/boot/vmlinuz-x", None, "debian:bookworm")
    engine.dispose()
    return tmp_path


def farm(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def write(tmp: Path, text: str) -> Path:
    path = tmp / "spec.toml"
    path.write_text(text)
    return path


def test_create_start_pause_resume_stop(farm_env: Path) -> None:
    spec = write(farm_env, 'name = "c1"\nkernels = ["k61"]\n[budget]\ntrials = 5\n')
    assert "created" in farm("campaign", "create", str(spec)).output
    assert "running" in farm("campaign", "start", "c1").output
    assert "paused" in farm("campaign", "pause", "c1").output
    assert "running" in farm("campaign", "resume", "c1").output
    assert "stopped" in farm("campaign", "stop", "c1").output
    again = farm("campaign", "resume", "c1")
    assert again.exit_code == 2 and "is stopped; it cannot become running" in again.output
    listing = farm("campaign", "list")
    assert listing.exit_code == 0 and "c1" in listing.output
    status = farm("campaign", "status", "c1")
    assert status.exit_code == 0 and "0/5" in status.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "c2"\nkernels = ["k61"\n', "not valid TOML"),
        ('name = "c2"\nkernels = []\n', "kernels"),
        ('name = "bad name!"\nkernels = ["k61"]\n', "name"),
        ('name = "c2"\nkernels = ["k61"]\ncolour = 3\n', "colour"),
        ('name = "c2"\nkernels = ["k61"]\n[budget]\ntrials = 0\n', "budget.trials"),
        ('name = "c2"\nkernels = ["k61"]\n[params]\nflavour = 1\n', "unknown parameter(s) flavour"),
        ('name = "c2"\nkernels = ["k61"]\n[params]\npunch = "ftruncate"\n', "punch"),
        ('name = "c2"\nkernels = ["k61"]\n[ranges]\npages = [900, 100]\n', "ranges.pages"),
        ('name = "c2"\nkernels = ["k61"]\npreset = "nope"\n', "unknown preset"),
        ('name = "c2"\nkernels = ["k99"]\n', "unknown kernel(s) k99; known: k61"),
    ],
)
def test_bad_specs_name_the_field(farm_env: Path, text: str, message: str) -> None:
    result = farm("campaign", "create", str(write(farm_env, text)))
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output


def test_flags_build_a_spec_and_duplicates_are_refused(farm_env: Path) -> None:
    args = ["campaign", "create", "--name", "c3", "--kernel", "k61", "--trials", "7"]
    first = farm(*args, "--set", "punch=madvise", "--search", "thompson")
    assert first.exit_code == 0 and "7 trials" in first.output
    second = farm(*args)
    assert second.exit_code == 2 and "exists" in second.output


def test_triage_rerun_on_an_empty_database(farm_env: Path) -> None:
    result = farm("triage", "rerun")
    assert result.exit_code == 0 and "trials: 0 done" in result.output
