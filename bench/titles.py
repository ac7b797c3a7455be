"""Measure the console parser against the syzkaller-derived corpus; prints one JSON object.

Why: title agreement with syzkaller is what makes farm findings comparable with syzbot's, and
the parser sits on every trial's console, so its throughput matters too. Not a timed test.

    .venv/bin/python bench/titles.py [CORPUS.jsonl] [--runs N]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.triage import engine

DEFAULT_CORPORA = (
    Path("/work/shared/oops-corpus/dev.jsonl"),
    Path(__file__).resolve().parent.parent.parent / "shared" / "oops-corpus" / "dev.jsonl",
)


def _log_bytes(record: dict) -> bytes:
    if record.get("log_base64"):
        return base64.b64decode(record["log_base64"])
    return str(record["log"]).encode("utf-8", "surrogateescape")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=7, help="throughput runs (best and median shown)")
    args = ap.parse_args()
    path = args.corpus or next((p for p in DEFAULT_CORPORA if p.exists()), DEFAULT_CORPORA[0])
    records = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]

    title_ok = corrupted_ok = 0
    mismatches = []
    logs = [_log_bytes(r) for r in records]
    for record, log in zip(records, logs, strict=True):
        report = engine.title(log)
        got = report.title if report else None
        got_corrupted = report.corrupted if report else False
        if got == record["title"]:
            title_ok += 1
        elif len(mismatches) < 20:
            mismatches.append({"id": record["id"], "expected": record["title"], "got": got})
        if got_corrupted == bool(record.get("corrupted")):
            corrupted_ok += 1

    # Throughput: the whole corpus as one console log (all its reports), and record by record
    # (title only). CPU time of this process, so that other load on the host does not count;
    # wall-clock time is reported beside it.
    blob = b"".join(log if log.endswith(b"\n") else log + b"\n" for log in logs)
    mb = len(blob) / 1e6
    whole_cpu, whole_wall, per_record = [], [], []
    for _ in range(max(1, args.runs)):
        c0, w0 = time.process_time(), time.perf_counter()
        reports = engine.parse(blob)
        whole_cpu.append(time.process_time() - c0)
        whole_wall.append(time.perf_counter() - w0)
        c0 = time.process_time()
        for log in logs:
            engine.title(log)
        per_record.append(time.process_time() - c0)

    n = len(records)
    print(
        json.dumps(
            {
                "corpus": str(path),
                "records": n,
                "title_agreement": round(title_ok / n, 4),
                "corrupted_agreement": round(corrupted_ok / n, 4),
                "mb_per_s": round(mb / min(whole_cpu), 2),
                "mb_per_s_median": round(mb / statistics.median(whole_cpu), 2),
                "mb_per_s_wall": round(mb / min(whole_wall), 2),
                "mb_per_s_per_record": round(mb / min(per_record), 2),
                "runs": len(whole_cpu),
                "reports_in_concatenation": len(reports),
                "mismatches": mismatches,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
