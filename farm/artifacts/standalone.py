"""A standalone reproducer for one seed token: C sources, a run script and a README.

``farm export`` writes it for people without the farm (a kernel developer, a
mailing list): the trial program ``guest/zapmigrate.c`` unchanged, plus a small
``reproducer.c`` whose default command line is the token's parameters, one
commented constant per flag (built from ``TrialParams.argv()``, so a flag the
trial program gains comes along by itself). It builds with one gcc line and
needs neither Python nor the farm's database. ``run.sh`` checks for two NUMA
nodes, runs the program and reads the four oracles back in plain words.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from farm.params import KNOBS, SeedToken, TrialParams

GUEST_DIR = Path(__file__).resolve().parents[2] / "guest"
BINARY = "zapmigrate-repro"
BUILD_LINE = f"gcc -O2 -static -pthread -o {BINARY} reproducer.c"
NEEDS_NODES = "needs two NUMA nodes"


class ExportError(RuntimeError):
    """The reproducer cannot be written; the message names the fix."""


@dataclass(frozen=True)
class KernelNote:
    """The kernel the README's VM command boots (a registered name, or the installed one)."""

    name: str
    release: str
    path: str | None


@dataclass(frozen=True)
class Export:
    folder: Path
    files: list[str]
    build_line: str


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    return text.replace("*/", "* /")


def default_argv_block(params: TrialParams) -> str:
    """The token's command line as a C array, each flag with what it does."""
    argv = params.argv()
    lines = []
    i = 0
    while i < len(argv):
        flag = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
        knob = KNOBS.get(flag.removeprefix("--").replace("-", "_"))
        note = f"/* {_comment(knob.help)} */" if knob else ""
        pair = (
            f"{_c_string(flag)}, {_c_string(value)},"
            if value is not None
            else f"{_c_string(flag)},"
        )
        lines.append(f"\t{pair:<40} {note}".rstrip())
        i += 2 if value is not None else 1
    return "\n".join(lines)


def vm_notes(params: TrialParams) -> list[str]:
    """VM-level knobs the farm applied to the guest; a plain program cannot, so say them."""
    notes = []
    for name, value in params.vm_knobs().items():
        default = KNOBS[name].default
        if value != default:
            notes.append(f"{name} = {value}: {KNOBS[name].help} (the farm set it on the guest)")
    return notes


def reproducer_c(token: SeedToken, params: TrialParams) -> str:
    vm = "".join(f"\n * VM level, not in this program: {_comment(n)}" for n in vm_notes(params))
    return f"""\
// SPDX-License-Identifier: GPL-2.0-only
/*
 * Standalone reproducer for zapfarm seed token
 *   {_comment(str(token))}
 * (parameter space v{token.version}). The trial program is zapmigrate.c, unchanged;
 * this file only gives it the token's command line as its default.{vm}
 *
 * Build: {BUILD_LINE}
 * Run:   ./run.sh   (or ./{BINARY} [--flag value ...] to change a parameter)
 *
 * The race needs two NUMA nodes: with one, every move_pages() fails with
 * ENODEV and the run says nothing about the kernel, so it is refused.
 */
#define main zapmigrate_main
#include "zapmigrate.c"
#undef main

#include <dirent.h>

/* The token's parameters, flag by flag: what the farm's trial passed. */
static const char *const token_argv[] = {{
{default_argv_block(params)}
}};

static int online_numa_nodes(void)
{{
	DIR *dir = opendir("/sys/devices/system/node");
	struct dirent *d;
	int n = 0;

	if (!dir)
		return 1;	/* no NUMA support in this kernel: one node */
	while ((d = readdir(dir)) != NULL)
		if (!strncmp(d->d_name, "node", 4) && isdigit((unsigned char)d->d_name[4]))
			n++;
	closedir(dir);
	return n;
}}

int main(int argc, char **argv)
{{
	enum {{ N = sizeof(token_argv) / sizeof(token_argv[0]) }};
	char *args[N + 2];
	int nodes = online_numa_nodes();

	if (nodes < 2) {{
		fprintf(stderr, "{BINARY}: {NEEDS_NODES}, this machine has %d: run it in a VM "
			"with two (README.md shows a qemu command line)\\n", nodes);
		return 2;
	}}
	if (argc > 1)
		return zapmigrate_main(argc, argv);
	args[0] = argv[0];
	for (int i = 0; i < N; i++)
		args[i + 1] = (char *)token_argv[i];
	args[N + 1] = NULL;
	return zapmigrate_main(N + 1, args);
}}
"""


RUN_SH = Path(__file__).resolve().parent / "templates" / "run.sh"  # @NAME@ placeholders


def run_sh() -> str:
    return (
        RUN_SH.read_text()
        .replace("@BINARY@", BINARY)
        .replace("@NEEDS@", NEEDS_NODES)
        .replace("@BUILD@", BUILD_LINE)
    )


def qemu_command(kernel: KernelNote | None) -> str:
    image = (kernel.path if kernel and kernel.path else None) or "/boot/vmlinuz-$(uname -r)"
    return " \\\n    ".join(
        [
            "qemu-system-x86_64 -machine q35,accel=kvm:tcg -cpu max -m 2G",
            "-smp 2,sockets=2,cores=1",
            "-object memory-backend-ram,id=m0,size=1G -object memory-backend-ram,id=m1,size=1G",
            "-numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,cpus=1,memdev=m1",
            f"-kernel {shlex.quote(image) if kernel and kernel.path else image} "
            "-initrd repro.cpio.gz",
            "-append 'console=ttyS0 rdinit=/init panic=-1' -nographic -no-reboot",
        ]
    )


def readme(token: SeedToken, params: TrialParams, kernel: KernelNote | None) -> str:
    seen = f" It was exported for kernel `{kernel.name}` ({kernel.release})." if kernel else ""
    vm = "".join(f"\n- {n}" for n in vm_notes(params))
    vm_part = (
        f"\nThe farm also changed the guest itself for this trial (a program cannot):{vm}\n"
        if vm
        else ""
    )
    return f"""\
# Reproducer for zapfarm token `{token}`

A shmem hole punch (`fallocate(PUNCH_HOLE)` or `madvise(MADV_REMOVE)` on a
memfd mapping) races page migration (`move_pages()` between two NUMA nodes).
Before upstream commit 5abfd71d936a ("mm: don't skip swap entry even if
zap_details specified", v5.18), `zap_pte_range()` skipped migration entries
during the unlocked unmap of a hole punch.{seen}

Files: `zapmigrate.c` (the trial program), `reproducer.c` (the token's
parameters as its default command line, one commented line per flag),
`run.sh` (checks for two NUMA nodes, runs it, reads the oracles back).
No Python, no database, no farm.

## Build

```sh
{BUILD_LINE}
```

## Run

```sh
sudo ./run.sh      # root reads the kernel log: the teardown and splat oracles need it
```

On a machine with one NUMA node it stops with "{NEEDS_NODES}": every
migration would fail with ENODEV and the run would say nothing about the kernel.
Exit status: 0 nothing wrong, 1 the kernel misbehaved, 2 cannot judge.

## What an affected kernel prints

The four oracles, each on its own line of `run.sh`'s output:

1. **VMA**: after every page was punched, the memfd mapping's own
   `/proc/self/smaps` entry must read `Rss: 0 kB` and `Pss_Shmem: 0 kB`.
   Affected: `VMA oracle: AFFECTED, the mapping still maps pages ...`.
2. **counter**: `RssShmem` in `/proc/self/status` must return to its value
   before the buffer was populated. Affected: `counter oracle: AFFECTED ...`.
3. **teardown**: when the program exits, the kernel's `check_mm()` prints
   `BUG: Bad rss-counter state mm:... type:MM_SHMEMPAGES val:N` (older kernels:
   `idx:1 val:N`) if the counter is off.
4. **splat**: any kernel report during the run (`WARNING:`, `BUG:`, `Oops`,
   KASAN, lockups, stalls). A kernel with the debug check
   `WARN_ON_ONCE(is_migration_entry(entry))` at the skip site prints a
   `WARNING: ... zap_pte_range` once per boot.

A kernel with the fix prints `ok` on every line. The race is timing
dependent: run it several times (the farm measured this token's hit rate).

## In a throwaway VM (two NUMA nodes)

Without two nodes there is nothing to test. With QEMU (ACPI is on by default
on `q35`; without an ACPI SRAT a guest sees one node whatever `-numa` says),
an initramfs holding busybox, the program and this folder's `run.sh` as init:

```sh
mkdir -p root/bin root/proc root/sys root/dev
cp /bin/busybox root/bin/ && cp {BINARY} run.sh root/
cat > root/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
/run.sh; echo "run.sh exit $?"; poweroff -f
EOF
chmod +x root/init
(cd root && find . | cpio -o -H newc | gzip) > repro.cpio.gz
{qemu_command(kernel)}
```

(`busybox` must be the static one: Debian's `busybox-static`.) With
virtme-ng, `vng --run KERNEL --cpus 2 --numa 1G,cpus=0 --numa 1G,cpus=1 -- ./run.sh`
does the same on a kernel tree.

## Parameters

`reproducer.c` lists them; `./{BINARY} --pages 512 ...` runs other values
(then every flag must be given). Its JSON output has every input and reading.
{vm_part}"""


def export(
    token: SeedToken, out: Path, kernel: KernelNote | None = None, *, guest_dir: Path = GUEST_DIR
) -> Export:
    """Write the reproducer folder for ``token`` (created; must be empty if it exists)."""
    params = token.params()
    source = guest_dir / "zapmigrate.c"
    if not source.is_file():
        raise ExportError(f"{source} is missing (run from a zapfarm checkout)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder: give a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out / "zapmigrate.c")
    (out / "reproducer.c").write_text(reproducer_c(token, params))
    (out / "run.sh").write_text(run_sh())
    (out / "run.sh").chmod(0o755)
    (out / "README.md").write_text(readme(token, params, kernel))
    return Export(out, ["zapmigrate.c", "reproducer.c", "run.sh", "README.md"], BUILD_LINE)
