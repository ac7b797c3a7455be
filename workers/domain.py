"""The libvirt domain of a trial guest, rendered from one template.

The XML lives in ``templates/domain.xml`` and the logic here, as tuxrun keeps
its QEMU command lines. What matters for the race is fixed by the template:
ACPI (without it the guest gets no SRAT and sees one NUMA node), two NUMA
cells, one socket per vCPU (a multi-core socket split over nodes makes every
boot print a topology WARNING), the kernel console on serial0 captured to a
file, and the agent's control channel on serial1.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

NAME_PREFIX = "zapfarm-"
CMDLINE = "console=ttyS0,115200 panic=-1 rdinit=/init"
VIRT_TYPES = ("kvm", "qemu")


@dataclass(frozen=True)
class DomainSpec:
    """Everything that decides a guest's domain XML."""

    name: str
    kernel_name: str
    kernel: Path
    initrd: Path
    console_log: Path
    virt_type: str = "qemu"
    memory_mb: int = 1024
    cpus: int = 2
    nodes: int = 2
    owner: str = ""
    cmdline: str = CMDLINE
    cpu_quota_pct: int = 100  # vCPU bandwidth; 100 means no limit
    cpu_period_us: int = 100_000
    emulator: str = ""

    def __post_init__(self) -> None:
        if not self.name.startswith(NAME_PREFIX):
            raise ValueError(f"guest name {self.name!r} must start with {NAME_PREFIX!r}")
        if self.virt_type not in VIRT_TYPES:
            raise ValueError(f"virt_type must be one of {VIRT_TYPES}, not {self.virt_type!r}")
        if self.nodes < 2 or self.cpus < self.nodes or self.cpus % self.nodes:
            raise ValueError(f"{self.cpus} vCPUs cannot be spread evenly over {self.nodes} nodes")
        if self.memory_mb % self.nodes or self.memory_mb < 128 * self.nodes:
            raise ValueError(f"{self.memory_mb} MiB cannot be split into {self.nodes} cells")
        if not 1 <= self.cpu_quota_pct <= 100:
            raise ValueError(f"cpu_quota_pct must be within 1..100, not {self.cpu_quota_pct}")


def find_emulator() -> str:
    path = shutil.which("qemu-system-x86_64")
    if not path:
        raise FileNotFoundError(
            "qemu-system-x86_64 not found: install it with `apt-get install qemu-system-x86`"
        )
    return path


def numa_cells(cpus: int, nodes: int, memory_mb: int) -> str:
    per_node = cpus // nodes
    lines = []
    for node in range(nodes):
        first = node * per_node
        cpuset = str(first) if per_node == 1 else f"{first}-{first + per_node - 1}"
        lines.append(
            f"      <cell id='{node}' cpus='{cpuset}' memory='{memory_mb // nodes}' unit='MiB'/>"
        )
    return "\n".join(lines)


def cputune(quota_pct: int, period_us: int) -> str:
    if quota_pct >= 100:
        return ""
    quota = max(1000, period_us * quota_pct // 100)
    return (
        f"  <cputune>\n    <period>{period_us}</period>\n    <quota>{quota}</quota>\n  </cputune>\n"
    )


def render(spec: DomainSpec) -> str:
    """The domain XML for ``spec``; every value is XML-escaped."""
    template = Template(resources.files("workers").joinpath("templates/domain.xml").read_text())

    def text(value: object) -> str:
        return escape(str(value))

    def attr(value: object) -> str:
        return escape(str(value), {"'": "&apos;", '"': "&quot;"})

    return template.substitute(
        virt_type=spec.virt_type,
        name=text(spec.name),
        kernel_name=text(spec.kernel_name),
        owner=text(spec.owner),
        memory_mb=spec.memory_mb,
        cpus=spec.cpus,
        cputune=cputune(spec.cpu_quota_pct, spec.cpu_period_us),
        kernel=text(spec.kernel),
        initrd=text(spec.initrd),
        cmdline=text(spec.cmdline),
        numa_cells=numa_cells(spec.cpus, spec.nodes, spec.memory_mb),
        emulator=text(spec.emulator or find_emulator()),
        console_log=attr(spec.console_log),
    )
