"""Benchmark the image side of ``igcli featurize``: decode + resize, each default backbone in torch eager and
in onnxruntime, and the whole pipeline end to end.

    .venv/bin/python bench/bench_featurize.py                       # real dev images, ~2-3 min on 2 cores
    .venv/bin/python bench/bench_featurize.py --images DIR --n 1000 --n-model 256 --n-big 32 --random-init

Rows, per backbone (objects: inception_resnet_v2, aesthetics: mobilenetv1_100):

* decode + resize: the featurize DataLoader (``--workers`` processes, the model's own timm transform), no model;
* torch eager: the model alone on already decoded batches (channels_last, inference_mode), CPU;
* onnxruntime: the same model exported with ``torch.onnx.export`` (dynamic batch), CPUExecutionProvider, with
  the same number of threads as torch, and the max |difference| from torch on the same batch;
* end to end: ``featurize_images`` on a temporary store (decode in workers overlapping inference, DuckDB writes);
* GPU rows (eager with bf16 autocast, onnxruntime CUDAExecutionProvider) when CUDA is present.

GFLOP/s = images/s x FLOPs per image, counted with ``torch.utils.flop_counter.FlopCounterMode`` on one image
(a multiply-add counts as 2 FLOPs). Speed does not depend on the weight values, so without pretrained weights
(no hub access here) the models are randomly initialised, and the output says so. Throughput is the best of
``--repeats`` timed passes after a warm-up batch; other processes on the machine make single passes noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV_DATA, shown  # noqa: E402

DEV_IMAGES = DEV_DATA / "images"      # $IGCLI_DEV_DATA/images, like the other benchmarks
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class Row:
    stage: str
    backbone: str
    runtime: str
    images: int
    batch: int
    images_per_s: float
    gflop_per_image: float | None = None
    note: str = ""

    @property
    def gflop_per_s(self) -> float | None:
        return None if self.gflop_per_image is None else self.images_per_s * self.gflop_per_image


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=DEV_IMAGES, help="folder of images (default: $IGCLI_DEV_DATA/images)")
    p.add_argument("--n", type=int, default=1000, help="images for the decode + resize rows")
    p.add_argument("--n-model", type=int, default=256, help="images for the MobileNet rows")
    p.add_argument("--n-big", type=int, default=32, help="images for the inception_resnet_v2 rows")
    p.add_argument("--batch", type=int, default=32, help="batch size")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for decode + resize")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per row; the best is reported")
    p.add_argument("--random-init", action="store_true", help="random weights even if pretrained ones are cached")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and onnxruntime rows")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end featurize rows")
    args = p.parse_args(argv)

    import torch

    from igcli.backbones import ROLES

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="igcli-bench-") as tmp:
        images, source = _images(args.images, max(args.n, args.n_model, args.n_big), Path(tmp))
        print(f"images: {source}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
        rows: list[Row] = []
        notes: list[str] = []
        for role in ("aesthetics", "objects"):
            name = ROLES[role].default_model
            n = args.n_big if role == "objects" else args.n_model
            rows += bench_backbone(role, name, images, n, args, notes, Path(tmp))
        if not args.no_e2e:
            rows += bench_end_to_end(images, args, Path(tmp))
    _print(rows, notes, time.perf_counter() - t_start)


def _images(folder: Path, n: int, tmp: Path) -> tuple[list[str], str]:
    if folder.is_dir():
        files = sorted(str(f) for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if files:
            return files[:n], f"{shown(folder)} ({len(files):,} files, using up to {min(n, len(files)):,})"
    from igcli.sample import generate_sample

    out = tmp / "sample"
    generate_sample(out, posts=n, users=max(1, n // 20), image_size=224, new_posts=0)
    files = sorted(str(f) for f in (out / "images").iterdir())[:n]
    return files, f"{len(files):,} generated 224x224 sample images ({shown(folder)} not found)"


# --------------------------------------------------------------------------------------- per backbone

def bench_backbone(role: str, name: str, images: list[str], n: int, args, notes: list[str], tmp: Path) -> list[Row]:
    import torch

    from igcli.backbones import BackboneRequest, load_backbone, resolve_weights
    from igcli.errors import WeightsMissing

    req = BackboneRequest(role, name, random_init=args.random_init)
    try:
        weights = resolve_weights(req)
    except WeightsMissing:
        req = BackboneRequest(role, name, random_init=True)
        weights = resolve_weights(req)
    notes.append(f"{name}: weights {weights.source}"
                 + (" (no pretrained weights offline; speed does not depend on the values)"
                    if weights.random_init else f" {weights.fingerprint[:12]}"))
    bb = load_backbone(req, weights, "cpu")
    gflop = flops_per_image(bb.model, bb.data_config["input_size"]) / 1e9
    rows: list[Row] = []
    size = "x".join(str(s) for s in bb.data_config["input_size"][1:])

    # (a) decode + resize alone
    best, x = decode_resize(images[:args.n], bb, args)
    rows.append(Row("decode + resize", name, f"{args.workers} workers, {size}", min(args.n, len(images)),
                    args.batch, best))
    x = x[:n]  # (n, 3, H, W)
    n = len(x)
    print(f"  {name}: decode done, {gflop:.2f} GFLOP/image", flush=True)

    # (b) torch eager, CPU
    def eager(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # plain forward, like the ONNX graph
            return bb.model(batch.contiguous(memory_format=torch.channels_last))

    rows.append(Row("model only", name, "torch eager cpu", n, args.batch, _throughput(eager, x, args), gflop))
    print(f"  {name}: eager done", flush=True)

    # (c) onnxruntime
    if not args.no_onnx:
        onnx_path = tmp / f"{name}.onnx"
        t0 = time.perf_counter()
        export_onnx(bb.model, bb.data_config["input_size"], onnx_path)
        export_s = time.perf_counter() - t0
        for provider in _ort_providers():
            run, diff = _ort_runner(onnx_path, provider, bb.model, x[:min(4, n)])
            rt = "onnxruntime " + provider.replace("ExecutionProvider", "").lower()
            rows.append(Row("model only", name, rt, n, args.batch, _throughput(run, x, args), gflop,
                            f"export {export_s:.0f} s; max|onnx-torch| {diff:.1e}"))
        print(f"  {name}: onnx done", flush=True)

    # GPU eager
    if torch.cuda.is_available():
        gpu = load_backbone(req, weights, "cuda")

        def on_gpu(batch: torch.Tensor) -> torch.Tensor:
            out = gpu(batch)
            torch.cuda.synchronize()
            return out

        rows.append(Row("model only", name, "torch eager cuda bf16", n, args.batch, _throughput(on_gpu, x, args),
                        gflop))
    return rows


def flops_per_image(model, input_size) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, *input_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops())


def decode_resize(images: list[str], bb, args):
    """Images/s of the featurize DataLoader over ``images`` (worker start included), and the decoded
    tensor (N, 3, H, W)."""
    import torch

    from igcli.imagefeatures import image_loader

    loader = image_loader(images, bb.transform(), bb.data_config, args.batch, args.workers)
    t0 = time.perf_counter()
    batches = [b for b, _ in loader]  # one pass: --n images is long enough to average the noise
    return len(images) / (time.perf_counter() - t0), torch.cat(batches)


def _throughput(fn, x, args) -> float:
    fn(x[:2])  # warm-up: weights prepacking, oneDNN / ORT kernel selection
    best = 0.0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(0, len(x), args.batch):
            fn(x[i:i + args.batch])
        best = max(best, len(x) / (time.perf_counter() - t0))
    return best


def export_onnx(model, input_size, path: Path) -> None:
    """torch.onnx.export with a dynamic batch dimension (the torch.export-based exporter)."""
    import warnings

    import torch

    model = model.to(memory_format=torch.contiguous_format)
    x = torch.randn(2, *input_size)
    with warnings.catch_warnings(), open(os.devnull, "w") as devnull:
        warnings.simplefilter("ignore")
        stdout, sys.stdout = sys.stdout, devnull  # the exporter prints its progress
        try:
            torch.onnx.export(
                model, (x,), str(path), input_names=["image"], output_names=["logits"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}}, dynamo=True,
            )
        finally:
            sys.stdout = stdout
    model.to(memory_format=torch.channels_last)


def _ort_providers() -> list[str]:
    import onnxruntime as ort
    import torch

    providers = ["CPUExecutionProvider"]
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.append("CUDAExecutionProvider")
    return providers


def _ort_runner(path: Path, provider: str, model, check):
    import numpy as np
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()  # the same cores as torch
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=[provider])
    name = sess.get_inputs()[0].name

    def run(batch):
        return sess.run(None, {name: batch.numpy()})[0]

    with torch.inference_mode():
        ref = model(check.contiguous()).float().numpy()
    return run, float(np.abs(run(check) - ref).max())


# ----------------------------------------------------------------------------------------- end to end

def bench_end_to_end(images: list[str], args, tmp: Path) -> list[Row]:
    """The featurize path on a temporary store of posts pointing at the images (nothing is copied)."""
    from igcli import store
    from igcli.backbones import ROLES, BackboneRequest, resolve_weights
    from igcli.imagefeatures import ImageFeatureOptions, compute_quality, run_backbone
    from igcli.ingest import ingest_posts

    folder = Path(images[0]).parent
    rows: list[Row] = []
    for role, n in (("aesthetics", args.n_model), ("objects", args.n_big)):
        csv = tmp / f"posts_{role}.csv"
        lines = ["post_id,username,posted_at,likes,image"]
        lines += [f"p{i},u{i % 50},2017-04-01,{i},{Path(f).name}" for i, f in enumerate(images[:n])]
        csv.write_text("\n".join(lines) + "\n")
        con = store.connect(tmp / f"e2e_{role}.duckdb")
        try:
            ingest_posts(csv, con=con, images_dir=folder)
            if role == "aesthetics":
                t0 = time.perf_counter()
                computed, _ = compute_quality(con, max(1, args.workers))
                rows.append(Row("end to end", "weight-free quality", f"{max(1, args.workers)} threads", computed,
                                0, computed / (time.perf_counter() - t0), None, "image_quality rows written"))
            name = ROLES[role].default_model
            req = BackboneRequest(role, name, random_init=True)
            opts = ImageFeatureOptions(device="cpu", batch_size=args.batch, workers=args.workers)
            t0 = time.perf_counter()
            run = run_backbone(con, req, resolve_weights(req), "cpu", opts)
            rows.append(Row("end to end", name, f"featurize cpu, {args.workers} workers", run.images_run, args.batch,
                            run.images_per_s, None,
                            f"decode overlapped, rows written; {time.perf_counter() - t0:.0f} s with model build"))
        finally:
            con.close()
        print(f"  end to end {role} done", flush=True)
    return rows


def _print(rows: list[Row], notes: list[str], seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="igcli featurize: image throughput")
    for col in ("stage", "backbone", "runtime", "images", "batch", "images/s", "GFLOP/img", "GFLOP/s", "note"):
        t.add_column(col, justify="right" if col in ("images", "batch", "images/s", "GFLOP/img", "GFLOP/s") else "left")
    for r in rows:
        t.add_row(r.stage, r.backbone, r.runtime, f"{r.images:,}", str(r.batch or ""), f"{r.images_per_s:,.1f}",
                  "" if r.gflop_per_image is None else f"{r.gflop_per_image:.2f}",
                  "" if r.gflop_per_s is None else f"{r.gflop_per_s:,.0f}", r.note)
    console = Console(width=200)
    console.print(t)
    for note in notes:
        console.print(f"  {note}")
    console.print(f"  total {seconds:.0f} s")


if __name__ == "__main__":
    main()
