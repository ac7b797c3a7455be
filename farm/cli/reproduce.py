"""``farm reproduce`` and ``farm minimize``: how often does a seed hit, and its smallest form."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from farm.cli.support import FarmError, open_db, settings_from
from farm.control import campaigns
from farm.control.campaigns import CampaignError
from farm.control.minimize import minimize
from farm.control.reproduce import Reproduction
from farm.params import SeedToken, TokenError
from farm.triage.verdict import judge


def _token(text: str, preset: str | None) -> SeedToken:
    try:
        token = SeedToken.parse(text)
        return token.with_preset(preset) if preset else token
    except TokenError as exc:
        raise FarmError(str(exc)) from exc


def _kernels(ctx: click.Context, names: tuple[str, ...]) -> list[str]:
    """The named kernels, or the installed Debian kernel (registered on the way)."""
    if names:
        return list(names)
    from farm.artifacts.kernels import installed_kernel
    from farm.store.db import ensure_kernel

    k = installed_kernel()
    with open_db(ctx) as sessions, sessions.begin() as session:
        ensure_kernel(session, k.name, k.release, str(k.path), k.sha256, k.source)
    return [k.name]


def reproduce_locally(
    ctx: click.Context, token: SeedToken, kernels: list[str], runs: int, console: Console
) -> Reproduction:
    """Run ``token`` ``runs`` times per kernel on this machine; the tally per kernel."""
    from farm.control.local import check_hypervisor, run_locally

    settings = settings_from(ctx)
    check_hypervisor(settings)
    outcome = Reproduction(str(token))
    with open_db(ctx) as sessions:
        with sessions.begin() as session:
            try:
                row = campaigns.create_reproduction(session, str(token), kernels, runs)
            except CampaignError as exc:
                raise FarmError(str(exc)) from exc
            outcome.campaign = row.name
        recorded = run_locally(
            settings, sessions, kernels, runs * len(kernels), console, label="runs"
        )
    for result, verdict in recorded:
        if result.trial_id.startswith(outcome.campaign + "-"):
            outcome.add(result.kernel, verdict, judge(result).title)
    return outcome


@click.command()
@click.argument("token")
@click.option(
    "--kernel", "kernels", multiple=True, help="kernel name (repeatable; default: installed)"
)
@click.option("--runs", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--preset", help="run the token with a named preset, e.g. seed-2022")
@click.option("--enqueue", is_flag=True, help="only queue it for the farm's scheduler and workers")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary as the last line")
@click.pass_context
def reproduce(
    ctx: click.Context,
    token: str,
    kernels: tuple[str, ...],
    runs: int,
    preset: str | None,
    enqueue: bool,
    as_json: bool,
) -> None:
    """Run a seed TOKEN's exact parameters RUNS times per kernel and report hit rates.

    A run hits when its verdict is a finding (kernel report, oracle mismatch,
    crash, hang). Reliable means a rate of at least 50% (ClusterFuzz's bar).
    The runs are stored as a reproduction campaign, linked to their findings.
    """
    seed = _token(token, preset)
    names = _kernels(ctx, kernels)
    if enqueue:
        with open_db(ctx) as sessions, sessions.begin() as session:
            try:
                row = campaigns.create_reproduction(session, str(seed), names, runs)
            except CampaignError as exc:
                raise FarmError(str(exc)) from exc
            click.echo(
                f"queued reproduction campaign {row.name}: {runs} runs on {', '.join(names)}"
            )
        return
    console = Console(stderr=as_json)
    outcome = reproduce_locally(ctx, seed, names, runs, console)
    summary = outcome.to_json()
    table = Table(title=f"reproduction of {seed}")
    for column in ("kernel", "runs", "hits", "rate", "95% interval", "verdict"):
        table.add_column(column)
    for name, k in summary["kernels"].items():
        lo, hi = k["ci95"]
        verdict = "reliable" if k["reliable"] else "flaky" if k["hits"] else "not reproduced"
        table.add_row(
            name, str(k["runs"]), str(k["hits"]), f"{k['rate']:.0%}", f"{lo:.0%}–{hi:.0%}", verdict
        )
    console.print(table)
    if as_json:
        click.echo(json.dumps(summary))


@click.command("minimize")
@click.argument("token")
@click.option("--kernel", "kernels", multiple=True, help="kernel name (default: installed)")
@click.option("--runs", default=5, show_default=True, help="runs per candidate")
@click.option("--threshold", default=0.5, show_default=True, help="lowest acceptable hit rate")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary as the last line")
@click.pass_context
def minimize_command(
    ctx: click.Context,
    token: str,
    kernels: tuple[str, ...],
    runs: int,
    threshold: float,
    as_json: bool,
) -> None:
    """Shrink a seed's parameters while its hit rate stays at or above THRESHOLD."""
    seed = _token(token, None)
    names = _kernels(ctx, kernels)
    console = Console(stderr=as_json)
    started = time.monotonic()

    def rate_of(candidate: SeedToken) -> float:
        summary = reproduce_locally(ctx, candidate, names, runs, console).to_json()
        console.print(f"{candidate}: {summary['hits']}/{summary['runs']}")
        return float(summary["rate"])

    result = minimize(seed, rate_of, threshold)
    info: dict[str, Any] = {
        "token": str(result.token),
        "rate": result.rate,
        "start": str(seed),
        "tried": result.tried,
        "seconds": round(time.monotonic() - started, 1),
    }
    console.print(f"smallest token: [bold]{result.token}[/] (rate {result.rate:.0%})")
    if as_json:
        click.echo(json.dumps(info))
