"""``farm guest``: the guest image."""

from __future__ import annotations

import click

from farm.cli.support import FarmError, err, settings_from


@click.group()
def guest() -> None:
    """The guest image (initramfs with the agent and the trial program)."""


@guest.command("build")
@click.pass_context
def guest_build(ctx: click.Context) -> None:
    """Build the gzip'd cpio initramfs (content-addressed: instant when unchanged)."""
    from farm.artifacts.guest_image import GuestImageError, build_initramfs

    settings = settings_from(ctx)
    try:
        with err.status("building the guest initramfs"):
            path = build_initramfs(settings.cache_dir)
    except GuestImageError as exc:
        raise FarmError(str(exc)) from exc
    click.echo(str(path))
