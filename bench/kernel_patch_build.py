"""Wall time of a real `farm kernels build --source 6.1 --instrument warn --patch FILE`.

The one heavy test of user patches (minutes on 2 cores, so a bench script,
not a timed test): it builds the 6.1 source with the farm's WARN
instrumentation and the example user patch of tests/data/patches/, then
checks that the registered kernel's provenance names both patches with the
sha256 of their files. Prints JSON. Registers into a throwaway SQLite file.

    FARM_CACHE_DIR=.cache .venv/bin/python bench/kernel_patch_build.py [--jobs 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
PATCH = TOP / "tests" / "data" / "patches" / "0001-shmem-example-user-patch-6.1.patch"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FARM_DATABASE_URL": f"sqlite:///{tmp}/farm.sqlite"}
        farm = [sys.executable, "-m", "farm.cli.main"]
        started = time.monotonic()
        done = subprocess.run(
            [*farm, "kernels", "build", "--source", "6.1", "--instrument", "warn",
             "--patch", str(PATCH), "--jobs", str(args.jobs)],
            env=env, capture_output=True, text=True, check=False, cwd=TOP,
        )  # fmt: skip
        wall = time.monotonic() - started
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        name, release, sha, path = done.stdout.strip().splitlines()[-1].split("\t")
        manifest = json.loads((Path(path).parent / "kernel.json").read_text())
        prov = manifest["provenance"]
        user = [p for p in prov["patches"] if p["origin"] == "user"]
        ok = (
            len(user) == 1
            and user[0]["sha256"] == hashlib.sha256(PATCH.read_bytes()).hexdigest()
            and any(p["origin"] == "farm" for p in prov["patches"])
            and prov["instrumentation"] == "warn"
        )
        print(json.dumps({
            "kernel": name, "release": release, "sha256": sha, "wall_s": round(wall, 1),
            "make_s": manifest.get("make_seconds"), "steps": manifest.get("steps"),
            "jobs": args.jobs, "provenance": prov, "provenance_ok": ok,
        }, indent=2))  # fmt: skip
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
