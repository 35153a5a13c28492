"""The training frame written to Parquet (`igcli features --out F.parquet`) against DuckDB's own COPY of the same
columns to Parquet, on a generated store.

    .venv/bin/python bench/bench_frames.py [--posts 1000000] [--posts-per-user 100] [--repeats 3] [--json out.json]
                                           [--keep DIR]

Setup (untimed, printed): ``igcli.commands.sample.generate_sample`` (tabular only: no image files, the image
column blanked) with ``--posts-per-user`` posts per user, ingested, then ``featurize --no-backbones`` (metadata
and image quality; no image, so the quality columns are NULL). With ``--keep DIR`` the store is kept there and
reused by the next run with the same size.

Timed, interleaved A / B / C per repeat, each in a fresh child process, the call alone (opening the store and
the imports are outside it; "process" adds them):

- A, igcli: ``training_table(db)`` + ``write_table(table, out.parquet)``, what ``igcli features`` runs: the
  training read (``load_frame``'s query, fetched as numpy), the labelled rows, ``Frame.to_arrow``, Parquet.
- B, DuckDB COPY of the same query: the columns of A's file, from the same join (``post_features`` with
  ``posts``, ``images`` and ``image_quality``), the same rows (likes > 0) and order, ``COPY (...) TO`` Parquet.
- C, DuckDB COPY of those columns straight from ``post_features`` (likes > 0): no join, no order, no NULL quality
  columns; the least work that writes the same feature values.

The issue's bar: A at most 2x B. The ratios are medians of the per-repeat ratios (each pair ran back to back).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, print_table, run_child_usage, write_json  # noqa: E402

IGCLI = """
import json, sys, time
from igcli.commands.features import training_table, write_table
t0 = time.perf_counter()
table = training_table(sys.argv[1])
t1 = time.perf_counter()
write_table(table, sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"seconds": t2 - t0, "read_s": t1 - t0, "write_s": t2 - t1, "rows": table.num_rows,
                  "columns": table.column_names}))
"""

COPY = """
import json, sys, time
from igcli import store
con = store.connect(sys.argv[1], read_only=True)
t0 = time.perf_counter()
con.execute(sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def _child(code: str, *args: str) -> tuple[float, float, float, dict]:
    secs, cpu, rss, out = run_child_usage(["-c", code, *map(str, args)])
    return secs, cpu, rss, json.loads(out.strip().splitlines()[-1])


def copy_sql(columns: list[str], out: Path, joined: bool) -> str:
    """COPY of ``columns`` (the igcli frame's, the image quality ones from ``image_quality``) to ``out``."""
    from igcli.features.schema import QUALITY

    quality = {q for q, _ in QUALITY}
    if joined:
        cols = ", ".join(f"q.{c}" if c in quality else f"f.{c}" for c in columns)
        query = f"""SELECT {cols} FROM post_features f JOIN posts p USING (post_id)
                    LEFT JOIN images i ON i.path = p.image_path AND i.status = 'ok'
                    LEFT JOIN image_quality q ON q.sha256 = i.sha256
                    WHERE f.likes > 0 ORDER BY f.posted_at, f.post_id"""
    else:
        cols = ", ".join(c for c in columns if c not in quality)
        query = f"SELECT {cols} FROM post_features WHERE likes > 0"
    return f"COPY ({query}) TO '{out}' (FORMAT parquet)"   # bench-local names and path, no user value


def build(db: Path, a: argparse.Namespace, tmp: Path) -> str:
    """Generate, ingest and featurize a store of ``a.posts`` posts at ``db``; returns what it took."""
    import duckdb

    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_posts
    from igcli.commands.sample import generate_sample
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions

    t0 = time.perf_counter()
    gen = tmp / "gen"
    generate_sample(gen, posts=a.posts, users=max(a.posts // a.posts_per_user, 10), seed=1, images=False,
                    new_posts=0)
    posts = tmp / "posts.csv"
    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{tmp / 'spill'}'")              # bench-local path
    con.execute(f"COPY (SELECT * REPLACE (NULL AS image) FROM read_csv('{gen}/posts.csv', all_varchar = true)) "
                f"TO '{posts}' (HEADER)")
    con.close()
    shutil.rmtree(gen)
    t1 = time.perf_counter()
    r = ingest_posts(posts, db=db)
    assert not r.rejected, r.reasons
    posts.unlink()
    t2 = time.perf_counter()
    featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    return (f"generate {t1 - t0:.0f} s, ingest {t2 - t1:.0f} s, featurize {time.perf_counter() - t2:.0f} s "
            f"({a.posts:,} posts)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--posts-per-user", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", help="folder to keep the generated store in (and reuse it from)")
    ap.add_argument("--json")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="igcli-bench-frames-"))
    keep = Path(a.keep) if a.keep else None
    db = (keep or work) / f"frames{a.posts}.duckdb"
    notes = []
    try:
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
        if db.exists():
            notes.append(f"store reused from {db}")
        else:
            notes.append("setup: " + build(db, a, work))
        print(notes[-1], flush=True)
        runs: dict[str, list] = {"igcli": [], "copy_join": [], "copy_plain": []}
        columns = None
        for i in range(a.repeats):
            out = work / f"igcli{i}.parquet"
            runs["igcli"].append(_child(IGCLI, db, out))
            columns = runs["igcli"][-1][3]["columns"]
            size = out.stat().st_size
            out.unlink()
            for key, joined in (("copy_join", True), ("copy_plain", False)):
                target = work / f"{key}{i}.parquet"
                runs[key].append(_child(COPY, db, copy_sql(columns, target, joined)))
                target.unlink()
            print(f"  round {i + 1}: igcli {runs['igcli'][-1][3]['seconds']:.2f} s, COPY same query "
                  f"{runs['copy_join'][-1][3]['seconds']:.2f} s, COPY post_features "
                  f"{runs['copy_plain'][-1][3]['seconds']:.2f} s", flush=True)
        rows = runs["igcli"][0][3]["rows"]
        load = os.getloadavg()[0]

        def ratio(key: str) -> float:
            return median([x[3]["seconds"] / y[3]["seconds"] for x, y in zip(runs["igcli"], runs[key], strict=True)])

        header = ["writer", "in call s", "process s", "CPU s", "peak MiB", "igcli / it"]
        table = []
        for key, name in (("igcli", "igcli features (training frame)"), ("copy_join", "DuckDB COPY, same query"),
                          ("copy_plain", "DuckDB COPY from post_features")):
            r = runs[key]
            table.append([name, f"{median([x[3]['seconds'] for x in r]):.2f}", f"{median([x[0] for x in r]):.2f}",
                          f"{median([x[1] for x in r]):.2f}", round(median([x[2] for x in r])),
                          "" if key == "igcli" else f"{ratio(key):.2f}x"])
        ig = runs["igcli"]
        notes += [f"{rows:,} rows x {len(columns)} columns; igcli Parquet file {size / 2**20:,.0f} MiB",
                  f"igcli in call: read {median([x[3]['read_s'] for x in ig]):.2f} s, write "
                  f"{median([x[3]['write_s'] for x in ig]):.2f} s (medians of {a.repeats})",
                  f"load average at the end: {load:.2f} on {os.cpu_count()} CPUs"]
        print_table(f"training frame to Parquet, {a.posts:,}-post store", header, table)
        for n in notes:
            print(n)
        write_json(a.json, "frames", header, table, notes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
