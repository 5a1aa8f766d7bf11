"""What the defenses cost: the SQL page's query process and the validation of each run when listing.

Writes a synthetic run (benchmarks/dashboard_queries.py's generator, through the real RunWriter),
then times

- one SQL-page query through ``warehouse.sandbox.run_query`` (a process of its own per query,
  started ahead as a spare) beside the same query on a shared ``warehouse.connect`` connection,
  and the start-up that the spare hides;
- ``list_runs``: the first listing (every file's SHA-256 checked) and a later one (cached).

    .venv/bin/python benchmarks/sandbox.py [--units 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dashboard_queries import generate  # noqa: E402

from warehouse import connect, list_runs  # noqa: E402
from warehouse import validate  # noqa: E402
from warehouse.sandbox import run_query, sources  # noqa: E402

QUERY = "SELECT layer, count(*) AS n, avg(selectivity) AS s FROM units GROUP BY layer ORDER BY layer"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pause", type=float, default=5.0,
                    help="seconds between queries, as a person takes to type one: the spare process starts meanwhile")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, args.units)
        size = sum(p.stat().st_size for p in (root / "runs").rglob("*") if p.is_file())
        validate._VERIFIED.clear()
        t = time.perf_counter()
        runs = list_runs(root)
        first = time.perf_counter() - t
        t = time.perf_counter()
        list_runs(root)
        again = time.perf_counter() - t
        assert all(r.ok for r in runs)
        print(f"{args.units:,} units, {size / 2**20:.1f} MiB of run files")
        print(f"list_runs: first {first * 1000:.0f} ms (SHA-256 of every file), later {again * 1000:.1f} ms (cached)")
        files = sources([r.path for r in runs])
        con = connect(root)
        direct, sandboxed = [], []
        run_query(files, "SELECT 1")  # starts the first spare
        for _ in range(args.repeat):
            time.sleep(args.pause)
            t = time.perf_counter()
            con.execute(QUERY).fetchall()
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            run_query(files, QUERY)
            sandboxed.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "import duckdb, pyarrow.dataset"], check=True)
        startup = time.perf_counter() - t
        print(f"query process start-up (imports), hidden by the spare: {startup * 1000:.0f} ms; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"SQL page query, median of {args.repeat}: shared connection {statistics.median(direct) * 1000:.0f} ms, "
              f"sandbox process {statistics.median(sandboxed) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
