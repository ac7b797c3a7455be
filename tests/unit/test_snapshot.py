"""workers/snapshot.py without a guest: keys, slots and their locks, metadata, XML for a new life.

The domain XML sample is what libvirt 9.0 returned for a saved farm guest
(``virDomainSaveImageGetXMLDesc``), with its paths generalised.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from workers.domain import NAME_PREFIX, DomainSpec, render
from workers.snapshot import (
    METADATA_NS,
    Slot,
    SnapshotError,
    SnapshotStore,
    image_inputs,
    image_key,
    owner_pid,
    restore_xml,
    saved_name,
)
from workers.vm import reap_orphans

SAVED = (Path(__file__).parents[1] / "data/snapshot/saved-domain.xml").read_text()
NS = {"z": METADATA_NS}


def test_restore_xml_gives_the_new_life_its_owner_console_and_images() -> None:
    xml = restore_xml(
        SAVED,
        owner="worker-7:4242",
        console_log=Path("/var/lib/zapfarm/consoles/zapfarm-4242-aaaaaaaaaaaa.log"),
        kernel=Path("/var/lib/zapfarm/images/k"),
        initrd=Path("/var/lib/zapfarm/images/i"),
    )
    old, new = ET.fromstring(SAVED), ET.fromstring(xml)
    # libvirt's ABI check refuses another name or UUID: both stay
    assert new.findtext("name") == old.findtext("name") == saved_name(SAVED)
    assert new.findtext("uuid") == old.findtext("uuid")
    assert new.findtext("os/kernel") == "/var/lib/zapfarm/images/k"
    assert new.findtext("os/initrd") == "/var/lib/zapfarm/images/i"
    assert new.findtext("metadata/z:guest/z:owner", namespaces=NS) == "worker-7:4242"
    assert new.findtext("metadata/z:guest/z:kernel", namespaces=NS) == "debian-6.1.0-57-amd64"
    paths = [s.get("path") for s in new.iter("source") if s.get("path")]
    assert paths == ["/var/lib/zapfarm/consoles/zapfarm-4242-aaaaaaaaaaaa.log"] * 2
    assert owner_pid(xml, "worker-7") == 4242
    assert owner_pid(xml, "another-host") is None
    # everything else (devices, addresses, NUMA cells) is untouched
    for tag in ("memory", "vcpu", "cpu/numa", "devices/controller", "features"):
        assert ET.tostring(new.find(tag)) == ET.tostring(old.find(tag)), tag  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda x: x.replace("<initrd>", "<initrd2>").replace("</initrd>", "</initrd2>"), "initrd"),
        (lambda x: x.replace("zapfarm:owner", "zapfarm:boss"), "owner"),
        (lambda x: x.replace("<serial type='pty'>", "<serial type='file'>"), "file serials"),
        (lambda x: x[:200], "does not parse"),
    ],
)
def test_restore_xml_refuses_what_it_cannot_place(edit: object, message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        restore_xml(
            edit(SAVED),  # type: ignore[operator]
            owner="h:1",
            console_log=Path("/c"),
            kernel=Path("/k"),
            initrd=Path("/i"),
        )


def test_slots_are_exclusive_between_processes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "images")
    a = store.claim("k1")
    b = store.claim("k1")  # flock: a second open file description conflicts, even in-process
    assert a is not None and b is not None and (a.number, b.number) == (0, 1)
    assert a.domain_name != b.domain_name and a.domain_name.startswith(NAME_PREFIX)
    # another process sees both taken and gets slot 2
    code = (
        "import sys; from pathlib import Path; from workers.snapshot import SnapshotStore;"
        "s = SnapshotStore(Path(sys.argv[1])).claim('k1'); print(s.number)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "images")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "2"
    a.release()
    again = store.claim("k1")
    assert again is not None and again.number == 0
    full = SnapshotStore(tmp_path / "images", max_slots=2)
    assert full.claim("k1") is None  # 0 and 1 held: the pool then boots without an image


def test_domain_names_differ_per_folder_and_key(tmp_path: Path) -> None:
    one = Slot(tmp_path / "a", "k1", 0).domain_name
    assert one == Slot(tmp_path / "a", "k1", 0).domain_name
    assert one != Slot(tmp_path / "b", "k1", 0).domain_name  # two checkouts on one host
    assert one != Slot(tmp_path / "a", "k2", 0).domain_name


def commit(slot: Slot, kernel_name: str = "debian-6.1", size: int = 4096) -> None:
    slot.staging.write_bytes(b"\x01" * size)
    slot.commit(
        kernel_name=kernel_name,
        inputs={"k": 1},
        ready={"kernel": "6.1.0-57-amd64", "numa_nodes": 2},
        boot_seconds=9.5,
        save_seconds=2.0,
    )


def test_metadata_vouches_for_the_image_it_was_written_with(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    slot = store.claim("k1")
    assert slot is not None and slot.metadata() is None  # nothing saved yet
    commit(slot)
    meta = slot.metadata()
    assert meta is not None and meta["ready"]["numa_nodes"] == 2 and meta["size"] == 4096
    assert not slot.staging.exists()
    with slot.image.open("ab") as f:  # a torn or replaced image
        f.write(b"x")
    assert slot.metadata() is None
    commit(slot)
    other = Slot(tmp_path, "k2", 0)  # another key's files under this slot's name
    other.metadata_path.write_text(slot.metadata_path.read_text())
    other.image.write_bytes(slot.image.read_bytes())
    assert other.metadata() is None
    slot.discard()
    assert not slot.image.exists() and not slot.metadata_path.exists()


def test_prune_deletes_stale_images_of_the_kernel_that_no_one_uses(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    stale = store.claim("old")
    in_use = store.claim("older")
    other_kernel = store.claim("foreign")
    assert stale and in_use and other_kernel
    commit(stale)
    commit(in_use)
    commit(other_kernel, kernel_name="debian-5.10")
    stale.release()  # its process is gone
    other_kernel.release()
    current = store.claim("new")
    assert current is not None
    commit(current)
    sibling = Slot(tmp_path, "new", 5)  # the same key in another slot: still good
    commit(sibling)
    deleted = store.prune(current, "debian-6.1")
    assert sorted(p.name for p in deleted) == ["old-0.json", "old-0.save"]
    assert in_use.metadata() is not None  # locked by a live process
    assert Slot(tmp_path, "foreign", 0).metadata() is not None  # another kernel
    assert sibling.metadata() is not None and current.metadata() is not None


def test_the_key_follows_every_input(tmp_path: Path) -> None:
    conn = libvirt.open("test:///default")
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    kernel.write_bytes(b"kernel-1")
    initrd.write_bytes(b"initrd-1")
    shape = {"virt_type": "qemu", "memory_mb": 1024, "cpus": 2}
    base = image_key(image_inputs(conn, kernel=kernel, initrd=initrd, **shape))  # type: ignore[arg-type]
    assert base == image_key(image_inputs(conn, kernel=kernel, initrd=initrd, **shape))  # type: ignore[arg-type]
    for change in ({"memory_mb": 2048}, {"cpus": 4}, {"virt_type": "kvm"}):
        other = image_inputs(conn, kernel=kernel, initrd=initrd, **(shape | change))  # type: ignore[arg-type]
        assert image_key(other) != base, change
    os.utime(initrd, ns=(1, 1))
    initrd.write_bytes(b"initrd-2")
    assert image_key(image_inputs(conn, kernel=kernel, initrd=initrd, **shape)) != base  # type: ignore[arg-type]
    conn.close()


def test_reap_orphans_finds_restored_guests_by_their_owner() -> None:
    """A restored guest keeps its image's name: the owner in its metadata says whose it is."""
    conn = libvirt.open("test:///default")
    host = socket.gethostname()

    def start(name: str, owner: str) -> None:
        spec = DomainSpec(
            name=name,
            kernel_name="debian-6.1",
            kernel=Path("/boot/vmlinuz"),
            initrd=Path("/var/lib/zapfarm/guest/initramfs.cpio.gz"),
            console_log=Path(f"/var/lib/zapfarm/consoles/{name}.log"),
            owner=owner,
            emulator="/usr/bin/true",
        )
        xml = render(spec)
        conn.createXML(xml.replace("type='qemu'", "type='test'", 1), 0)

    dead_pid = 2**22 + 19
    start("zapfarm-snap-0123456789ab-0", f"{host}:{dead_pid}")
    start("zapfarm-snap-0123456789ab-1", f"{host}:{os.getpid()}")
    start(f"zapfarm-{os.getpid()}-dddddddddddd", f"{host}:{dead_pid}")  # the owner decides
    reaped = reap_orphans(conn)
    assert sorted(reaped) == sorted(
        ["zapfarm-snap-0123456789ab-0", f"zapfarm-{os.getpid()}-dddddddddddd"]
    )
    assert "zapfarm-snap-0123456789ab-1" in {d.name() for d in conn.listAllDomains()}
    conn.close()


FAKE_VIRSH = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
case "$4" in
  dumpxml) [ "$5" = 7 ] && cat "$(dirname "$0")/dom7.xml" || exit 1 ;;
esac
"""


@pytest.mark.parametrize(
    ("owner_in_xml", "destroyed"), [("h:100", True), ("h:200", False), (None, False)]
)
def test_the_guardian_destroys_only_its_owners_domain(
    tmp_path: Path, owner_in_xml: str | None, destroyed: bool
) -> None:
    """On EOF the guardian destroys domain id 7 only while ``h:100`` owns it (ids restart
    with libvirtd; the next life of an image has the same name but another owner)."""
    from workers.vm import GUARDIAN

    virsh = tmp_path / "virsh"
    virsh.write_text(FAKE_VIRSH)
    virsh.chmod(0o755)
    if owner_in_xml is not None:
        (tmp_path / "dom7.xml").write_text(
            f"<domain><metadata><zapfarm:owner>{owner_in_xml}</zapfarm:owner></metadata></domain>"
        )
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    guardian = subprocess.Popen(
        ["sh", "-c", GUARDIAN, "qemu:///system", "7", "h:100"], stdin=subprocess.PIPE, env=env
    )
    time.sleep(0.3)
    assert not (tmp_path / "calls").exists()  # nothing while the owner lives
    assert guardian.stdin is not None
    guardian.stdin.close()  # the owner died
    assert guardian.wait(10) == 0 or not destroyed
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "-q -c qemu:///system dumpxml 7"
    assert (calls[1:] == ["-q -c qemu:///system destroy 7"]) == destroyed
