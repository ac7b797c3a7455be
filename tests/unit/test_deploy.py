"""deploy/: the host set-up script, the example configs and the systemd units hold together."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from farm.settings import WORKER_KEYS, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def role_env(role: str) -> dict[str, str]:
    """What setup-host.sh writes to /etc/zapfarm/farm.env for ``role`` (same awk filter)."""
    script = (DEPLOY / "setup-host.sh").read_text()
    program = script.split('awk -v role="$role" \'', 1)[1].split("'", 1)[0]
    out = subprocess.run(
        ["awk", "-v", f"role={role}", program, str(DEPLOY / "farm.env.example")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_setup_script_parses_and_knows_every_role() -> None:
    subprocess.run(["bash", "-n", str(DEPLOY / "setup-host.sh")], check=True)
    usage = subprocess.run(
        ["bash", str(DEPLOY / "setup-host.sh"), "nonsense"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "demo|test|control|worker" in usage.stderr


def test_a_worker_host_gets_no_database_credentials() -> None:
    worker, control = role_env("worker"), role_env("control")
    assert "FARM_DATABASE_URL" not in worker and "FARM_WEB_TOKEN" not in worker
    assert "FARM_DATABASE_URL" in control and "FARM_GUEST_MEMORY_MB" not in control
    assert worker["FARM_CACHE_DIR"] == control["FARM_CACHE_DIR"]  # kernels at the same paths
    for env in (worker, control):
        assert env["FARM_BROKER_URL"].startswith("redis://")
        load_settings(env=env)  # every value is a valid setting
    farm_keys = {k.removeprefix("FARM_").lower() for k in worker if k.startswith("FARM_")}
    assert farm_keys <= WORKER_KEYS


def test_the_example_farm_toml_loads() -> None:
    settings = load_settings(DEPLOY / "farm.toml.example", env={})
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.visibility_timeout_s == 960


def test_units_read_farm_env_and_verify(tmp_path: Path) -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {u.name for u in units} == {
        "zapfarm-scheduler.service",
        "zapfarm-web.service",
        "zapfarm-worker@.service",
    }
    for unit in units:
        assert "EnvironmentFile=/etc/zapfarm/farm.env" in unit.read_text()
    worker = (DEPLOY / "systemd" / "zapfarm-worker@.service").read_text()
    assert "DATABASE" not in worker and "farm worker" in worker
    # not root: a system user in the group libvirt, one capability (reading virtlogd's logs)
    settings = dict(
        line.split("=", 1) for line in worker.splitlines() if "=" in line and line[0].isupper()
    )
    assert (settings["User"], settings["SupplementaryGroups"]) == ("zapfarm", "libvirt")
    assert settings["CapabilityBoundingSet"] == settings["AmbientCapabilities"]
    assert settings["AmbientCapabilities"] == "CAP_DAC_READ_SEARCH"
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    assert "useradd --system" in (DEPLOY / "setup-host.sh").read_text()
    assert "farm web" in (DEPLOY / "systemd" / "zapfarm-web.service").read_text()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    top = DEPLOY.parent
    for unit in units:  # as setup-host.sh installs them: /opt/zapfarm -> this checkout
        name = unit.name.replace("@.", "@all.")
        (tmp_path / name).write_text(unit.read_text().replace("/opt/zapfarm", str(top)))
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
            capture_output=True,
            text=True,
        )
        problems = [  # a checkout without .venv has no farm to point at: not the unit's fault
            line
            for line in verify.stderr.splitlines()
            if "zapfarm" in line and "is not executable" not in line
        ]
        assert not problems, problems


def test_libvirt_log_rule_is_installed_once(tmp_path: Path) -> None:
    """setup-host.sh installs the README's tmpfiles rule; running it again changes nothing."""
    script = DEPLOY / "libvirt-logs.sh"
    assert "deploy/libvirt-logs.sh" in (DEPLOY / "setup-host.sh").read_text()
    env = {**os.environ, "ZAPFARM_TMPFILES_D": str(tmp_path / "tmpfiles.d")}
    first = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    conf = tmp_path / "tmpfiles.d" / "zapfarm.conf"
    rules = [line for line in conf.read_text().splitlines() if not line.startswith("#")]
    assert rules == ["e /var/log/libvirt/qemu - - - 7d"]
    assert f"`{rules[0]}`" in (DEPLOY / "README.md").read_text()
    mtime = conf.stat().st_mtime_ns
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == "" and conf.stat().st_mtime_ns == mtime
