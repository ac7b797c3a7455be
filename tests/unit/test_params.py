"""Seed tokens and trial parameters: deterministic, bounded, pasteable."""

from __future__ import annotations

import dataclasses

import pytest

from farm.params import (
    KNOBS,
    MAX_PAGES,
    MOVERS,
    PRESETS,
    SCENARIOS,
    SeedToken,
    TokenError,
    TrialParams,
    params_for,
)


def test_same_token_same_params() -> None:
    token = "zf1-8188e2f542964e0c"
    assert params_for(token) == params_for(token)
    assert SeedToken.parse(token).params().to_dict() == params_for(token).to_dict()


def test_derivation_is_pinned() -> None:
    """A token from an old bug report must keep meaning the same trial forever."""
    assert params_for("zf1-8188e2f542964e0c").to_dict() == {
        "pages": 375,
        "evict_delay_min_us": 6,
        "evict_delay_max_us": 48,
        "kick_delay_us": 4,
        "batch": 2,
        "src_node": 0,
        "dst_node": 1,
        "rounds": 1,
        "punch": "fallocate",
        "evictors": 1,
        "placement": "any",
        "rng_seed": 1822678167,
        # knobs that came with v2 take their v1 meaning
        "cpu_quota_pct": 100,
        "vcpu_pin": "none",
        "pressure_mb": 0,
        "scenario": "shared-punch",
        "mover": "move_pages",
    }


def test_different_seeds_spread_over_every_knob() -> None:
    seen: dict[str, set[object]] = {name: set() for name in KNOBS}
    for seed in range(400):
        for name, value in SeedToken(seed=seed).params().to_dict().items():
            seen[name].add(value)
    for name in ("pages", "evict_delay_max_us", "kick_delay_us", "batch", "rounds", "rng_seed"):
        assert len(seen[name]) > 2, name
    assert seen["punch"] == {"fallocate", "madvise"}
    assert seen["placement"] == {"any", "same", "split"}


def test_draws_stay_in_bounds() -> None:
    for seed in range(2000):
        p = SeedToken(seed=seed * 0x9E3779B97F4A7C15 % (1 << 64)).params()
        assert 64 <= p.pages <= 8192
        assert 1 <= p.batch <= 64
        assert p.evict_delay_min_us <= p.evict_delay_max_us
        assert p.src_node != p.dst_node


def test_token_round_trip_with_overrides() -> None:
    token = SeedToken.parse("zf1-00000000000000ff").with_overrides(
        {"pages": 512, "punch": "madvise"}
    )
    text = str(token)
    assert text == "zf1-00000000000000ff~pages=512,punch=madvise"
    again = SeedToken.parse(text)
    assert again == token
    assert again.params().pages == 512 and again.params().punch == "madvise"


def test_seed_2022_preset_is_the_seed_program() -> None:
    p = SeedToken(seed=1).with_preset("seed-2022").params()
    assert p.pages * 4096 == 1 << 28  # 256 MiB, not the 64 MB its comment claims
    assert (p.evict_delay_min_us, p.evict_delay_max_us, p.kick_delay_us) == (0, 29, 10)
    assert (p.src_node, p.dst_node, p.batch, p.rounds) == (0, 1, 1, 1)
    assert set(PRESETS["seed-2022"]) <= set(KNOBS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "malformed seed token"),
        ("zf1-xyz", "malformed seed token"),
        ("zf1-8188e2f542964e0", "malformed seed token"),
        ("ZF1-8188E2F542964E0C", "malformed seed token"),
        ("zf9-8188e2f542964e0c", "parameter space v9"),
        ("zf1-8188e2f542964e0c~pages", "malformed override"),
        ("zf1-8188e2f542964e0c~colour=red", "unknown parameter 'colour'"),
        ("zf1-8188e2f542964e0c~pages=0", "pages=0"),
        ("zf1-8188e2f542964e0c~pages=99999999", "pages=99999999"),
        ("zf1-8188e2f542964e0c~punch=ftruncate", "punch='ftruncate'"),
        ("zf1-8188e2f542964e0c~src_node=1,dst_node=1", "must differ"),
        ("zf1-8188e2f542964e0c~pages=<script>", "malformed override"),
        ("zf1-8188e2f542964e0c~pages=--5", "pages='--5'"),  # was a bare ValueError
    ],
)
def test_bad_tokens_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(TokenError, match=message.replace("(", r"\(").replace("[", r"\[")):
        SeedToken.parse(text)


def test_pasted_token_tolerates_surrounding_whitespace() -> None:
    assert SeedToken.parse("  zf1-8188e2f542964e0c\n").seed == 0x8188E2F542964E0C


def test_argv_names_every_program_parameter_once() -> None:
    p = params_for("zf3-8188e2f542964e0c~mover=mbind,scenario=private-punch")
    argv = p.argv()
    flags = argv[0::2]
    program = [f.name for f in dataclasses.fields(TrialParams) if KNOBS[f.name].level == "program"]
    assert flags == ["--" + name.replace("_", "-") for name in program]
    assert argv[1::2] == [str(getattr(p, name)) for name in program]
    assert set(p.vm_knobs()) == {"cpu_quota_pct", "vcpu_pin"}


def test_v2_draws_vm_knobs_and_v1_tokens_cannot_name_them() -> None:
    quotas = {SeedToken(seed=s, version=2).params().cpu_quota_pct for s in range(300)}
    pins = {SeedToken(seed=s, version=2).params().vcpu_pin for s in range(300)}
    pressures = {SeedToken(seed=s, version=2).params().pressure_mb for s in range(300)}
    assert 100 in quotas and min(quotas) < 100
    assert pins == {"none", "same", "split"}
    assert 0 in pressures and max(pressures) > 0
    assert {SeedToken(seed=s, version=1).params().cpu_quota_pct for s in range(300)} == {100}
    with pytest.raises(TokenError, match="came with v2"):
        SeedToken.parse("zf1-8188e2f542964e0c~cpu_quota_pct=30")
    assert SeedToken.parse("zf2-8188e2f542964e0c~cpu_quota_pct=30").params().cpu_quota_pct == 30


def test_from_dict_rejects_unknown_and_missing() -> None:
    good = params_for("zf1-8188e2f542964e0c").to_dict()
    assert TrialParams.from_dict(good).to_dict() == good
    with pytest.raises(ValueError, match="unknown trial parameters: colour"):
        TrialParams.from_dict({**good, "colour": 1})
    del good["pages"]
    with pytest.raises(ValueError, match="missing trial parameters: pages"):
        TrialParams.from_dict(good)


def test_hard_limit_admits_the_seed_buffer_only() -> None:
    assert KNOBS["pages"].valid(MAX_PAGES) and not KNOBS["pages"].valid(MAX_PAGES + 1)


# Command lines of v1 and v2 tokens as they were before parameter space v3 existed: the
# trial program must receive exactly these, flag for flag.
OLD_ARGV = {
    "zf1-8188e2f542964e0c": [
        "--pages", "375", "--evict-delay-min-us", "6", "--evict-delay-max-us", "48",
        "--kick-delay-us", "4", "--batch", "2", "--src-node", "0", "--dst-node", "1",
        "--rounds", "1", "--punch", "fallocate", "--evictors", "1", "--placement", "any",
        "--rng-seed", "1822678167", "--pressure-mb", "0",
    ],
}  # fmt: skip


def test_old_tokens_keep_their_argv() -> None:
    for token, argv in OLD_ARGV.items():
        assert params_for(token).argv() == argv
    v2 = params_for("zf2-8188e2f542964e0c")
    assert (v2.scenario, v2.mover) == ("shared-punch", "move_pages")
    assert "--scenario" not in v2.argv() and "--mover" not in v2.argv()
    with pytest.raises(TokenError, match="came with v3"):
        SeedToken.parse("zf2-8188e2f542964e0c~scenario=private-truncate")


def test_v3_draws_every_scenario_and_mover_and_passes_them_on() -> None:
    drawn = [SeedToken(seed=s, version=3).params() for s in range(300)]
    assert {p.scenario for p in drawn} == set(SCENARIOS)
    assert {p.mover for p in drawn} == set(MOVERS)
    p = SeedToken.parse("zf3-8188e2f542964e0c~mover=mbind,scenario=private-truncate").params()
    argv = p.argv()
    assert argv[argv.index("--scenario") + 1] == "private-truncate"
    assert argv[argv.index("--mover") + 1] == "mbind"
    # at their defaults the v3 flags are left out: the program defaults to the seed's
    seed_like = SeedToken.parse("zf3-8188e2f542964e0c~mover=move_pages,scenario=shared-punch")
    assert "--scenario" not in seed_like.params().argv()
    with pytest.raises(TokenError, match="scenario='punch'"):
        SeedToken.parse("zf3-8188e2f542964e0c~scenario=punch")


def test_seed_preset_applies_to_older_tokens_and_pins_the_seed_scenario() -> None:
    assert SeedToken.parse("zf2-8188e2f542964e0c").with_preset("seed-2022").params().pages == (
        MAX_PAGES
    )
    v3 = SeedToken.parse("zf3-8188e2f542964e0c~scenario=private-punch").with_preset("seed-2022")
    assert (v3.params().scenario, v3.params().mover) == ("shared-punch", "move_pages")
