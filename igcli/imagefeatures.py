"""Image features for ``igcli featurize``: weight-free quality, then each backbone whose weights are found.

    from igcli import store
    from igcli.imagefeatures import ImageFeatureOptions, featurize_images
    con = store.connect("igcli.duckdb")
    result = featurize_images(con, ImageFeatureOptions(objects_weights=Path("irv2.safetensors")))

Everything is keyed by the image's content (sha256), so duplicate images run once, and is written per
batch, so an interrupted run resumes where it stopped and a second run is a no-op:

1. ``image_quality``: ``igcli.imagequality`` features for every decodable image (no weights needed).
2. For each backbone (``igcli.runtime.group_requests``: both roles share one when they name the same
   backbone and weights, the default ``efficientnet_lite0``): the images of posts with no row and no
   error for a role's (backbone, weights fingerprint) are decoded and resized by worker threads, a few
   batches ahead, while ``igcli.runtime`` runs the model (onnxruntime by default); one forward pass per
   image gives every role of the backbone its rows.

An image that fails to decode goes to ``image_feature_errors`` with the reason and is not retried; it
never stops the run. A backbone the user did not name whose weights cannot be found is skipped with
one message naming the fix; one the user named raises ``WeightsMissing``.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import duckdb

from igcli import store
from igcli.backbones import ROLES, BackboneRequest, Weights, get_role, resolve_device, resolve_weights
from igcli.errors import FeatureMismatch, InputError, ModelError, WeightsMissing
from igcli.runtime import INT8_SUFFIX, group_requests, row_fingerprint
from igcli.util import sha256_file

QUALITY_BATCH = 256
QUALITY_BACKBONE = "quality"     # image_feature_errors.backbone for the weight-free features
QUALITY_FP = "weight-free"       # ... and its weights_fp
QUALITY_COLUMNS = (
    "brightness", "contrast", "saturation", "colorfulness", "sharpness", "entropy", "aspect_ratio", "face_count",
)

Progress = Callable[[str, int, int], None]
ENGINES = ("local", "ray")
CPU_BATCH, CPU_WORKERS, CPU_STREAMS = 32, 2, 2
# Images committed per transaction by a backbone run (whole batches, at least one): one insert per role and
# one commit per 128 dev images took 0.35 ms of CPU per image, against 0.53 ms per CPU batch of 32.
WRITE_ROWS = 128
# Images per model call on a GPU (the Ray engine's GPU actors too); not yet measured on one
# (bench_featurize.py --device cuda is the measurement to make).
GPU_BATCH = 128
# int8 must give the same top-5 as fp32 on >= 95% of the dev images to be offered; measured with
# `bench/bench_featurize.py --int8-agreement 10539` (BENCHMARKS.md), onnxruntime dynamic quantization does not.
INT8_REFUSED = ("--quantize int8 is refused: onnxruntime's dynamic int8 gives the same top-5 classes as fp32 on "
                "far fewer than the required 95% of the dev images, and runs slower on this CPU "
                "(bench/bench_featurize.py --int8-agreement; BENCHMARKS.md): leave --quantize out")


@dataclass
class ImageFeatureOptions:
    objects: str | None = None            # ImageNet classifier name; None = "efficientnet_lite0"
    aesthetics: str | None = None         # embedding backbone name; None = "efficientnet_lite0"
    objects_explicit: bool = False        # the user named it: missing weights is an error, not a skip
    aesthetics_explicit: bool = False
    objects_weights: Path | None = None   # local state dict (.pth / .pt / .safetensors) for the classifier
    aesthetics_weights: Path | None = None
    nima_weights: Path | None = None      # the aesthetics model built with num_classes=10 (NIMA's score head)
    random_init: bool = False             # tests / benchmarks only: random weights (for backbones without a
                                          # weights file), fixed seed, rows marked random_init
    device: str = "auto"                  # auto | cpu | cuda (auto = cuda when torch sees a GPU)
    batch_size: int | None = None         # None: 32 on the CPU, GPU_BATCH on a GPU
    workers: int | None = None            # threads decoding + resizing, overlapped with inference; None: 2 on
                                          # the CPU (the model takes the cores), gpu_workers() on a GPU
    runtime: str = "auto"                 # auto | onnxruntime | torch (auto: igcli.runtime.resolve_runtime)
    quantize: str | None = None           # None (fp32) | "int8": rows fingerprinted <weights_fp>:int8
    threads: int | None = None            # inference threads; None = all cores
    allow_unverified_int8: bool = False   # tests / benchmarks only: run int8 although it failed the quality bar
    skip_backbones: bool = False          # only the weight-free quality features
    roles: tuple[str, ...] | None = None  # run only these backbone roles (None: every registered role)
    expect_fingerprints: dict[str, str] = field(default_factory=dict)  # role -> weights_fp a model card needs
    engine: str = "local"                 # local | ray (igcli.ray_engine runs the backbones on a Ray cluster)
    ray: Any = None                       # igcli.ray_engine.RayOptions for engine="ray"; None = defaults


@dataclass
class BackboneRun:
    role: str
    name: str
    weights_fp: str | None                # None when skipped
    random_init: bool
    images_run: int = 0
    images_failed: int = 0
    images_per_s: float = 0.0
    skipped_reason: str | None = None     # None when it ran (images_run may still be 0: nothing pending)
    device: str = "-"                     # the provider that ran it: CPUExecutionProvider, torch:cpu, ...
    weights_source: str | None = None     # file | package | cache | download | random-init
    seconds: float = 0.0
    shared_with: list[str] = field(default_factory=list)  # roles served by the same forward pass
    exported: bool = False                # the ONNX file was exported by this run (not found in the cache)
    nima: bool = False                    # aesthetics from a NIMA checkpoint (else an ImageNet embedding)
    resumed: int = 0                      # --engine ray: images whose rows came from an earlier job's shards


@dataclass
class ImageFeaturesResult:
    quality_computed: int = 0
    quality_failed: int = 0
    backbones: list[BackboneRun] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # one line per skipped backbone, naming the fix


def featurize_images(
    con: duckdb.DuckDBPyConnection, options: ImageFeatureOptions, progress: Progress | None = None
) -> ImageFeaturesResult:
    """Compute the image features the store lacks; see the module docstring."""
    if options.batch_size is not None and options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.workers is not None and options.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {options.workers}")
    if options.quantize not in (None, "int8"):
        raise InputError(f"unknown --quantize {options.quantize!r}: use int8 (or leave it out for fp32)")
    if options.quantize and not options.allow_unverified_int8:
        raise InputError(INT8_REFUSED)
    if options.engine not in ENGINES:
        raise InputError(f"unknown --engine {options.engine!r}: use {' or '.join(ENGINES)}")
    if options.engine == "ray":
        from igcli.ray_engine import check_options

        check_options(options)
    result = ImageFeaturesResult()
    # Weights first (cheap: no model is built), so a named backbone without weights fails before any work.
    resolved: list[tuple[BackboneRequest, Weights | None, WeightsMissing | None]] = []
    if not options.skip_backbones:
        if options.device != "auto":  # a bad --device fails before any work; auto is resolved when work is due
            resolve_device(options.device)
        roles = [r for r in ROLES if options.roles is None or r in options.roles]
        for req, explicit in (_request(options, role) for role in roles):
            try:
                weights = resolve_weights(req)
            except WeightsMissing as err:
                if explicit:
                    raise
                resolved.append((req, None, err))
                continue
            want = options.expect_fingerprints.get(req.role)
            got = row_fingerprint(weights, options.quantize)
            if want and want.removesuffix(INT8_SUFFIX) == weights.fingerprint:
                raise FeatureMismatch(
                    f"the model was trained on {req.role} features from an earlier igcli's image preprocessing "
                    f"(timm's centre crop; this igcli resizes the whole image): retrain it with `igcli train` "
                    "after `igcli featurize`")
            if want and got != want:
                raise FeatureMismatch(
                    f"the model needs {req.role} features from {req.name} with weights {want[:20]}…, but the "
                    f"weights found have fingerprint {got[:20]}…{' (int8)' if options.quantize else ''}: pass "
                    "the weights file (and --quantize) the "
                    f"model was trained with (--{req.role}-weights FILE)")
            resolved.append((req, weights, None))
    workers = options.workers if options.workers is not None else CPU_WORKERS
    result.quality_computed, result.quality_failed = compute_quality(con, max(1, workers), progress)
    for req, _, missing in resolved:
        if missing is not None:
            result.backbones.append(BackboneRun(req.role, req.name, None, False, skipped_reason=str(missing)))
            result.messages.append(f"skipped the {req.role} backbone: {missing}")
    engine = run_group
    if options.engine == "ray":
        from igcli.ray_engine import run_group_ray as engine
    for group in group_requests([(req, w) for req, w, _ in resolved if w is not None]):
        result.backbones += engine(con, group, options, progress)
    order = {role: i for i, role in enumerate(ROLES)}
    result.backbones.sort(key=lambda b: order[b.role])
    return result


def _request(options: ImageFeatureOptions, role: str) -> tuple[BackboneRequest, bool]:
    name = getattr(options, role, None) or get_role(role).default_model
    weights_file = getattr(options, f"{role}_weights", None)
    nima_file = options.nima_weights if role == "aesthetics" else None
    explicit = bool(getattr(options, f"{role}_explicit", False)) or weights_file is not None or nima_file is not None
    req = BackboneRequest(role, name, _path(weights_file), _path(nima_file), options.random_init)
    return req, explicit


def _path(p: Path | str | None) -> Path | None:
    return None if p is None else Path(p)


# ---------------------------------------------------------------------------------- quality

_QUALITY_PENDING = """
    SELECT i.sha256, min(i.path) AS path
    FROM images i
    WHERE i.status = 'ok' AND i.sha256 IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM image_quality q WHERE q.sha256 = i.sha256)
      AND NOT EXISTS (SELECT 1 FROM image_feature_errors e WHERE e.sha256 = i.sha256 AND e.backbone = ?)
    GROUP BY i.sha256
    ORDER BY i.sha256
"""
_QUALITY_INSERT = """
    INSERT INTO image_quality (sha256, brightness, contrast, saturation, colorfulness, sharpness, entropy,
                               aspect_ratio, face_count, computed_at)
    SELECT sha256, brightness, contrast, saturation, colorfulness, sharpness, entropy, aspect_ratio,
           CAST(face_count AS INTEGER), ?
    FROM igc_quality_batch
"""
_ERROR_INSERT = "INSERT INTO image_feature_errors VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"


def compute_quality(
    con: duckdb.DuckDBPyConnection, workers: int = 2, progress: Progress | None = None, batch: int = QUALITY_BATCH
) -> tuple[int, int]:
    """``image_quality`` rows for every decodable image content that has none; returns (computed, failed)."""
    from igcli.imagequality import quality_features_many

    pending = con.execute(_QUALITY_PENDING, [QUALITY_BACKBONE]).fetchall()
    stage = "image quality"
    if progress:
        progress(stage, 0, len(pending))
    computed = failed = 0
    for start in range(0, len(pending), batch):
        chunk = pending[start:start + batch]
        changed = [content_changed(path, sha) for sha, path in chunk]
        errors = [(sha, why) for (sha, _), why in zip(chunk, changed, strict=True) if why]
        chunk = [job for job, why in zip(chunk, changed, strict=True) if not why]
        feats = quality_features_many([Path(p) for _, p in chunk], workers=workers)
        ok = [(sha, f) for (sha, _), f in zip(chunk, feats, strict=True) if isinstance(f, dict)]
        errors += [(sha, str(f)) for (sha, _), f in zip(chunk, feats, strict=True) if not isinstance(f, dict)]
        columns = {"sha256": ("VARCHAR", [sha for sha, _ in ok]),
                   **{c: ("DOUBLE", [f.get(c) for _, f in ok]) for c in QUALITY_COLUMNS}}
        now = store.utcnow()
        with store.transaction(con):
            if ok:
                store.temp_table(con, "igc_quality_batch", columns)
                try:
                    con.execute(_QUALITY_INSERT, [now]).fetchall()
                finally:
                    con.execute("DROP TABLE igc_quality_batch")
            if errors:
                con.executemany(_ERROR_INSERT, [[sha, QUALITY_BACKBONE, QUALITY_FP, why, now] for sha, why in errors])
        computed += len(ok)
        failed += len(errors)
        store.fault_point("quality.after_batch")
        if progress:
            progress(stage, computed + failed, len(pending))
    return computed, failed


CHANGED = "the file changed since it was ingested: run igcli ingest again"


def content_changed(path: str, sha256: str) -> str | None:
    """Why the file at ``path`` can no longer stand for the ingested content ``sha256``, or None."""
    try:
        digest = sha256_file(path)
    except OSError as err:
        return f"cannot read image file: {err.strerror or err}"
    return None if digest == sha256 else CHANGED


# -------------------------------------------------------------------------------- backbones

@dataclass
class GroupPlan:
    """The work list of one backbone group, as both engines compute it from the store."""

    name: str
    stage: str                                 # progress label
    runs: dict[str, BackboneRun]               # role -> its report
    params: dict[str, dict[str, Any]]          # role -> $backbone, $weights_fp, $random_init of its SQL
    todo: dict[str, dict[str, str]]            # role -> {sha256: path} without a row or an error
    pending: list[tuple[str, str]]             # (sha256, path) needed by any role, sorted by sha256


def plan_group(
    con: duckdb.DuckDBPyConnection, group: list[tuple[BackboneRequest, Weights]], options: ImageFeatureOptions
) -> GroupPlan:
    """What one backbone group (``igcli.runtime.group_requests``) must still run: the images that lack a
    row (and an error) for any of its roles."""
    name = group[0][0].name
    runs, params, todo = {}, {}, {}
    for req, weights in group:
        keys = {"backbone": req.name, "weights_fp": row_fingerprint(weights, options.quantize)}
        params[req.role] = {"random_init": weights.random_init, **keys}
        todo[req.role] = {sha: path for sha, path in con.execute(get_role(req.role).pending_sql, keys).fetchall()}
        runs[req.role] = BackboneRun(req.role, req.name, keys["weights_fp"], weights.random_init,
                                     weights_source=weights.source, device="-", nima=weights.nima,
                                     shared_with=[r.role for r, _ in group if r.role != req.role])
    pending = sorted({sha: path for paths in todo.values() for sha, path in paths.items()}.items())
    return GroupPlan(name, f"{'+'.join(r.role for r, _ in group)}: {name}", runs, params, todo, pending)


def store_rows(
    con: duckdb.DuckDBPyConnection, plan: GroupPlan, shas: list[str], reasons: list[str],
    outputs: dict[str, dict[str, Any]], now: Any,
) -> None:
    """Write one batch of a group: image i is ``shas[i]``, failed when ``reasons[i]``; ``outputs`` is
    ``Runner.post`` of the images that did not fail, in order. The caller holds the transaction."""
    import numpy as np

    ok = [i for i, why in enumerate(reasons) if not why]
    for role, run in plan.runs.items():
        mine = [i for i in range(len(shas)) if shas[i] in plan.todo[role]]
        good = [j for j, i in enumerate(ok) if shas[i] in plan.todo[role]]  # positions within outputs
        table = None
        if good:
            sub = {k: v[np.array(good)] for k, v in outputs[role].items()}
            table = get_role(role).rows([shas[ok[j]] for j in good], sub)
        errors = [(shas[i], reasons[i]) for i in mine if reasons[i]]
        _write_batch(con, get_role(role).insert_sql, table, errors, plan.params[role], now)
        run.images_run += len(good)
        run.images_failed += len(errors)


def run_group(
    con: duckdb.DuckDBPyConnection,
    group: list[tuple[BackboneRequest, Weights]],
    options: ImageFeatureOptions,
    progress: Progress | None = None,
) -> list[BackboneRun]:
    """The local engine for one backbone group: ``plan_group``, then decode threads and one runner in
    this process; one forward pass per image serves every role.

    Three things overlap: decode threads work a few batches ahead (they start before the onnxruntime
    session opens), the main thread runs the model, and one writer thread commits the batches (one
    transaction per ``WRITE_ROWS`` images or more) while the model runs on the next ones. At most one
    transaction waits to be written, so an interrupted run loses at most the batches not yet committed and
    resumes from there."""
    from concurrent.futures import ThreadPoolExecutor

    from igcli.runtime import open_runner, start_session

    plan = plan_group(con, group, options)
    runs, pending = plan.runs, plan.pending
    if progress:
        progress(plan.stage, 0, len(pending))
    if not pending:
        return list(runs.values())  # nothing to do: the model is not even loaded
    device = resolve_device(options.device)
    runner = open_runner(group, device, options.runtime, options.quantize, options.threads, session=False)
    sha256s = [sha for sha, _ in pending]
    batch, workers = batching(options, device)
    write_rows = max(batch, WRITE_ROWS)
    batches = decoded_batches([p for _, p in pending], sha256s, runner, batch, workers)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="igcli-write")
    streams, threads = model_streams(options, device, runner.runtime)
    model = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="igcli-model") if streams > 1 else None
    try:
        if runner.runtime == "onnxruntime":
            start_session(runner, device, threads)
            if device != "cpu" and runner.provider != "CUDAExecutionProvider":
                # onnxruntime lists the CUDA provider but could not load it (a CUDA or cuDNN library missing):
                # auto runs torch on the GPU instead; a runtime the user named fails rather than run on the CPU.
                if options.runtime != "auto":
                    raise ModelError(f"onnxruntime could not start its CUDA provider (it would run on "
                                     f"{runner.provider}): use --runtime torch, or --device cpu")
                runner = open_runner(group, device, "torch", options.quantize, options.threads)
        for run in runs.values():
            run.device, run.exported = runner.provider, runner.exported

        def write(parts: list[tuple[list[str], list[str], dict]]) -> None:
            shas, reasons, outputs = join_batches(parts)
            with store.transaction(con):
                store_rows(con, plan, shas, reasons, outputs, store.utcnow())
            store.fault_point("backbone.after_batch")

        t0 = time.perf_counter()
        done = 0
        last = None    # (future, images) of the transaction being written
        parts: list = []  # (shas, reasons, outputs) of the batches not yet handed to the writer

        def committed() -> None:
            nonlocal done
            future, n = last
            future.result()  # the writer's error, if any, stops the run here
            done += n
            seconds = time.perf_counter() - t0
            for run in runs.values():
                run.seconds = seconds
                run.images_per_s = done / seconds if seconds > 0 else 0.0
            if progress:
                progress(plan.stage, done, len(pending))

        def forward(x, reasons: list[str]) -> dict:  # x: (B, H, W, 3) uint8
            ok = [i for i, why in enumerate(reasons) if not why]
            return runner.post(runner.infer(x[ok] if len(ok) < len(reasons) else x)) if ok else {}

        def flush() -> None:
            """Hand the batches gathered so far to the writer, as one transaction."""
            nonlocal last, parts
            if not parts:
                return
            if last is not None:
                committed()
            last, parts = (writer.submit(write, parts), sum(len(r) for _, r, _ in parts)), []

        def hand_over(future, shas: list[str], reasons: list[str]) -> None:
            parts.append((shas, reasons, future.result()))
            if sum(len(r) for _, r, _ in parts) >= write_rows:
                flush()

        start = 0
        running: deque = deque()  # batches in the model, oldest first: written in their order
        for x, reasons in batches:
            shas = sha256s[start:start + len(reasons)]
            start += len(reasons)
            if model is None:
                hand_over(_Done(forward(x, reasons)), shas, reasons)
                continue
            if len(running) == streams:
                hand_over(*running.popleft())
            running.append((model.submit(forward, x, reasons), shas, reasons))
        while running:
            hand_over(*running.popleft())
        flush()
        if last is not None:
            committed()
    finally:
        batches.close()
        if model is not None:
            model.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    return list(runs.values())


class _Done:
    """A finished result where the loop expects a future (one model stream runs in the loop's thread)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def model_streams(options: ImageFeatureOptions, device: str, runtime: str) -> tuple[int, int]:
    """(batches in the model at once, onnxruntime threads each). On the CPU onnxruntime runs two batches at a
    time, each on half the threads: one batch on all threads spends a share of every operator waiting for
    its slowest thread (bench_featurize: 2 x 1 thread is 11-26% faster than 1 x 2 threads on 2 cores).
    A GPU, and torch, take one batch at a time."""
    threads = options.threads or os.cpu_count() or 1
    if device != "cpu" or runtime != "onnxruntime" or threads < CPU_STREAMS:
        return 1, threads
    return CPU_STREAMS, threads // CPU_STREAMS


def batching(options: ImageFeatureOptions, device: str) -> tuple[int, int]:
    """(images per model call, decode threads): the options', else the device's defaults. On the CPU the
    model takes every core and two threads decode beside it; on a GPU decoding is the CPU's only work, and
    larger batches keep the GPU and the per-batch DuckDB writes from waiting on each other."""
    gpu = device != "cpu"
    batch = options.batch_size or (GPU_BATCH if gpu else CPU_BATCH)
    if options.workers is not None:
        return batch, options.workers
    return batch, gpu_workers() if gpu else CPU_WORKERS


def gpu_workers() -> int:
    """Decode threads beside a GPU: every core but the one that drives the model and the writes."""
    return max(CPU_WORKERS, (os.cpu_count() or 1) - 1)


def join_batches(parts: list[tuple[list[str], list[str], dict]]) -> tuple[list[str], list[str], dict]:
    """Consecutive batches ``(shas, reasons, outputs)`` as one, for ``store_rows``: ``outputs`` holds the
    rows of the images that did not fail, in order, so the arrays of each role are concatenated in order."""
    import numpy as np

    if len(parts) == 1:
        return parts[0]
    shas = [sha for s, _, _ in parts for sha in s]
    reasons = [why for _, r, _ in parts for why in r]
    filled = [o for _, _, o in parts if o]
    outputs = {role: {k: np.concatenate([o[role][k] for o in filled]) for k in filled[0][role]}
               for role in (filled[0] if filled else {})}
    return shas, reasons, outputs


def _write_batch(
    con: duckdb.DuckDBPyConnection, insert_sql: str, table: Any, errors: list[tuple[str, str]], params: dict,
    now: Any,
) -> None:
    """One role's rows and errors of one batch; the caller holds the transaction."""
    if table is not None:
        values = {**params, "now": now}
        used = {k: v for k, v in values.items() if re.search(rf"\${k}\b", insert_sql)}
        con.register("igc_backbone_batch", table)
        try:
            con.execute(insert_sql, used).fetchall()
        finally:
            con.unregister("igc_backbone_batch")
    if errors:
        con.executemany(_ERROR_INSERT, [[sha, params["backbone"], params["weights_fp"], why, now]
                                        for sha, why in errors])


# ------------------------------------------------------------------------------ decode + resize

def decoded_batches(
    paths: list[str],
    sha256s: list[str] | None,
    runner: Any,
    batch_size: int = 32,
    workers: int = 2,
    prefetch: int = 2,
) -> DecodedBatches:
    """Batches ``(x, reasons)``, in order: x (B, H, W, 3) uint8 for ``runner`` (its ``prepare`` and
    ``input_size``; the runner needs no session yet), reasons[i] "" or why image i could not be used (its
    x is zeros).

    ``workers`` threads start decoding and resizing at once, up to ``prefetch`` batches ahead of the
    consumer, while it runs the model on the current one (PIL and onnxruntime release the GIL). They run
    at background priority (``background_thread``), so they fill the cycles the model's threads leave idle
    instead of pre-empting them mid-operator; an image still queued when the consumer needs it is decoded
    by the consumer itself, so nothing waits on starved background threads. With
    ``sha256s`` a file whose content no longer matches its ingested hash is refused, so a row is never
    stored under the wrong image. Iterate it once; ``close()`` (also a context manager) stops the threads.
    """
    return DecodedBatches(paths, sha256s, runner, batch_size, workers, prefetch)


class DecodedBatches:
    """The iterator ``decoded_batches`` returns; see there."""

    def __init__(self, paths: list[str], sha256s: list[str] | None, runner: Any, batch_size: int,
                 workers: int, prefetch: int) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self._paths, self._sha256s = paths, sha256s
        self._h, self._w = runner.input_size
        self._min_side = math.ceil(max(self._h, self._w) / runner.data_config.get("crop_pct", 1.0))
        self._prepare = runner.prepare
        self._batch = batch_size
        self._starts = iter(range(0, len(paths), batch_size))
        self._pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="igcli-decode",
                                         initializer=background_thread) if workers > 0 else None)
        self._queue: deque = deque()
        self.inline = 0  # images the consumer decoded itself because no worker had started them
        if self._pool is not None:
            for _ in range(prefetch + 1):
                if not self._submit():
                    break

    def _one(self, i: int):
        sha = self._sha256s[i] if self._sha256s is not None else None
        return decode_image(self._paths[i], sha, self._prepare, self._min_side)

    def _submit(self) -> bool:
        s = next(self._starts, None)
        if s is None:
            return False
        self._queue.append([(i, self._pool.submit(self._one, i))
                            for i in range(s, min(s + self._batch, len(self._paths)))])
        return True

    def _results(self, futures: list) -> list:
        mine = {}
        for i, future in futures:  # what no worker has started is decoded here, at the consumer's priority
            if not future.done() and future.cancel():
                self.inline += 1
                mine[i] = self._one(i)
        return [mine[i] if i in mine else future.result() for i, future in futures]

    def _collect(self, results: list):
        import numpy as np

        x = np.zeros((len(results), self._h, self._w, 3), dtype=np.uint8)
        for j, (arr, _) in enumerate(results):
            if arr is not None:
                x[j] = arr
        return x, [why for _, why in results]

    def __iter__(self):
        try:
            if self._pool is None:
                for s in self._starts:
                    yield self._collect([self._one(i) for i in range(s, min(s + self._batch, len(self._paths)))])
                return
            while self._queue:
                futures = self._queue.popleft()
                self._submit()
                yield self._collect(self._results(futures))
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecodedBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def background_thread() -> None:
    """Put the calling thread in Linux's idle scheduling class: it runs only on a core nothing else at
    normal priority wants. Elsewhere (or where refused) the thread keeps its priority."""
    import os
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass


def decode_image(path: str, sha256: str | None, prepare: Callable, min_side: int | None = None):
    """(H, W, 3) uint8 and "" , or (None, reason): a broken file is data, never an exception."""
    try:
        data = Path(path).read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            return None, CHANGED
        return prepare(open_rgb(io.BytesIO(data), min_side)), ""
    except Exception as err:  # any decoder failure is data, not a crash
        return None, f"cannot decode image ({type(err).__name__}: {err})"[:500]


def open_rgb(path: str | Path | BinaryIO, min_side: int | None = None):
    """Open an image as upright RGB, refusing decompression bombs; large JPEGs decoded at reduced scale."""
    from PIL import Image, ImageOps

    from igcli.imagequality import IMAGE_FORMATS, MAX_PIXELS

    with Image.open(path, formats=IMAGE_FORMATS) as img:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width}x{height} is over the {MAX_PIXELS:,} pixel limit")
        if min_side and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (min_side, min_side))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy of an upright image (most of them)
        if img.mode != "RGB":
            if img.has_transparency_data:  # flatten onto white, as a page shows it
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = img.convert("RGB")
        return img
