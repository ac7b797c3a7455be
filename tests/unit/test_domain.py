"""The guest's domain XML: a golden file, validation, and handling on libvirt's test driver.

Re-render the golden file after an intended change with ZAPFARM_REGEN_GOLDEN=1.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from workers.domain import DomainSpec, render
from workers.vm import reap_orphans

GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "domain.xml"


def spec(**overrides: object) -> DomainSpec:
    values: dict[str, object] = {
        "name": "zapfarm-1234-0123456789ab",
        "kernel_name": "debian-bookworm-6.1",
        "kernel": Path("/boot/vmlinuz-6.1.0-56-amd64"),
        "initrd": Path("/var/lib/zapfarm/guest/initramfs-0123abcd.cpio.gz"),
        "console_log": Path("/var/lib/zapfarm/consoles/zapfarm-1234-0123456789ab.log"),
        "owner": "worker1:1234",
        "emulator": "/usr/bin/qemu-system-x86_64",
    }
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


def test_golden_file() -> None:
    xml = render(spec())
    if os.environ.get("ZAPFARM_REGEN_GOLDEN"):
        GOLDEN.write_text(xml)
    assert xml == GOLDEN.read_text()


def test_what_the_race_needs_is_in_the_xml() -> None:
    root = ET.fromstring(render(spec()))
    assert root.get("type") == "qemu"
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    cells = root.findall("cpu/numa/cell")
    assert [(c.get("id"), c.get("cpus"), c.get("memory")) for c in cells] == [
        ("0", "0", "512"),
        ("1", "1", "512"),
    ]
    assert root.find("cpu/topology").get("sockets") == "2"  # one socket per vCPU: no topology WARN
    serials = root.findall("devices/serial")
    assert serials[0].get("type") == "file" and serials[0].find("target").get("port") == "0"
    assert serials[1].get("type") == "pty" and serials[1].find("target").get("port") == "1"
    assert "console=ttyS0" in root.findtext("os/cmdline")
    assert root.find("cputune") is None


def test_cpu_quota_and_larger_guests() -> None:
    root = ET.fromstring(render(spec(cpu_quota_pct=30, cpus=4, memory_mb=2048)))
    assert root.findtext("cputune/period") == "100000"
    assert root.findtext("cputune/quota") == "30000"
    assert [c.get("cpus") for c in root.findall("cpu/numa/cell")] == ["0-1", "2-3"]


def test_values_are_escaped() -> None:
    xml = render(spec(kernel_name="<evil>&'\"", console_log=Path("/tmp/a'b.log")))
    root = ET.fromstring(xml)
    assert root.find("devices/serial/source").get("path") == "/tmp/a'b.log"
    assert "<evil>" not in xml


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "other-vm"}, "must start with"),
        ({"virt_type": "xen"}, "virt_type"),
        ({"cpus": 3}, "spread evenly"),
        ({"memory_mb": 100}, "cells"),
        ({"cpu_quota_pct": 0}, "cpu_quota_pct"),
    ],
)
def test_invalid_specs(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**overrides)


def test_reap_orphans_on_the_test_driver() -> None:
    """Only farm guests whose owner process is gone are destroyed."""
    conn = libvirt.open("test:///default")
    import socket

    host = socket.gethostname()

    def define(name: str, owner: str) -> None:
        xml = render(spec(name=name, owner=owner, emulator="/usr/bin/true"))
        xml = xml.replace("type='qemu'", "type='test'", 1)
        conn.createXML(xml, 0)

    dead_pid = 2**22 + 17  # above pid_max on this host
    define(f"zapfarm-{dead_pid}-aaaaaaaaaaaa", f"{host}:{dead_pid}")
    define(f"zapfarm-{os.getpid()}-bbbbbbbbbbbb", f"{host}:{os.getpid()}")
    define(f"zapfarm-{dead_pid}-cccccccccccc", f"otherhost:{dead_pid}")
    reaped = reap_orphans(conn)
    names = {d.name() for d in conn.listAllDomains()}
    assert reaped == [f"zapfarm-{dead_pid}-aaaaaaaaaaaa"]
    assert f"zapfarm-{os.getpid()}-bbbbbbbbbbbb" in names
    assert f"zapfarm-{dead_pid}-cccccccccccc" in names  # another host's guest is not ours
    assert "test" in names  # the driver's own domain is untouched
    conn.close()
