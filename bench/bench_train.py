"""Training time: a metadata-only model on each split (random / user / time), median of several runs.

    .venv/bin/python bench/bench_train.py [--repeats 3] [--epochs 300] [--threads default,1] [--with-images]
                                          [--json out.json]
    .venv/bin/python bench/bench_train.py --generated 10000 --repeats 1       # no dev data needed

Data: the real dev posts (``../shared/data/instagram-dev/posts.csv`` or ``$IGCLI_DEV_DATA``, read in place,
never copied) when present, else a generated sample of ``--generated`` posts. Ingested and featurized once,
untimed. By default the images are not read (the ingest points at an empty folder, so every image is
"missing"): the weight-free image-quality inputs of the metadata branch are then NaN, imputed by the model.
``--with-images`` reads the real images and computes those features first (a few minutes on 2 cores).

Timed: ``igcli.commands.train.train(db, TrainOptions(branches=("metadata",), split=..., export=False))`` in a fresh
child process per run (early stopping decides the epochs; ``--epochs`` caps them); peak RSS is the
child's own high-water mark (VmHWM at exit, ``_common.run_child``). Each split runs with torch's default thread
count and with 1 thread (``--threads``): the model is small, and on a shared machine intra-op threads can cost
more than they give. The note's patience and batch size are read from ``TrainOptions``, the trainer's own
defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV_DATA, median, print_table, run_child, shown, write_json  # noqa: E402

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
if int(sys.argv[4]):
    torch.set_num_threads(int(sys.argv[4]))
torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # the first optimizer imports torch._dynamo: timed apart
first_use = time.perf_counter() - t0
from igcli.commands.train import TrainOptions, train
t0 = time.perf_counter()
r = train(sys.argv[1], TrainOptions(branches=("metadata",), split=sys.argv[2], epochs=int(sys.argv[3]),
                                   export=False, plots=False))
print(json.dumps({"seconds": time.perf_counter() - t0, "timings": r.timings, "n": [r.n_train, r.n_val, r.n_test],
                  "mae": r.metrics["mae"], "first_use": first_use, "threads": torch.get_num_threads()}))
"""

def setup(tmp: Path, a: argparse.Namespace) -> tuple[Path, str]:
    """Ingest + featurize once; returns (db, description of the data)."""
    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_posts
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions

    db = tmp / "store.duckdb"
    dev = DEV_DATA / "posts.csv"
    t0 = time.perf_counter()
    if dev.is_file() and not a.generated:
        images = DEV_DATA if a.with_images else tmp / "no-images"
        images.mkdir(exist_ok=True)
        r = ingest_posts(dev, db=db, images_dir=images)
        what = f"real dev data {shown(dev)} ({r.loaded:,} posts, {r.rejected} rejected)"
    else:
        from igcli.commands.sample import generate_sample

        n = a.generated or 10_000
        generate_sample(tmp / "gen", posts=n, users=max(1, n // 25), seed=0, images=a.with_images, new_posts=0)
        images = tmp / "gen" if a.with_images else tmp / "no-images"
        images.mkdir(exist_ok=True)
        r = ingest_posts(tmp / "gen" / "posts.csv", db=db, images_dir=images)
        what = f"generated sample ({r.loaded:,} posts of {max(1, n // 25):,} users)"
        if not a.generated:
            what += f"; dev data not found at {shown(dev)}"
    featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    what += (", image-quality inputs computed from the images" if a.with_images
             else ", images not read (image-quality inputs NaN)")
    print(f"  setup: {what}; ingest + featurize {time.perf_counter() - t0:.1f} s", flush=True)
    return db, what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300, help="cap on epochs (early stopping usually ends first)")
    ap.add_argument("--splits", default="random,user,time")
    ap.add_argument("--threads", default="default",
                    help="comma-separated torch thread counts to run, 'default' = torch's own choice")
    ap.add_argument("--generated", type=int, default=0, help="use a generated sample of this many posts")
    ap.add_argument("--with-images", action="store_true", help="read the images and compute quality inputs")
    ap.add_argument("--json")
    a = ap.parse_args()

    header = ["split", "torch threads", "train / val / test", "epochs", "train() s (median)", "fit s",
              "s / epoch", "test MAE", "torch import s", "child peak RSS MiB"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="igcli-bench-train-") as tmp:
        db, what = setup(Path(tmp), a)
        for threads in a.threads.split(","):
            n_threads = 0 if threads == "default" else int(threads)
            for split in a.splits.split(","):
                runs = []
                for _ in range(a.repeats):
                    _, peak, out = run_child(["-c", CHILD, str(db), split, str(a.epochs), str(n_threads)])
                    runs.append({**json.loads(out.strip().splitlines()[-1]), "peak_mib": peak})
                total = median([r["seconds"] for r in runs])
                fit = median([r["timings"]["train_s"] for r in runs])
                epochs = median([r["timings"]["epochs"] for r in runs])
                per_epoch = median([r["timings"]["train_s"] / r["timings"]["epochs"] for r in runs])
                n = runs[0]["n"]
                label = f"{runs[0]['threads']}" + (" (process default; train() fits on 1)" if not n_threads else "")
                rows.append([split, label, f"{n[0]:,} / {n[1]:,} / {n[2]:,}", f"{epochs:g}", f"{total:.1f}",
                             f"{fit:.1f}", f"{per_epoch:.3f}", f"{median([r['mae'] for r in runs]):.3f}",
                             f"{median([r['first_use'] for r in runs]):.1f}", round(max(r["peak_mib"] for r in runs))])
                print(f"  {split}, {label} threads: {total:.1f} s, {epochs:g} epochs", flush=True)
    from igcli.commands.train import TrainOptions

    defaults = TrainOptions()          # what each child's train() runs with, besides the split and the epoch cap
    notes = [
        f"median of {a.repeats} runs per row, each train() in a fresh child process (export off); "
        f"metadata branch only; {what}",
        "train() s: the whole call (load features, split, fit, evaluate, record the run); fit s: the training "
        f"loop alone (early stopping on the validation MAE, patience {defaults.patience}, at most {a.epochs} epochs, "
        f"batches of {defaults.batch_size}, AdamW lr {defaults.lr:g}, ensemble of {defaults.ensemble}); "
        "s / epoch = fit s / epochs (epochs summed over the ensemble's members)",
        "child peak RSS: the largest of the runs' own high-water marks (VmHWM of the child process at exit)",
        "torch import s: `import torch` plus the first optimizer, which imports torch._dynamo; timed before "
        "train() so that it does not land in the first run's fit s",
        f"machine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
    ]
    print_table("train, metadata branch", header, rows)
    for n_ in notes:
        print(n_)
    write_json(a.json, "train", header, rows, notes)


if __name__ == "__main__":
    main()
