"""One title normaliser: the console parser and the findings key agree on every title.

The parser titles reports with farm.triage.titles.normalize_title; findings key a verdict's
title with the same function (farm.store.findings.key_title). A parser title must key its
finding as it is, with the signature it had before the two normalisers were one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from farm.store.findings import key_title, signature
from farm.triage import engine
from farm.triage.titles import normalize_title

DATA = Path(__file__).resolve().parent.parent / "data" / "console"
SAMPLES = sorted(p for p in DATA.iterdir() if p.is_file() and not p.name.endswith(".md"))


def _sample_titles() -> list[str]:
    titles: set[str] = set()
    for path in SAMPLES:
        _head, _, log = path.read_bytes().partition(b"\n\n")
        titles.update(report.title for report in engine.parse(log))
    return sorted(titles)


def test_every_parser_title_keys_its_finding_as_it_is() -> None:
    titles = _sample_titles()
    assert len(titles) >= 80  # every report of every sample, not only the primary ones
    for title in titles:
        assert normalize_title(title) == title
        assert key_title(title) == title
        digest = hashlib.sha256(f"kernel-report\n{title}".encode()).hexdigest()
        assert signature("kernel-report", title) == digest


# Signatures computed by the findings normaliser that existed before this one (on the
# parser's titles of the same logs): stored findings keep their keys.
BEFORE = [
    (
        "[   12.345678] INFO: Slab 0xffff88801234abcd objects=12 used=3 fp=0x0 flags=0x200\n",
        "INFO: Slab ADDR objects=NUM used=NUM fp=ADDR flags=ADDR",
        "41d342b25314745a78be4a57fdee9b448873d73e5bee1a583871e63a45e8c434",
    ),
    (
        "[   12.345678] BUG: Bad rss-counter state mm:00000000c0ffee12 type:MM_SHMEMPAGES val:-1\n",
        "BUG: Bad rss-counter state",
        "efa99008b754d7309b1576e158237dc2ecce3c00601055b4db02e85b90bf295b",
    ),
    (
        "[   12.345678] BUG: Bad page map in process zapmigrate.12  pte:8000000012345067 "
        "pmd:1234567\n",
        "BUG: Bad page map",
        "51661f34b087a68d34aef9d91be0e7e8755ff149f2a8d6463bcdb6622cd1ea28",
    ),
]


@pytest.mark.parametrize(("log", "title", "digest"), BEFORE)
def test_signatures_of_parser_titles_are_unchanged(log: str, title: str, digest: str) -> None:
    report = engine.title(log)
    assert report is not None and report.title == title
    assert signature("kernel-report", report.title) == digest


@pytest.mark.parametrize(
    "raw",
    [
        "INFO: Slab 0xffff88801234abcd objects=12 used=3 fp=0x0 flags=0x200",
        "INFO: Object 0xffff888012345678 @offset=1024 fp=0x0000000000000000",
        "BUG: non-zero pgtables_bytes on freeing mm: 4096",
        "WARNING: CPU: 1 PID: 1234 at mm/memory.c:1471",
    ],
)
def test_parser_and_findings_normalise_a_raw_title_alike(raw: str) -> None:
    """Where the parser's title is the header line itself, both callers give one answer."""
    report = engine.title(f"[   12.345678] {raw}\n")
    assert report is not None
    assert report.title == key_title(raw) == normalize_title(raw)
    assert "0x" not in report.title and "1234" not in report.title


def test_normalizer_bounds_and_cleans_any_text() -> None:
    assert normalize_title("BUG: x\ud800y \u00e9\x00z\tw") == "BUG: xy z w"
    assert normalize_title("BUG: " + "y" * 5000) == "BUG: " + "y" * 115
    assert key_title("\x01\x02") == "(no title)"
