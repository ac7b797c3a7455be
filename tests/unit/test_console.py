"""Console parser: every sample in tests/data/console gets its expected title.

The samples are real syzkaller console logs (tests/data/console/ATTRIBUTION.md) and zapfarm's
own cases. Each file holds headers up to the first empty line (TITLE, CORRUPTED: Y, and for
zapfarm's also KIND, FRAME, FATAL: Y/N), then the raw log, byte for byte. No TITLE means
the log must yield no report. Adding a case is adding a file.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.cli.triage import triage
from farm.triage import engine
from farm.triage.demangle import demangle
from farm.triage.titles import normalize_title

DATA = Path(__file__).resolve().parent.parent / "data" / "console"
SAMPLES = sorted(p for p in DATA.iterdir() if p.is_file() and not p.name.endswith(".md"))


@dataclass(frozen=True)
class Sample:
    headers: dict[str, str]
    log: bytes


def load(path: Path) -> Sample:
    head, _, log = path.read_bytes().partition(b"\n\n")
    headers = {}
    for line in head.decode("utf-8").splitlines():
        key, _, value = line.partition(":")
        headers[key.strip()] = value.strip()
    return Sample(headers, log)


def test_samples_cover_the_corpus_and_zapfarm() -> None:
    names = [p.name for p in SAMPLES]
    assert sum(n.startswith("syzkaller-") for n in names) >= 60
    assert sum(n.startswith("zapfarm-") for n in names) >= 5


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample(path: Path) -> None:
    sample = load(path)
    expected = sample.headers.get("TITLE") or None
    report = engine.title(sample.log)
    assert (report.title if report else None) == expected
    if report is None:
        assert engine.parse(sample.log) == []
        return
    assert report.corrupted == (sample.headers.get("CORRUPTED") == "Y")
    if "KIND" in sample.headers:
        assert report.kind == sample.headers["KIND"]
    if "FRAME" in sample.headers:
        assert report.frame == sample.headers["FRAME"]
    if "FATAL" in sample.headers:
        assert report.fatal == (sample.headers["FATAL"] == "Y")
    # The primary report is the first of all reports, and its span is a span of the log.
    assert engine.parse(sample.log)[0] == report
    assert 0 <= report.start < report.end <= len(sample.log)
    assert report.text.strip()


# --- zapfarm specifics -------------------------------------------------------------------

WARN = [
    "WARNING: CPU: 1 PID: 123 at mm/memory.c:1390 zap_pte_range+0x5c0/0x8a0",
    "CPU: 1 PID: 123 Comm: zapmigrate Not tainted 6.1.0 #1",
    "RIP: 0010:zap_pte_range+0x5c0/0x8a0",
    "Call Trace:",
    " <TASK>",
    " unmap_page_range+0x1e2/0x430",
    " unmap_mapping_range+0x10b/0x140",
    " </TASK>",
    "---[ end trace 0000000000000000 ]---",
]


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "[   12.345678] ",
        "[   12.345678][  T123] ",
        "[   12.345678][    C1] ",
        "<4>[   12.345678] ",
    ],
)
def test_console_prefixes_do_not_matter(prefix: str) -> None:
    report = engine.title("".join(prefix + line + "\n" for line in WARN))
    assert report is not None
    assert (report.title, report.kind, report.frame, report.corrupted) == (
        "WARNING in zap_pte_range", "WARNING", "zap_pte_range", False,
    )  # fmt: skip
    assert report.text.startswith("WARNING: CPU: 1 PID: 123")


def test_all_reports_in_order_with_offsets() -> None:
    boot = "".join(
        f"[    0.120000] {line}\n"
        for line in (
            "WARNING: CPU: 0 PID: 1 at arch/x86/kernel/smpboot.c:421 topology_sane+0x5b/0x70",
            "RIP: 0010:topology_sane+0x5b/0x70",
            "Call Trace:",
            " set_cpu_sibling_map+0x2f5/0x5a0",
        )
    )
    rss = (
        "[   88.603377] BUG: Bad rss-counter state mm:000000003a8b2c6f type:MM_SHMEMPAGES val:-1\n"
    )
    log = boot + "zapfarm: trial 51aa09e2 begin\n" + rss + "zapfarm: trial 51aa09e2 end\n"
    reports = engine.parse(log)
    assert [r.title for r in reports] == ["WARNING in topology_sane", "BUG: Bad rss-counter state"]
    assert [r.kind for r in reports] == ["WARNING", "RSS_COUNTER"]
    first, second = reports
    assert first.start == 0 and first.end == len(boot)
    assert log.encode()[second.start : second.end] == rss.encode()
    assert "zapfarm: trial" not in first.text + second.text


def test_trial_markers_are_never_reports() -> None:
    assert engine.parse("zapfarm: trial BUG:1 begin\nzapfarm: trial BUG:1 end\n") == []
    report = engine.title("[ 5.0] WARNING:\nzapfarm: trial t1 end\n[ 6.0] Call Trace:\n")
    assert report is not None and report.title == "WARNING: corrupted"


def test_bytes_and_str_and_invalid_utf8() -> None:
    text = "".join(line + "\n" for line in WARN)
    assert engine.title(text) == engine.title(text.encode())
    mangled = text.replace("zapmigrate", "zap\udcff\udcfe").encode("utf-8", "surrogateescape")
    report = engine.title(mangled)
    assert report is not None and report.title == "WARNING in zap_pte_range"
    assert "\ufffd" in report.text  # shown as replacement characters, offsets stay bytes
    assert report.end <= len(mangled)


def test_panic_makes_the_report_fatal() -> None:
    log = (
        "".join(line + "\n" for line in WARN)
        + "Kernel panic - not syncing: panic_on_warn set ...\n"
    )
    reports = engine.parse(log)
    assert len(reports) == 1 and reports[0].fatal
    assert (
        engine.title("Kernel panic - not syncing: VFS: Unable to mount root fs\n").kind == "PANIC"
    )  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("BUG: Bad page state in process zapmigrate.12  pfn:1a2b3c addr 0xffff888012345678",
         "BUG: Bad page state in process zapmigrate.NUM pfn:ADDR addr ADDR"),
        ("WARNING in zap_pte_range+0x5c0/0x8a0 mm/memory.c:1390 on CPU#3",
         "WARNING in zap_pte_range mm/memory.c:LINE on CPU"),
        ("x\tsyz-executor.3/17  10.0.2.15 \x01 done  ", "x syz-executor IP done"),
    ],
)  # fmt: skip
def test_title_normalisation(raw: str, expected: str) -> None:
    assert normalize_title(raw) == expected


@pytest.mark.parametrize(
    ("mangled", "plain"),
    [
        ("_Z8fakeNameiii", "fakeName"),
        ("_ZN6kernel4sync4lockEv", "kernel::sync::lock"),
        ("_RNvCscSpY9Juk0HT_7___rustc17rust_begin_unwind", "__rustc::rust_begin_unwind"),
        ("_RNvXs1_CscPPBqWtAqum_11ashmem_rustNtB5_6AshmemNtNtCs43vyB533jt3_6kernel10miscdevice10MiscDevice4mmap",
         "<ashmem_rust::Ashmem as kernel::miscdevice::MiscDevice>::mmap"),
        ("zap_pte_range", "zap_pte_range"),
        ("_RB_", "_RB_"),  # malformed: unchanged, no exception
    ],
)  # fmt: skip
def test_demangle(mangled: str, plain: str) -> None:
    assert demangle(mangled) == plain


def test_hostile_input_is_bounded() -> None:
    """Guest output is untrusted: long lines, header floods and regex bait stay fast."""
    bait = "WARNING: " + "a at b.c:1 " * 2000 + "\n"  # many " at SRC" candidates on one line
    flood = "".join(
        f"[ {i}.000000] BUG: Bad rss-counter state mm:{i:016x} idx:1 val:-1\n" for i in range(3000)
    )
    huge_line = "x" * (4 << 20) + "\n"
    started = time.perf_counter()
    assert engine.title(bait) is not None
    reports = engine.parse(flood)
    assert (
        engine.parse(huge_line + "".join(line + "\n" for line in WARN))[0].title
        == "WARNING in zap_pte_range"
    )
    assert time.perf_counter() - started < 5
    assert len(reports) == engine.MAX_REPORTS


# --- command line ------------------------------------------------------------------------


def test_titles_command_in_order_and_prefers_base64(tmp_path: Path) -> None:
    real = "".join(line + "\n" for line in WARN)
    records = [
        {"id": "a", "log": "nothing to see\n"},
        {"id": 7, "log": "ignored", "log_base64": base64.b64encode(real.encode()).decode()},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    result = CliRunner().invoke(triage, ["titles", "--jsonl", str(source)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.output.splitlines()] == [
        {"id": "a", "title": None, "corrupted": False},
        {"id": 7, "title": "WARNING in zap_pte_range", "corrupted": False},
    ]


def test_titles_command_malformed_line_keeps_earlier_output() -> None:
    stdin = (
        '{"id": 1, "log": "BUG: Bad rss-counter state mm:0 idx:1 val:-1\\n"}\n{"id": 2, "log": \n'
    )
    result = CliRunner().invoke(triage, ["titles", "--jsonl", "-"], input=stdin)
    assert result.exit_code == 2
    assert json.loads(result.stdout.splitlines()[0])["title"] == "BUG: Bad rss-counter state"
    assert "line 2" in result.stderr


def test_console_command_exit_codes(tmp_path: Path) -> None:
    clean, dirty = tmp_path / "clean.log", tmp_path / "dirty.log"
    clean.write_text("[    1.0] all quiet\n")
    dirty.write_text("".join(line + "\n" for line in WARN))
    runner = CliRunner()
    none = runner.invoke(triage, ["console", str(clean)])
    assert (none.exit_code, none.output.strip()) == (0, "no kernel reports")
    found = runner.invoke(triage, ["console", str(dirty)])
    assert found.exit_code == 1 and "WARNING in zap_pte_range" in found.output
    assert runner.invoke(triage, ["console", str(tmp_path / "missing.log")]).exit_code == 2
