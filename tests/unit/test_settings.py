"""farm.settings: defaults, farm.toml, FARM_* overrides and the errors people will see."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from farm.settings import WORKER_KEYS, Settings, SettingsError, load_settings, source_checkout


@pytest.fixture(autouse=True)
def _no_farm_toml_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a stray ./farm.toml must not leak into these tests


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load_settings(env={})
    checkout = source_checkout()
    assert checkout is not None  # the tests run from a source checkout
    assert s.cache_dir == checkout / ".cache"
    assert s.database_url == f"sqlite:///{checkout / '.cache' / 'farm.sqlite'}"
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.result_backend == "redis://127.0.0.1:6379/1"
    assert (s.guest_memory_mb, s.guest_cpus) == (1024, 2)
    assert (s.trial_deadline_s, s.boot_deadline_s) == (120, 90)
    assert s.libvirt_uri == "qemu:///system"
    assert s.worker_name == socket.gethostname()
    assert s.web_token is None
    assert s.config_file is None


def test_toml_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "farm.toml",
        'database_url = "postgresql+psycopg://farm@db/zapfarm"\n'
        'cache_dir = "cache"\n'
        "guest_memory_mb = 2048\n"
        'web_token = "s3cret"\n',
    )
    s = load_settings(cfg, env={})
    assert s.database_url == "postgresql+psycopg://farm@db/zapfarm"
    assert s.cache_dir == tmp_path / "cache"  # relative to the file
    assert s.guest_memory_mb == 2048
    assert s.web_token == "s3cret"
    assert s.config_file == cfg.resolve()
    assert "s3cret" not in repr(s)


def test_sqlite_default_follows_cache_dir(tmp_path: Path) -> None:
    s = load_settings(env={"FARM_CACHE_DIR": str(tmp_path / "c")})
    assert s.database_url == f"sqlite:///{tmp_path / 'c' / 'farm.sqlite'}"


def test_config_found_via_env_then_cwd(tmp_path: Path) -> None:
    write(tmp_path / "farm.toml", "guest_cpus = 3\n")
    assert load_settings(env={}).guest_cpus == 3  # ./farm.toml
    other = write(tmp_path / "other.toml", "guest_cpus = 4\n")
    assert load_settings(env={"FARM_CONFIG": str(other)}).guest_cpus == 4


def test_env_overrides_toml(tmp_path: Path) -> None:
    cfg = write(tmp_path / "farm.toml", 'broker_url = "redis://a:6379/0"\nguest_cpus = 3\n')
    env = {
        "FARM_BROKER_URL": "redis://b:6379/0",
        "FARM_RESULT_BACKEND": "redis://b:6379/1",
        "FARM_DATABASE_URL": "postgresql+psycopg://u:pw@db/zapfarm",
        "FARM_CACHE_DIR": str(tmp_path / "cache"),
        "FARM_WEB_TOKEN": "tok",
        "FARM_GUEST_CPUS": "4",
        "FARM_WORKER_NAME": "",  # empty counts as unset
    }
    s = load_settings(cfg, env=env)
    assert s.broker_url == "redis://b:6379/0"
    assert s.result_backend == "redis://b:6379/1"
    assert s.database_url == "postgresql+psycopg://u:pw@db/zapfarm"
    assert s.cache_dir == tmp_path / "cache"
    assert s.web_token == "tok"
    assert s.guest_cpus == 4
    assert s.worker_name == socket.gethostname()
    assert s.redacted()["database_url"] == "postgresql+psycopg://u:***@db/zapfarm"


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "farm.toml", 'broker_url = "redis://x:6379/0"\nguest_cpus = two\n')
    with pytest.raises(SettingsError) as err:
        load_settings(cfg, env={})
    msg = str(err.value)
    assert str(cfg) in msg
    assert "line 2" in msg and "guest_cpus" in msg
    assert "key = value" in msg  # the fix


def test_wrong_type_names_key_and_fix(tmp_path: Path) -> None:
    cfg = write(tmp_path / "farm.toml", 'guest_memory_mb = "2048"\n')
    with pytest.raises(
        SettingsError, match=r"farm\.toml: key 'guest_memory_mb' must be an integer"
    ):
        load_settings(cfg, env={})
    with pytest.raises(SettingsError, match="guest_memory_mb = 2"):
        load_settings(cfg, env={})


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    cfg = write(tmp_path / "farm.toml", 'databse_url = "sqlite:///x"\n')
    with pytest.raises(
        SettingsError, match=r"unknown key 'databse_url'; did you mean 'database_url'"
    ):
        load_settings(cfg, env={})
    sections = write(tmp_path / "s.toml", '[database]\nurl = "sqlite:///x"\n')
    with pytest.raises(SettingsError, match="no \\[sections\\]"):
        load_settings(sections, env={})


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="FARM_GUEST_CPUS='many' must be an integer"):
        load_settings(env={"FARM_GUEST_CPUS": "many"})
    with pytest.raises(SettingsError, match="FARM_GUEST_CPUS is 0, below the minimum 1"):
        load_settings(env={"FARM_GUEST_CPUS": "0"})
    with pytest.raises(SettingsError, match="FARM_BROKER_URL is 'localhost', not a URL"):
        load_settings(env={"FARM_BROKER_URL": "localhost"})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"FARM_CONFIG.*does not exist"):
        load_settings(env={"FARM_CONFIG": str(tmp_path / "nope.toml")})


def test_worker_needs_no_database_setting(tmp_path: Path) -> None:
    """A worker host's farm.toml has no database_url, and loading never connects."""
    cfg = write(tmp_path / "farm.toml", 'broker_url = "redis://broker:6379/0"\n')
    s = load_settings(cfg, env={})
    assert "database_url" not in WORKER_KEYS
    assert {f for f in Settings.__dataclass_fields__} >= WORKER_KEYS
    assert s.broker_url == "redis://broker:6379/0"
