"""``farm reproduce`` and ``farm minimize``: how often does a seed hit, and its smallest form."""

from __future__ import annotations

import json
import time
from pathlib import Path
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
@click.argument("token", required=False)
@click.option(
    "--kernel", "kernels", multiple=True, help="kernel name (repeatable; default: installed)"
)
@click.option("--runs", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--preset", help="run the token with a named preset, e.g. seed-2022")
@click.option("--enqueue", is_flag=True, help="only queue it for the farm's scheduler and workers")
@click.option(
    "--program",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a reported C program instead of a token: built statically here, run in the guest",
)
@click.option("--arg", "args", multiple=True, help="with --program: one argument (repeatable)")
@click.option(
    "--deadline",
    type=click.FloatRange(1, 3600),
    help="with --program: seconds before a run is killed (default: the trial deadline)",
)
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary as the last line")
@click.pass_context
def reproduce(
    ctx: click.Context,
    token: str | None,
    kernels: tuple[str, ...],
    runs: int,
    preset: str | None,
    enqueue: bool,
    program: Path | None,
    args: tuple[str, ...],
    deadline: float | None,
    as_json: bool,
) -> None:
    """Run a seed TOKEN's exact parameters RUNS times per kernel and report hit rates.

    A run hits when its verdict is a finding (kernel report, oracle mismatch,
    crash, hang). Reliable means a rate of at least 50% (ClusterFuzz's bar).
    The runs are stored as a reproduction campaign, linked to their findings.

    With --program FILE.c instead of a token, a reported program is built
    (gcc -O2 -static -pthread; exit 2 with the compiler's message if it does
    not build) and run RUNS times per kernel under the guest agent, judged by
    the kernel's console (reports, Bad rss-counter at its exit), the guest's
    survival and its own exit status and signal; its output is kept.
    """
    if (token is None) == (program is None):
        raise FarmError("give a TOKEN or --program FILE.c (one of them)")
    if program is None and (args or deadline):
        raise FarmError("--arg and --deadline go with --program")
    if program is not None:
        if preset or enqueue:
            raise FarmError("--preset and --enqueue go with a TOKEN, not --program")
        reproduce_program_cli(ctx, program, list(args), kernels, runs, deadline, as_json)
        return
    assert token is not None
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


def _kernel_images(ctx: click.Context, names: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(name, image) of each named kernel as registered, or of the installed one."""
    from sqlalchemy import select

    from farm.store.models import Kernel

    wanted = _kernels(ctx, names)
    with open_db(ctx) as sessions, sessions() as session:
        rows = {k.name: k for k in session.scalars(select(Kernel).where(Kernel.name.in_(wanted)))}
    found = []
    for name in wanted:
        row = rows.get(name)
        if row is None or not row.image_path or not Path(row.image_path).is_file():
            raise FarmError(f"kernel {name!r} has no image on this host: `farm kernels list`")
        found.append((name, Path(row.image_path)))
    return found


def reproduce_program_cli(
    ctx: click.Context,
    source: Path,
    args: list[str],
    kernels: tuple[str, ...],
    runs: int,
    deadline: float | None,
    as_json: bool,
) -> None:
    """``farm reproduce --program``: build, run in guests, tally, store, print."""
    import tempfile

    from farm.artifacts.guest_image import GuestImageError
    from farm.control.local import check_hypervisor
    from farm.control.program import ProgramError, build, reproduce_program
    from workers.connection import HypervisorError
    from workers.vm import GuestError

    settings = settings_from(ctx)
    console = Console(stderr=as_json)
    with tempfile.TemporaryDirectory(prefix="zapfarm-program-") as tmp:
        try:
            built = build(source, Path(tmp))
        except ProgramError as exc:
            raise FarmError(str(exc)) from exc
        console.print(f"built {source} ({built.binary.stat().st_size / 1e6:.1f} MB, static)")
        images = _kernel_images(ctx, kernels)
        check_hypervisor(settings)
        try:
            outcome = reproduce_program(
                built,
                args,
                images,
                runs,
                cache_dir=settings.cache_dir,
                libvirt_uri=settings.libvirt_uri,
                virt_type=settings.virt_type or "qemu",
                deadline_s=deadline or settings.trial_deadline_s,
                memory_mb=settings.guest_memory_mb,
                cpus=settings.guest_cpus,
                boot_deadline_s=settings.boot_deadline_s,
                say=lambda msg: console.print(f"  {msg}", markup=False, highlight=False),
            )
        except (GuestImageError, HypervisorError, GuestError) as exc:
            raise FarmError(str(exc)) from exc
    from farm.control.program import store

    with open_db(ctx) as sessions:
        outcome.campaign = store(sessions, outcome)
    summary = outcome.to_json()
    table = Table(title=f"reproduction of {source.name} ({built.sha256[:12]})")
    for column in ("kernel", "runs", "hits", "rate", "95% interval", "verdicts"):
        table.add_column(column)
    for name, k in summary["kernels"].items():
        lo, hi = k["ci95"]
        verdicts = ", ".join(f"{v} {n}" for v, n in sorted(k["verdicts"].items()))
        table.add_row(
            name, str(k["runs"]), str(k["hits"]), f"{k['rate']:.0%}", f"{lo:.0%}–{hi:.0%}", verdicts
        )
    console.print(table)
    if summary["invalid"]:
        console.print(f"{summary['invalid']} run(s) gave no verdict (never exited, or aborted)")
    console.print(f"stored as campaign {outcome.campaign}")
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
