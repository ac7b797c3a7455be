"""The trial message: one model on both sides, kernels named by name and sha256, never a path.

A worker resolves the kernel a message names in its own cache and refuses, as an
infrastructure error, what it does not have or what has another sha256. A hostile
message (a host path, a name that climbs out of the cache) is refused before the
worker touches a file, so nothing lands in /var/lib/zapfarm/images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from farm.artifacts.kernels import write_manifest
from farm.params import (
    KNOBS,
    MAX_PAGES,
    MAX_TOKEN_CHARS,
    MOVERS,
    PLACEMENTS,
    PUNCH_METHODS,
    SCENARIOS,
    VCPU_PINS,
    SeedToken,
    TokenError,
)
from farm.protocol import MessageError, TrialMessage, trial_message, validate_message
from workers.synthetic import synthetic_result
from workers.trial import execute
from workers.vm import SHARED_IMAGES, GuestError

TOKEN = "zf2-8188e2f542964e0c~pages=512"


@dataclass
class RecordingPool:
    """Stands where the guest pool stands; records what the worker would boot, boots nothing."""

    acquired: list[tuple[str, Path]] = field(default_factory=list)

    def acquire(self, kernel_name: str, kernel: Path) -> tuple[Any, bool]:
        self.acquired.append((kernel_name, kernel))
        raise GuestError("not booting in a unit test")


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, str]:
    """A worker's cache with one kernel, ``k1``; returns the cache and its sha256."""
    folder = tmp_path / "kernels" / "k1"
    folder.mkdir(parents=True)
    image = folder / "bzImage"
    image.write_bytes(b"not really a kernel, but it has a sha256")
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    write_manifest(folder, {"name": "k1", "path": str(image), "sha256": sha, "release": "1"})
    return tmp_path, sha


def message(**kernel: Any) -> dict[str, Any]:
    return {"trial_id": "c-000001", "token": TOKEN, "kernel": kernel, "deadline_s": 60}


def images() -> list[str]:
    return sorted(p.name for p in SHARED_IMAGES.iterdir()) if SHARED_IMAGES.is_dir() else []


@pytest.mark.parametrize(
    ("kernel", "complaint"),
    [
        ({"name": "k1", "sha256": None, "path": "/etc/shadow"}, "kernel.path: Extra inputs"),
        ({"name": "/etc/shadow", "sha256": "0" * 64}, "kernel.name: String should match"),
        ({"name": "../../../etc/shadow", "sha256": "0" * 64}, "kernel.name: String should match"),
        ({"name": "k1", "sha256": "/etc/shadow"}, "kernel.sha256: String should match"),
        ({"path": "/etc/shadow"}, "kernel.name: Field required"),
    ],
)
def test_a_hostile_message_is_refused_and_nothing_is_copied(
    cache: tuple[Path, str], kernel: dict[str, Any], complaint: str
) -> None:
    before = images()
    pool = RecordingPool()
    result = execute(pool, message(**kernel), "w", cache_dir=cache[0])  # type: ignore[arg-type]
    assert result.outcome == "infra-error"
    assert result.error is not None and result.error.startswith("refused: malformed trial message")
    assert complaint in result.error
    assert pool.acquired == []  # no file was looked at, let alone copied
    assert images() == before


def test_a_kernel_the_worker_lacks_is_refused_naming_the_fix(cache: tuple[Path, str]) -> None:
    pool = RecordingPool()
    result = execute(pool, message(name="k2", sha256="a" * 64), "w", cache_dir=cache[0])  # type: ignore[arg-type]
    assert result.outcome == "infra-error" and pool.acquired == []
    assert "this worker has no kernel 'k2'" in (result.error or "")
    assert "farm kernels fetch" in (result.error or "")


def test_a_kernel_with_another_sha256_is_refused(cache: tuple[Path, str]) -> None:
    pool = RecordingPool()
    result = execute(pool, message(name="k1", sha256="b" * 64), "w", cache_dir=cache[0])  # type: ignore[arg-type]
    assert result.outcome == "infra-error" and pool.acquired == []
    assert f"has sha256 {cache[1][:16]}..., the trial names {'b' * 16}..." in (result.error or "")


def test_a_kernel_without_a_known_sha256_is_refused(cache: tuple[Path, str]) -> None:
    result = execute(RecordingPool(), message(name="k1", sha256=None), "w", cache_dir=cache[0])  # type: ignore[arg-type]
    assert result.outcome == "infra-error"
    assert "without a sha256" in (result.error or "")


def test_a_manifest_path_outside_the_kernel_folder_is_not_followed(
    cache: tuple[Path, str],
) -> None:
    folder = cache[0] / "kernels" / "k1"
    write_manifest(folder, {"name": "k1", "path": "/etc/hostname", "sha256": cache[1]})
    pool = RecordingPool()
    result = execute(pool, message(name="k1", sha256=cache[1]), "w", cache_dir=cache[0])  # type: ignore[arg-type]
    assert pool.acquired == [] and "has no kernel 'k1'" in (result.error or "")


def test_the_worker_boots_its_own_copy_of_the_named_kernel(cache: tuple[Path, str]) -> None:
    pool = RecordingPool()
    result = execute(pool, message(name="k1", sha256=cache[1]), "w", cache_dir=cache[0])  # type: ignore[arg-type]
    assert pool.acquired == [("k1", cache[0] / "kernels" / "k1" / "bzImage")]
    assert (result.outcome, result.error) == ("infra-error", "not booting in a unit test")


def test_the_scheduler_builds_what_the_worker_accepts() -> None:
    sent = trial_message("c-000001", TOKEN, "k1", "c" * 64, 120.0)
    assert validate_message(sent) == TrialMessage.model_validate(sent)
    assert sent == {
        "trial_id": "c-000001",
        "token": TOKEN,
        "kernel": {"name": "k1", "sha256": "c" * 64},
        "deadline_s": 120.0,
    }
    with pytest.raises(MessageError, match="deadline_s"):
        trial_message("c-000001", TOKEN, "k1", "c" * 64, 0.5)
    with pytest.raises(MessageError, match="trial_id"):
        trial_message("has space", TOKEN, "k1", "c" * 64, 60)


def test_a_kernel_folder_copied_from_another_host_resolves_here(cache: tuple[Path, str]) -> None:
    folder = cache[0] / "kernels" / "k1"
    write_manifest(folder, {"path": "/srv/other/kernels/k1/bzImage", "sha256": cache[1]})
    pool = RecordingPool()
    execute(pool, message(name="k1", sha256=cache[1]), "w", cache_dir=cache[0])  # type: ignore[arg-type]
    assert pool.acquired == [("k1", folder / "bzImage")]


def test_every_valid_token_fits_a_message_and_longer_ones_are_refused() -> None:
    """The longest v3 token (every knob at its longest value) and the seed-2022 one go out."""
    longest = {
        "pages": MAX_PAGES,
        "evict_delay_min_us": 1_000_000,
        "evict_delay_max_us": 1_000_000,
        "kick_delay_us": 1_000_000,
        "batch": MAX_PAGES,
        "src_node": 63,
        "dst_node": 63,
        "rounds": 64,
        "punch": max(PUNCH_METHODS, key=len),
        "evictors": 16,
        "placement": max(PLACEMENTS, key=len),
        "rng_seed": 0xFFFFFFFF,
        "cpu_quota_pct": 100,
        "vcpu_pin": max(VCPU_PINS, key=len),
        "pressure_mb": 512,
        "scenario": max(SCENARIOS, key=len),
        "mover": max(MOVERS, key=len),
    }
    assert set(longest) == set(KNOBS)
    base = SeedToken.parse("zf3-00000000000000a1")
    for token in (base.with_preset("seed-2022"), base.with_overrides(longest)):
        text = str(token)
        assert len(text) > 256
        assert validate_message(trial_message("c-000001", text, "k1", "c" * 64, 60))
    too_long = "zf3-00000000000000a1~" + ",".join(["rounds=1"] * 60)
    assert len(too_long) > MAX_TOKEN_CHARS
    with pytest.raises(TokenError, match="characters"):
        SeedToken.parse(too_long)
    with pytest.raises(MessageError, match="token"):
        trial_message("c-000001", too_long, "k1", "c" * 64, 60)


def test_a_long_token_comes_back_whole_in_the_result(cache: tuple[Path, str]) -> None:
    """The recorder matches a result to its trial by token: a cut one reads as a mix-up."""
    token = str(SeedToken.parse("zf3-00000000000000a1").with_preset("seed-2022"))
    sent = {**message(name="k2", sha256="a" * 64), "token": token}
    result = execute(RecordingPool(), sent, "w", cache_dir=cache[0])  # type: ignore[arg-type]
    assert result.outcome == "infra-error"
    assert result.token == token
    assert synthetic_result(sent, "w").token == token
