"""``farm kernels ...``: fetch, add, build, list and boot-check the kernels trials boot.

Registered on the main group in farm.cli.main (``main.add_command(kernels)``).
Progress goes to stderr (rich); the one-line results go to stdout, so that
scripts can read what was registered. Errors exit 2 naming the fix.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from farm.artifacts.kernelbuild import INSTRUMENTS
from farm.artifacts.kernels import FLAVOURS, SUITES, KernelError, KernelImage, readable_by_qemu
from farm.cli.support import FarmError, settings_from

if TYPE_CHECKING:
    from farm.settings import Settings

err = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def _errors() -> Iterator[None]:
    """Known failures become FarmError (exit 2, message only)."""
    from farm.store.db import DatabaseError

    try:
        yield
    except (KernelError, DatabaseError) as exc:
        raise FarmError(str(exc)) from exc


def _register(settings: Settings, image: KernelImage) -> None:
    from farm.settings import redact_url
    from farm.store.registry import register

    register(settings.database_url, image)
    err.print(f"registered [bold]{image.name}[/] in {redact_url(settings.database_url)}")
    if not readable_by_qemu(image.path):
        err.print(
            f"[yellow]note:[/] {image.path} is under a folder libvirt-qemu cannot enter; "
            "workers copy it to /var/lib/zapfarm/images before booting"
        )


@click.group("kernels")
def kernels() -> None:
    """Guest kernels: Debian's, custom bzImages, and instrumented builds."""


@kernels.command("fetch")
@click.argument("distribution", metavar="debian:" + "|debian:".join(SUITES))
@click.option(
    "--flavour",
    default="amd64",
    show_default=True,
    help=f"kernel flavour: {', '.join(FLAVOURS)}",
)
@click.option("--name", help="register under this name (default debian-<suite>-<release>)")
@click.pass_context
def fetch(ctx: click.Context, distribution: str, flavour: str, name: str | None) -> None:
    """Download the newest Debian kernel of a release and register it.

    Uses the Debian mirror of this host's apt sources through a private apt
    set-up under cache_dir/apt/ (the system's apt is not touched). A version
    that is already cached is not downloaded again.
    """
    from farm.artifacts.kernels import check_flavour, fetch_debian, parse_distribution

    settings = settings_from(ctx)
    with _errors():
        suite = parse_distribution(distribution)
        check_flavour(flavour)
        with err.status(f"fetching the {flavour} kernel of debian:{suite}") as status:

            def say(msg: str) -> None:
                if msg.startswith("[warning]"):
                    err.print(f"[yellow]warning:[/] {escape(msg.removeprefix('[warning] '))}")
                    return
                err.print(f"  {escape(msg)}")
                status.update(msg)

            result = fetch_debian(settings.cache_dir, suite, flavour, name=name, progress=say)
        image = result.image
        if result.downloaded:
            err.print(
                f"fetched {result.package} {result.version}: "
                f"{result.download_bytes / 1e6:.1f} MB in {result.seconds:.1f} s"
            )
        else:
            err.print(f"{result.package} {result.version} was cached ({result.seconds:.1f} s)")
        _register(settings, image)
    click.echo(f"{image.name}\t{image.release}\t{image.sha256}\t{image.path}")


@kernels.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="the name trials and campaigns use for it")
@click.option("--release", help="uname -r (default: read from the bzImage header)")
@click.pass_context
def add(ctx: click.Context, path: Path, name: str, release: str | None) -> None:
    """Register a custom bzImage (copied into the cache, world-readable)."""
    from farm.artifacts.kernels import add_custom

    settings = settings_from(ctx)
    with _errors():
        image = add_custom(settings.cache_dir, path, name, release)
        err.print(f"copied {path} to {image.path} (release {image.release})")
        _register(settings, image)
    click.echo(f"{image.name}\t{image.release}\t{image.sha256}\t{image.path}")


@kernels.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """Every registered kernel, and whether its image is on this host's disk."""
    from farm.artifacts.kernels import provenance_summary
    from farm.store.registry import list_kernels

    settings = settings_from(ctx)
    with _errors():
        rows = list_kernels(settings.database_url)
    table = Table(title=f"{len(rows)} kernel(s)", title_justify="left")
    built = any(row.provenance for row in rows)  # the column only when some kernel was built here
    for column in ("name", "release", "source", "sha256", "path", "on disk", "built from"):
        if column != "built from" or built:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.name,
            row.release,
            row.source,
            (row.sha256 or "-")[:12],
            row.path or "-",
            "[green]yes[/]" if row.present else "[red]no[/]",
            *([escape(provenance_summary(row.provenance)) or "-"] if built else []),
        )
    Console(highlight=False).print(table)


@kernels.command("source")
@click.argument("series", type=click.Choice(sorted(SUITES.values())))
@click.option("--refresh", is_flag=True, help="ask the mirror for a newer package version")
@click.pass_context
def source(ctx: click.Context, series: str, refresh: bool) -> None:
    """Fetch Debian's linux-source-<series> tarball for builds and tests (no build)."""
    from farm.artifacts.sources import get_source

    settings = settings_from(ctx)
    started = time.monotonic()
    with _errors(), err.status(f"getting linux-source-{series}") as status:

        def say(msg: str) -> None:
            err.print(f"  {escape(msg)}")
            status.update(msg)

        tarball = get_source(settings.cache_dir, series, refresh=refresh, progress=say)
    err.print(
        f"linux-source-{series} {tarball.package_version} ({tarball.origin}, "
        f"{tarball.path.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s"
    )
    click.echo(str(tarball.path))


@kernels.command("build")
@click.option(
    "--source",
    "series",
    type=click.Choice(sorted(SUITES.values())),
    help="kernel series: Debian's linux-source-<series>",
)
@click.option(
    "--patch",
    "patches",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="your patch (git format-patch or diff -u, from the tree's top), applied in order "
    "after the farm's; repeatable",
)
@click.option(
    "--tree",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="your own kernel tree, built out of tree (make O=...): never written to",
)
@click.option(
    "--config",
    "base_config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="with --tree: your .config, the farm's fragment merged over it (default tinyconfig)",
)
@click.option(
    "--instrument",
    type=click.Choice(list(INSTRUMENTS)),
    help="warn: the seed's WARN_ON_ONCE(is_migration_entry(entry)) in zap_pte_range(); "
    "count: window entries and skips as zapfarm_* counters in /proc/vmstat",
)
@click.option(
    "--revert-fix",
    is_flag=True,
    help="restore the pre-5abfd71d936a skip of swap/migration entries (positive control)",
)
@click.option("--jobs", "-j", type=click.IntRange(1, 256), help="make -j (default: all CPUs)")
@click.option("--refresh-source", is_flag=True, help="ask the mirror for a newer source package")
@click.option("--keep-tree", is_flag=True, help="keep the build tree (for debugging)")
@click.pass_context
def build_cmd(
    ctx: click.Context,
    series: str | None,
    patches: tuple[Path, ...],
    tree: Path | None,
    base_config: Path | None,
    instrument: str | None,
    revert_fix: bool,
    jobs: int | None,
    refresh_source: bool,
    keep_tree: bool,
) -> None:
    """Build a small guest kernel (tinyconfig + guest/kernel/config.fragment) and register it.

    From Debian's source (--source, with the farm's patches and yours), or from
    your own tree (--tree). Cached by source version, fragments and patches: an
    unchanged build is instant. What went in (source, patches with sha256,
    instrumentation) is stored with the image: `farm kernels list`, the web.
    """
    from farm.artifacts.kernelbuild import BuildSpec, build, build_tree, expected_steps

    settings = settings_from(ctx)
    started = time.monotonic()
    if (series is None) == (tree is None):
        raise FarmError("give one of --source SERIES (Debian's source) or --tree DIR (your own)")
    if tree is not None and (patches or instrument or revert_fix):
        raise FarmError(
            "--tree builds your tree as it is: commit your patches to it (the farm never writes "
            "to it), or use --source SERIES with --patch, --instrument and --revert-fix"
        )
    if base_config is not None and tree is None:
        raise FarmError("--config goes with --tree (a --source build starts from tinyconfig)")
    with _errors():
        spec = BuildSpec(series, instrument, revert_fix, patches) if series else None
        columns = (
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}", style="dim"),
        )
        with Progress(*columns, console=err, transient=False) as progress:
            bar = progress.add_task("", total=None, stage="preparing")
            stage_started = [time.monotonic()]

            def say(msg: str) -> None:
                now = time.monotonic()
                progress.console.print(f"  [{now - started:6.1f} s] {escape(msg)}")
                stage_started[0] = now
                if msg.startswith("compiling"):
                    progress.update(
                        bar,
                        stage="compiling",
                        total=expected_steps(settings.cache_dir, series or "tree"),
                        completed=0,
                    )

            def step(count: int, what: str) -> None:
                task = progress.tasks[0]
                total = task.total or count
                progress.update(
                    bar, completed=count, total=max(total, count), description=what[-60:]
                )

            if spec is None:
                assert tree is not None
                result = build_tree(
                    settings.cache_dir,
                    tree,
                    config=base_config,
                    jobs=jobs,
                    progress=say,
                    on_step=step,
                )
            else:
                result = build(
                    settings.cache_dir,
                    spec,
                    jobs=jobs,
                    refresh_source=refresh_source,
                    keep_tree=keep_tree,
                    progress=say,
                    on_step=step,
                )
            if result.built:
                progress.update(bar, total=result.steps, completed=result.steps, stage="done")
            else:
                progress.update(bar, total=1, completed=1, stage="cached")
        image = result.image
        size = image.path.stat().st_size
        if result.built:
            err.print(
                f"built {image.name} ({image.release}, {size / 1e6:.1f} MB) in "
                f"{result.seconds:.0f} s (make: {result.make_seconds:.0f} s, "
                f"{result.steps} steps)"
            )
        else:
            err.print(f"{image.name} was cached ({size / 1e6:.1f} MB)")
        _register(settings, image)
    click.echo(f"{image.name}\t{image.release}\t{image.sha256}\t{image.path}")


DEFAULT_CHECK_TOKEN = "zf1-8188e2f542964e0c~pages=4096"


def _splat_lines(text: str) -> list[str]:
    """The header line of each kernel report in a console: the console parser decides what
    a report is (farm.triage.engine), here as everywhere else in the farm."""
    from farm.triage.engine import parse

    data = text.encode("utf-8", "surrogateescape")
    lines = []
    for report in parse(data):
        end = data.find(b"\n", report.start)
        line = data[report.start : end if end >= 0 else len(data)]
        lines.append(line.decode("utf-8", "replace").strip())
    return lines


def _find_image(cache_dir: Path, name_or_path: str) -> KernelImage:
    from farm.artifacts.kernels import cached_kernels, inspect_bzimage, installed_kernel, sha256_of

    for image in cached_kernels(cache_dir):
        if image.name == name_or_path:
            return image
    with contextlib.suppress(KernelError, LookupError):
        installed = installed_kernel()
        if installed.name == name_or_path:
            return installed
    path = Path(name_or_path)
    if path.is_file():
        info = inspect_bzimage(path)
        return KernelImage(path.name, info.release or "", path, sha256_of(path), "path")
    known = ", ".join(k.name for k in cached_kernels(cache_dir)) or "none"
    raise KernelError(f"no kernel {name_or_path!r} in {cache_dir}/kernels (known: {known})")


@kernels.command("check")
@click.argument("kernel")
@click.option("--trials", "-n", default=1, show_default=True, type=click.IntRange(1, 100))
@click.option("--token", default=DEFAULT_CHECK_TOKEN, show_default=True, help="trial seed token")
@click.option("--expect-warn", is_flag=True, help="exit 1 unless a WARNING shows in a trial")
@click.pass_context
def check(ctx: click.Context, kernel: str, trials: int, token: str, expect_warn: bool) -> None:
    """Boot KERNEL (a name in the cache, or a bzImage path) and run trials on it.

    A smoke test for new kernels: the guest must boot with the farm's initramfs
    and see two NUMA nodes; the console parser finds the kernel reports (WARNING,
    BUG, Oops, Bad rss-counter, ...) in each trial's console excerpt. The guest is
    always destroyed. Exit 0 ok, 1 --expect-warn saw no WARNING, 2 boot/infra failure.
    """
    from farm.artifacts.guest_image import GuestImageError, build_initramfs
    from farm.params import params_for
    from workers.connection import HypervisorError, open_connection
    from workers.pool import GuestPool
    from workers.vm import Guest, GuestError

    settings = settings_from(ctx)
    started = time.monotonic()
    warned = False
    try:
        image = _find_image(settings.cache_dir, kernel)
        argv = params_for(token).argv()
        initrd = build_initramfs(settings.cache_dir)
        conn = open_connection(settings.libvirt_uri)
    except (KernelError, GuestImageError, HypervisorError, ValueError) as exc:
        raise FarmError(str(exc)) from exc
    with err.status("probing KVM against TCG (cached per host)"):
        config = GuestPool.from_settings(conn, settings, initrd).config(image.name, image.path)
    guest = Guest(conn, config)
    try:
        with err.status(f"booting {image.name} ({config.virt_type})"):
            guest.boot()
        err.print(
            f"booted {guest.name} in {guest.boot_seconds:.1f} s: kernel "
            f"{escape(guest.kernel_release)}, {guest.numa_nodes} NUMA node(s)"
        )
        boot_console = guest.console_log.read_text(errors="replace")
        for line in _splat_lines(boot_console):
            err.print(f"  [yellow]boot:[/] {escape(line)}")
        if guest.numa_nodes < 2:
            raise FarmError(
                f"{image.name} sees {guest.numa_nodes} NUMA node(s), the race needs 2: build it "
                "with NUMA, ACPI_NUMA and X86_64_ACPI_NUMA (guest/kernel/config.fragment)"
            )
        for i in range(trials):
            trial_id = f"check-{guest.boot_id}-{i}"
            with err.status(f"trial {i + 1}/{trials}: {token}"):
                run = guest.run(trial_id, argv, settings.trial_deadline_s)
            answer = run.answer or {}
            summary = f"status {answer.get('status', 'none')}"
            if "elapsed_ms" in answer:
                summary += f", {int(answer['elapsed_ms']) / 1000:.1f} s"
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                program = json.loads(answer.get("output") or "{}")
                migrate = program.get("migrate", {})
                vma = program.get("vma", {})
                summary += (
                    f", moved {migrate.get('moved')} enoent {migrate.get('enoent')} "
                    f"ebusy {migrate.get('ebusy')}, vma rss {vma.get('rss_kb')} kB"
                )
            window = answer.get("window")
            if isinstance(window, dict):
                summary += escape(", window " + " ".join(f"{k} {v}" for k, v in window.items()))
            if run.died or run.hung:
                summary += ", guest died" if run.died else ", guest hung"
            splats = _splat_lines(run.console)
            warned = warned or any("WARNING:" in line for line in splats)
            err.print(f"trial {i + 1}: {summary}; {len(splats)} report line(s)")
            for line in splats[:10]:
                err.print(f"  [bold red]{escape(line)}[/]")
            click.echo(json.dumps({"trial": trial_id, "splats": splats, "console": run.console}))
            if run.died:
                break
    except GuestError as exc:
        raise FarmError(str(exc)) from exc
    finally:
        guest.destroy()
        conn.close()
    err.print(f"done in {time.monotonic() - started:.0f} s; WARNING seen: {warned}")
    if expect_warn and not warned:
        sys.exit(1)
