"""Triage: from a trial's console and oracles to a verdict.

The console parser is ``engine.parse`` (and ``engine.title``), written after syzkaller's
pkg/report: the engine indexes and scans the log; ``linux`` holds the oops table as data,
in the vocabulary of ``patterns``; ``stacks`` finds guilty frames; ``titles`` titles a
report and holds the one title normaliser; ``report_types`` says what a report is. The
verdict of a trial is ``verdict.judge``, its kind one of ``kinds.VerdictKind``.
"""
