"""Ingest throughput: rows/s for 1,000,000 generated posts, median of several runs, peak memory.

    .venv/bin/python bench/bench_ingest.py [--rows 1000000] [--users 20000] [--repeats 3] [--json out.json]

Each run ingests the same CSV into a fresh store in a child process (so peak memory is that process's).
The tabular path is measured: the generated posts carry no image files (images are measured by
bench_featurize). A second ingest of the same file into the filled store measures the idempotent rerun.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, print_table, run_child, write_json  # noqa: E402

CHILD = """
import sys, time
from igcli.ingest import ingest_posts
r = ingest_posts(sys.argv[1], db=sys.argv[2])
print("RESULT", r.rows_read, r.loaded, r.updated, r.unchanged, r.rejected, r.seconds)
"""


def _result(out: str) -> list[str]:
    return next(line.split()[1:] for line in out.splitlines() if line.startswith("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    import duckdb

    from igcli.sample import generate_sample

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_sample(tmp / "gen", posts=a.rows, users=a.users, seed=1, images=False, new_posts=0)
        csv = tmp / "posts.csv"
        duckdb.sql(f"COPY (SELECT * REPLACE (NULL AS image) FROM read_csv('{tmp / 'gen' / 'posts.csv'}', "
                   f"all_varchar = true)) TO '{csv}' (HEADER)")  # bench-local temp paths, not user values
        size_mb = csv.stat().st_size / 2**20
        first, again = [], []
        for i in range(a.repeats):
            db = tmp / f"s{i}.duckdb"
            secs, rss, out = run_child(["-c", CHILD, str(csv), str(db)])
            n, loaded, _, _, rejected, inner = _result(out)
            assert int(loaded) == a.rows and int(rejected) == 0, out
            first.append((float(inner), secs, rss))
            secs2, rss2, out2 = run_child(["-c", CHILD, str(csv), str(db)])
            res2 = _result(out2)
            assert int(res2[3]) == a.rows, out2
            again.append((float(res2[5]), secs2, rss2))
        header = ["run", "rows", "CSV MiB", "ingest s (median)", "rows/s", "process s", "peak RSS MiB"]
        rows = []
        for label, runs in (("first load", first), ("same file again (no-op)", again)):
            inner = median([r[0] for r in runs])
            rows.append([label, a.rows, round(size_mb, 1), round(inner, 2), round(a.rows / inner),
                         round(median([r[1] for r in runs]), 2), round(max(r[2] for r in runs))])
        notes = [f"median of {a.repeats} runs, each in a fresh child process; no image files (tabular path)"]
        print_table(f"ingest, {a.rows:,} generated posts", header, rows)
        for n_ in notes:
            print(n_)
        write_json(a.json, "ingest", header, rows, notes)


if __name__ == "__main__":
    main()
