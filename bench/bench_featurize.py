"""Benchmark the image side of ``igcli featurize``: decode, torch eager, onnxruntime fp32 / int8, end to end.

    .venv/bin/python bench/bench_featurize.py                        # lite0 on the dev images, ~4 min on 2 cores
    .venv/bin/python bench/bench_featurize.py --backbones efficientnet_lite0,mobilenetv1_100 --json out.json
    .venv/bin/python bench/bench_featurize.py --int8-agreement 10539  # int8 vs fp32 top-5 on every dev image
    python bench/bench_featurize.py --device cuda --batch 128 --workers 15 --no-int8   # on a GPU machine

Images come from ``$IGCLI_DEV_DATA/images`` (or ``--images DIR``). Rows, per backbone:

* decode + resize: igcli's decode threads (``--workers``) producing the model's uint8 input, no model (the
  dev images are 224 px, lite0's input size: at ``igcli.vision.backbones.CROP_PCT`` 1.0 they are not resampled);
* torch eager: the model (with the uint8 -> normalised input step) on decoded batches, ``inference_mode``;
* onnxruntime fp32: the cached ONNX export featurize uses, CPUExecutionProvider: as featurize runs it
  (``model_streams``: two batches at a time, each on half the threads, pool threads sleeping when idle, each
  batch run ``igcli.vision.runtime.CPU_RUN`` images at a time); one batch at a time on all threads in runs of
  ``CPU_RUN`` images (``Runner.infer``); and the whole batch in one run on all threads (issue 36's "fp32 graph
  alone"), sleeping and with onnxruntime's default spinning pool;
* onnxruntime int8: its dynamic quantization (``--quantize int8``), when it builds, and in a note how often it
  gives fp32's top-5 classes on ``--int8-agreement`` images (1,024 by default: the 95% bar of the refusal);
* end to end: the whole ``featurize_images`` call on a fresh store (work lists, session open, the quality
  features from the backbone's own decode of each image, decode overlapped with inference, DuckDB writes),
  both roles from one forward pass for the packaged backbones; images/s = images / the call's seconds,
  compared with the fp32 graph alone (one onnxruntime session on all threads, the whole batch in one run) and
  with the fastest onnxruntime fp32 model-only row;
* the ``igcli featurize`` command: a process of its own, as a user runs it, on a fresh store of ``--n-command``
  images (4,000, as issue 36 timed it), from the process's start to its exit (imports, metadata features,
  session open, images, writes), against the fp32 graph alone: issue 36's target is at least as fast. Torch
  eager, the onnxruntime fp32 rows and these two run in ``--rounds`` interleaved rounds (5: on this shared
  machine one round in three or four is disturbed, and a median of three moved 5-9 points between runs of
  the same code) and report medians; int8 reports the best of ``--repeats`` passes;
* end to end, decoded beforehand: the same call with igcli's per-image decode (file read, hash check, decode,
  resize) replaced by a lookup of the arrays the decode row made, and the quality features computed before
  the timed call, so it costs nothing: what the pipeline reaches with decoding perfectly hidden, the ceiling
  the end-to-end row is held to. A diagnostic, not a way featurize runs.

On 2 cores the two model streams keep both cores busy, so decoding is not hidden but paid for: the end-to-end
row is bounded by the model's share of the CPU work, and the "decoded beforehand" row shows how much of the gap
to model-only is decoding and how much is the rest of the pipeline (writes, batching, threads sharing caches).
A note gives that share as measured: the process CPU of each end-to-end call and the part of it inside the
model's forward passes, per image, beside the forward pass's CPU per image in the model-only pass. Both
parts of the share come from the same call, so it does not move with the shared machine's speed as a
throughput ratio of two passes measured a minute apart does.

``--device cuda`` replaces the model and end-to-end rows with torch CUDA and onnxruntime's CUDA provider
(when it loads), each checked against onnxruntime on the CPU (same top-1, largest logit difference), and
featurize end to end with each; the GPU's matmul rate is printed beside. It decides
``igcli.vision.runtime.GPU_RUNTIME``.

GFLOP/s = images/s x FLOPs per image (``torch.utils.flop_counter``, a multiply-add = 2 FLOPs). The machine's
fp32 GEMM rate (torch matmul 2048 x 2048, all threads, best of 5) is measured in the same run and printed
beside, with ``uptime``'s load average: other processes on a shared machine slow every row. Backbones
without pretrained weights here run random-init (speed does not depend on the values) and say so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import DEV_DATA, write_json  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
HEADER = ["stage", "backbone", "runtime", "images", "batch", "images/s", "GFLOP/img", "GFLOP/s", "note"]


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

    def cells(self) -> list:
        gf = None if self.gflop_per_image is None else round(self.images_per_s * self.gflop_per_image, 1)
        return [self.stage, self.backbone, self.runtime, self.images, self.batch, round(self.images_per_s, 1),
                None if self.gflop_per_image is None else round(self.gflop_per_image, 3), gf, self.note]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=DEV_DATA / "images", help="folder of images")
    p.add_argument("--backbones", default="efficientnet_lite0", help="comma-separated backbone names")
    p.add_argument("--n", type=int, default=1024, help="images for the decode rows (and the model-only input)")
    p.add_argument("--n-model", type=int, default=1024,
                   help="images for the model-only rows (as many as end to end: short runs flatter the model)")
    p.add_argument("--n-command", type=int, default=4000,
                   help="images for the `igcli featurize` command row (issue 36 timed 4,000); 0 skips it")
    p.add_argument("--n-e2e", type=int, default=1024,
                   help="images for the end-to-end row (the featurize call, model load included, is in a note)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="decode threads")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="inference threads (torch and ORT)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of int8 (the best is reported)")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds of torch eager, onnxruntime fp32 and end to end (medians are reported)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 rows")
    p.add_argument("--int8-agreement", type=int, default=1024,
                   help="int8 vs fp32 top-5 agreement on this many images (first backbone; the bar README's "
                        "--quantize int8 refusal cites); 0 or --no-int8 skips it")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: torch CUDA and onnxruntime's CUDA provider (when installed) instead of the CPU rows")
    p.add_argument("--json", help="write the rows as JSON for bench/run_all.py")
    args = p.parse_args(argv)

    images = sorted(str(f) for f in args.images.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise SystemExit(f"no images in {args.images}: set IGCLI_DEV_DATA or pass --images DIR")
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    gemm = gemm_gflops()
    load = os.getloadavg()
    rows: list[Row] = []
    notes = [f"fp32 GEMM (torch matmul 2048x2048, {torch.get_num_threads()} threads): {gemm:,.0f} GFLOP/s; "
             f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores"]
    if args.device == "cuda":
        notes.append(gpu_note())
    bench = bench_backbone_gpu if args.device == "cuda" else bench_backbone
    with tempfile.TemporaryDirectory(prefix="igcli-bench-") as tmp:
        for name in args.backbones.split(","):
            rows += bench(name.strip(), images, args, Path(tmp), notes)
        if args.int8_agreement and not args.no_int8:
            notes.append(int8_agreement(args.backbones.split(",")[0].strip(), images[:args.int8_agreement], args))
    load = os.getloadavg()
    notes.append(f"load average at end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
                 f"total {time.perf_counter() - t_start:.0f} s")
    from _common import print_table

    print_table("igcli featurize: image throughput", HEADER, [r.cells() for r in rows])
    for n in notes:
        print(f"  {n}")
    write_json(args.json, "featurize", HEADER, [r.cells() for r in rows], notes)


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def gpu_note(n: int = 8192, repeats: int = 10) -> str:
    """The GPU's name and its matmul rate (fp32 without TF32, and bf16), n x n, mean of ``repeats``."""
    import torch

    a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            x @ y
        torch.cuda.synchronize()
        rates.append(2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e12)
    tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
    return (f"GPU {torch.cuda.get_device_name()}: matmul {n}x{n} fp32 (TF32 {tf32}) {rates[0]:,.0f} TFLOP/s, "
            f"bf16 {rates[1]:,.0f} TFLOP/s; torch {torch.__version__}")


def _pairs(name: str) -> tuple[list, str]:
    """Both roles when the backbone is an ImageNet classifier with weights here, else random-init."""
    from igcli.errors import IgcliError
    from igcli.vision.backbones import BackboneRequest, resolve_weights

    note = ""
    try:
        pairs = [(r, resolve_weights(r)) for r in (BackboneRequest("objects", name),
                                                   BackboneRequest("aesthetics", name))]
    except IgcliError:
        pairs = [(r, resolve_weights(r)) for r in (BackboneRequest("objects", name, random_init=True),
                                                   BackboneRequest("aesthetics", name, random_init=True))]
        note = "random-init (no weights here)"
    return pairs, note


def bench_backbone(name: str, images: list[str], args, tmp: Path, notes: list[str]) -> list[Row]:
    import numpy as np

    from igcli.vision.decode import decoded_batches
    from igcli.vision.runtime import group_requests, open_runner

    pairs, weights_note = _pairs(name)
    (group,) = group_requests(pairs)
    t0 = time.perf_counter()
    ort_fp32 = open_runner(group, "cpu", threads=args.threads)
    notes.append(f"{name}: ONNX {'exported' if ort_fp32.exported else 'from the cache'} in "
                 f"{time.perf_counter() - t0:.1f} s ({ort_fp32.onnx_path}), parity vs torch "
                 f"{ort_fp32.parity_max_abs_diff:.1e}{'; ' + weights_note if weights_note else ''}")
    gflop = flops_per_image(group) / 1e9
    rows: list[Row] = []

    t0 = time.perf_counter()
    decoded = [x for x, _ in decoded_batches(images[:args.n], None, ort_fp32, args.batch, args.workers)]
    dec_rate = args.n / (time.perf_counter() - t0)
    rows.append(Row("decode + resize", name, f"{args.workers} threads", args.n, args.batch, dec_rate, None,
                    f"to {ort_fp32.input_size[0]}px uint8"))
    ready = np.concatenate(decoded)  # also the end-to-end pass's input with decoding taken out
    x = ready[:args.n_model]

    # The rows the targets compare (torch eager against onnxruntime, end to end against onnxruntime) are
    # measured in interleaved rounds and reported as medians: on a shared machine a best-of pass picks the
    # quietest moment of whichever row got it, and a row measured minutes apart from another sees another load.
    from igcli.ort import session as make_session

    torch_runner = open_runner(group, "cpu", runtime="torch", threads=args.threads)
    spinning = make_session(ort_fp32.onnx_path, "cpu", args.threads, spinning=True)
    from igcli.engines.local import model_streams
    from igcli.features.images import ImageFeatureOptions
    from igcli.vision.runtime import CPU_RUN, session_infer

    streams, per_stream = model_streams(ImageFeatureOptions(threads=args.threads), "cpu", "onnxruntime")
    featurize_session = make_session(ort_fp32.onnx_path, "cpu", per_stream, spinning=False)
    whole = make_session(ort_fp32.onnx_path, "cpu", args.threads, spinning=False)  # the fp32 graph alone
    model_cpu = CpuClock()
    in_streams = Streams(model_cpu.timed(session_infer(featurize_session, ort_fp32.outputs)), streams)
    models = {"featurize": in_streams, "torch": torch_runner.infer,
              "sleeping": lambda b: whole.run(ort_fp32.outputs, {"image": b}), "runs": ort_fp32.infer,
              "spinning": lambda b: spinning.run(ort_fp32.outputs, {"image": b})}
    for fn in models.values():
        fn(x[:2])  # warm-up: kernel selection, weight prepacking
    n_e2e = min(args.n_e2e, len(images))
    # the decode row's arrays by file name, for the end-to-end pass with decoding taken out (when it made them all)
    predecoded = {Path(f).name: ready[i] for i, f in enumerate(images[:n_e2e])} if n_e2e <= len(ready) else None
    # the command runs the packaged weights (random-init has no such command), on as many images as issue 36 timed
    n_cmd = min(args.n_command, len(images)) if not pairs[0][1].random_init else 0
    command = n_cmd > 0
    rounds: list[dict] = []
    for k in range(args.rounds):
        model_cpu.seconds = 0.0
        got = {kind: one_pass(fn, x, args.batch) for kind, fn in models.items()}
        got["model_ms"] = model_cpu.seconds / len(x) * 1000  # CPU per image of the "featurize" model-only pass
        cpu: dict = {}
        got["e2e"], got["call_s"] = end_to_end(pairs, images[:n_e2e], args, tmp / f"{name}-{k}", cpu=cpu)
        got["pass"], got["second"] = cpu["pass"], cpu["second"]
        if command:
            got["command"], got["command_s"] = whole_command(pairs, images[:n_cmd], args, tmp / f"{name}-{k}-cmd")
        got["e2e_model_ms"], got["e2e_ms"] = cpu["model"] / n_e2e * 1000, cpu["process"] / n_e2e * 1000
        if predecoded is not None:
            got["e2e_ready"], _ = end_to_end(pairs, images[:n_e2e], args, tmp / f"{name}-{k}-ready", predecoded,
                                             cpu=cpu)
            got["ready_model_ms"], got["ready_ms"] = cpu["model"] / n_e2e * 1000, cpu["process"] / n_e2e * 1000
        rounds.append(got)
    del torch_runner
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    in_streams.pool.shutdown()
    t_rate, o_rate, s_rate, e2e = med["torch"], med["sleeping"], med["spinning"], med["e2e"]
    f_rate, r_rate = med["featurize"], med["runs"]
    rows.append(Row("model only", name, f"torch eager, {args.threads} threads", len(x), args.batch, t_rate, gflop,
                    f"median{'; ' + weights_note if weights_note else ''}"))
    rows.append(Row("model only", name, f"onnxruntime fp32, {streams} batches x {per_stream} threads, runs of "
                    f"{CPU_RUN}", len(x), args.batch, f_rate, gflop,
                    f"{f_rate / t_rate:.2f}x torch eager; as featurize runs it, median"))
    rows.append(Row("model only", name, f"onnxruntime fp32, {args.threads} threads, runs of {CPU_RUN}", len(x),
                    args.batch, r_rate, gflop, f"{r_rate / t_rate:.2f}x torch eager; one batch at a time in runs "
                    f"of {CPU_RUN} images (Runner.infer), median"))
    rows.append(Row("model only", name, f"onnxruntime fp32, {args.threads} threads", len(x), args.batch, o_rate,
                    gflop, f"{o_rate / t_rate:.2f}x torch eager (target >= 2x); the fp32 graph alone: one batch "
                    "at a time, in one run, median"))
    rows.append(Row("model only", name, f"onnxruntime fp32, {args.threads} spinning threads", len(x), args.batch,
                    s_rate, gflop, f"{s_rate / t_rate:.2f}x torch eager; onnxruntime's default pool, median"))
    if not args.no_int8:
        try:
            ort_int8 = open_runner(group, "cpu", quantize="int8", threads=args.threads)
            i_rate = throughput(ort_int8.infer, x, args)
            rows.append(Row("model only", name, f"onnxruntime int8, {args.threads} threads, runs of {CPU_RUN}", len(x),
                            args.batch, i_rate, gflop,
                            f"{i_rate / t_rate:.2f}x torch eager, {i_rate / o_rate:.2f}x fp32"))
        except Exception as err:  # quantization tooling failing is a result, not a crash
            notes.append(f"{name}: int8 did not build ({type(err).__name__}: {str(err)[:120]})")
    best = max(f_rate, r_rate, o_rate, s_rate)
    rows.append(Row("end to end", name, f"featurize, ORT + {args.workers} decode threads", n_e2e, args.batch,
                    e2e, gflop, f"{e2e / o_rate:.1%} of the fp32 graph alone (one session, {args.threads} threads), "
                    f"{e2e / best:.1%} of the fastest ORT fp32 model-only row; the featurize_images call on a fresh "
                    "store: both roles and the quality features, rows written, median"))
    if command:
        c_rate = med["command"]
        rows.append(Row("end to end", name, "`igcli featurize` command, a process of its own", n_cmd, args.batch,
                        c_rate, gflop, f"{c_rate / o_rate:.1%} of the fp32 graph alone (one session, "
                        f"{args.threads} threads; issue 36's target: >= 100%), {c_rate / best:.1%} of the fastest "
                        f"model-only row; process start to exit ({med['command_s']:.1f} s): imports, metadata "
                        "features, session open, images, writes; median"))
    if predecoded is not None:
        ready_rate = med["e2e_ready"]
        rows.append(Row("end to end", name, "featurize, ORT, images decoded beforehand", n_e2e, args.batch,
                        ready_rate, gflop, f"{ready_rate / best:.1%} of the fastest ORT model-only row; decode "
                        f"taken out (diagnostic); end to end with decode = {e2e / ready_rate:.0%} of this; median"))

    def one_round(r: dict) -> str:
        fastest = max(r["featurize"], r["runs"], r["sleeping"], r["spinning"])
        ready = f" / {r['e2e_ready']:.1f} ({r['e2e_ready'] / fastest:.0%})" if "e2e_ready" in r else ""
        # e2e_ready counts from the open session, quality done before: the pipeline's ceiling
        return (f"{r['torch']:.1f} / {r['featurize']:.1f} / {r['runs']:.1f} / {r['sleeping']:.1f} / "
                f"{r['spinning']:.1f} / {r['e2e']:.1f} ({r['e2e'] / fastest:.0%}){ready}")

    notes.append(f"{name}: {len(rounds)} interleaved rounds of model-only (torch eager / onnxruntime as featurize "
                 f"runs it / one batch in runs of {CPU_RUN} / one batch in one run, sleeping / the same, spinning), "
                 "end to end on a fresh store"
                 f"{' and end to end with the images decoded beforehand' if predecoded is not None else ''}, "
                 f"images/s (share of the round's fastest model-only row): {'; '.join(one_round(r) for r in rounds)}")
    ready_cpu = (f"; decoded beforehand {med['ready_ms']:.1f} ms, {med['ready_model_ms'] / med['ready_ms']:.0%} "
                 f"in the model ({med['ready_model_ms']:.1f} ms)") if predecoded is not None else ""
    per_round = ", ".join(f"{r['model_ms']:.1f}" for r in rounds)
    notes.append(f"{name}: CPU per image, medians of the rounds: the model-only pass as featurize runs it "
                 f"{med['model_ms']:.1f} ms (rounds {per_round}); the end-to-end call {med['e2e_ms']:.1f} ms of "
                 f"process CPU, {med['e2e_model_ms'] / med['e2e_ms']:.0%} of it in the model's forward passes "
                 f"({med['e2e_model_ms']:.1f} ms){ready_cpu}. The rest is the pipeline's own work (plan, session "
                 "open, decode, batching, post-processing, DuckDB writes); the same forward pass costs another CPU "
                 "time from one pass to the next as the shared machine's speed moves")
    notes.append(f"{name}: the median end-to-end featurize call took {med['call_s']:.1f} s for {n_e2e} images "
                 f"(quality included), {med['pass']:.1f} images/s counted from the open session (the backbone "
                 f"pass alone); {med['second']:.0f} images decoded a second time for the quality features "
                 "(another JPEG draft scale than the model's)")
    return rows


def bench_backbone_gpu(name: str, images: list[str], args, tmp: Path, notes: list[str]) -> list[Row]:
    """The CUDA rows: decode, torch CUDA and onnxruntime's CUDA provider model-only, and featurize end to end
    with each, in interleaved rounds (medians). Both runtimes are checked against onnxruntime on the CPU."""
    import numpy as np

    from igcli.errors import IgcliError
    from igcli.vision.decode import decoded_batches
    from igcli.vision.runtime import group_requests, open_runner

    pairs, weights_note = _pairs(name)
    (group,) = group_requests(pairs)
    t0 = time.perf_counter()
    cpu = open_runner(group, "cpu", runtime="onnxruntime", threads=args.threads)
    how = "exported" if cpu.exported else "from the cache"
    notes.append(f"{name}: ONNX {how} in {time.perf_counter() - t0:.1f} s, "
                 f"parity vs torch {cpu.parity_max_abs_diff:.1e}{'; ' + weights_note if weights_note else ''}")
    gflop = flops_per_image(group) / 1e9
    t0 = time.perf_counter()
    decoded = [x for x, _ in decoded_batches(images[:args.n], None, cpu, args.batch, args.workers)]
    dec_rate = args.n / (time.perf_counter() - t0)
    rows = [Row("decode + resize", name, f"{args.workers} threads", args.n, args.batch, dec_rate, None,
                f"to {cpu.input_size[0]}px uint8")]
    x = np.concatenate(decoded)[:args.n_model]
    runners = {"torch": open_runner(group, "cuda", runtime="torch", threads=args.threads)}
    try:
        ort_cuda = open_runner(group, "cuda", runtime="onnxruntime", threads=args.threads)
        if ort_cuda.provider == "CUDAExecutionProvider":
            runners["onnxruntime"] = ort_cuda
        else:
            notes.append(f"{name}: onnxruntime gave {ort_cuda.provider}, not CUDA: no onnxruntime rows")
    except IgcliError as err:
        notes.append(f"{name}: no onnxruntime rows: {err}")
    ref = cpu.infer(x[:256])["logits"]
    for r in runners.values():
        got = r.infer(x[:256])["logits"]
        notes.append(f"{name}: {r.provider} vs onnxruntime on the CPU, {len(ref)} images: same top-1 "
                     f"{np.mean(got.argmax(1) == ref.argmax(1)):.1%}, max |logit diff| {np.abs(got - ref).max():.1e}")
        r.infer(x[:args.batch])  # warm-up at the timed batch size (cuDNN algorithm search)
    n_e2e = min(args.n_e2e, len(images))
    rounds: list[dict] = []
    for k in range(args.rounds):
        got = {kind: one_pass(r.infer, x, args.batch) for kind, r in runners.items()}
        for kind in runners:
            folder = tmp / f"{name}-{kind}-{k}"
            got[f"e2e {kind}"], got[f"call {kind}"] = end_to_end(pairs, images[:n_e2e], args, folder,
                                                                 device="cuda", runtime=kind)
        rounds.append(got)
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    label = {"torch": "torch CUDA eager", "onnxruntime": "onnxruntime CUDAExecutionProvider"}
    for kind in runners:
        rows.append(Row("model only", name, f"{label[kind]}, fp32", len(x), args.batch, med[kind], gflop,
                        f"median{'; ' + weights_note if weights_note else ''}"))
    best = max(med[kind] for kind in runners)
    for kind in runners:
        e2e = med[f"e2e {kind}"]
        rows.append(Row("end to end", name, f"featurize, {label[kind]} + {args.workers} decode threads", n_e2e,
                        args.batch, e2e, gflop, f"{e2e / best:.0%} of the faster model-only row, "
                        f"{e2e / dec_rate:.0%} of decode alone; call {med[f'call {kind}']:.1f} s; median"))
    per_round = "; ".join(" / ".join(f"{key} {v:.0f}" for key, v in r.items() if not key.startswith("call"))
                          for r in rounds)
    notes.append(f"{name}: {len(rounds)} interleaved rounds, images/s: {per_round}")
    return rows


def process_cpu() -> float:
    """User + system CPU seconds of this process, every thread (ended ones included)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuClock:
    """CPU seconds spent inside model calls, summed over the threads that make them: with one onnxruntime
    thread per session the work runs on the calling thread, so ``time.thread_time`` around the call counts it."""

    def __init__(self) -> None:
        from igcli.vision import runtime

        self.seconds = 0.0
        self._lock = threading.Lock()
        self._start_session = runtime.start_session  # the real one, before any patch

    def timed(self, fn):
        def call(*a, **k):
            t = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                dt = time.thread_time() - t
                with self._lock:
                    self.seconds += dt
        return call

    def timed_session(self, runner, *a, **k):
        """``igcli.vision.runtime.start_session`` with the runner's forward pass timed."""
        self._start_session(runner, *a, **k)
        runner._infer = self.timed(runner._infer)
        return runner


class Streams:
    """featurize's model loop: up to ``n`` batches in the model at once, each waited for in order."""

    def __init__(self, fn, n: int) -> None:
        self.fn, self.n = fn, n
        self.pool = ThreadPoolExecutor(max_workers=n)
        self.running: deque = deque()

    def __call__(self, batch) -> None:
        if len(self.running) == self.n:
            self.running.popleft().result()
        self.running.append(self.pool.submit(self.fn, batch))

    def flush(self) -> None:
        while self.running:
            self.running.popleft().result()


def one_pass(fn, x, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(x[i:i + batch])
    if isinstance(fn, Streams):
        fn.flush()
    return len(x) / (time.perf_counter() - t0)


def flops_per_image(group) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from igcli.vision.backbones import load_backbone
    from igcli.vision.runtime import graph_module

    req, weights = group[0]
    bb = load_backbone(req, weights)
    module = graph_module(bb.model, ["logits", "embedding"] if len(group) > 1 else ["logits"], bb.data_config)
    h, w = bb.data_config["input_size"][1:]
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.zeros(1, h, w, 3, dtype=torch.uint8))
    return float(counter.get_total_flops())


def throughput(fn, x, args) -> float:
    fn(x[:2])  # warm-up: kernel selection, weight prepacking
    return max(one_pass(fn, x, args.batch) for _ in range(args.repeats))


def fresh_store(images: list[str], tmp: Path, name: str) -> Path:
    """A new store in ``tmp`` whose posts (50 users, one day) point at ``images`` in their folder, ingested."""
    from igcli.commands.ingest import ingest_posts

    tmp.mkdir(parents=True)
    csv = tmp / "posts.csv"
    lines = ["post_id,username,posted_at,likes,image"]
    lines += [f"p{i},u{i % 50},2017-04-01,{i},{Path(f).name}" for i, f in enumerate(images)]
    csv.write_text("\n".join(lines) + "\n")
    db = tmp / name
    ingest_posts(csv, db=db, images_dir=Path(images[0]).parent)
    return db


def end_to_end(pairs, images: list[str], args, tmp: Path, predecoded: dict | None = None, device: str = "cpu",
               runtime: str = "onnxruntime", cpu: dict | None = None) -> tuple[float, float]:
    """(images/s, seconds) of the whole featurize_images call for both roles and the quality features, on a
    fresh store whose posts point at ``images`` (nothing is copied). With ``predecoded`` (file name -> the
    model's uint8 input) igcli's decode of each image is replaced by a lookup there (no file read, hash check,
    decode or resize), the quality features are computed before the call, and images/s counts from the open
    session. With ``cpu`` (onnxruntime on the CPU) it gets the call's CPU seconds: ``process`` (every thread)
    and ``model`` (inside onnxruntime's runs, each on the calling thread), and ``pass``, the backbone pass's
    images/s from its open session, and ``second``, the images the quality features decoded again."""
    from unittest import mock

    from igcli import store
    from igcli.commands.featurize import featurize_images
    from igcli.features.images import ImageFeatureOptions

    con = store.connect(fresh_store(images, tmp, "e2e.duckdb"))
    try:
        req = pairs[0][0]
        opts = ImageFeatureOptions(objects=req.name, aesthetics=req.name, random_init=pairs[0][1].random_init,
                                   batch_size=args.batch, workers=args.workers, threads=args.threads, device=device,
                                   runtime=runtime)
        lookup = contextlib.nullcontext()
        if predecoded is not None:
            from igcli.features.images import compute_quality

            compute_quality(con, args.workers)  # taken out too: the backbone pass alone is timed
            lookup = mock.patch("igcli.vision.decode.decode_image",
                                lambda path, sha256, prepare, min_side=None: (predecoded[Path(path).name], ""))
        clock = CpuClock()
        # where the local engine looks the name up (it imports it): patching igcli.vision.runtime alone timed nothing
        timed = (mock.patch("igcli.engines.local.start_session", clock.timed_session) if cpu is not None
                 else contextlib.nullcontext())
        with lookup, timed:
            t0, c0 = time.perf_counter(), process_cpu()
            res = featurize_images(con, opts)
            seconds = time.perf_counter() - t0
            if cpu is not None:
                assert clock.seconds > 0, "no forward pass was timed: the session patch missed the engine"
                cpu.update(process=process_cpu() - c0, model=clock.seconds)
    finally:
        con.close()
    run = res.backbones[0]
    assert run.images_run == len(images) and run.shared_with == ["aesthetics"], run
    if cpu is not None:
        cpu.update(second=getattr(res, "quality_second_decodes", 0), **{"pass": run.images_per_s})
    if predecoded is not None:
        return run.images_per_s, seconds
    return len(images) / seconds, seconds


def whole_command(pairs, images: list[str], args, tmp: Path) -> tuple[float, float]:
    """(images/s, seconds) of ``igcli featurize`` run as a user runs it, in a process of its own, on a fresh
    store whose posts point at ``images`` (ingested before the clock starts): from the process's start to its
    exit, so Python's start, the imports, the metadata features, the session open and the writes all count."""
    import subprocess

    from igcli import store

    db = fresh_store(images, tmp, "cmd.duckdb")
    name = pairs[0][0].name
    cmd = [sys.executable, "-m", "igcli", "featurize", "--db", str(db), "--objects", name, "--aesthetics", name,
           "--device", "cpu", "--batch-size", str(args.batch), "--workers", str(args.workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"igcli featurize failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    con = store.connect(db)
    try:
        left = con.execute("SELECT count(DISTINCT sha256) FROM images WHERE status = 'ok' AND sha256 NOT IN "
                           "(SELECT sha256 FROM image_quality)").fetchall()[0][0]
    finally:
        con.close()
    assert left == 0, left  # every decodable image got its rows: the command did the work that was timed
    return len(images) / seconds, seconds


def int8_agreement(name: str, images: list[str], args) -> str:
    """How often int8 gives the same top-5 (as a set, and the same top-1) as fp32, on real images."""
    import numpy as np

    from igcli.vision.backbones import softmax, top_k
    from igcli.vision.decode import decoded_batches
    from igcli.vision.runtime import group_requests, open_runner

    pairs, note = _pairs(name)
    group = group_requests(pairs)[0][:1]  # objects only
    fp32 = open_runner(group, "cpu", threads=args.threads)
    int8 = open_runner(group, "cpu", quantize="int8", threads=args.threads)
    same5 = same1 = overlap = n = 0
    for x, reasons in decoded_batches(images, None, fp32, args.batch, args.workers):
        ok = [i for i, why in enumerate(reasons) if not why]
        if not ok:
            continue
        _, a = top_k(softmax(fp32.infer(x[ok])["logits"]))
        _, b = top_k(softmax(int8.infer(x[ok])["logits"]))
        same5 += sum(set(u) == set(v) for u, v in zip(a.tolist(), b.tolist(), strict=True))
        same1 += int(np.sum(a[:, 0] == b[:, 0]))
        overlap += sum(len(set(u) & set(v)) for u, v in zip(a.tolist(), b.tolist(), strict=True))
        n += len(ok)
    verdict = "meets" if same5 / n >= 0.95 else "FAILS"
    return (f"{name} int8 vs fp32 on {n:,} images: same top-5 set {same5 / n:.1%} ({verdict} the 95% bar), "
            f"same top-1 {same1 / n:.1%}, mean top-5 overlap {overlap / n:.2f} of 5{'; ' + note if note else ''}")


if __name__ == "__main__":
    main()
