"""Farm settings: farm.toml overridden by FARM_* environment variables.

Where the file comes from: the ``config`` argument, else ``$FARM_CONFIG``, else
``./farm.toml`` if it exists; without any file the defaults apply. Every key
can be overridden by ``FARM_<KEY>`` (``FARM_DATABASE_URL``, ``FARM_BROKER_URL``,
...). farm.toml takes flat keys, exactly the field names of ``Settings``::

    database_url = "postgresql+psycopg://farm@db.example/zapfarm"
    broker_url = "redis://broker.example:6379/0"
    guest_memory_mb = 2048

Workers never talk to the database (README, "How it is built"): a worker reads only
``WORKER_KEYS`` (broker, result backend, cache, libvirt, guest sizes and
deadlines, its name). Loading settings never connects anywhere, so a worker
host needs no database credential: leave ``database_url`` unset there and the
harmless SQLite default is never opened.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "FARM_"
CONFIG_ENV = "FARM_CONFIG"
CONFIG_NAME = "farm.toml"
INSTALLED_CACHE_DIR = Path("/var/lib/zapfarm")

# What a worker host reads; everything else belongs to the control plane.
WORKER_KEYS = frozenset(
    {
        "broker_url",
        "result_backend",
        "cache_dir",
        "libvirt_uri",
        "guest_memory_mb",
        "guest_cpus",
        "trial_deadline_s",
        "boot_deadline_s",
        "guest_idle_s",
        "virt_type",
        "executor",
        "worker_name",
        "visibility_timeout_s",
    }
)
_SECRET_KEYS = frozenset({"web_token"})


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the file or variable, key and fix."""


def source_checkout() -> Path | None:
    """The checkout this package runs from, if it runs from one (editable install)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def default_cache_dir() -> Path:
    """The checkout's .cache in development, /var/lib/zapfarm when installed.

    Guest images live here, and QEMU runs as libvirt-qemu: keep this under
    world-traversable folders (not /root, which is mode 700).
    """
    root = source_checkout()
    return root / ".cache" if root else INSTALLED_CACHE_DIR


@dataclass(frozen=True)
class Settings:
    """Everything the farm is configured by; build it with load_settings()."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    database_url: str = ""  # "" means SQLite at cache_dir / "farm.sqlite"
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    libvirt_uri: str = "qemu:///system"
    guest_memory_mb: int = 1024
    guest_cpus: int = 2
    trial_deadline_s: int = 120  # the floor of each trial's cost-scaled deadline (docs/timing.md)
    boot_deadline_s: int = 90
    guest_idle_s: int = 300  # a worker shuts down a guest unused this long (0: never)
    virt_type: str | None = None  # "kvm" or "qemu" (TCG); unset: probe once per host
    executor: str = "libvirt"  # "synthetic": no guests, instant clean results (benchmarks)
    worker_name: str = field(default_factory=socket.gethostname)
    # Redis redelivers a message nobody acknowledged after this long: keep it above the
    # longest batch (its hard time limit), or a slow batch runs twice. 2 x the trial hard
    # limit of farm/celeryconfig.py; tests lower it to see redelivery within seconds.
    visibility_timeout_s: int = 960
    web_token: str | None = None
    config_file: Path | None = None  # where the values came from; not a key

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.cache_dir / 'farm.sqlite'}")

    def redacted(self) -> dict[str, str]:
        """The settings as text, with passwords and tokens masked (safe to log or show)."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_KEYS and value is not None:
                out[f.name] = "***"
            elif isinstance(value, str) and "://" in value:
                out[f.name] = redact_url(value)
            else:
                out[f.name] = "" if value is None else str(value)
        return out

    def __repr__(self) -> str:
        shown = self.redacted()
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            parts.append(f"{f.name}={shown[f.name] if isinstance(value, str) else value!r}")
        return "Settings(" + ", ".join(parts) + ")"


def redact_url(url: str) -> str:
    """Mask the password in a URL such as postgresql://user:secret@host/db."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


# key -> type, derived from the dataclass so a new field is a new key everywhere
_TYPES: dict[str, type] = {"Path": Path, "str": str, "int": int, "str | None": str}
_KEYS: dict[str, type] = {
    f.name: _TYPES[str(f.type)] for f in dataclasses.fields(Settings) if f.name != "config_file"
}
_MINIMUM = {
    "guest_memory_mb": 128,
    "guest_cpus": 1,
    "trial_deadline_s": 1,
    "boot_deadline_s": 1,
    "guest_idle_s": 0,
    "visibility_timeout_s": 10,
}


def load_settings(config: Path | None = None, env: Mapping[str, str] = os.environ) -> Settings:
    """Read farm.toml (if any) and apply FARM_* overrides; never connects anywhere."""
    path = _config_path(config, env)
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_toml(path))
    for key, typ in _KEYS.items():
        raw = env.get(ENV_PREFIX + key.upper())
        if raw is None or raw == "":  # an empty variable counts as unset
            continue
        values[key] = _from_env(ENV_PREFIX + key.upper(), key, typ, raw)
    return Settings(**values, config_file=path)


def _config_path(config: Path | None, env: Mapping[str, str]) -> Path | None:
    if config is not None:
        where = "the config argument"
        path = Path(config)
    elif env.get(CONFIG_ENV):
        where = f"${CONFIG_ENV}"
        path = Path(env[CONFIG_ENV])
    else:
        default = Path.cwd() / CONFIG_NAME
        return default if default.is_file() else None
    path = path.expanduser()
    if not path.is_file():
        raise SettingsError(
            f"config file {path} (from {where}) does not exist: create it, or point "
            f"{where} at an existing farm.toml"
        )
    return path.resolve()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"{path}: cannot read it ({exc}); fix its permissions or encoding"
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = ""
        lineno = getattr(exc, "lineno", None)
        if lineno is None:  # tomllib before 3.14 only puts the position in the message
            m = re.search(r"line (\d+)", str(exc))
            lineno = int(m.group(1)) if m else None
        lines = text.splitlines()
        if lineno is not None and 1 <= lineno <= len(lines):
            where = f" in line {lineno}: {lines[lineno - 1].strip()[:120]!r}"
        raise SettingsError(
            f"{path}: not valid TOML{where} ({exc}); write flat `key = value` lines, "
            'strings in double quotes, e.g. broker_url = "redis://127.0.0.1:6379/0"'
        ) from exc
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SettingsError(
                f"{path}: unknown key {key!r}; {hint}known keys: {', '.join(sorted(_KEYS))} "
                "(farm.toml takes flat keys, no [sections])"
            )
        values[key] = _from_toml(path, key, _KEYS[key], value)
    return values


def _from_toml(path: Path, key: str, typ: type, value: Any) -> Any:
    ok = (
        isinstance(value, int) and not isinstance(value, bool)
        if typ is int
        else isinstance(value, str)
    )
    if not ok:
        example = "2" if typ is int else '"..."'
        raise SettingsError(
            f"{path}: key {key!r} must be {_type_name(typ)}, got {type(value).__name__} "
            f"{value!r}; write it as {key} = {example}"
        )
    converted = _convert(f"{path}: key {key!r}", key, typ, value)
    if typ is Path and not converted.is_absolute():  # relative to the file, not the cwd
        converted = (path.parent / converted).resolve()
    return converted


def _from_env(var: str, key: str, typ: type, raw: str) -> Any:
    if typ is int:
        try:
            value: Any = int(raw.strip())
        except ValueError:
            raise SettingsError(
                f"environment variable {var}={raw[:40]!r} must be an integer; "
                f"set it like {var}=2 or unset it"
            ) from None
        return _convert(f"environment variable {var}", key, typ, value)
    return _convert(f"environment variable {var}", key, typ, raw)


def _convert(where: str, key: str, typ: type, value: Any) -> Any:
    if typ is int:
        low = _MINIMUM.get(key)
        if low is not None and value < low:
            raise SettingsError(f"{where} is {value}, below the minimum {low}; raise it")
        return value
    if typ is Path:
        return Path(value).expanduser().absolute()
    if key == "executor" and value not in ("libvirt", "synthetic"):
        raise SettingsError(f'{where} is {value!r}: use "libvirt" or "synthetic"')
    if key == "virt_type" and value not in ("kvm", "qemu"):
        raise SettingsError(f'{where} is {value!r}: use "kvm", "qemu" (TCG) or leave it unset')
    if (key.endswith("_url") or key == "result_backend") and "://" not in value:
        example = (
            "postgresql+psycopg://user@host/db" if key == "database_url" else "redis://host:6379/0"
        )
        raise SettingsError(f"{where} is {value!r}, not a URL; write it like {example}")
    return value


def _type_name(typ: type) -> str:
    return {int: "an integer", str: "a string", Path: "a path string"}[typ]
