"""Benchmark the Ray engine against the local engine: image backbones of ``featurize`` on the same dev images.

    .venv/bin/python bench/bench_ray.py                     # 1,000 dev images, local vs Ray 1 and 2 actors
    .venv/bin/python bench/bench_ray.py --n 200 --json out.json

One store of ``--n`` dev posts with images (``$IGCLI_DEV_DATA``) is ingested and given its weight-free
quality features once; each row then runs the default backbone (efficientnet_lite0, both roles from one
forward pass) on a fresh copy of it and times ``featurize_images`` end to end, DuckDB writes included:

* local: this process, onnxruntime with ``--threads`` threads, decode threads overlapped;
* ray, k actors: a local Ray started once (``k + 1`` logical CPUs: one per actor plus one for the read /
  decode / write tasks), actors of 1 CPU (1 onnxruntime thread) each; the time includes the actors'
  start-up and the staging Parquet round trip, not ``ray.init`` (printed separately).

On one machine this measures the engine's overhead (the ratio to local), not a speed-up: the point of
the Ray engine is more machines and GPUs. Every row's rows are checked equal to the local ones.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import DEV_DATA, print_table, write_json  # noqa: E402

HEADER = ["engine", "actors", "threads/actor", "images", "seconds", "images/s", "ratio to local", "note"]


def make_store(n: int, tmp: Path) -> Path:
    from igcli import store
    from igcli.commands.ingest import ingest_posts
    from igcli.features.images import compute_quality

    with open(DEV_DATA / "posts.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("image")]
    rows = rows[:n]
    posts = tmp / "posts.csv"
    with open(posts, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    db = tmp / "base.duckdb"
    ingest_posts(posts, db=db, images_dir=DEV_DATA)
    con = store.connect(db)
    try:
        compute_quality(con, workers=2)
    finally:
        con.close()
    return db


def run(base: Path, tmp: Path, name: str, options) -> tuple[float, int, list]:
    from igcli import store
    from igcli.commands.featurize import featurize_images

    db = tmp / f"{name}.duckdb"
    shutil.copy(base, db)
    con = store.connect(db)
    try:
        t0 = time.perf_counter()
        result = featurize_images(con, options)
        seconds = time.perf_counter() - t0
        rows = con.execute("SELECT sha256, rank, wnid FROM image_classes ORDER BY sha256, rank").fetchall()
    finally:
        con.close()
    b = result.backbones[0]
    return seconds, b.images_run + b.images_failed, rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="dev posts with images")
    p.add_argument("--actors", default="1,2", help="Ray actor counts to run")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the local engine")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", dest="json_path")
    args = p.parse_args(argv)
    if not (DEV_DATA / "posts.csv").is_file():
        sys.exit(f"dev data not found at {DEV_DATA} (set IGCLI_DEV_DATA)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback-only cluster of this process
    from igcli.engines.ray import RayOptions
    from igcli.features.images import ImageFeatureOptions

    counts = [int(a) for a in args.actors.split(",") if a.strip()]
    notes = [f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)",
             "no GPU lent to this run: CPU actors only"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="igcli-bench-ray-") as t:
        tmp = Path(t)
        base = make_store(args.n, tmp)
        # The ONNX export is cached before any timing (both engines reuse it).
        local_s, images, want = run(base, tmp, "warm", ImageFeatureOptions(threads=args.threads, batch_size=args.batch))
        local_s, images, want = run(base, tmp, "local", ImageFeatureOptions(threads=args.threads,
                                                                            batch_size=args.batch))
        rows.append(["local", "-", args.threads, images, round(local_s, 1), round(images / local_s, 1), 1.0, ""])
        import ray

        for k in counts:
            ray_tmp = tempfile.mkdtemp(prefix="igray-", dir="/tmp")
            t0 = time.perf_counter()
            ray.init(num_cpus=k + 1, include_dashboard=False, log_to_driver=False, logging_level="warning",
                     object_store_memory=500 * 2**20, _temp_dir=ray_tmp)
            init_s = time.perf_counter() - t0
            try:
                opts = ImageFeatureOptions(batch_size=args.batch, engine="ray",
                                           ray=RayOptions(actors=k, staging=tmp / "staging"))
                seconds, n, got = run(base, tmp, f"ray{k}", opts)
            finally:
                ray.shutdown()
                shutil.rmtree(ray_tmp, ignore_errors=True)
            same = "classes equal local" if got == want else "CLASSES DIFFER FROM LOCAL"
            rows.append(["ray", k, 1, n, round(seconds, 1), round(n / seconds, 1), round(seconds / local_s, 2),
                         f"{same}; ray.init {init_s:.0f}s not counted; {k + 1} logical CPUs"])
    notes.append(f"load average after: {os.getloadavg()[0]:.1f}")
    notes.append("uptime: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print_table(f"featurize backbones: local vs Ray engine, {args.n} dev images", HEADER, rows)
    for line in notes:
        print(line)
    write_json(args.json_path, "ray", HEADER, rows, notes)


if __name__ == "__main__":
    main()
