"""The ``farm`` command line: the top-level group; each command group is a module beside it.

Exit codes follow tuxrun: 0 success, 1 the farm found something (or a check
failed), 2 infrastructure trouble or bad input, with a message naming the fix.
"""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli import (
    campaign,
    db,
    demo,
    evidence,
    export,
    guest,
    kernels,
    report,
    reproduce,
    selftest,
    triage,
    web,
    worker,
)


@click.group()
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    help="farm.toml to read (default: $FARM_CONFIG, ./farm.toml)",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """zapfarm: fuzz the shmem hole-punch vs. page-migration race on many kernels."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


for command in (
    campaign.campaign,
    campaign.scheduler,
    db.db,
    demo.demo,
    evidence.evidence,
    export.export_command,
    guest.guest,
    kernels.kernels,
    report.report_command,
    reproduce.reproduce,
    reproduce.minimize_command,
    selftest.selftest,
    triage.triage,
    web.web,
    worker.worker,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
