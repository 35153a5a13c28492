"""onnxruntime in one place: the device check, the provider choice, one session factory, batched runs and the
torch-vs-ONNX parity check. The image backbones (``igcli.vision.runtime``), scoring and the Ray actors all
open their sessions here, so a device string means the same thing everywhere.

    from igcli import ort
    session = ort.session("exports/<id>/model.onnx", device="auto")
    quantiles = ort.run_batched(session, {"meta": x})          # (N, 3)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from igcli.errors import FeatureMismatch, InputError, ModelError

# Rows per session.run of a scoring batch: a run's activations stay in the caches. The bench store's metadata
# model on 100,000 rows took 0.116 s (1 thread) / 0.075 s (2 threads) in runs of 4,096 against 0.15-0.19 /
# 0.10-0.14 s in runs of 65,536, the same outputs there.
ORT_BATCH = 4096
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def check_device(device: str) -> tuple[str, int | None]:
    """``(kind, index)`` of a ``--device`` value: auto, cpu, cuda or cuda:N; ``InputError`` otherwise."""
    m = _DEVICE.match(device or "")
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise InputError(f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N")
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def gpu_present() -> bool:
    """A CUDA device is visible (without initialising one): avoids onnxruntime's noisy CUDA fallback."""
    return Path("/dev/nvidia0").exists() or bool(os.environ.get("IGCLI_ASSUME_GPU"))


def choose_providers(device: str) -> list:
    """onnxruntime's providers for ``device``: CUDA first where asked for (or, with auto, where present)."""
    import onnxruntime

    kind, index = check_device(device)
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if kind == "cuda" and not has_cuda:
        raise InputError(f"--device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    if has_cuda and (kind == "cuda" or gpu_present()):
        cuda = ("CUDAExecutionProvider", {"device_id": index}) if index is not None else "CUDAExecutionProvider"
        return [cuda, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(model: Path | str | bytes, device: str = "auto", threads: int | None = None, spinning: bool = True,
            fix: str = "export it again"):
    """An onnxruntime session on ``device`` with ``threads`` intra-op threads (default: every core).

    ``spinning=False`` lets the pool threads sleep between and within runs: a spinning thread holds a core that
    featurize's decode threads need, which costs more end to end (bench_featurize) than the wake-ups cost the
    model alone. ``fix`` ends the one-line error when the file does not load."""
    import onnxruntime

    providers = choose_providers(device)
    if providers[0] != "CPUExecutionProvider":
        import torch  # noqa: F401  loads the CUDA and cuDNN libraries the CUDA provider links against

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        source = model if isinstance(model, bytes) else str(model)
        return onnxruntime.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types
        name = "the exported model" if isinstance(model, bytes) else model
        raise ModelError(f"onnxruntime cannot load {name} ({str(err).strip().splitlines()[0]}): {fix}") from None


def run_batched(sess, inputs: dict[str, np.ndarray], batch: int = ORT_BATCH) -> np.ndarray:
    """The first output of ``sess`` over every row of ``inputs``, ``batch`` rows per run."""
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise FeatureMismatch(f"the model needs inputs {', '.join(missing)} that were not built")
    n = len(inputs[names[0]])
    out = [sess.run(None, {k: inputs[k][s:s + batch] for k in names})[0] for s in range(0, n, batch)]
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


def check_parity(path: Path, reference: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
                 batches: Iterable[dict[str, np.ndarray]], close: Callable[[np.ndarray, np.ndarray], bool],
                 failure: Callable[[int, str, float], str], outputs: list[str] | None = None) -> dict[str, float]:
    """The ONNX file at ``path`` (on the CPU) against ``reference`` (torch) on each input dict of ``batches``.

    Returns the largest absolute difference per batch size; raises ``ModelError(failure(batch, output, diff))``
    at the first output that is not ``close(got, want)``."""
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in sess.get_outputs()]
    worst: dict[str, float] = {}
    for x in batches:
        n = len(next(iter(x.values())))
        got = sess.run(names, x)
        want = reference(x)
        for name, g, w in zip(names, got, want, strict=True):
            diff = float(np.max(np.abs(g - w))) if g.shape == w.shape else float("inf")
            worst[str(n)] = max(worst.get(str(n), 0.0), diff)
            if g.shape != w.shape or not close(g, w):
                raise ModelError(failure(n, name, diff))
    return worst
