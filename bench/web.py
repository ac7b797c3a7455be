"""Latency of the results pages over 1,000,000 trials on PostgreSQL; prints JSON.

Why: the web must stay usable when the farm has run for months. This fills a
dedicated database (created here, dropped at the end) with a million trials in
SQL (INSERT ... SELECT generate_series: ~95 % clean, 3 % invalid, 1 % infra
errors, 1 % spread over 50 findings with a skewed, Zipf-like distribution,
10 fuzz campaigns of very different sizes, 6 kernels, 30 days of finish
times, reproduce campaigns for 20 findings), then serves it with the real
``farm web`` command in a subprocess and times HTTP requests over loopback:
5 warm-up requests, then 50 timed ones per page. Twice: with the default
aggregate cache (30 s) and with it off (every request recounts). Goal: p95 <
150 ms for the findings, campaign and trials pages. Not a timed test.

    .venv/bin/python bench/web.py [--trials N] [--requests N] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Connection, make_url  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from farm.store import db  # noqa: E402
from farm.store.findings import signature  # noqa: E402

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
GOAL_P95_MS = 150.0
KERNELS = [
    ("debian-6.1.0-26", "6.1.0-26-amd64"),
    ("debian-bullseye-5.10.0-32", "5.10.0-32-amd64"),
    ("debian-trixie-6.12.107", "6.12.107-amd64"),
    ("custom-6.1-revert-5abfd71d936a", "6.1.0-zapfarm-revert"),
    ("custom-5.15.y-warn", "5.15.170-zapfarm-warn"),
    ("custom-6.12-positive-control", "6.12.107-zapfarm-pc"),
]
# campaign -> share of trials: one huge, one big, eight small
CAMPAIGNS = [("nightly-big", 0.40), ("sweep-pages", 0.20)] + [
    (f"nightly-{i:02d}", 0.05) for i in range(1, 9)
]
FUNCTIONS = [
    "zap_pte_range",
    "unmap_page_range",
    "migrate_pages",
    "move_pages_and_store_status",
    "shmem_fallocate",
    "shmem_undo_range",
    "remove_migration_pte",
    "try_to_migrate_one",
    "__migration_entry_wait",
    "truncate_inode_pages_range",
]
TEMPLATES = [
    ("kernel-report", "WARNING in {f}"),
    ("kernel-report", "BUG: Bad page map in {f}"),
    ("kernel-report", "BUG: Bad page state in {f}"),
    ("guest-crash", "general protection fault in {f}"),
    ("guest-crash", "KASAN: use-after-free Read in {f}"),
]


def titles() -> list[tuple[str, str]]:
    """50 finding (kind, title) pairs, the first ones the bug's own."""
    out = [
        ("kernel-report", "BUG: Bad rss-counter state"),
        ("kernel-report", "WARNING in zap_pte_range"),
        ("smaps-mismatch", "smaps: memfd VMA keeps pages after punching every page"),
        ("counter-mismatch", "RssShmem does not return to its baseline after punch"),
        ("hang", "INFO: task hung in migrate_pages"),
    ]
    for kind, template in TEMPLATES:
        for fn in FUNCTIONS:
            title = template.format(f=fn)
            if (kind, title) not in out and len(out) < 50:
                out.append((kind, title))
    return out


def fill(conn: Connection, trials: int) -> dict[str, Any]:
    """Kernels, campaigns, findings, `trials` trials and their counts, all in SQL."""
    conn.execute(text("SELECT setseed(0.42)"))
    for name, release in KERNELS:
        conn.execute(
            text(
                "INSERT INTO kernels (name, release, image_path, sha256, source, created_at) "
                "VALUES (:n, :r, :p, :sha, 'bench', now() - interval '40 days')"
            ),
            {
                "n": name,
                "r": release,
                "p": f"/var/lib/zapfarm/vmlinuz-{release}",
                "sha": hashlib.sha256(name.encode()).hexdigest(),
            },
        )
    bounds = []
    acc = 0.0
    for i, (name, share) in enumerate(CAMPAIGNS, start=1):
        kernels = [KERNELS[k % len(KERNELS)][0] for k in range(i, i + 3)]
        spec = {
            "name": name,
            "kind": "fuzz",
            "kernels": kernels,
            "search": "thompson" if i % 2 else "uniform",
            "budget": {"trials": int(trials * share * 1.25)},
        }
        conn.execute(
            text(
                "INSERT INTO campaigns (id, name, spec, status, created_at, started_at) "
                "VALUES (:id, :n, CAST(:s AS jsonb), :st, now() - interval '31 days', "
                "now() - interval '30 days')"
            ),
            {"id": i, "n": name, "s": json.dumps(spec), "st": "running" if i <= 3 else "done"},
        )
        acc += share
        bounds.append((acc, i))
    for i, (kind, title) in enumerate(titles(), start=1):
        conn.execute(
            text(
                "INSERT INTO findings (id, signature, kind, title, status, trial_count, "
                "first_seen, last_seen, report, created_at) VALUES (:id, :sig, :k, :t, :st, 0, "
                "now(), now(), :rep, now())"
            ),
            {
                "id": i,
                "sig": signature(kind, title),
                "k": kind,
                "t": title,
                "st": "fixed" if i % 17 == 0 else "open",
                "rep": f"------------[ cut here ]------------\n{title}\n" + "Call Trace:\n" * 20,
            },
        )
    campaign_case = " ".join(f"WHEN r1 < {b:.4f} THEN {cid}" for b, cid in bounds)
    # one row per trial, ids in finish order; the random columns decide the rest
    conn.execute(
        text(
            f"""
        INSERT INTO trials (id, trial_id, campaign_id, kernel_id, token, params, status, outcome,
            verdict, finding_id, worker, boot_id, booted, numa_nodes, exit_code, elapsed_ms,
            started_at, finished_at, console, vma_rss_kb, vma_pss_shmem_kb, rss_shmem_before_kb,
            rss_shmem_populated_kb, rss_shmem_punched_kb, rollup_pss_shmem_kb, migrate_moved,
            migrate_enoent, migrate_ebusy, migrate_other, migrate_call_errors, created_at,
            recorded_at)
        SELECT i, 'bench-' || lpad(i::text, 8, '0'),
            CASE {campaign_case} ELSE {len(CAMPAIGNS)} END,
            1 + (i * 7) % {len(KERNELS)},
            'zf1-' || lpad(to_hex(i * 2654435761), 16, '0'),
            jsonb_build_object(
                'pages', round(exp(ln(64) + r3 * (ln(8192) - ln(64))))::int,
                'evict_delay_min_us', (i / 3) % 11, 'evict_delay_max_us', 10 + (i / 7) % 51,
                'kick_delay_us', (i / 11) % 31, 'batch', round(exp(r4 * ln(64)))::int,
                'src_node', 0, 'dst_node', 1, 'rounds', 1 + (i / 13) % 3,
                'punch', CASE WHEN i % 2 = 0 THEN 'fallocate' ELSE 'madvise' END,
                'evictors', 1 + (i / 5) % 2,
                'placement', (ARRAY['any', 'same', 'split'])[1 + (i / 17) % 3],
                'rng_seed', (i * 40503) % 4294967296),
            'done',
            CASE WHEN r2 >= 0.98 AND r2 < 0.99 THEN 'infra-error' ELSE 'ok' END,
            CASE WHEN r2 < 0.95 THEN 'clean' WHEN r2 < 0.98 THEN 'invalid'
                 WHEN r2 < 0.99 THEN 'infra-error' ELSE 'finding' END,
            CASE WHEN r2 >= 0.99 THEN 1 + floor(50 * power(r5, 2.5))::int END,
            'host-' || (i % 8), md5((i / 40)::text), i % 40 = 0, 2, 0, 2000 + (i % 900),
            t - interval '2 seconds', t,
            CASE WHEN r2 >= 0.98
                THEN repeat('[   41.5] kernel console line of a trial' || chr(10), 40) END,
            0, 0, 0, 16384, 0, 696, 12280, 5, 3, 0, 0, t, t
        FROM (
            SELECT i, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
                random() AS r5,
                now() - interval '30 days' + (i * interval '30 days') / :n AS t
            FROM generate_series(1::bigint, :n) AS i
        ) AS g
        """
        ),
        {"n": trials},
    )
    conn.execute(
        text(
            "UPDATE trials t SET verdict = f.kind, title = f.title, "
            "verdict_detail = f.title FROM findings f WHERE t.finding_id = f.id"
        )
    )
    conn.execute(
        text(
            "UPDATE trials SET vma_rss_kb = 4, vma_pss_shmem_kb = 4 "
            "WHERE verdict = 'smaps-mismatch'"
        )
    )
    # reproductions of the 20 most frequent findings' best seeds: 10 runs each, done
    conn.execute(text(_FINDING_AGGREGATES))
    repro = conn.execute(
        text("SELECT id, example_trial_id FROM findings ORDER BY trial_count DESC LIMIT 20")
    ).all()
    next_id = trials + 1
    for n, (_finding, example) in enumerate(repro, start=1):
        token, kernel = conn.execute(
            text(
                "SELECT t.token, k.name FROM trials t JOIN kernels k ON k.id = t.kernel_id "
                "WHERE t.id = :id"
            ),
            {"id": example},
        ).one()
        cid = len(CAMPAIGNS) + n
        spec = {
            "name": f"repro-{n:02d}",
            "kind": "reproduce",
            "token": token,
            "kernels": [kernel],
            "budget": {"trials": 10},
        }
        conn.execute(
            text(
                "INSERT INTO campaigns (id, name, spec, status, created_at, started_at, "
                "finished_at) VALUES (:id, :n, CAST(:s AS jsonb), 'done', now() - interval '1 day',"
                " now() - interval '1 day', now() - interval '20 hours')"
            ),
            {"id": cid, "n": spec["name"], "s": json.dumps(spec)},
        )
        hits = 10 - n // 2
        conn.execute(
            text(
                """
            INSERT INTO trials (id, trial_id, campaign_id, kernel_id, token, params, status,
                outcome, verdict, title, finding_id, worker, started_at, finished_at,
                created_at, recorded_at)
            SELECT :base + j, 'repro-' || :cid || '-' || j, :cid, t.kernel_id, t.token, t.params,
                'done', 'ok', CASE WHEN j < :hits THEN t.verdict ELSE 'clean' END,
                CASE WHEN j < :hits THEN t.title END,
                CASE WHEN j < :hits THEN t.finding_id END, 'host-0',
                now() - interval '21 hours', now() - interval '21 hours' + j * interval '1 minute',
                now(), now()
            FROM trials t, generate_series(0, 9) AS j WHERE t.id = :example
            """
            ),
            {"base": next_id, "cid": cid, "hits": hits, "example": example},
        )
        next_id += 10
    # the scheduler's queue: trials sent but not back yet
    conn.execute(
        text(
            "INSERT INTO trials (id, trial_id, campaign_id, kernel_id, token, status, created_at) "
            "SELECT :base + j, 'queued-' || j, 1, 1, 'zf1-' || lpad(to_hex(j), 16, '0'), "
            "CASE WHEN j < 16 THEN 'running' ELSE 'queued' END, now() "
            "FROM generate_series(0, 499) AS j"
        ),
        {"base": next_id},
    )
    conn.execute(text(_FINDING_AGGREGATES))
    conn.execute(
        text(
            "INSERT INTO finding_counts (finding_id, kernel_id, campaign_id, count, first_seen, "
            "last_seen) SELECT finding_id, kernel_id, campaign_id, count(*), min(finished_at), "
            "max(finished_at) FROM trials WHERE finding_id IS NOT NULL "
            "GROUP BY finding_id, kernel_id, campaign_id"
        )
    )
    for table in ("kernels", "campaigns", "findings", "trials"):
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        )
    return {"repro_campaigns": len(repro), "queued": 500}


_FINDING_AGGREGATES = """
UPDATE findings f SET trial_count = a.n, first_seen = a.first, last_seen = a.last,
    example_trial_id = a.example
FROM (SELECT finding_id, count(*) AS n, min(finished_at) AS first, max(finished_at) AS last,
        min(id) AS example
      FROM trials WHERE finding_id IS NOT NULL GROUP BY finding_id) AS a
WHERE f.id = a.finding_id
"""


def settle(conn: Connection, name: str, limit_s: float = 180) -> None:
    """Let the bulk load's aftermath (dirty buffers, autovacuum) pass before timing pages.

    On a 2-core host a checkpoint or an autovacuum worker running during the
    measurement shows up as 1-second outliers that have nothing to do with
    the pages.
    """
    conn.execute(text("CHECKPOINT"))
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        busy = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                "AND backend_type = 'autovacuum worker'"
            ),
            {"db": name},
        )
        if not busy:
            return
        time.sleep(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(url: str, cache_ttl: float) -> tuple[subprocess.Popen[bytes], int]:
    """`farm web` (farm.cli.web) in a subprocess, once /healthz answers."""
    port = free_port()
    env = {**os.environ, "FARM_DATABASE_URL": url}
    env.pop("FARM_WEB_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli.web", "--port", str(port), "--cache-ttl", str(cache_ttl)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("farm web did not start within 30 s")


def measure(port: int, path: str, warmup: int, requests: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    size = 0
    for n in range(warmup + requests):
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - start) * 1000
        if response.status != 200:
            raise SystemExit(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
        if n >= warmup:
            times.append(elapsed)
            size = len(body)
    conn.close()
    times.sort()
    return {
        "path": path,
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[math.ceil(0.95 * len(times)) - 1], 1),
        "max_ms": round(times[-1], 1),
        "bytes": size,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--admin-url", default=os.environ.get("FARM_TEST_POSTGRES_URL", ADMIN_URL))
    ap.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    args = ap.parse_args()

    name = f"zapfarm_bench_web_{secrets.token_hex(4)}"
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    out: dict[str, Any] = {"database": name, "trials": args.trials}
    try:
        db.upgrade(url)
        engine = create_engine(url, poolclass=NullPool)
        started = time.perf_counter()
        with engine.begin() as conn:
            out |= fill(conn, args.trials)
        out["fill_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE) trials"))
            conn.execute(text("ANALYZE"))
            out["vacuum_analyze_s"] = round(time.perf_counter() - started, 1)
            settle(conn, name)
            out["findings"] = conn.scalar(text("SELECT count(*) FROM findings"))
            out["anomalous_trials"] = conn.scalar(
                text("SELECT count(*) FROM trials WHERE finding_id IS NOT NULL")
            )
            out["database_mb"] = round(
                conn.scalar(text("SELECT pg_database_size(current_database())")) / 2**20
            )
            # a cursor half way down the trials list: keyset pages cost the same everywhere
            at_us, pk = conn.execute(
                text(
                    "SELECT (extract(epoch FROM finished_at) * 1000000)::bigint, id FROM trials "
                    "WHERE id = :id"
                ),
                {"id": args.trials // 2},
            ).one()
            top = conn.scalar(text("SELECT id FROM findings ORDER BY trial_count DESC LIMIT 1"))
        engine.dispose()
        pages = {
            "findings": "/findings",
            "campaign": "/campaigns/nightly-big",
            "trials": "/trials",
            "findings_all_by_count": "/findings?status=all&sort=count",
            "finding": f"/findings/{top}",
            "campaign_small": "/campaigns/nightly-05",
            "trials_campaign_verdict": "/trials?campaign=nightly-big&verdict=kernel-report",
            "trials_half_way_down": f"/trials?cursor={at_us}_{pk}",
            "trial": f"/trials/{args.trials // 3}",
            "overview": "/",
            "kernels": "/kernels",
            "api_findings": "/api/findings",
            "api_campaign": "/api/campaigns/nightly-big",
            "api_trials": "/api/trials",
        }
        for label, ttl in (("cached_30s", 30.0), ("uncached", 0.0)):
            proc, port = serve(url, ttl)
            try:
                first = time.perf_counter()
                measure(port, pages["campaign"], 0, 1)
                cold = round((time.perf_counter() - first) * 1000, 1)
                results = {
                    key: measure(port, path, args.warmup, args.requests)
                    for key, path in pages.items()
                }
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            out[label] = {"first_campaign_request_ms": cold, "pages": results}
        goal = ("findings", "campaign", "trials")
        out["goal"] = {
            "p95_ms_below": GOAL_P95_MS,
            "pages": list(goal),
            "met_cached": all(out["cached_30s"]["pages"][p]["p95_ms"] < GOAL_P95_MS for p in goal),
            "met_uncached": all(out["uncached"]["pages"][p]["p95_ms"] < GOAL_P95_MS for p in goal),
        }
    finally:
        if args.keep:
            out["kept_url"] = url
        else:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print(json.dumps(out, indent=2))
    return 0 if out.get("goal", {}).get("met_cached") else 1


if __name__ == "__main__":
    sys.exit(main())
