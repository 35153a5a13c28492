"""Feature-store cost against store size: full, no-op and append featurize, and scoring, at 100k / 1M / 10M posts.

    .venv/bin/python bench/bench_store.py [--sizes 100000,1000000,10000000] [--posts-per-user 100]
                                          [--append 1000] [--score 10000] [--repeats 3] [--json out.json]

Setup per size (untimed, printed): ``igcli.commands.sample.generate_sample`` (tabular only: no image files, the image
column blanked) with ``--posts-per-user`` posts per user, ingested in files of at most 1,000,000 rows. The
generated "new posts" (the month after the history) are sorted by time: the first ``--append`` (with their
generated likes) are the later posts appended to the store, the last ``--score`` are the batch scored.
Stores above ``--full-max`` posts are ingested in time-ordered parts of 1,000,000 posts, each followed by a
featurize (a full featurize of 10M posts at once does not fit this machine's memory next to other work).
A metadata model is trained once, on the smallest store (2 epochs: speed does not depend on the weights),
exported, and used to score every store.

Timed, each in a fresh child process (``featurize(..., skip_backbones)`` like ``igcli featurize
--no-backbones``; ``score()`` like ``igcli score``): the first featurize (full, or the sum over parts); a
no-op featurize (median of ``--repeats``); the featurize after appending the later posts (median of ``--repeats``:
the posts are ingested once, every run but the last featurizes a copy of the store made then, untimed, and the
last run the store itself); scoring the
batch (median of ``--repeats``; the first run ingests the batch, later runs find it unchanged; no run
featurizes it, so each computes its features from the stored state). "in call" is the library call's own
time, "process" adds Python start and imports. Disk: the store file after all steps.
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
from _common import median, print_table, run_child, write_json  # noqa: E402

FEATURIZE = """
import json, sys
from igcli.features.metadata import FeaturizeOptions
from igcli.commands.featurize import featurize
from igcli.features.images import ImageFeatureOptions
r = featurize(sys.argv[1], FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
print(json.dumps({"seconds": r.seconds, "posts": r.posts, "inserted": r.inserted, "updated": r.updated}))
"""

SCORE = """
import json, sys
from pathlib import Path
from igcli.commands.score import ScoreOptions, score
r = score(sys.argv[1], sys.argv[2], ScoreOptions(exports_dir=Path(sys.argv[3])))
print(json.dumps({"seconds": r.seconds, "posts": r.posts, "timings": r.timings, "rejected": r.rejected}))
"""


def _child(code: str, *args: str) -> tuple[float, float, dict]:
    secs, rss, out = run_child(["-c", code, *map(str, args)])
    return secs, rss, json.loads(out.strip().splitlines()[-1])


def prepare(tmp: Path, n: int, a: argparse.Namespace, log: list[str]) -> tuple[Path, Path, Path]:
    """Generate and ingest a store of ``n`` posts; returns (store, append CSV, score CSV)."""
    import duckdb

    from igcli.commands.sample import generate_sample

    t0 = time.perf_counter()
    gen = tmp / f"gen{n}"
    generate_sample(gen, posts=n, users=max(n // a.posts_per_user, 10), seed=1, images=False,
                    new_posts=a.append + a.score)
    con = duckdb.connect()
    con.execute("SET memory_limit = '4GB'")   # a shared machine; DuckDB spills the sort to disk
    con.execute(f"SET temp_directory = '{tmp / 'duckdb-spill'}'")  # not ./.tmp in the working directory
    # bench-local temp paths, not user values
    con.execute(f"""CREATE TABLE new AS SELECT p.* REPLACE (t.likes AS likes, NULL AS image)
                    FROM read_csv('{gen}/new_posts.csv', all_varchar = true) p
                    JOIN read_csv('{gen}/new_posts_truth.csv', all_varchar = true) t USING (post_id)
                    ORDER BY p.posted_at::TIMESTAMP, p.post_id""")
    append, scored = tmp / f"append{n}.csv", tmp / f"score{n}.csv"
    con.execute(f"COPY (SELECT * FROM new LIMIT {a.append}) TO '{append}' (HEADER)")
    con.execute(f"COPY (SELECT * REPLACE (NULL AS likes) FROM new OFFSET {a.append}) TO '{scored}' (HEADER)")
    chunk = 1_000_000
    parts = []
    # above --full-max the history is split in time order, so each part is appended after the previous one
    # (one sort into a numbered table, then one cheap filtered copy per part)
    order = "ORDER BY posted_at::TIMESTAMP, post_id" if n > a.full_max else ""
    con.execute("SET preserve_insertion_order = true")
    con.execute(f"""CREATE TABLE hist AS SELECT * REPLACE (NULL AS image), (row_number() OVER ({order}) - 1)
                        // {chunk} AS igc_part
                    FROM read_csv('{gen}/posts.csv', all_varchar = true)""")
    for i in range(0, n, chunk):
        part = tmp / f"hist{n}_{i // chunk}.csv"
        con.execute(f"COPY (SELECT * EXCLUDE (igc_part) FROM hist WHERE igc_part = {i // chunk}) TO '{part}' (HEADER)")
        parts.append(part)
    con.close()
    for f in gen.iterdir():
        f.unlink()
    log.append(f"{n:,}: generate {time.perf_counter() - t0:.0f} s")
    print(f"  setup: {log[-1]}", flush=True)
    return tmp / f"store{n}.duckdb", append, scored, parts


def build(n: int, db: Path, parts: list[Path], a: argparse.Namespace, log: list[str]) -> dict:
    """Ingest the history, then the first featurize (timed); above --full-max, featurize after each part."""
    from igcli.commands.ingest import ingest_posts

    ingest_s, featurize_s = 0.0, []
    for part in parts:
        t0 = time.perf_counter()
        r = ingest_posts(part, db=db)
        assert not r.rejected, r.reasons
        part.unlink()
        ingest_s += time.perf_counter() - t0
        if n > a.full_max:
            featurize_s.append(_child(FEATURIZE, db))
    if n <= a.full_max:
        featurize_s.append(_child(FEATURIZE, db))
    log[-1] += f", ingest {ingest_s:.0f} s ({len(parts)} file(s))"
    return {"runs": featurize_s, "parts": len(featurize_s)}


def train_model(db: Path, exports: Path) -> None:
    import torch

    from igcli.commands.train import TrainOptions, train

    torch.set_num_threads(1)
    train(db, TrainOptions(branches=("metadata",), epochs=2, patience=2, exports_dir=exports, plots=False))


def measure(n: int, db: Path, parts: list[Path], append: Path, scored: Path, exports: Path,
            a: argparse.Namespace, log: list[str]) -> dict:
    from igcli.commands.ingest import ingest_posts

    out: dict = {"n": n, "full": build(n, db, parts, a, log)}
    runs = out["full"]["runs"]
    print(f"  {n:,}: first featurize {sum(r[2]['seconds'] for r in runs):.2f} s in {len(runs)} run(s), "
          f"peak RSS {max(r[1] for r in runs):,.0f} MiB", flush=True)
    if not exports.exists():
        train_model(db, exports)
    out["noop"] = [_child(FEATURIZE, db) for _ in range(a.repeats)]
    assert all(r[2]["inserted"] == r[2]["updated"] == 0 for r in out["noop"]), out["noop"]
    r = ingest_posts(append, db=db)
    assert r.loaded == a.append and not r.rejected, r
    out["append"] = []
    for i in range(a.repeats):
        target = db if i == a.repeats - 1 else db.with_name(f"append-{i}-{db.name}")
        if target != db:  # the same store, before the featurize, for every run
            shutil.copyfile(db, target)
            wal = db.with_name(db.name + ".wal")
            if wal.exists():
                shutil.copyfile(wal, target.with_name(target.name + ".wal"))
            os.sync()
        try:
            out["append"].append(_child(FEATURIZE, target))
        finally:
            if target != db:
                target.unlink()
                target.with_name(target.name + ".wal").unlink(missing_ok=True)
    assert all(x[2]["inserted"] == a.append and x[2]["updated"] == 0 for x in out["append"]), out["append"]
    out["score"] = [_child(SCORE, scored, db, exports) for _ in range(a.repeats)]
    assert all(r[2]["posts"] == a.score for r in out["score"])
    out["disk_mib"] = db.stat().st_size / 2**20
    out["load"] = os.getloadavg()[0]
    print(f"  {n:,}: no-op {median([r[2]['seconds'] for r in out['noop']]):.2f} s, append "
          f"{median([r[2]['seconds'] for r in out['append']]):.2f} s, "
          f"score {median([r[2]['seconds'] for r in out['score']]):.2f} s, "
          f"disk {out['disk_mib']:,.0f} MiB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--posts-per-user", type=int, default=100)
    ap.add_argument("--append", type=int, default=1000)
    ap.add_argument("--score", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full-max", type=int, default=1_000_000,
                    help="larger stores are built by featurizing after each time-ordered part of 1,000,000 posts")
    ap.add_argument("--tmp", help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", help="move each built store here (store<N>.duckdb) instead of deleting it")
    ap.add_argument("--json")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    log: list[str] = []
    results = []
    with tempfile.TemporaryDirectory(prefix="igcli-bench-store-", dir=a.tmp) as tmp:
        tmp = Path(tmp)
        exports = tmp / "exports"
        for n in sorted(sizes):
            db, append, scored, parts = prepare(tmp, n, a, log)
            results.append(measure(n, db, parts, append, scored, exports, a, log))
            if a.keep:
                Path(a.keep).mkdir(parents=True, exist_ok=True)
                db.replace(Path(a.keep) / db.name)
            for f in (db, db.with_name(db.name + ".wal"), append, scored):
                f.unlink(missing_ok=True)

    header = ["store posts", "first featurize s (runs)", "featurize peak RSS MiB", "no-op s (in call / process)",
              f"append {a.append:,}: featurize s (ingest untimed)",
              f"score {a.score:,} s (in call / features)", "score peak RSS MiB", "disk MiB", "load"]
    rows = []
    for r in results:
        noop_call = median([x[2]["seconds"] for x in r["noop"]])
        noop_proc = median([x[0] for x in r["noop"]])
        sc = median([x[2]["seconds"] for x in r["score"]])
        sc_feat = median([x[2]["timings"]["features_s"] for x in r["score"]])
        runs = r["full"]["runs"]
        rows.append([r["n"], f"{sum(x[2]['seconds'] for x in runs):.2f} ({len(runs)})",
                     round(max(x[1] for x in runs)), f"{noop_call:.3f} / {noop_proc:.2f}",
                     f"{median([x[2]['seconds'] for x in r['append']]):.3f}", f"{sc:.3f} / {sc_feat:.3f}",
                     round(max(x[1] for x in r["score"])), round(r["disk_mib"]), f"{r['load']:.2f}"])
    first, last = results[0], results[-1]

    def ratio(key: str, part=lambda x: x[2]["seconds"]) -> float:  # medians of the runs: largest / smallest store
        return median([part(x) for x in last[key]]) / median([part(x) for x in first[key]])

    notes = [
        f"{a.posts_per_user} posts per user in every store; median of {a.repeats} runs for no-op, append and "
        "score, a single run for the first featurize; every run a fresh child process; no image files",
        f"append: the featurize run after {a.append:,} later posts were ingested (the ingest itself, done once "
        "before the runs, is not timed); runs, s: "
        + "; ".join(f"{r['n']:,}: " + " / ".join(f"{x[2]['seconds']:.3f}" for x in r["append"]) for r in results),
        f"first featurize: one full featurize up to {a.full_max:,} posts; larger stores are ingested in "
        "time-ordered parts of 1,000,000 posts with an (incremental) featurize after each, summed",
        f"{last['n']:,} vs {first['n']:,} posts: append featurize {ratio('append'):.2f}x, score() "
        f"{ratio('score'):.2f}x, score features {ratio('score', lambda x: x[2]['timings']['features_s']):.2f}x "
        "(target: within 1.3x)",
        f"score: score() of a {a.score:,}-post file, features from the stored state, never featurized; the first "
        "run ingests the batch and later runs find it unchanged (the median is reported); in call = score()'s own "
        "time, features = its features_s",
        "load = 1-minute load average after the size's runs (a shared machine)",
        "setup (untimed): " + "; ".join(log),
    ]
    print_table("feature store cost by store size", header, rows)
    for n_ in notes:
        print(n_)
    write_json(a.json, "store", header, rows, notes)


if __name__ == "__main__":
    main()
