"""Image features for ``igcli featurize``: weight-free quality, then each backbone whose weights are found.

    from igcli import store
    from igcli.commands.featurize import featurize_images
    con = store.connect("igcli.duckdb")
    result = featurize_images(con, ImageFeatureOptions(objects_weights=Path("irv2.safetensors")))

Everything is keyed by the image's content (sha256), so duplicate images run once, and is written per
batch, so an interrupted run resumes where it stopped and a second run is a no-op:

1. ``image_quality``: ``igcli.vision.quality`` features for every decodable image (no weights needed),
   computed by the first backbone's decode threads from the same read and decode of each file
   (``QualityJob``; ``igcli.vision.decode.decode_shared``), and for the images no backbone runs by
   ``compute_quality``, a pass of its own after the backbones.
2. For each backbone (``igcli.vision.runtime.group_requests``: both roles share one when they name the same
   backbone and weights, the default ``efficientnet_lite0``): the images of posts with no row and no
   error for a role's (backbone, weights fingerprint) are decoded and resized by worker threads, a few
   batches ahead, while ``igcli.vision.runtime`` runs the model (onnxruntime by default); one forward pass per
   image gives every role of the backbone its rows.

An image that fails to decode goes to ``image_feature_errors`` with the reason and is not retried; it
never stops the run. A backbone the user did not name whose weights cannot be found is skipped with
one message naming the fix; one the user named raises ``WeightsMissing``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from igcli import store
from igcli.errors import FeatureMismatch, InputError, WeightsMissing
from igcli.util import sha256_stream
from igcli.vision.backbones import (
    ROLES,
    BackboneRequest,
    Fingerprint,
    Weights,
    get_role,
    resolve_device,
    resolve_weights,
)
from igcli.vision.decode import CHANGED, open_file, unread_reason
from igcli.vision.quality import quality_features_many
from igcli.vision.runtime import group_requests, row_fingerprint

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
    runtime: str = "auto"                 # auto | onnxruntime | torch (auto: igcli.vision.runtime.resolve_runtime)
    quantize: str | None = None           # None (fp32) | "int8": rows fingerprinted <weights_fp>:int8
    threads: int | None = None            # inference threads; None = all cores
    allow_unverified_int8: bool = False   # tests / benchmarks only: run int8 although it failed the quality bar
    skip_backbones: bool = False          # only the weight-free quality features
    roles: tuple[str, ...] | None = None  # run only these backbone roles (None: every registered role)
    expect_fingerprints: dict[str, str] = field(default_factory=dict)  # role -> weights_fp a model card needs
    engine: Any = "local"                 # "local" | "ray" | an igcli.engines engine
    ray: Any = None                       # igcli.engines.ray.RayOptions for engine="ray"; None = defaults


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
    quality_shared: int = 0               # quality rows / errors from a backbone's decode of the image
    quality_second_decodes: int = 0       # ... of which the quality features decoded the file again (another
                                          # JPEG draft scale than the backbone's)
    backbones: list[BackboneRun] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # one line per skipped backbone, naming the fix


def compute_image_features(
    con: duckdb.DuckDBPyConnection, options: ImageFeatureOptions, engine: Any, progress: Progress | None = None
) -> ImageFeaturesResult:
    """Compute the image features the store lacks, the backbones on ``engine`` (``igcli.engines``); see the
    module docstring."""
    if options.batch_size is not None and options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.workers is not None and options.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {options.workers}")
    if options.quantize not in (None, "int8"):
        raise InputError(f"unknown --quantize {options.quantize!r}: use int8 (or leave it out for fp32)")
    if options.quantize and not options.allow_unverified_int8:
        raise InputError(INT8_REFUSED)
    engine.check_featurize(options)
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
            if want and (fp := Fingerprint.parse(want)).crop is None and fp.weights == weights.fingerprint:
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
    for req, _, missing in resolved:
        if missing is not None:
            result.backbones.append(BackboneRun(req.role, req.name, None, False, skipped_reason=str(missing)))
            result.messages.append(f"skipped the {req.role} backbone: {missing}")
    # The first backbone's decode threads compute the quality features of the images they decode anyway
    # (one read and decode per file); the images it does not run get them from a pass of their own after.
    # An engine that does not share its decode (Ray: its workers write no quality rows) gets that pass first.
    workers = options.workers if options.workers is not None else CPU_WORKERS
    shares = getattr(engine, "shares_decode", False)
    quality = None
    if shares:
        quality = QualityJob(dict(con.execute(_QUALITY_PENDING, [QUALITY_BACKBONE]).fetchall()))
    else:
        result.quality_computed, result.quality_failed = compute_quality(con, max(1, workers), progress)
    for group in group_requests([(req, w) for req, w, _ in resolved if w is not None]):
        if quality is not None and quality.todo:
            result.backbones += engine.featurize(con, group, options, progress, quality=quality)
            result.quality_computed, result.quality_failed = quality.computed, quality.failed
            result.quality_shared, result.quality_second_decodes = quality.shared, quality.second_decodes
            quality = None
        else:
            result.backbones += engine.featurize(con, group, options, progress)
    if shares:
        computed, failed = compute_quality(con, max(1, workers), progress)
        result.quality_computed += computed
        result.quality_failed += failed
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


@dataclass
class QualityJob:
    """The quality features a backbone run computes in its decode threads (``decoded_batches``' side): the
    images that lack them, and what the run wrote."""

    todo: dict[str, str]                  # sha256 -> the path quality messages name (as compute_quality's)
    computed: int = 0
    failed: int = 0
    shared: int = 0                       # images whose quality came from the backbone's read and decode
    second_decodes: int = 0               # ... of which decoded again at the quality's own draft scale

    def names(self, pending: list[tuple[str, str]]) -> list[str | None]:
        """For each (sha256, path) of a backbone's work list, the name to give ``QUALITY_SIDE``, or None."""
        return [None if (p := self.todo.get(sha)) is None else str(Path(p)) for sha, _ in pending]

    def write(self, con: duckdb.DuckDBPyConnection, shas: list[str], extras: list[Any], now: Any) -> None:
        """Store the side results of one batch (None: not wanted); the caller holds the transaction."""
        ok = [(sha, f) for sha, f in zip(shas, extras, strict=True) if isinstance(f, dict)]
        errors = [(sha, f) for sha, f in zip(shas, extras, strict=True) if isinstance(f, str)]
        write_quality(con, ok, errors, now)
        self.computed += len(ok)
        self.failed += len(errors)
        self.shared += len(ok) + len(errors)


def compute_quality(
    con: duckdb.DuckDBPyConnection, workers: int = 2, progress: Progress | None = None, batch: int = QUALITY_BATCH
) -> tuple[int, int]:
    """``image_quality`` rows for every decodable image content that has none; returns (computed, failed)."""
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
        with store.transaction(con):
            write_quality(con, ok, errors, store.utcnow())
        computed += len(ok)
        failed += len(errors)
        store.fault_point("quality.after_batch")
        if progress:
            progress(stage, computed + failed, len(pending))
    return computed, failed


def write_quality(con: duckdb.DuckDBPyConnection, ok: list[tuple[str, dict]], errors: list[tuple[str, str]],
                  now: Any) -> None:
    """``image_quality`` rows (sha256, features) and quality errors (sha256, reason); the caller holds the
    transaction."""
    if ok:
        columns = {"sha256": ("VARCHAR", [sha for sha, _ in ok]),
                   **{c: ("DOUBLE", [f.get(c) for _, f in ok]) for c in QUALITY_COLUMNS}}
        store.temp_table(con, "igc_quality_batch", columns)
        try:
            con.execute(_QUALITY_INSERT, [now]).fetchall()
        finally:
            con.execute("DROP TABLE igc_quality_batch")
    if errors:
        con.executemany(_ERROR_INSERT, [[sha, QUALITY_BACKBONE, QUALITY_FP, why, now] for sha, why in errors])


def content_changed(path: str, sha256: str) -> str | None:
    """Why the file at ``path`` can no longer stand for the ingested content ``sha256``, or None. Read under the
    image-open policy (``open_file``): a FIFO swapped in since the ingest is refused, not waited on."""
    try:
        with open_file(path) as fh:
            digest = sha256_stream(fh)
    except (InputError, OSError) as err:  # not a regular file, over the byte limit, unreadable
        return unread_reason(err)
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
    """What one backbone group (``igcli.vision.runtime.group_requests``) must still run: the images that lack a
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


