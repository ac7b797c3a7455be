"""``farm campaign ...`` and ``farm scheduler``: define campaigns, run them, watch them."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from farm.cli.support import FarmError, open_db, settings_from
from farm.control import campaigns
from farm.control.campaigns import CampaignError
from farm.store.models import Campaign
from farm.timing import RECONCILE_GRACE_S, BudgetError

out = Console()


@click.group()
def campaign() -> None:
    """Create campaigns from TOML specs and start, pause, resume, stop and watch them."""


@campaign.command("create")
@click.argument("spec_file", type=click.Path(path_type=Path), required=False)
@click.option("--name", help="campaign name (instead of a spec file)")
@click.option("--kernel", "kernels", multiple=True, help="kernel name (repeatable)")
@click.option("--trials", type=int, help="budget in trials")
@click.option("--hours", type=float, help="budget in hours")
@click.option("--search", type=click.Choice(["uniform", "thompson"]))
@click.option("--preset", help="named parameter preset, e.g. seed-2022")
@click.option("--concurrency", type=int, help="trials in flight at once")
@click.option("--priority", type=int, help="0..100, higher runs first")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="fix a parameter")
@click.option("--start", is_flag=True, help="start it right away")
@click.pass_context
def create(ctx: click.Context, spec_file: Path | None, start: bool, **flags: Any) -> None:
    """Create a campaign from SPEC_FILE (TOML) and/or flags; flags override the file."""
    try:
        data: dict[str, Any] = {}
        if spec_file is not None:
            data = campaigns.load_spec(spec_file).model_dump(exclude_unset=True)
        data.update(_flags_to_spec(flags))
        spec = campaigns.parse_spec(data, str(spec_file or "command line"))
        with open_db(ctx) as sessions, sessions.begin() as session:
            row = campaigns.create(session, spec)
            if start:
                campaigns.transition(row, "running")
            status = row.status
    except CampaignError as exc:
        raise FarmError(str(exc)) from exc
    out.print(
        f"campaign [bold]{spec.name}[/] {status}: {spec.budget.trials or '∞'} trials "
        f"on {', '.join(spec.kernels)}, search {spec.search}"
    )


def _flags_to_spec(flags: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key in ("name", "search", "preset", "concurrency", "priority"):
        if flags.get(key) is not None:
            data[key] = flags[key]
    if flags.get("kernels"):
        data["kernels"] = list(flags["kernels"])
    if flags.get("trials") is not None or flags.get("hours") is not None:
        data["budget"] = {k: flags[k] for k in ("trials", "hours") if flags.get(k) is not None}
    params: dict[str, Any] = {}
    for item in flags.get("sets") or ():
        name, sep, value = item.partition("=")
        if not sep:
            raise CampaignError(f"--set {item!r}: write NAME=VALUE, e.g. --set punch=madvise")
        params[name] = int(value) if value.lstrip("-").isdigit() else value
    if params:
        data["params"] = params
    return data


def _action(name: str, verb: str) -> None:
    @campaign.command(verb, help=f"{verb.capitalize()} the campaign NAME.")
    @click.argument("name")
    @click.pass_context
    def command(ctx: click.Context, name: str) -> None:
        try:
            with open_db(ctx) as sessions, sessions.begin() as session:
                row = campaigns.act(session, name, verb)
                status = row.status
        except CampaignError as exc:
            raise FarmError(str(exc)) from exc
        out.print(f"campaign [bold]{name}[/] is {status}")

    command.__name__ = verb


for _verb in campaigns.ACTIONS:
    _action(_verb, _verb)


@campaign.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """Every campaign with its status and progress."""
    from farm.control.scheduler import progress

    with open_db(ctx) as sessions, sessions() as session:
        rows = session.scalars(select(Campaign).order_by(Campaign.id.desc()).limit(200)).all()
        table = Table(
            "name", "kind", "status", "done", "budget", "anomalous", "infra errors", "trials/h"
        )
        for row in rows:
            p = progress(session, row)
            anomalous = sum(
                n for v, n in p["verdicts"].items() if v not in ("clean", "invalid", "infra-error")
            )
            table.add_row(
                row.name,
                row.spec.get("kind", "fuzz"),
                row.status,
                str(p["done"]),
                str(p["budget"] or "∞"),
                str(anomalous),
                str(p["infra_errors"]),
                str(p["trials_last_hour"]),
            )
    out.print(table)


@campaign.command("status")
@click.argument("name")
@click.option("--watch", is_flag=True, help="refresh until the campaign ends (Ctrl-C to leave)")
@click.pass_context
def status(ctx: click.Context, name: str, watch: bool) -> None:
    """Progress, verdict counts and trials per hour of one campaign, and what stalls it."""
    from farm.control.liveness import unserved_kernels
    from farm.control.scheduler import progress

    def render() -> tuple[Table, str]:
        with open_db(ctx) as sessions, sessions() as session:
            try:
                row = campaigns.get(session, name)
            except CampaignError as exc:
                raise FarmError(str(exc)) from exc
            p = progress(session, row)
            unserved = unserved_kernels(session, row.status, campaigns.spec_of(row).kernels)
        budget = p["budget"]
        table = Table(title=f"campaign {name}: {p['status']}", show_header=False)
        bar = ""
        if budget:
            filled = int(30 * p["done"] / budget)
            bar = "█" * filled + "░" * (30 - filled)
        table.add_row("progress", f"{bar} {p['done']}/{budget or '∞'}")
        table.add_row("in flight", f"{p['running']} running, {p['queued']} queued")
        table.add_row(
            "infra errors",
            f"{p['infra_errors']} (farm-side, not the kernel's; {p['retries']} retries queued)",
        )
        table.add_row("trials in the last hour", str(p["trials_last_hour"]))
        for verdict, count in sorted(p["verdicts"].items(), key=lambda kv: -kv[1]):
            table.add_row(f"  {verdict}", str(count))
        for message in unserved.values():
            table.add_row("[bold yellow]warning[/]", escape(message))
        return table, p["status"]

    table, state = render()
    if not watch:
        out.print(table)
        return
    with Live(table, console=out, refresh_per_second=2) as live:
        while state in ("created", "running", "paused"):
            time.sleep(1)
            table, state = render()
            live.update(table)


@click.command()
@click.option("--batch-size", default=4, show_default=True, help="trials per Celery message")
@click.option("--once", is_flag=True, help="one scheduling step, then exit (for cron and tests)")
@click.option(
    "--reconcile-grace",
    default=RECONCILE_GRACE_S,
    show_default=True,
    type=click.FloatRange(1),
    help="seconds a batch in flight may be unknown to the broker before it is sent again",
)
@click.pass_context
def scheduler(ctx: click.Context, batch_size: int, once: bool, reconcile_grace: float) -> None:
    """Run campaigns: create trials, send them to workers, record their results.

    All state is in the database: stop it any time (SIGTERM) and start it again.
    """
    from farm.control.scheduler import Scheduler
    from farm.control.supervise import run_supervised
    from farm.transport import make_app

    settings = settings_from(ctx)
    app = make_app(settings)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def report(result: Any, verdict: str) -> None:
        if verdict not in ("clean",):
            out.print(f"{result.trial_id}: [bold]{verdict}[/] {result.token}")

    with open_db(ctx) as sessions:

        def build() -> Scheduler:
            return Scheduler(
                app,
                sessions,
                batch_size=batch_size,
                deadline_s=settings.trial_deadline_s,
                boot_s=settings.boot_deadline_s,
                on_record=report,
                reconcile_grace_s=reconcile_grace,
            )

        if once:
            try:
                build().tick()
            except BudgetError as exc:
                raise FarmError(str(exc)) from exc
            return
        out.print("scheduler running (Ctrl-C to stop; state is kept in the database)")
        # a Redis or PostgreSQL outage rebuilds the scheduler from the database, in-process
        try:
            run_supervised(build, stop=lambda: stopping)
        except BudgetError as exc:
            raise FarmError(str(exc)) from exc
