"""Image features for ``igcli featurize``: weight-free quality, then each backbone whose weights are found.

    from igcli import store
    from igcli.imagefeatures import ImageFeatureOptions, featurize_images
    con = store.connect("igcli.duckdb")
    result = featurize_images(con, ImageFeatureOptions(objects_weights=Path("irv2.safetensors")))

Everything is keyed by the image's content (sha256), so duplicate images run once, and is written per
batch, so an interrupted run resumes where it stopped and a second run is a no-op:

1. ``image_quality``: ``igcli.imagequality`` features for every decodable image (no weights needed).
2. For each role in ``igcli.backbones.ROLES`` (objects, aesthetics): the images of posts with no row
   and no error for that (backbone, weights fingerprint) go through a torch DataLoader whose workers
   decode and resize them with the model's own timm transform; results land in the role's table.

An image that fails to decode goes to ``image_feature_errors`` with the reason and is not retried; it
never stops the run. A backbone the user did not name whose weights cannot be found is skipped with
one message naming the fix; one the user named raises ``WeightsMissing``.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import duckdb

from igcli import store
from igcli.backbones import (
    ROLES,
    BackboneRequest,
    Weights,
    get_role,
    load_backbone,
    resolve_device,
    resolve_weights,
)
from igcli.errors import FeatureMismatch, InputError, WeightsMissing
from igcli.util import sha256_file

QUALITY_BATCH = 256
QUALITY_BACKBONE = "quality"     # image_feature_errors.backbone for the weight-free features
QUALITY_FP = "weight-free"       # ... and its weights_fp
QUALITY_COLUMNS = (
    "brightness", "contrast", "saturation", "colorfulness", "sharpness", "entropy", "aspect_ratio", "face_count",
)

Progress = Callable[[str, int, int], None]


@dataclass
class ImageFeatureOptions:
    objects: str | None = None            # timm classifier name; None = "inception_resnet_v2"
    aesthetics: str | None = None         # timm MobileNet name; None = "mobilenetv1_100"
    objects_explicit: bool = False        # the user named it: missing weights is an error, not a skip
    aesthetics_explicit: bool = False
    objects_weights: Path | None = None   # local state dict (.pth / .pt / .safetensors) for the classifier
    aesthetics_weights: Path | None = None
    nima_weights: Path | None = None      # the aesthetics model built with num_classes=10 (NIMA's score head)
    random_init: bool = False             # tests / benchmarks only: random weights (for backbones without a
                                          # weights file), fixed seed, rows marked random_init
    device: str = "auto"                  # auto | cpu | cuda (auto = cuda when torch sees a GPU)
    batch_size: int = 32
    workers: int = 2                      # DataLoader workers decoding + resizing (threads for quality)
    skip_backbones: bool = False          # only the weight-free quality features
    roles: tuple[str, ...] | None = None  # run only these backbone roles (None: every registered role)
    expect_fingerprints: dict[str, str] = field(default_factory=dict)  # role -> weights_fp a model card needs


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
    device: str = "cpu"
    weights_source: str | None = None     # file | cache | download | random-init
    seconds: float = 0.0


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
    if options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {options.workers}")
    result = ImageFeaturesResult()
    # Weights first (cheap: no model is built), so a named backbone without weights fails before any work.
    resolved: list[tuple[BackboneRequest, Weights | None, WeightsMissing | None]] = []
    device = "cpu"
    if not options.skip_backbones:
        device = resolve_device(options.device)
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
            if want and weights.fingerprint != want:
                raise FeatureMismatch(
                    f"the model needs {req.role} features from {req.name} with weights {want[:20]}…, but the "
                    f"weights found have fingerprint {weights.fingerprint[:20]}…: pass the weights file the "
                    f"model was trained with (--{req.role}-weights FILE)")
            resolved.append((req, weights, None))
    result.quality_computed, result.quality_failed = compute_quality(con, max(1, options.workers), progress)
    for req, weights, missing in resolved:
        if weights is None:
            result.backbones.append(BackboneRun(req.role, req.name, None, False, skipped_reason=str(missing),
                                                device=device))
            result.messages.append(f"skipped the {req.role} backbone: {missing}")
            continue
        result.backbones.append(run_backbone(con, req, weights, device, options, progress))
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
    import pyarrow as pa

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
        table = pa.table({
            "sha256": pa.array([sha for sha, _ in ok], pa.string()),
            **{c: pa.array([f.get(c) for _, f in ok], pa.float64()) for c in QUALITY_COLUMNS},
        })
        now = store.utcnow()
        with store.transaction(con):
            if ok:
                con.register("igc_quality_batch", table)
                try:
                    con.execute(_QUALITY_INSERT, [now]).fetchall()
                finally:
                    con.unregister("igc_quality_batch")
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

def run_backbone(
    con: duckdb.DuckDBPyConnection,
    req: BackboneRequest,
    weights: Weights,
    device: str,
    options: ImageFeatureOptions,
    progress: Progress | None = None,
) -> BackboneRun:
    """Run one backbone over the images that have no row (and no error) for its weights."""
    import torch

    role = get_role(req.role)
    keys = {"backbone": req.name, "weights_fp": weights.fingerprint}
    pending = con.execute(role.pending_sql, keys).fetchall()
    stage = f"{req.role}: {req.name}"
    run = BackboneRun(req.role, req.name, weights.fingerprint, weights.random_init, device=device,
                      weights_source=weights.source)
    if progress:
        progress(stage, 0, len(pending))
    if not pending:
        return run  # nothing to do: the model is not even built
    backbone = load_backbone(req, weights, device)
    sha256s = [sha for sha, _ in pending]
    loader = image_loader([p for _, p in pending], backbone.transform(), backbone.data_config,
                          options.batch_size, options.workers, pin_memory=device.startswith("cuda"), sha256s=sha256s)
    params = {"random_init": weights.random_init, **keys}
    t0 = time.perf_counter()
    done = 0
    batches = iter(loader)
    try:
        for x, reasons in batches:  # x: (B, 3, H, W); reasons[i] == "" when image i decoded
            shas = sha256s[done:done + len(reasons)]
            ok = [i for i, why in enumerate(reasons) if not why]
            table = None
            if ok:
                out = backbone(x if len(ok) == len(reasons) else x[torch.tensor(ok)])
                out = {k: v.cpu().numpy() for k, v in out.items()}
                table = role.rows(backbone, [shas[i] for i in ok], out)
            errors = [(shas[i], why) for i, why in enumerate(reasons) if why]
            _write_batch(con, role.insert_sql, table, errors, params)
            done += len(reasons)
            run.images_run += len(ok)
            run.images_failed += len(errors)
            run.seconds = time.perf_counter() - t0
            run.images_per_s = done / run.seconds if run.seconds > 0 else 0.0
            if progress:
                progress(stage, done, len(pending))
    finally:
        del batches  # stops the DataLoader workers now, also when a batch raised
    return run


def _write_batch(
    con: duckdb.DuckDBPyConnection, insert_sql: str, table: Any, errors: list[tuple[str, str]], params: dict
) -> None:
    now = store.utcnow()
    with store.transaction(con):
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
    store.fault_point("backbone.after_batch")


# ------------------------------------------------------------------------------ decode + resize

def image_loader(
    paths: list[str],
    transform: Callable,
    data_config: dict[str, Any],
    batch_size: int = 32,
    workers: int = 2,
    pin_memory: bool = False,
    sha256s: list[str] | None = None,
):
    """A DataLoader yielding ``(x, reasons)``: x (B, 3, H, W) float32, reasons[i] "" or why image i failed.

    With ``sha256s`` a file whose content no longer matches its ingested hash is refused, so a row is never
    stored under the wrong image.
    """
    from torch.utils.data import DataLoader

    dataset = DecodedImages(paths, transform, data_config, sha256s)
    workers = min(workers, math.ceil(len(paths) / batch_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=2 if workers else None)


class DecodedImages:
    """Map-style dataset: image file -> (tensor, "") or, when it cannot be used, (zeros, reason).

    Runs in DataLoader workers; a broken file becomes a marker, never an exception that kills the run.
    """

    def __init__(
        self, paths: list[str], transform: Callable, data_config: dict[str, Any], sha256s: list[str] | None = None
    ):
        self.paths = paths
        self.sha256s = sha256s
        self.transform = transform
        self.input_size = tuple(data_config["input_size"])  # (3, H, W)
        # The transform resizes the shorter side to input / crop_pct; JPEGs may be decoded at a
        # reduced DCT scale as long as they stay at least that large.
        self.min_side = math.ceil(max(self.input_size[1:]) / data_config.get("crop_pct", 1.0))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        try:
            data = Path(self.paths[i]).read_bytes()
            if self.sha256s is not None and hashlib.sha256(data).hexdigest() != self.sha256s[i]:
                return torch.zeros(self.input_size), CHANGED
            return self.transform(open_rgb(io.BytesIO(data), self.min_side)), ""
        except Exception as err:  # any decoder failure is data, not a crash
            return torch.zeros(self.input_size), f"cannot decode image ({type(err).__name__}: {err})"[:500]


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
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            if img.has_transparency_data:  # flatten onto white, as a page shows it
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = img.convert("RGB")
        return img
