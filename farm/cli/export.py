"""``farm export TOKEN --out DIR``: a standalone reproducer people can build without the farm."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from farm.cli.support import FarmError, open_db
from farm.params import SeedToken, TokenError

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _kernel_note(ctx: click.Context, name: str | None) -> object:
    """The registered kernel ``name`` (the README's VM command boots it), or the installed one."""
    from sqlalchemy import select

    from farm.artifacts.kernels import KernelError, installed_kernel
    from farm.artifacts.standalone import KernelNote
    from farm.store.models import Kernel

    if name is None:
        try:
            k = installed_kernel()
        except (KernelError, LookupError):
            return None
        return KernelNote(k.name, k.release, str(k.path))
    with open_db(ctx) as sessions, sessions() as session:
        row = session.scalars(select(Kernel).where(Kernel.name == name)).one_or_none()
        if row is None:
            known = ", ".join(session.scalars(select(Kernel.name).order_by(Kernel.name))) or "none"
            raise FarmError(f"no kernel {name!r} in the database (known: {known})")
        return KernelNote(row.name, row.release, row.image_path)


@click.command("export")
@click.argument("token")
@click.option(
    "--kernel", help="a registered kernel the README's VM command boots (default: this host's)"
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="a new (or empty) folder for the reproducer",
)
@click.pass_context
def export_command(ctx: click.Context, token: str, kernel: str | None, out: Path) -> None:
    """Write a standalone C reproducer of TOKEN: builds with one gcc line, runs without the farm.

    The folder holds the trial program, the token's parameters as its default
    command line (commented), run.sh (checks for two NUMA nodes, reads the
    oracles back in plain words) and a README with a QEMU command line.
    Prints the build command.
    """
    from farm.artifacts.standalone import ExportError, KernelNote, export

    try:
        seed = SeedToken.parse(token)
    except TokenError as exc:
        raise FarmError(str(exc)) from exc
    note = _kernel_note(ctx, kernel)
    try:
        done = export(seed, out, note if isinstance(note, KernelNote) else None)
    except ExportError as exc:
        raise FarmError(str(exc)) from exc
    err.print(f"wrote {', '.join(done.files)} to {out}; then run ./run.sh there (two NUMA nodes)")
    click.echo(f"cd {out} && {done.build_line}")
