"""The exported reproducer in a real farm guest reads what the farm's trial reads.

One TCG guest boots the farm's own image and runs the token as a worker does
(``params.argv()``); a second boots the same image with the exported binary as
its trial program (farm.artifacts.guest_image.with_program) and runs it with
no arguments, so only its baked-in parameters count. Their inputs and oracle
readings must agree, and run.sh --judge on the exported run must call it clean
on the stock kernel, as the farm's verdict does.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.artifacts.guest_image import build_initramfs, with_program
from farm.artifacts.kernels import installed_kernel
from farm.artifacts.standalone import export
from farm.params import SeedToken
from farm.protocol import parse_program_output
from farm.settings import load_settings
from workers.connection import open_connection
from workers.vm import Guest, GuestConfig, TrialRun

pytestmark = pytest.mark.vm

TOKEN = "zf2-8188e2f542964e0c~pages=1024,rounds=1,cpu_quota_pct=100,vcpu_pin=none,pressure_mb=0"


def run_in_guest(initrd: Path, console_dir: Path, argv: list[str], trial_id: str) -> TrialRun:
    settings = load_settings()
    kernel = installed_kernel()
    conn = open_connection(settings.libvirt_uri)
    config = GuestConfig(kernel.name, kernel.path, initrd, console_dir,
                         virt_type=settings.virt_type or "qemu",
                         boot_deadline_s=max(settings.boot_deadline_s, 240))  # fmt: skip
    guest = Guest(conn, config)
    try:
        guest.boot()
        assert guest.numa_nodes == 2
        return guest.run(trial_id, argv, 120)
    finally:
        guest.destroy()
        conn.close()


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, farm_domains: Callable[..., list[str]]
) -> Iterator[tuple[TrialRun, TrialRun, Path]]:
    before = frozenset(farm_domains(settle=0))
    tmp = tmp_path_factory.mktemp("standalone")
    cache = load_settings().cache_dir
    out = tmp / "repro"
    build = export(SeedToken.parse(TOKEN), out).build_line
    subprocess.run(build, shell=True, cwd=out, check=True, capture_output=True)
    argv = SeedToken.parse(TOKEN).params().argv()
    farm_run = run_in_guest(build_initramfs(cache), tmp / "c1", argv, "farm-trial")
    export_run = run_in_guest(with_program(cache, out / "zapmigrate-repro"), tmp / "c2", [],
                              "export-run")  # fmt: skip
    yield farm_run, export_run, out
    mine = f"zapfarm-{os.getpid()}-"  # other suites on this host boot guests of their own
    left = [n for n in farm_domains(ignore=before) if n.startswith(mine)]
    assert left == [], "guests left behind"


def test_exported_program_reads_what_the_farm_trial_reads(
    runs: tuple[TrialRun, TrialRun, Path], tmp_path: Path
) -> None:
    farm_run, export_run, out = runs
    assert farm_run.answer and export_run.answer, (farm_run, export_run)
    farm_out = parse_program_output(str(farm_run.answer["output"]))
    mine = parse_program_output(str(export_run.answer["output"]))
    assert export_run.answer["status"] == "exited" and export_run.answer["exit_code"] == 0
    assert mine.inputs == farm_out.inputs  # the baked parameters are the token's
    assert mine.numa_nodes == farm_out.numa_nodes == 2
    assert mine.migrate.moved > 0 and farm_out.migrate.moved > 0
    readings = [
        (
            o.vma.found,
            o.vma.rss_kb,
            o.vma.pss_shmem_kb,
            o.rss_shmem_kb.before == o.rss_shmem_kb.punched,
        )
        for o in (farm_out, mine)
    ]
    assert readings[0] == readings[1] == (True, 0, 0, True)
    (tmp_path / "out.json").write_text(str(export_run.answer["output"]))
    (tmp_path / "klog").write_text(export_run.console)
    done = subprocess.run(
        ["./run.sh", "--judge", str(tmp_path / "out.json"), str(tmp_path / "klog")],
        cwd=out, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    assert done.stdout.count(": ok,") == 4, done.stdout
    print(json.dumps({"farm": farm_out.inputs, "export_stdout": done.stdout}))
