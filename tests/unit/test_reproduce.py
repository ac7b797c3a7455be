"""Reproduction statistics and minimisation logic, with known answers."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from farm.cli.main import main
from farm.control.minimize import candidates, minimize
from farm.control.reproduce import Reproduction, wilson
from farm.params import SeedToken


@pytest.mark.parametrize(
    ("hits", "runs", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),  # all misses: the interval still admits a 28% rate
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (1, 10, 0.0179, 0.4042),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval_known_values(hits: int, runs: int, low: float, high: float) -> None:
    lo, hi = wilson(hits, runs)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.10"):
        wilson(11, 10)
    assert wilson(0, 0) == (0.0, 1.0)


def test_tally_counts_findings_not_infra_errors_nor_invalid_trials() -> None:
    r = Reproduction("zf2-0000000000000001")
    for verdict in ["kernel-report"] * 6 + ["clean"] * 4:
        r.add("k1", verdict, "WARNING in zap_pte_range")
    r.add("k1", "infra-error")
    r.add("k1", "invalid")  # tested nothing (e.g. one NUMA node): not a run
    r.add("k2", "clean")
    out = r.to_json()
    assert (out["runs"], out["hits"], out["infra_errors"], out["invalid"]) == (11, 6, 1, 1)
    assert out["kernels"]["k1"]["reliable"] is True  # 6/10 >= 50%
    assert out["kernels"]["k1"]["titles"] == {"WARNING in zap_pte_range": 6}
    assert out["kernels"]["k2"] == {
        "runs": 1,
        "hits": 0,
        "rate": 0.0,
        "ci95": [0.0, 0.7935],
        "reliable": False,
        "verdicts": {"clean": 1},
        "titles": {},
    }


def test_minimize_shrinks_while_the_rate_holds() -> None:
    """A planted rule: it reproduces only with >= 512 pages and 2 evictors."""
    start = SeedToken.parse("zf2-0000000000000042").with_overrides(
        {"pages": 8192, "evictors": 2, "rounds": 3, "pressure_mb": 128}
    )

    def rate_of(token: SeedToken) -> float:
        p = token.params()
        return 0.8 if p.pages >= 512 and p.evictors == 2 else 0.1

    result = minimize(start, rate_of, threshold=0.5)
    p = result.token.params()
    assert p.pages == 512 and p.evictors == 2 and p.rounds == 1 and p.pressure_mb == 0
    assert result.rate == 0.8
    assert SeedToken.parse(str(result.token)) == result.token  # pasteable


def test_minimize_returns_the_start_when_it_does_not_reproduce() -> None:
    start = SeedToken.parse("zf2-0000000000000042")
    result = minimize(start, lambda t: 0.0)
    assert result.token == start and result.tried == 1


def test_candidates_shrink_one_knob_each() -> None:
    start = SeedToken.parse("zf2-0000000000000042~pages=1024,rounds=2")
    for name, candidate in candidates(start):
        before, after = start.params().to_dict(), candidate.params().to_dict()
        assert [k for k in before if before[k] != after[k]] == [name]


@pytest.mark.parametrize(
    ("token", "message"),
    [("zf1-nothex", "malformed seed token"), ("zf7-8188e2f542964e0c", "parameter space v7")],
)
def test_reproduce_rejects_bad_tokens_clearly(token: str, message: str) -> None:
    result = CliRunner().invoke(main, ["reproduce", token, "--json"])
    assert result.exit_code == 2
    assert message in result.output
