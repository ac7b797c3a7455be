"""Adaptive search: reproducible tokens, honoured constraints, resumable state, and it learns."""

from __future__ import annotations

import itertools
import json
import random
import statistics

import pytest

from farm.control.search import (
    DEFAULT_BINS,
    LOG_KNOBS,
    ChoiceDomain,
    IntDomain,
    Observation,
    Sampler,
    ThompsonSampler,
    UniformSampler,
    default_domain,
    make_sampler,
    sampler_from_state,
)
from farm.params import KNOBS, SeedToken, TrialParams


def test_default_domains_are_what_seeds_draw() -> None:
    assert default_domain("pages") == IntDomain(64, 8192, log=True)
    assert default_domain("kick_delay_us") == IntDomain(0, 30)
    assert default_domain("evict_delay_max_us") == IntDomain(10, 60)
    assert default_domain("punch") == ChoiceDomain(("fallocate", "madvise"))
    for seed in range(300):
        for name, value in SeedToken(seed=seed).params().to_dict().items():
            assert default_domain(name).contains(value), (name, value)


@pytest.mark.parametrize("name", sorted(LOG_KNOBS))
def test_log_knobs_really_draw_log_uniform(name: str) -> None:
    """Geometric bins are only right if params.py draws these knobs log-uniformly."""
    d = default_domain(name)
    assert isinstance(d, IntDomain)
    median = statistics.median(SeedToken(seed=s).params().to_dict()[name] for s in range(2000))
    geometric, arithmetic = (d.lo * d.hi) ** 0.5, (d.lo + d.hi) / 2
    assert abs(median - geometric) < abs(median - arithmetic) / 4


def test_bins_cover_each_domain_without_gaps() -> None:
    sampler = ThompsonSampler()
    assert set(sampler.bins) == set(DEFAULT_BINS)
    for name, cut in sampler.bins.items():
        domain = default_domain(name)
        if isinstance(domain, ChoiceDomain):
            assert [c.options[0] for c in cut if isinstance(c, ChoiceDomain)] == list(
                domain.options
            )
            continue
        ints = [c for c in cut if isinstance(c, IntDomain)]
        assert ints[0].lo == domain.lo and ints[-1].hi == domain.hi
        assert all(a.hi + 1 == b.lo for a, b in itertools.pairwise(ints))
        assert len(ints) == min(DEFAULT_BINS[name], domain.size)
    assert [c.label() for c in sampler.bins["pages"]] == [
        "64-214",
        "215-723",
        "724-2435",
        "2436-8192",
    ]


def _tokens(sampler: Sampler, seed: int, n: int) -> list[str]:
    rng, luck = random.Random(seed), random.Random(seed + 1)
    out = []
    for _ in range(n):
        token = sampler.propose(rng)
        sampler.observe(token, Observation(finding=luck.random() < 0.05))
        out.append(str(token))
    return out


def test_same_rng_seed_same_proposals() -> None:
    assert _tokens(ThompsonSampler(), 7, 300) == _tokens(ThompsonSampler(), 7, 300)
    assert _tokens(UniformSampler(), 7, 50) == _tokens(UniformSampler(), 7, 50)
    assert _tokens(ThompsonSampler(), 7, 50) != _tokens(ThompsonSampler(), 8, 50)


def test_tokens_round_trip_and_land_in_the_chosen_region() -> None:
    sampler = ThompsonSampler(epsilon=0.0)
    rng = random.Random(3)
    for _ in range(400):
        proposal = sampler.draw(rng)
        again = SeedToken.parse(str(proposal.token))
        assert again == proposal.token
        params = again.params()
        assert proposal.region is not None
        for name, index in proposal.region.items():
            value = getattr(params, name)
            assert sampler.bins[name][index].contains(value), (name, value, index)
            assert dict(again.overrides)[name] == value  # pinned in the token, not by luck
        assert sampler.region_of(params) == proposal.region


def test_uniform_without_constraints_is_a_bare_seed() -> None:
    token = UniformSampler().propose(random.Random(1))
    assert token.overrides == ()
    assert str(token) == str(SeedToken.parse(str(token)))


@pytest.mark.parametrize("kind", ["uniform", "thompson"])
def test_fixed_values_and_ranges_are_respected(kind: str) -> None:
    fixed = {"punch": "madvise", "evict_delay_min_us": 30}
    ranges = {"pages": [512, 4096], "placement": ["same", "split"], "rounds": [2, 3]}
    sampler = make_sampler(kind, fixed=fixed, ranges=ranges)
    if isinstance(sampler, ThompsonSampler):
        assert "punch" not in sampler.bins  # one value: nothing to learn
        assert sampler.bins["evict_delay_max_us"][0].lo == 30
        assert sampler.bins["pages"][0].lo == 512 and sampler.bins["pages"][-1].hi == 4096
    rng = random.Random(5)
    for _ in range(300):
        token = SeedToken.parse(str(sampler.propose(rng)))
        assert {"punch": "madvise", "evict_delay_min_us": 30}.items() <= dict(
            token.overrides
        ).items()
        p = token.params()
        assert p.punch == "madvise" and p.evict_delay_min_us == 30 <= p.evict_delay_max_us <= 60
        assert 512 <= p.pages <= 4096 and p.placement in ("same", "split") and p.rounds >= 2
        if isinstance(sampler, ThompsonSampler):
            assert sampler.region_of(p) is not None
        sampler.observe(token, Observation(finding=False))


def test_fixed_max_delay_is_never_raised_by_a_seed_min() -> None:
    """params() lifts max to min; a fixed max must pin min below it instead."""
    sampler = UniformSampler(fixed={"evict_delay_max_us": 3})
    rng = random.Random(2)
    mins = set()
    for _ in range(200):
        p = sampler.propose(rng).params()
        assert p.evict_delay_max_us == 3 and p.evict_delay_min_us <= 3
        mins.add(p.evict_delay_min_us)
    assert mins == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fixed": {"colour": 1}}, "unknown parameter 'colour'"),
        ({"fixed": {"pages": 0}}, "fixed pages=0"),
        ({"fixed": {"pages": 64}, "ranges": {"pages": [64, 128]}}, "both fixed and given a range"),
        ({"ranges": {"pages": [100, 50]}}, "100 is above 50"),
        ({"ranges": {"punch": ["ftruncate"]}}, "ranges.punch"),
        ({"ranges": {"evict_delay_min_us": [50, 60]}, "fixed": {"evict_delay_max_us": 20}}, "<="),
        ({"fixed": {"src_node": 1, "dst_node": 1}}, "must differ"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"prior": (0.0, 1.0)}, "prior"),
        ({"bins": {"evict_delay_min_us": 2, "evict_delay_max_us": 2}}, "bin at most one"),
        ({"bins": {"pages": 0}}, "positive number of bins"),
    ],
)
def test_bad_constraints_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThompsonSampler(**kwargs)


@pytest.mark.parametrize("epsilon", [0.0, 0.25, 1.0])
def test_exploration_floor_is_honoured(epsilon: float) -> None:
    sampler = ThompsonSampler(epsilon=epsilon)
    rng = random.Random(11)
    n = 2000
    explored = sum(sampler.draw(rng).region is None for _ in range(n))
    assert abs(explored / n - epsilon) < 0.04  # sd is 0.01 at 0.25


def _drive(sampler: ThompsonSampler | UniformSampler, rng: random.Random, n: int) -> list[str]:
    luck = random.Random(rng.random())
    out = []
    for _ in range(n):
        token = sampler.propose(rng)
        sampler.observe(token, Observation(finding=luck.random() < 0.02))
        out.append(str(token))
    return out


@pytest.mark.parametrize("kind", ["uniform", "thompson"])
def test_state_round_trip_continues_identically(kind: str) -> None:
    sampler = make_sampler(kind, fixed={"punch": "fallocate"}, ranges={"pages": [128, 2048]})
    rng = random.Random(4)
    _drive(sampler, rng, 300)
    stored = json.loads(json.dumps(sampler.state()))  # what a database column would hold
    resumed = sampler_from_state(stored)
    assert type(resumed) is type(sampler) and resumed.state() == sampler.state()
    rng_resumed = random.Random()
    rng_resumed.setstate(rng.getstate())
    assert _drive(resumed, rng_resumed, 200) == _drive(sampler, rng, 200)
    assert resumed.state() == sampler.state()


def test_state_from_another_binning_is_refused() -> None:
    state = ThompsonSampler().state()
    state["edges"]["pages"][0] = [64, 100]
    with pytest.raises(ValueError, match="binning"):
        ThompsonSampler.from_state(state)
    with pytest.raises(ValueError, match="not a uniform sampler state"):
        UniformSampler.from_state(ThompsonSampler().state())
    with pytest.raises(ValueError, match="unknown sampler state kind"):
        sampler_from_state({"kind": "annealing"})


def test_observe_credits_any_token_and_skips_other_campaigns() -> None:
    sampler = ThompsonSampler(fixed={"punch": "madvise"})
    token = SeedToken(seed=42).with_overrides({"punch": "madvise"})
    region = sampler.region_of(token.params())
    assert region is not None
    sampler.observe(token, Observation(finding=True, window=7, seconds=2.0))
    for name, index in region.items():
        assert sampler.trials[name][index] == 1 and sampler.hits[name][index] == 1
        assert sampler.window[name][index] == 7 and sampler.seconds[name][index] == 2.0
    other = SeedToken(seed=42).with_overrides({"punch": "fallocate"})
    sampler.observe(other, Observation(finding=True))
    assert sampler.ignored == 1 and sum(sampler.trials["pages"]) == 1
    row = sampler.posterior()["pages"][region["pages"]]
    assert row["hits"] == 1 and row["window"] == 7
    assert row["window_per_s"] == pytest.approx((1 + 7) / (1 + 2.0))  # Gamma(1, 1) prior
    assert row["findings_per_s"] == pytest.approx((1 + 1) / (1 + 2.0))


def test_samplers_satisfy_the_protocol() -> None:
    assert isinstance(ThompsonSampler(), Sampler) and isinstance(UniformSampler(), Sampler)
    assert set(KNOBS) >= set(DEFAULT_BINS)


def _planted(p: TrialParams) -> bool:
    return 215 <= p.pages <= 723 and 15 <= p.kick_delay_us <= 22 and p.punch == "fallocate"


def test_bandit_concentrates_on_a_planted_region() -> None:
    """Uniform lands in the region 1/32 of the time; a working bandit most of the time."""
    rng, luck = random.Random(2024), random.Random(99)
    sampler = ThompsonSampler()
    inside: list[bool] = []
    hits = 0
    for _ in range(2500):
        token = sampler.propose(rng)
        is_in = _planted(token.params())
        anomalous = luck.random() < (0.2 if is_in else 0.002)
        sampler.observe(token, Observation(finding=anomalous))
        inside.append(is_in)
        hits += anomalous
    late = sum(inside[-500:]) / 500
    assert late > 0.7, (late, hits, sampler.posterior())
    assert hits > 200  # uniform expects ~21 in 2500 trials; a working bandit gets ~420


def _window_farm(sampler: ThompsonSampler | UniformSampler, n: int, seed: int) -> dict[str, float]:
    """A simulated kernel with no findings: window entries per trial, and a trial cost.

    Large buffers (pages >= 2436) see 3x the entries of small ones but cost 40x the
    guest-seconds (e.g. a throttled, 8192-page trial); per second, small buffers win.
    """
    rng, luck = random.Random(seed), random.Random(seed + 1)
    window = seconds = 0.0
    for _ in range(n):
        token = sampler.propose(rng)
        big = token.params().pages >= 2436
        entries = luck.randint(0, 60 if big else 20)
        cost = 40.0 if big else 1.0
        sampler.observe(token, Observation(finding=False, window=entries, seconds=cost))
        window, seconds = window + entries, seconds + cost
    return {"per_s": window / seconds, "seconds": seconds}


def test_search_buys_signal_per_guest_second_not_per_trial() -> None:
    thompson = _window_farm(ThompsonSampler(), 1500, 5)
    uniform = _window_farm(UniformSampler(), 1500, 5)
    # uniform spends most of its guest time on the costly bin (1/4 of trials, 40x the cost)
    assert thompson["per_s"] > 3 * uniform["per_s"], (thompson, uniform)


def test_a_finding_outweighs_window_entries() -> None:
    """One bin yields findings with few entries, another many entries and no finding."""
    sampler = ThompsonSampler(fixed={"punch": "fallocate"}, bins={"placement": 3})
    rng, luck = random.Random(8), random.Random(9)
    chosen: list[str] = []
    for _ in range(1000):
        token = sampler.propose(rng)
        placement = token.params().placement
        finding = placement == "split" and luck.random() < 0.05
        window = 30 if placement == "same" else 1
        sampler.observe(token, Observation(finding=finding, window=window, seconds=1.0))
        chosen.append(placement)
    # 5 % findings x 1000 = 50 weighted/s beats 30 entries/s: split wins once found
    assert chosen[-300:].count("split") > 200, sampler.posterior()


def test_old_beta_states_resume_with_one_second_per_trial() -> None:
    sampler = ThompsonSampler()
    state = json.loads(json.dumps(sampler.state()))
    state["format"] = 1
    for key in ("window", "seconds"):
        del state[key]
    state["trials"]["pages"] = [10, 0, 0, 0]
    state["hits"]["pages"] = [1, 0, 0, 0]
    resumed = ThompsonSampler.from_state(state)
    assert resumed.seconds["pages"] == [10.0, 0.0, 0.0, 0.0]
    assert resumed.window["pages"] == [0, 0, 0, 0] and resumed.hits["pages"][0] == 1


def test_observation_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Observation(finding=False, window=-1)
    with pytest.raises(ValueError):
        Observation(finding=False, seconds=0.0)


def test_the_search_observes_the_window_counters() -> None:
    """A count kernel's window entries (migration + swap) reach the search; none count 0."""
    from farm.control.scheduler import observation_of
    from farm.protocol import TrialResult, Window

    base = {
        "trial_id": "t", "token": "zf1-8188e2f542964e0c", "kernel": "k", "worker": "w",
        "outcome": "ok", "started_at": 100.0, "finished_at": 102.5,
    }  # fmt: skip
    window = Window(entries=40, skipped=0, swap_entries=2, swap_skipped=0)
    seen = observation_of(TrialResult(**base, window=window), finding=False)
    assert (seen.window, seen.seconds, seen.finding) == (42, 2.5, False)
    assert observation_of(TrialResult(**base), finding=True).window == 0
