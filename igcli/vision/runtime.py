"""Runners: the forward pass of one image backbone for one or more roles, on onnxruntime or torch.

``igcli.features.images`` (the local engine) drives these; another engine (a Ray one) reuses them as is::

    from igcli.vision.backbones import BackboneRequest, resolve_weights
    from igcli.vision.runtime import group_requests, open_runner

    pairs = [(req, resolve_weights(req)) for req in requests]      # one per role
    for group in group_requests(pairs):        # same backbone + same weights -> one group, one forward pass
        runner = open_runner(group, device="cpu")                   # exports / reuses the cached ONNX file
        runner.provider        # "CPUExecutionProvider", "CUDAExecutionProvider" or "torch:cpu"
        runner.fingerprints    # {"objects": "<sha256>:crop1", ...}: the weights_fp on each role's rows
        runner.prepare         # PIL image -> (H, W, 3) uint8, resized to the input size (CROP_PCT)
        graph = runner.infer(x)                # x: (B, H, W, 3) uint8 -> {"logits": (B, 1000), "embedding": ...}
        table = runner.rows("objects", sha256s, graph)   # pyarrow rows for the role's insert SQL

The uint8 input keeps decode workers free of float work and batches small (normalisation is the
first op of the graph). ``infer`` is thread-safe for onnxruntime.

ONNX cache: ``$IGCLI_CACHE/onnx`` (default ``$XDG_CACHE_HOME/igcli/onnx``, i.e. ``~/.cache/igcli/onnx``).
One file per backbone, graph outputs and weights fingerprint (plus timm version and opset), written
atomically with a JSON sidecar; exported once, parity-checked against torch on random images when
exported, and exported again when the weights fingerprint changes (the stale file is removed). A file
whose bytes do not match its sidecar is exported again.

``quantize="int8"``: onnxruntime dynamic quantization of the fp32 file (weights int8, activations
quantized per batch), cached beside it; its rows carry ``<fingerprint>:crop1:int8`` so they are never mixed
with fp32 rows. ``bench/bench_featurize.py --int8-agreement`` measures its top-5 agreement with fp32;
it fails the 95% bar (and is slower than fp32 here), so ``igcli featurize --quantize int8`` refuses it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from igcli import ort
from igcli.errors import InputError, ModelError, OutputError
from igcli.files import atomic_write
from igcli.util import sha256_file
from igcli.vision.backbones import (
    BackboneRequest,
    Fingerprint,
    Weights,
    get_role,
    heads_module,
    load_backbone,
    resolve_device,
    timm_name,
)

if TYPE_CHECKING:
    import pyarrow as pa

OPSET = 17
EXPORT_VERSION = 2              # bump when the exported graph or its sidecar changes meaning (2: CROP_PCT)
RUNTIMES = ("auto", "onnxruntime", "torch")
# What ``runtime="auto"`` runs on a CUDA device when both are installed. Not measured yet (no GPU has been
# lent): bench_featurize.py --device cuda times both and should decide it. Without onnxruntime's CUDA
# provider, auto runs torch on the GPU instead.
GPU_RUNTIME = "onnxruntime"
QUANTIZE = (None, "int8")
PARITY_BATCH = 2
# Images per onnxruntime run on the CPU: a batch is run this many images at a time. The activations of a small
# run stay in the cores' caches; Lite0 on 2 cores (dev images, CPU time per image): one thread 10.3 ms in runs of
# 2 against 12.1 ms in runs of 32, two threads 145 against 127 images/s (bench_featurize's model-only rows
# measure it each time). The outputs are the same bits at any run size.
CPU_RUN = 2


def resolve_runtime(runtime: str, device: str) -> str:
    """``auto`` -> onnxruntime on the CPU; on a CUDA device ``GPU_RUNTIME``, or torch when this onnxruntime
    has no CUDA provider. ``device`` is resolved already (``igcli.vision.backbones.resolve_device``)."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    if device == "cpu":
        return "onnxruntime"
    if GPU_RUNTIME == "torch":
        return "torch"
    import onnxruntime as ort

    return "onnxruntime" if "CUDAExecutionProvider" in ort.get_available_providers() else "torch"


def cache_dir() -> Path:
    """Where exported ONNX backbones live: ``$IGCLI_CACHE/onnx``, else ``$XDG_CACHE_HOME/igcli/onnx``."""
    root = os.environ.get("IGCLI_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "igcli")
    return Path(root) / "onnx"


Pair = tuple[BackboneRequest, Weights]


def row_fingerprint(weights: Weights, quantize: str | None = None) -> str:
    """The ``weights_fp`` stored on the rows these weights produce: weights, image geometry, precision."""
    return str(Fingerprint.of(weights, quantize))


def group_requests(pairs: list[Pair]) -> list[list[Pair]]:
    """Requests that can share one forward pass: same backbone name and weights (NIMA checkpoints never
    share: their head is not ImageNet's). Order of first appearance is kept."""
    groups: dict[tuple, list[Pair]] = {}
    for req, weights in pairs:
        key = (req.name, weights.fingerprint, weights.nima)
        groups.setdefault(key if not weights.nima else (key, req.role), []).append((req, weights))
    return list(groups.values())


@dataclass
class Runner:
    """One backbone, loaded once, serving ``roles``; see the module docstring."""

    name: str
    roles: list[str]
    weights: dict[str, Weights]
    fingerprints: dict[str, str]
    outputs: list[str]                  # graph outputs, in order
    data_config: dict[str, Any]         # timm's input_size, interpolation, mean, std; crop_pct CROP_PCT
    provider: str
    runtime: str                        # onnxruntime | torch
    quantize: str | None = None
    onnx_path: Path | None = None
    exported: bool = False              # True when this call exported (or re-exported) the file
    parity_max_abs_diff: float | None = None
    geometry: dict[str, Any] | None = None  # Geometry's fields, from the export's sidecar (torch-free prepare)
    _infer: Callable | None = field(default=None, repr=False)
    _prepare: Callable | None = field(default=None, repr=False)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.data_config["input_size"][1:])  # (H, W)

    @property
    def prepare(self) -> Callable:
        """PIL RGB image -> (H, W, 3) uint8: timm's eval resize and centre crop at ``CROP_PCT``."""
        if self._prepare is None:
            self._prepare = image_preparer(self.data_config, self.geometry)
        return self._prepare

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Graph outputs for ``x`` (B, H, W, 3) uint8: ``logits`` (B, 1000), ``embedding`` (B, D), ..."""
        return self._infer(x)

    def post(self, graph: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Each role's ``post`` of ``infer``'s outputs: {role: {name: (B, ...) array}}, what ``store_rows``
        and the role's ``rows`` take; row i of every array belongs to image i."""
        out = {}
        for role in self.roles:
            r = get_role(role)
            out[role] = r.post({k: graph[k] for k in r.outputs(self.weights[role])})
        return out

    def rows(self, role: str, sha256s: list[str], graph: dict[str, np.ndarray]) -> pa.Table:
        """The role's rows (pyarrow) for the images ``sha256s`` from ``infer``'s outputs."""
        r = get_role(role)
        return r.rows(sha256s, r.post({k: graph[k] for k in r.outputs(self.weights[role])}))


def open_runner(
    group: list[Pair],
    device: str = "cpu",
    runtime: str = "auto",
    quantize: str | None = None,
    threads: int | None = None,
    cache: Path | None = None,
    session: bool = True,
) -> Runner:
    """Load one group from ``group_requests`` for inference; the ONNX file is exported on first use.

    ``session=False`` (onnxruntime only) exports / finds the file but opens no session: the runner is then
    a plain picklable description that another process starts with ``start_session`` (the Ray engine's
    actors do, from the file's bytes)."""
    runtime = resolve_runtime(runtime, device)
    if quantize not in QUANTIZE:
        raise InputError(f"unknown --quantize {quantize!r}: use int8 (or leave it out for fp32)")
    if quantize and runtime != "onnxruntime":
        raise InputError("--quantize int8 runs on onnxruntime only")
    req0, weights0 = group[0]
    if len({(r.name, w.fingerprint) for r, w in group}) != 1:
        raise InputError("one runner serves one backbone with one set of weights: use group_requests")
    roles = [r.role for r, _ in group]
    outputs: list[str] = []
    for req, weights in group:
        outputs += [o for o in get_role(req.role).outputs(weights) if o not in outputs]
    # The objects role needs the ImageNet head, so its build serves a shared group.
    build_req = next((r for r, _ in group if r.role == "objects"), req0)
    runner = Runner(req0.name, roles, {r.role: w for r, w in group},
                    {r.role: row_fingerprint(w, quantize) for r, w in group}, outputs, {}, "", runtime, quantize)
    threads = threads or os.cpu_count() or 1
    if runtime == "torch":
        return _torch_runner(runner, build_req, weights0, device, threads)
    path, meta, exported = export_cached(build_req, weights0, outputs, cache or cache_dir())
    if quantize:
        path = quantized_cached(path, meta)
    runner.onnx_path, runner.exported = path, exported
    runner.data_config, runner.geometry = meta["data_config"], meta.get("geometry")
    runner.parity_max_abs_diff = meta["parity_max_abs_diff"]
    return start_session(runner, device, threads) if session else runner


def start_session(runner: Runner, device: str = "cpu", threads: int | None = None,
                  model: bytes | None = None) -> Runner:
    """Open the onnxruntime session of a runner made with ``open_runner(..., session=False)``, from its
    ``onnx_path`` or from the file's ``model`` bytes (a worker that cannot read the driver's cache)."""
    threads = threads or os.cpu_count() or 1
    outputs = runner.outputs
    session = ort.session(model if model is not None else runner.onnx_path, device, threads, spinning=False,
                          fix="delete it and run again to re-export")
    runner.provider = session.get_providers()[0]
    runner._infer = session_infer(session, outputs)
    return runner


def session_infer(session, outputs: list[str]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``Runner.infer`` on an open onnxruntime session: on the CPU a batch runs ``CPU_RUN`` images at a time (the
    same outputs, less CPU time) and runs may overlap (onnxruntime's ``run`` is thread-safe); on a GPU the whole
    batch runs at once, one run at a time."""
    if session.get_providers()[0] != "CPUExecutionProvider":
        lock = threading.Lock()

        def infer_gpu(x: np.ndarray) -> dict[str, np.ndarray]:
            with lock:
                return dict(zip(outputs, session.run(outputs, {"image": x}), strict=True))

        return infer_gpu

    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        if len(x) <= CPU_RUN:
            return dict(zip(outputs, session.run(outputs, {"image": x}), strict=True))
        parts = [session.run(outputs, {"image": x[i:i + CPU_RUN]}) for i in range(0, len(x), CPU_RUN)]
        return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(outputs)}

    return infer


def _torch_runner(runner: Runner, req: BackboneRequest, weights: Weights, device: str, threads: int) -> Runner:
    import torch

    device = resolve_device(device)
    if device == "cpu":
        torch.set_num_threads(threads)
    else:
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick each convolution's fastest algorithm once
    backbone = load_backbone(req, weights, device)
    module = graph_module(backbone.model, runner.outputs, backbone.data_config).to(device)
    runner.data_config = _plain(backbone.data_config)
    runner.provider = f"torch:{device}"
    outputs = runner.outputs

    def infer(x):
        with torch.inference_mode():
            got = module(torch.from_numpy(x).to(device))
        return {k: v.float().cpu().numpy() for k, v in zip(outputs, got, strict=True)}

    runner._infer = infer
    return runner


def graph_module(model, outputs: list[str], data_config: dict[str, Any]):
    """(B, H, W, 3) uint8 -> the heads ``outputs``: normalisation as timm's eval transform does it, then
    one pass through the trunk (``igcli.vision.backbones.heads_module``)."""
    import torch

    heads = heads_module(model, outputs)
    mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = heads
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, image):  # (B, H, W, 3) uint8
            x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std  # (B, 3, H, W)
            return self.heads(x)

    return Graph().eval()


# ------------------------------------------------------------------------------------ export cache

def export_key(req: BackboneRequest, weights: Weights, outputs: list[str]) -> dict[str, Any]:
    # timm's version from its package metadata: importing timm (and torch with it) costs seconds of start-up
    # that a run finding its graph in the cache never needs
    return {"backbone": req.name, "arch": timm_name(req.name), "role_build": req.role, "outputs": outputs,
            "weights_fp": weights.fingerprint, "nima": weights.nima, "opset": OPSET,
            "timm": importlib.metadata.version("timm"), "export_version": EXPORT_VERSION}


def export_cached(
    req: BackboneRequest, weights: Weights, outputs: list[str], cache: Path
) -> tuple[Path, dict[str, Any], bool]:
    """(path, sidecar, exported_now): the fp32 ONNX file for this backbone + weights, exported if absent,
    stale or damaged."""
    key = export_key(req, weights, outputs)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"{req.name}-{'+'.join(outputs)}"
    path = cache / f"{stem}-{digest}.onnx"
    meta_path = path.with_suffix(".json")
    meta = _read_meta(meta_path)
    if meta and meta.get("key") == key and path.is_file() and sha256_file(path) == meta.get("onnx_sha256"):
        if "geometry" not in meta:  # a sidecar written before geometries were kept: derived once, kept
            meta["geometry"] = _geometry_fields(meta["data_config"])
            try:
                with atomic_write(meta_path, "IGCLI_CACHE") as fh:
                    fh.write(json.dumps(meta, indent=2).encode())
            except OutputError:
                pass  # a read-only cache: the geometry is derived again next time
        return path, meta, False
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(f"cannot create the ONNX cache {cache} ({err.strerror}): set IGCLI_CACHE to a "
                         "writable folder") from None
    backbone = load_backbone(req, weights, "cpu")
    data_config = _plain(backbone.data_config)
    module = graph_module(backbone.model, outputs, data_config)
    tmp = cache / f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}"
    try:
        _export(module, data_config, outputs, tmp)
        diff = check_parity(module, tmp, data_config, outputs)
        meta = {"key": key, "data_config": data_config, "onnx_sha256": sha256_file(tmp),
                "parity_max_abs_diff": diff, "weights_source": weights.source,
                "geometry": _geometry_fields(data_config)}
        meta_tmp = tmp.with_suffix(".json")
        meta_tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, path)
        os.replace(meta_tmp, meta_path)
    finally:
        for leftover in (tmp, tmp.with_suffix(".json")):
            leftover.unlink(missing_ok=True)
    for stale in cache.glob(f"{stem}-*"):  # other weights of the same backbone: superseded
        if not stale.name.startswith(f"{stem}-{digest}"):
            stale.unlink(missing_ok=True)
    return path, meta, True


def _geometry_fields(data_config: dict[str, Any]) -> dict[str, Any] | None:
    geometry = eval_geometry(data_config)
    return None if geometry is None else {"side": geometry.side, "interpolation": geometry.interpolation,
                                          "crop": list(geometry.crop)}


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _plain(data_config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}))


def _export(module, data_config: dict[str, Any], outputs: list[str], path: Path) -> None:
    import torch

    h, w = data_config["input_size"][1:]
    example = torch.zeros((PARITY_BATCH, h, w, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            module, (example,), str(path), input_names=["image"], output_names=outputs, opset_version=OPSET,
            dynamic_axes={k: {0: "batch"} for k in ["image", *outputs]}, dynamo=False,
        )


def check_parity(module, path: Path, data_config: dict[str, Any], outputs: list[str], seed: int = 0) -> float:
    """torch vs onnxruntime on random images at two batch sizes; ``ModelError`` when they differ."""
    import torch

    rng = np.random.default_rng(seed)
    h, w = data_config["input_size"][1:]

    def reference(x: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            return [t.numpy() for t in module(torch.from_numpy(x["image"]))]

    worst = ort.check_parity(
        path, reference, ({"image": rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)}
                          for batch in (1, PARITY_BATCH + 1)),
        close=lambda got, want: float(np.max(np.abs(got - want))) <= 1e-3 * max(1.0, float(np.max(np.abs(want)))),
        failure=lambda _, name, diff: (f"the ONNX export of {path.name} differs from torch on {name} by {diff:.2g}: "
                                       "report this with your torch / timm / onnxruntime versions"),
        outputs=outputs)
    return max(worst.values())


def quantized_cached(fp32: Path, meta: dict[str, Any]) -> Path:
    """The int8 (dynamic quantization) version of ``fp32``, made once next to it."""
    path = fp32.with_name(fp32.stem + "-int8.onnx")
    stamp = path.with_suffix(".json")
    want = {"from_sha256": meta["onnx_sha256"]}
    got = _read_meta(stamp)
    if got and got.get("from_sha256") == want["from_sha256"] and path.is_file() \
            and sha256_file(path) == got.get("onnx_sha256"):
        return path

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = fp32.with_name(f".tmp-{os.getpid()}-{path.name}")
    pre = tmp.with_suffix(".pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns once per tensor it leaves in float
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QUInt8)
        stamp.write_text(json.dumps({**want, "onnx_sha256": sha256_file(tmp)}))
        os.replace(tmp, path)
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------ images

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Geometry:
    """timm's eval geometry where it is torchvision's ``Resize(side)`` (the shorter side to ``side``) then
    ``CenterCrop(crop)``, done on a PIL image in PIL alone: the steps torchvision takes for a PIL image (the new
    size as ``_compute_resized_output_size`` gives it, ``Image.resize`` with the same filter, no resize when the
    size is already right, the crop's corner rounded as ``center_crop`` does), so the bytes are torchvision's
    (``tests/test_runtime.py`` compares them) and preparing an image needs neither torch nor torchvision."""

    side: int
    interpolation: str          # bicubic | bilinear
    crop: tuple[int, int]       # (h, w), at most side each: the crop never pads

    def resized(self, size: tuple[int, int]) -> tuple[int, int]:
        w, h = size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.side, int(self.side * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def apply(self, img: Image.Image) -> Image.Image:
        new = self.resized(img.size)
        if new != img.size:
            img = img.resize(new, _RESAMPLE[self.interpolation])
        (ch, cw), (w, h) = self.crop, new
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return img.crop((left, top, left + cw, top + ch))


def _eval_steps(data_config: dict[str, Any]) -> list:
    """The resize and crop steps (torchvision transforms) of timm's eval transform for ``data_config``; the
    float conversion and normalisation are left out: they are the graph's first op."""
    from timm.data import create_transform
    from torchvision import transforms as T

    full = create_transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()},
                            is_training=False)
    return [t for t in getattr(full, "transforms", [full]) if isinstance(t, T.Resize | T.CenterCrop)]


def eval_geometry(data_config: dict[str, Any]) -> Geometry | None:
    """The ``Geometry`` of timm's eval transform for ``data_config``, or None where that transform is not a
    plain shorter-side resize and centre crop (then ``image_preparer`` runs torchvision's steps). Imports timm
    and torchvision (seconds): the export keeps the answer in its sidecar, so featurize does not."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    steps = _eval_steps(data_config)
    if len(steps) != 2 or not isinstance(steps[0], T.Resize) or not isinstance(steps[1], T.CenterCrop):
        return None
    resize, crop = steps
    names = {InterpolationMode.BICUBIC: "bicubic", InterpolationMode.BILINEAR: "bilinear"}
    side = resize.size[0] if isinstance(resize.size, list | tuple) and len(resize.size) == 1 else resize.size
    if not isinstance(side, int) or resize.max_size is not None or resize.interpolation not in names:
        return None
    ch, cw = crop.size
    if max(ch, cw) > side:
        return None  # the crop would pad
    return Geometry(side, names[resize.interpolation], (int(ch), int(cw)))


def image_preparer(data_config: dict[str, Any], geometry: dict[str, Any] | None = None) -> Callable:
    """PIL RGB image -> (H, W, 3) uint8 after timm's eval resize and centre crop for ``data_config``.

    ``geometry`` (``Geometry``'s fields, as the export's sidecar keeps them) saves deriving it through timm.
    An image at the input size is returned as it is where the steps would leave it so (CROP_PCT 1.0; 0.05
    against 0.25 ms through torchvision's no-op steps). Elsewhere the resize and the crop run as one PIL
    resize of the crop's region (``fused_crop``) wherever that gives the same bytes, which skips resampling
    the pixels the crop throws away (a 224 px image resized to 256 and cropped to 224: 0.8 instead of
    1.1 ms); and otherwise the two steps run as they are."""
    geo = Geometry(geometry["side"], geometry["interpolation"], tuple(geometry["crop"])) if geometry else \
        eval_geometry(data_config)
    size = tuple(data_config["input_size"][1:])
    if geo is None:  # another kind of eval transform: torchvision's own steps
        from torchvision import transforms as T

        two_steps, fused = T.Compose(_eval_steps(data_config)), None
    else:
        two_steps, fused = geo.apply, fused_crop(geo)
    # An image already at the input size passes through unchanged where the geometry leaves such an image
    # as it is (CROP_PCT 1.0: resize to its own size, crop to its own size): checked once on a noise image.
    noise = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    as_is = np.array_equal(np.asarray(two_steps(Image.fromarray(noise)), dtype=np.uint8), noise)

    def prepare(img) -> np.ndarray:
        if as_is and img.size == (size[1], size[0]) and img.mode == "RGB":
            return np.asarray(img, dtype=np.uint8)  # the steps would return the image itself
        region = fused(img.size) if fused is not None else None
        if region is not None:
            out = np.asarray(img.resize((size[1], size[0]), region[0], box=region[1]), dtype=np.uint8)
        else:
            out = np.asarray(two_steps(img), dtype=np.uint8)
        if out.shape != (*size, 3):
            raise ValueError(f"prepared image is {out.shape}, expected {(*size, 3)}")
        return out

    return prepare


def fused_crop(geo: Geometry) -> Callable[[tuple[int, int]], tuple[Any, tuple[float, ...]] | None]:
    """For a ``Geometry`` (timm's eval resize + centre crop): a function of the image size giving
    ``(resample, box)`` such that ``img.resize((w, h), resample, box=box)`` equals the two steps byte for
    byte, or None for a size where that is not certain.

    PIL computes each output pixel's source centre as ``box0 + (i + 0.5) * scale`` with
    ``scale = (box1 - box0) / out``, and its filter weights from that centre and scale alone. Resizing
    the whole image and cropping at ``left`` gives pixel i the centre ``(left + i + 0.5) * (W / new_w)``.
    The box ``(left * W / new_w, ...)`` gives the same centres in exact arithmetic; they are compared here
    in the same double arithmetic for every output pixel, so a size whose rounding differs falls back.
    PIL also picks which pass (horizontal or vertical) runs first, and the two orders round differently; so
    each new image size is checked once more on a noise image, both ways, and falls back unless equal."""
    ch, cw = geo.crop
    resample = _RESAMPLE[geo.interpolation]

    def axis(n: int, new: int, out: int) -> tuple[float, float] | None:
        """The box's (start, end) along one axis of n pixels resized to ``new`` and cropped to ``out``."""
        if new == n or out > new:
            return None                      # no resampling on this axis, or a padded crop: the plain path
        left = int(round((new - out) / 2.0))
        scale = n / new
        start, end = left * scale, (left + out) * scale
        if (end - start) / out != scale:
            return None
        if any(start + (i + 0.5) * scale != (left + i + 0.5) * scale for i in range(out)):
            return None
        return start, end

    @functools.lru_cache(maxsize=64)
    def region(image_size: tuple[int, int]) -> tuple[Any, tuple[float, ...]] | None:
        w, h = image_size
        new_w, new_h = geo.resized(image_size)
        x, y = axis(w, new_w, cw), axis(h, new_h, ch)
        if x is None or y is None:
            return None
        box = (x[0], y[0], x[1], y[1])
        noise = Image.frombytes("RGB", (w, h), np.random.default_rng(w * 65537 + h).bytes(w * h * 3))
        same = np.array_equal(np.asarray(noise.resize((cw, ch), resample, box=box)), np.asarray(geo.apply(noise)))
        return (resample, box) if same else None

    return region
