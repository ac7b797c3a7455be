"""farm.artifacts.kernels, kernelbuild and `farm kernels`: what works without a mirror.

Names and flavours are refused naming the valid ones; a custom image must be a
real bzImage and lands world-readable in the cache and in the database; the
build cache key moves whenever an input of the build does; the private apt
never points at the system's configuration. Fetching and building for real
is measured in docs/kernels.md, not here.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.artifacts import kernelbuild, kernels, sources
from farm.artifacts.kernelbuild import BuildSpec, build_key, build_name, fragments_for, patches_for
from farm.artifacts.kernels import KernelError
from farm.cli.kernels import kernels as kernels_group


def make_bzimage(path: Path, version_text: bytes = b"6.1.0-zap (zapfarm@zapfarm) #1 SMP") -> Path:
    """A file with just enough of an x86 setup header to pass as a bzImage."""
    data = bytearray(0x4000)
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    data[0x206:0x208] = (0x020F).to_bytes(2, "little")  # boot protocol 2.15
    pointer = 0x1000
    data[0x20E:0x210] = pointer.to_bytes(2, "little")
    data[pointer + 0x200 : pointer + 0x200 + len(version_text)] = version_text
    data[-16:] = path.name.encode().ljust(16, b"\0")[:16]  # distinct bytes per file name
    path.write_bytes(bytes(data))
    return path


# --- names ------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["bullseye", "bookworm", "trixie"])
def test_known_suites(suite: str) -> None:
    assert kernels.parse_distribution(f"debian:{suite}") == suite


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("debian:buster", ["archived", "debian:bullseye", "debian:trixie"]),
        ("debian:sarge", ["unknown Debian suite", "debian:bookworm"]),
        ("ubuntu:jammy", ["unknown distribution", "debian:bullseye"]),
        ("bullseye", ["unknown distribution"]),
        ("debian:", ["unknown distribution"]),
    ],
)
def test_unknown_suites_name_the_valid_ones(spec: str, words: list[str]) -> None:
    with pytest.raises(KernelError) as exc:
        kernels.parse_distribution(spec)
    for word in words:
        assert word in str(exc.value)


def test_flavours() -> None:
    for flavour in ("amd64", "cloud-amd64", "rt-amd64"):
        assert kernels.check_flavour(flavour) == flavour
    with pytest.raises(KernelError, match=r"'arm64'.*amd64, cloud-amd64, rt-amd64"):
        kernels.check_flavour("arm64")


def test_cli_refuses_unknown_suite_and_flavour(tmp_path: Path) -> None:
    env = {"FARM_CACHE_DIR": str(tmp_path), "FARM_DATABASE_URL": f"sqlite:///{tmp_path}/f.db"}
    runner = CliRunner()
    result = runner.invoke(kernels_group, ["fetch", "debian:buster"], env=env)
    assert result.exit_code == 2 and "debian:bullseye" in result.output
    result = runner.invoke(kernels_group, ["fetch", "debian:trixie", "--flavour", "686"], env=env)
    assert result.exit_code == 2 and "cloud-amd64" in result.output
    assert not (tmp_path / "apt").exists()  # refused before any apt work


@pytest.mark.parametrize("name", ["", "../x", "a b", "-x", "x" * 129, "a/b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(KernelError, match="invalid kernel name"):
        kernels.check_name(name)


def test_release_of_package() -> None:
    assert kernels.release_of_package("linux-image-5.10.0-32-amd64") == "5.10.0-32-amd64"
    assert kernels.release_of_package("linux-image-6.1.0-9-cloud-amd64-unsigned") == (
        "6.1.0-9-cloud-amd64"
    )
    assert kernels.release_of_package("linux-image-6.12.118+deb13-rt-amd64") == (
        "6.12.118+deb13-rt-amd64"
    )


# --- bzImage --------------------------------------------------------------------------


def test_bzimage_header(tmp_path: Path) -> None:
    info = kernels.inspect_bzimage(make_bzimage(tmp_path / "bzImage"))
    assert info.protocol == "2.15"
    assert info.release == "6.1.0-zap"


def test_not_a_bzimage(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 0x1000)
    with pytest.raises(KernelError, match="0x202"):
        kernels.inspect_bzimage(junk)
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF" + b"\0" * 0x1000)
    with pytest.raises(KernelError, match="ELF"):
        kernels.inspect_bzimage(elf)
    short = tmp_path / "short"
    short.write_bytes(b"HdrS")
    with pytest.raises(KernelError, match="HdrS"):
        kernels.inspect_bzimage(short)


def test_installed_kernel_still_works(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    make_bzimage(boot / "vmlinuz-6.1.0-9-amd64")
    make_bzimage(boot / "vmlinuz-6.1.0-10-amd64")
    image = kernels.installed_kernel(boot)
    assert image.name == "debian-6.1.0-10-amd64" and image.source == "debian:installed"


# --- add and list --------------------------------------------------------------------


def test_add_and_list(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"FARM_CACHE_DIR": str(cache), "FARM_DATABASE_URL": f"sqlite:///{tmp_path}/farm.db"}
    image = make_bzimage(tmp_path / "bzImage")
    runner = CliRunner()

    added = runner.invoke(kernels_group, ["add", str(image), "--name", "my-6.1"], env=env)
    assert added.exit_code == 0, added.output
    name, release, sha, path = added.stdout.strip().splitlines()[-1].split("\t")
    assert (name, release) == ("my-6.1", "6.1.0-zap")
    copy = Path(path)
    assert copy == cache / "kernels" / "my-6.1" / "bzImage"
    assert copy.read_bytes() == image.read_bytes()
    assert sha == kernels.sha256_of(image)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o644
    assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o755
    assert [k.name for k in kernels.cached_kernels(cache)] == ["my-6.1"]

    again = runner.invoke(kernels_group, ["add", str(image), "--name", "my-6.1"], env=env)
    assert again.exit_code == 0, again.output  # idempotent

    other = make_bzimage(tmp_path / "other")
    clash = runner.invoke(kernels_group, ["add", str(other), "--name", "my-6.1"], env=env)
    assert clash.exit_code == 2 and "another --name" in clash.output

    junk = tmp_path / "junk"
    junk.write_bytes(b"not a kernel" * 100)
    bad = runner.invoke(kernels_group, ["add", str(junk), "--name", "junk"], env=env)
    assert bad.exit_code == 2 and "0x202" in bad.output
    missing = runner.invoke(kernels_group, ["add", str(tmp_path / "nope"), "--name", "x"], env=env)
    assert missing.exit_code == 2 and "does not exist" in missing.output

    listed = runner.invoke(kernels_group, ["list"], env=env, terminal_width=250)
    assert listed.exit_code == 0, listed.output
    assert "my-6.1" in listed.stdout and "6.1.0-zap" in listed.stdout
    assert "custom" in listed.stdout and sha[:12] in listed.stdout
    assert "junk" not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if "my-6.1" in line)
    assert "yes" in row

    copy.unlink()
    gone = runner.invoke(kernels_group, ["list"], env=env, terminal_width=250)
    row = next(line for line in gone.stdout.splitlines() if "my-6.1" in line)
    assert "no" in row and "yes" not in row


def test_add_refuses_a_name_taken_in_the_database(tmp_path: Path) -> None:
    """The database is the authority: a name registered elsewhere with another image."""
    env = {
        "FARM_CACHE_DIR": str(tmp_path / "a"),
        "FARM_DATABASE_URL": f"sqlite:///{tmp_path}/farm.db",
    }
    runner = CliRunner()
    first = runner.invoke(
        kernels_group, ["add", str(make_bzimage(tmp_path / "one")), "--name", "k"], env=env
    )
    assert first.exit_code == 0, first.output
    env["FARM_CACHE_DIR"] = str(tmp_path / "b")  # another host's cache, same database
    second = runner.invoke(
        kernels_group, ["add", str(make_bzimage(tmp_path / "two")), "--name", "k"], env=env
    )
    assert second.exit_code == 2 and "already registered" in second.output


# --- the build's inputs ------------------------------------------------------------------


def fake_kernel_dir(root: Path) -> Path:
    (root / "patches" / "warn" / "6.1").mkdir(parents=True)
    (root / "patches" / "revert-fix" / "6.1").mkdir(parents=True)
    (root / "config.fragment").write_text("# comment\nCONFIG_NUMA=y\nCONFIG_NR_CPUS=8\n")
    (root / "patches" / "warn" / "6.1" / "0001-warn.patch").write_text("warn v1\n")
    (root / "patches" / "revert-fix" / "6.1" / "0001-revert.patch").write_text("revert v1\n")
    return root


def key_of(kdir: Path, spec: BuildSpec, version: str = "6.1.192-2") -> str:
    return build_key(version, spec, fragments_for(spec.series, kdir), patches_for(spec, kdir))


def test_build_key_follows_every_input(tmp_path: Path) -> None:
    kdir = fake_kernel_dir(tmp_path)
    both = BuildSpec("6.1", "warn", True)
    base = key_of(kdir, both)
    assert key_of(kdir, both) == base  # stable
    assert key_of(kdir, both, "6.1.192-3") != base  # source package version
    assert key_of(kdir, BuildSpec("6.1", "warn")) != base  # flags
    assert key_of(kdir, BuildSpec("6.1")) != key_of(kdir, BuildSpec("6.1", revert_fix=True))

    (kdir / "config.fragment").write_text("# comment\nCONFIG_NUMA=y\nCONFIG_NR_CPUS=16\n")
    changed_fragment = key_of(kdir, both)
    assert changed_fragment != base

    (kdir / "patches" / "warn" / "6.1" / "0001-warn.patch").write_text("warn v2\n")
    changed_patch = key_of(kdir, both)
    assert changed_patch != changed_fragment
    assert key_of(kdir, BuildSpec("6.1", revert_fix=True)) != changed_patch

    (kdir / "config-6.1.fragment").write_text("CONFIG_DEBUG_VM=y\n")  # a per-series fragment
    assert fragments_for("6.1", kdir)[-1].name == "config-6.1.fragment"
    assert key_of(kdir, both) != changed_patch


def test_build_names_and_patch_order(tmp_path: Path) -> None:
    kdir = fake_kernel_dir(tmp_path)
    spec = BuildSpec("6.1", "warn", True)
    assert spec.flags == "warn-revertfix"
    assert BuildSpec("6.1").flags == "plain"
    assert [p.name for p in patches_for(spec, kdir)] == ["0001-revert.patch", "0001-warn.patch"]
    assert build_name(spec, "0123456789abcdef") == "build-6.1-warn-revertfix-01234567"
    with pytest.raises(KernelError, match=r"no patches for warn on 6\.1"):
        (kdir / "patches" / "warn" / "6.1" / "0001-warn.patch").unlink()
        patches_for(spec, kdir)


def test_bad_build_specs() -> None:
    with pytest.raises(KernelError, match=r"5\.10, 6\.1, 6\.12"):
        BuildSpec("4.19")
    with pytest.raises(KernelError, match="warn"):
        BuildSpec("6.1", "kasan")


def test_repository_has_patches_for_every_series() -> None:
    for series in sources.SERIES:
        for instrument in kernelbuild.INSTRUMENTS:
            spec = BuildSpec(series, instrument, True)
            assert [p.parent.parent.name for p in patches_for(spec)] == ["revert-fix", instrument]
            assert spec.flags == f"{instrument}-revertfix"
        assert BuildSpec(series, "count").patch_sets == ["count"]


def test_count_builds_have_the_vm_event_counters() -> None:
    """/proc/vmstat shows vm events only with CONFIG_VM_EVENT_COUNTERS (tinyconfig drops it)."""
    for series in sources.SERIES:
        assert kernelbuild.parse_fragment(fragments_for(series))["CONFIG_VM_EVENT_COUNTERS"] == "y"


def test_fragment_parses_and_covers_what_the_guest_needs() -> None:
    wanted = kernelbuild.parse_fragment(fragments_for("6.1"))
    must = {
        "CONFIG_NUMA", "CONFIG_ACPI_NUMA", "CONFIG_MIGRATION", "CONFIG_SHMEM", "CONFIG_TMPFS",
        "CONFIG_MEMFD_CREATE", "CONFIG_DEVTMPFS", "CONFIG_BLK_DEV_INITRD", "CONFIG_RD_GZIP",
        "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_PROC_FS", "CONFIG_SYSFS", "CONFIG_FUTEX",
        "CONFIG_BUG", "CONFIG_KALLSYMS", "CONFIG_PROC_PAGE_MONITOR", "CONFIG_ADVISE_SYSCALLS",
    }  # fmt: skip
    assert must <= {k for k, v in wanted.items() if v == "y"}
    assert int(wanted["CONFIG_SERIAL_8250_RUNTIME_UARTS"]) >= 2
    assert int(wanted["CONFIG_SERIAL_8250_NR_UARTS"]) >= 2


def test_fragment_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.fragment"
    bad.write_text("CONFIG_A=y\nNUMA=y\n")
    with pytest.raises(KernelError, match=r"bad.fragment:2"):
        kernelbuild.parse_fragment([bad])
    good = tmp_path / "good.fragment"
    good.write_text("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=4\n")
    assert kernelbuild.parse_fragment([good]) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "4"}


def test_lost_options_are_named(tmp_path: Path) -> None:
    wanted = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "4", "CONFIG_D": "y"}
    have = {"CONFIG_A": "y", "CONFIG_C": "2"}  # B absent counts as n; D lost; C changed
    lost = kernelbuild.lost_options(wanted, have)
    assert lost == {"CONFIG_C": "4", "CONFIG_D": "y"}
    text = kernelbuild.describe_lost(lost, have, [tmp_path / "f"], {"CONFIG_C"})
    assert "CONFIG_C, CONFIG_D" in text
    assert "CONFIG_C: wanted 4, got 2" in text
    assert "CONFIG_D: wanted y, got not set (no such option in this source)" in text


# --- apt: mirrors and isolation ----------------------------------------------------------


def test_mirrors_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/x\n"
        "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    (etc / "sources.list.d" / "other.list.disabled").write_text(
        "deb http://elsewhere.example/debian bookworm main\n"
    )
    assert kernels.find_mirrors(etc) == kernels.Mirrors(
        "http://mirror.example/debian", "http://mirror.example/debian-security"
    )
    one = tmp_path / "one"
    one.mkdir()
    (one / "sources.list").write_text(
        "deb [arch=amd64] http://local.example/debian/ bookworm main  # comment\n"
        "deb http://packages.example/apt cloud-sdk main\n"
    )
    assert kernels.find_mirrors(one) == kernels.Mirrors(
        "http://local.example/debian", "http://local.example/debian-security"
    )
    assert kernels.find_mirrors(tmp_path / "none") == kernels.Mirrors(
        kernels.DEFAULT_MIRROR, kernels.DEFAULT_SECURITY_MIRROR
    )


def test_private_apt_never_touches_the_system(tmp_path: Path) -> None:
    mirrors = kernels.Mirrors("http://m.example/debian", "http://m.example/debian-security")
    apt = kernels.PrivateApt(tmp_path / "apt", "bullseye", mirrors)
    apt.prepare()
    opts = apt.options()
    values = dict(opts[i + 1].split("=", 1) for i in range(0, len(opts), 2))
    for key in (
        "Dir::Etc::SourceList",
        "Dir::Etc::SourceParts",
        "Dir::Etc::Preferences",
        "Dir::Etc::PreferencesParts",
        "Dir::State::Lists",
        "Dir::State::status",
        "Dir::Cache",
    ):
        assert values[key].startswith(str(tmp_path / "apt")), key
    sources = apt.sources_list.read_text()
    assert "http://m.example/debian bullseye main" in sources
    assert "http://m.example/debian bullseye-updates main" in sources
    assert "http://m.example/debian-security bullseye-security main" in sources
    assert (tmp_path / "apt" / "status").read_text() == ""  # no installed packages


def test_unreachable_mirror_names_mirror_and_command(tmp_path: Path) -> None:
    """A real apt-get against a closed loopback port: the error says where and what failed."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "sources.list").write_text("deb http://127.0.0.1:9/debian bookworm main\n")
    with pytest.raises(KernelError) as exc:
        kernels.fetch_debian(tmp_path / "cache", "bullseye", apt_etc=etc)
    text = str(exc.value)
    assert "mirror http://127.0.0.1:9/debian" in text
    assert "apt-get update failed" in text and "command: apt-get" in text
    assert f"Dir::Etc::SourceList={tmp_path / 'cache'}" in text
    assert not (tmp_path / "cache" / "kernels").exists()


def test_check_finds_reports_and_refuses_unknown_kernels(tmp_path: Path) -> None:
    from farm.cli.kernels import _find_image, _splat_lines

    console = (
        "zapfarm: trial t begin\n[ 1.0] WARNING: CPU: 1 PID: 34 at mm/memory.c:1471 x\n"
        "[ 1.1] BUG: Bad rss-counter state mm:00000000 type:MM_SHMEMPAGES val:1\nplain\n"
    )
    assert _splat_lines(console) == [
        "[ 1.0] WARNING: CPU: 1 PID: 34 at mm/memory.c:1471 x",
        "[ 1.1] BUG: Bad rss-counter state mm:00000000 type:MM_SHMEMPAGES val:1",
    ]
    # The parser decides what a report is: an oops and the panic that ends it are one report,
    # and a line that only mentions "Oops" or "hung_task" is none.
    oops = (
        "[ 2.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
        "[ 2.1] Oops: 0002 [#1] SMP\n[ 2.2] RIP: 0010:zap_pte_range+0x1/0x2\n"
        "[ 2.3] Kernel panic - not syncing: Fatal exception\n"
        "Oopsie: hung_task_timeout_secs is fine\n"
    )
    assert _splat_lines(oops) == [
        "[ 2.0] BUG: kernel NULL pointer dereference, address: 0000000000000008"
    ]
    env = {"FARM_CACHE_DIR": str(tmp_path), "FARM_DATABASE_URL": f"sqlite:///{tmp_path}/f.db"}
    result = CliRunner().invoke(kernels_group, ["check", "no-such-kernel"], env=env)
    assert result.exit_code == 2 and "no kernel 'no-such-kernel'" in result.output
    image = make_bzimage(tmp_path / "bz")
    assert _find_image(tmp_path, str(image)).path == image


# --- a developer's own tree (farm kernels build --tree) ------------------------------

# A kernel tree's Kbuild contract for O= builds, reduced to what build_tree uses:
# every output lands under $(O), and the source tree is only read.
FAKE_KBUILD = """\
VERSION = 6
PATCHLEVEL = 1
SUBLEVEL = 99
ifeq ($(O),)
$(error this fake tree only builds out of tree)
endif
tinyconfig:
\tprintf 'CONFIG_64BIT=y\\n# CONFIG_NUMA is not set\\n' > $(O)/.config
olddefconfig:
\ttrue
bzImage:
\tmkdir -p $(O)/arch/x86/boot $(O)/include/config
\tprintf '6.1.99-dev' > $(O)/include/config/kernel.release
\t@echo '  CC      mm/memory.o'
\tcat $(O)/.config mm/memory.c > $(O)/arch/x86/boot/bzImage
"""


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under root with its mtime and content: what "never written to" checks."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


def fake_tree(root: Path) -> Path:
    (root / "mm").mkdir(parents=True)
    (root / "Makefile").write_text(FAKE_KBUILD)
    (root / "Kconfig").write_text("# top\n")
    (root / "mm" / "memory.c").write_text("/* my work in progress */\n")
    return root


def test_tree_build_never_writes_the_tree(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    before = snapshot(tree)
    mine = tmp_path / "my.config"
    mine.write_text("CONFIG_64BIT=y\nCONFIG_MY_DEBUG=y\n")
    result = kernelbuild.build_tree(tmp_path / "cache", tree, config=mine, jobs=1)
    assert snapshot(tree) == before
    image = result.image
    assert image.name.startswith("tree-linux-") and image.release == "6.1.99-dev"
    built = image.path.read_text()
    assert "/* my work in progress */" in built
    # the farm's fragment was merged over the developer's config, which kept its own lines
    assert "CONFIG_MY_DEBUG=y" in built and "CONFIG_NUMA=y" in built
    prov = image.provenance or {}
    assert prov["source"] == f"tree {tree}"
    assert str(prov["config_base"]).startswith(f"{mine} sha256 ")
    assert prov["patches"] == []
    # a second build of the unchanged tree gives the same image name; a change, another one
    assert kernelbuild.build_tree(tmp_path / "cache", tree, config=mine, jobs=1).image.name == (
        image.name
    )
    (tree / "mm" / "memory.c").write_text("/* changed */\n")
    assert kernelbuild.build_tree(tmp_path / "cache", tree, config=mine).image.name != image.name


def test_tree_configured_in_place_is_refused_with_the_fix(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    (tree / ".config").write_text("CONFIG_64BIT=y\n")
    with pytest.raises(KernelError, match=r"make -C .* mrproper.*--config my\.config"):
        kernelbuild.build_tree(tmp_path / "cache", tree)
    with pytest.raises(KernelError, match="is not a Linux kernel tree"):
        kernelbuild.build_tree(tmp_path / "cache", tmp_path)


def test_build_cli_refuses_mixed_source_and_tree(tmp_path: Path) -> None:
    patch = tmp_path / "x.patch"
    patch.write_text("x\n")
    cases = [
        ([], "give one of --source SERIES"),
        (["--source", "6.1", "--tree", str(tmp_path)], "give one of --source SERIES"),
        (["--tree", str(tmp_path), "--patch", str(patch)], "commit your patches to it"),
        (["--source", "6.1", "--config", str(patch)], "--config goes with --tree"),
    ]
    for args, words in cases:
        done = CliRunner().invoke(kernels_group, ["build", *args])
        assert done.exit_code == 2, done.output
        assert words in done.output
