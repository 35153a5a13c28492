"""Export a trained model: ONNX graph + JSON model card (+ plots), checked before it is published.

``exports/<model_id>/`` holds ``model.onnx``, ``model_card.json``, PNG plots and ``test_part.parquet``
(each test post's actual and predicted ln-likes, as the metrics saw them); ``exports/latest`` names
the newest model. The directory is written under a temporary name and renamed only after the ONNX checker
and the torch-vs-onnxruntime parity check pass, so a failed or killed export never leaves a half model.
Exports running at once into one folder each get their own temporary folder (``O_EXCL``-style ``mkdir`` of a
random name) and hold a shared ``flock`` on the exports folder while they write; the folders a killed export
left are removed only by an export that gets that lock alone, so one run never deletes another's work in
progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from igcli import __version__, ort
from igcli.errors import ModelError
from igcli.files import atomic_write
from igcli.model.explain import fit_distribution
from igcli.store import fault_point
from igcli.util import sha256_file

OPSET = 17
PARITY_BATCHES = (1, 7, 1024)
RTOL, ATOL = 1e-4, 1e-5
CARD = "model_card.json"
ONNX = "model.onnx"
TMP_PREFIX = ".tmp-"

try:
    import fcntl
except ImportError:        # not POSIX: no lock, and no stale folder is ever removed
    fcntl = None


def card_digest(card: dict) -> str:
    """sha256 of the card's canonical JSON without its own digest field."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def random_inputs(model, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh inputs shaped like the model's, with some NaNs and masked rows, near the training scale."""
    out: dict[str, np.ndarray] = {}
    for b in model.names:
        branch = model.branches[b]
        if b == "metadata":
            mean, std = branch.norm.mean.numpy(), branch.norm.std.numpy()
            x = (mean + std * rng.normal(size=(batch, len(mean)))).astype(np.float32)
            x[rng.random(x.shape) < 0.05] = np.nan
            out["meta"] = x
        elif b == "objects":
            n = branch.embed.in_features
            out["objects"] = rng.dirichlet(np.ones(n), size=batch).astype(np.float32)
            out["objects_mask"] = (rng.random((batch, 1)) < 0.8).astype(np.float32)
        elif b == "aesthetics":
            mean, std = branch.norm.mean.numpy(), branch.norm.std.numpy()
            out["aesthetics"] = (mean + std * rng.normal(size=(batch, len(mean)))).astype(np.float32)
            out["aesthetics_mask"] = (rng.random((batch, 1)) < 0.8).astype(np.float32)
    return out


def onnx_export(model, path: Path) -> None:
    import torch

    names = model.input_names
    example = random_inputs(model, 4, np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[k]) for k in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            model, args, str(path), input_names=names, output_names=["quantiles"], opset_version=OPSET,
            dynamic_axes={k: {0: "batch"} for k in [*names, "quantiles"]}, dynamo=False,
        )


def check_parity(model, path: Path, seed: int = 1234) -> dict[str, float]:
    """onnx.checker full check, then torch vs onnxruntime on fresh random inputs at several batch sizes."""
    import onnx
    import torch

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    rng = np.random.default_rng(seed)

    def reference(x: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            return [model(*[torch.from_numpy(x[k]) for k in model.input_names]).numpy()]

    return ort.check_parity(
        path, reference, (random_inputs(model, batch, rng) for batch in PARITY_BATCHES),
        close=lambda got, want: np.allclose(got, want, rtol=RTOL, atol=ATOL),
        failure=lambda batch, _, diff: (f"ONNX parity check failed at batch {batch}: max abs diff {diff:.3g} "
                                        f"(rtol {RTOL}, atol {ATOL}); the model was not exported"))


def _scaling(model) -> dict:
    from igcli.model.net import CLIP

    scale = model.interval_scale.tolist()    # p10/p90 widening, calibrated on validation, per segment
    out = {"y_mean": float(model.y_mean), "y_std": float(model.y_std),
           "interval_scale": {"with_history": scale[0], "cold_start": scale[1]},
           "ensemble": len(model.members), "clip": CLIP}
    for b in model.names:
        norm = getattr(model.branches[b], "norm", None)
        if norm is not None:
            out[b] = {"mean": norm.mean.tolist(), "std": norm.std.tolist()}
    if model.anchor_index is not None:   # the cold-start anchor, which is also a cold user's usual_likes
        out["prior"] = {"anchor_index": int(model.anchor_index), "w": model.prior_w.tolist(),
                        "b": float(model.prior_b)}
    return out


def _image_inputs(model) -> dict | None:
    """How the exported graph turns the raw embedding into the head's image inputs (fixed layers)."""
    if "aesthetics" not in model.names:
        return None
    from igcli.model.net import RIDGE_ALPHA, RIDGE_FOLDS

    br = model.branches["aesthetics"]
    return {"embedding_dim": int(br.proj.shape[0]), "pca_components": int(br.proj.shape[1]),
            "pca_fitted_on": "training rows with an embedding (standardised)",
            "ridge_alpha": RIDGE_ALPHA, "ridge_target": "ln-likes minus the anchor, in units of y_std",
            "ridge_training_rows": f"out-of-fold, {RIDGE_FOLDS} folds grouped by user; full fit in the graph"}


def export_model(model, pre, run, opts, sources: dict, feature_params: dict, data_fp: str, exports_dir: Path,
                 plots: dict | None = None, train_inputs: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``exports/<model_id>/``; ``train_inputs`` (the training rows' model inputs) give the card the
    training distribution of every input, which ``score`` checks each batch against (drift)."""
    exports_dir = Path(exports_dir)
    with export_folder(exports_dir, run.model_id) as tmp:
        return _export_into(tmp, model, pre, run, opts, sources, feature_params, data_fp, exports_dir, plots,
                            train_inputs)


@contextmanager
def export_folder(exports_dir: Path, model_id: str) -> Iterator[Path]:
    """A new folder in ``exports_dir`` to write one export into, with the folder's lock held shared for the
    block (module docstring). Folders of killed exports are removed first when no other export runs."""
    try:
        exports_dir.mkdir(parents=True, exist_ok=True)
        lock = (os.open(exports_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
                if fcntl is not None else None)
    except OSError as err:
        raise ModelError(f"cannot write to the exports directory {exports_dir}: {err.strerror}; "
                         "pass --exports DIR with a writable folder") from None
    try:
        if lock is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)   # alone: no export is in progress
                for stale in exports_dir.glob(f"{TMP_PREFIX}*"):
                    if stale.is_dir() and not stale.is_symlink():
                        shutil.rmtree(stale, ignore_errors=True)
            except BlockingIOError:
                pass                                              # another export runs: its folder stays
            fcntl.flock(lock, fcntl.LOCK_SH)
        for _ in range(16):
            tmp = exports_dir / f"{TMP_PREFIX}{model_id}-{secrets.token_hex(4)}"
            try:
                tmp.mkdir()          # fails on any existing name, a planted link included
                break
            except FileExistsError:
                continue
            except OSError as err:
                raise ModelError(f"cannot write to the exports directory {exports_dir}: {err.strerror}; "
                                 "pass --exports DIR with a writable folder") from None
        else:
            raise ModelError(f"cannot make a temporary folder in {exports_dir}: remove its {TMP_PREFIX}* folders")
        yield tmp
    finally:
        if lock is not None:
            os.close(lock)           # releases the lock


def _export_into(tmp: Path, model, pre, run, opts, sources: dict, feature_params: dict, data_fp: str,
                 exports_dir: Path, plots: dict | None, train_inputs: dict[str, np.ndarray] | None) -> Path:
    try:
        onnx_export(model, tmp / ONNX)
        parity = check_parity(model, tmp / ONNX)
        card = {
            "model_id": run.model_id,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "igcli_version": __version__,
            "branches": list(run.branches),
            "inputs": [{"name": k, "dtype": "float32"} for k in model.input_names],
            "output": {"name": "quantiles", "columns": ["p10", "p50", "p90"], "unit": "ln(likes)"},
            "preprocess": pre.to_card(),
            "feature_names": pre.meta_names(),
            "scaling": _scaling(model),
            "image_inputs": _image_inputs(model),
            "feature_params": feature_params,
            "backbones": sources,
            "random_init_inputs": run.random_init_inputs,
            "leaky_user_stats": run.leaky_features,
            "split": run.split,
            "test_features": run.test_features,
            "seed": run.seed,
            "train_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
            "data_fingerprint": data_fp,
            "counts": {"train": run.n_train, "val": run.n_val, "test": run.n_test,
                       "zero_likes_excluded": run.zero_likes_excluded},
            # how train chose this model's branches, what it measured, and what it exported (igcli.commands.train)
            "chosen_by": run.chosen_by,
            "candidates": run.candidates,
            "evaluation": {"rows": {"train": run.n_train, "val": run.n_val, "test": run.n_test},
                           "epochs": run.timings.get("epochs"), "members": run.timings.get("members"),
                           "verdict": run.verdict, "beats_history_mean": run.beats_history,
                           "model": "fitted on the training part, early stopping on the validation part; "
                                    "`metrics` are its test-part metrics"},
            "refit": run.refit,
            "exported": "refit" if run.refit else "evaluated",
            "metrics": run.metrics,
            "baselines": run.baselines,
            "subsets": run.subsets,
            "family_effects": run.family_effects,
            "family_posts": run.family_posts,
            "opset": OPSET,
            "parity_max_abs_diff": parity,
            "onnx_sha256": sha256_file(tmp / ONNX),
        }
        if train_inputs is not None:
            card["input_distribution"] = fit_distribution(card, train_inputs)
        card = json.loads(json.dumps(card, default=str))  # plain JSON types, as it will be read back
        card["card_sha256"] = card_digest(card)
        (tmp / CARD).write_text(json.dumps(card, indent=2), encoding="utf-8")
        if plots:
            write_plots(tmp, plots)
        final = exports_dir / run.model_id
        fault_point("export.before_publish")
        try:
            os.replace(tmp, final)
        except OSError as err:
            raise ModelError(f"cannot publish the export {final}: {err.strerror}; remove what is at that path "
                             "or pass another --exports") from None
        with atomic_write(exports_dir / "latest", "--exports") as fh:
            fh.write((run.model_id + "\n").encode("utf-8"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


TEST_PART = "test_part.parquet"


def write_plots(out: Path, data: dict) -> None:
    if "test_part" in data:
        cols = {k: (v.tolist() if v.dtype == object else v) for k, v in data["test_part"].items()}
        pq.write_table(pa.table(cols), out / TEST_PART)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    likes = data["likes_all"][data["likes_all"] > 0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].hist(likes, bins=60, color="#4c72b0")
    axes[0].set(title="likes", xlabel="likes", ylabel="posts")
    axes[1].hist(np.log(likes), bins=60, color="#dd8452")
    axes[1].set(title="ln(likes)", xlabel="ln(likes)")
    fig.tight_layout()
    fig.savefig(out / "likes_histograms.png", dpi=100)
    plt.close(fig)
    y, p = data["y_test"], data["pred_test"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, p, s=4, alpha=0.4)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1)
    ax.set(title="test part: predicted vs actual", xlabel="actual ln(likes)", ylabel="predicted ln(likes)")
    fig.tight_layout()
    fig.savefig(out / "predicted_vs_actual.png", dpi=100)
    plt.close(fig)


def plot_ablation(rows: list[dict], path: Path) -> None:
    """The ablation table (one row per branch combination) as a bar chart of test MAE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = ["+".join(r["branches"]) for r in rows]
    ax.bar(labels, [r["mae"] for r in rows], color="#55a868")
    ax.set(title="test MAE of ln(likes) by branches", ylabel="MAE")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    try:
        with atomic_write(path, "--exports") as fh:
            fig.savefig(fh, format="png", dpi=100)
    finally:
        plt.close(fig)


def resolve_model_dir(model: str | Path, exports_dir: Path = Path("exports")) -> Path:
    """``latest``, a model id under ``exports_dir``, or a directory path."""
    model = str(model)
    if model == "latest":
        latest = Path(exports_dir) / "latest"
        if not latest.is_file():
            raise ModelError(f"no trained model in {exports_dir}: run `igcli train` first, or pass --model DIR")
        model = latest.read_text(encoding="utf-8").strip()
    path = Path(model)
    if not path.is_dir():
        path = Path(exports_dir) / model
    if not (path / CARD).is_file() or not (path / ONNX).is_file():
        raise ModelError(f"{path} is not a model directory (needs {ONNX} and {CARD}): pass --model DIR")
    return path


def load_card(model_dir: Path, verify: bool = True) -> dict:
    """Read the card; with ``verify``, refuse a model whose ONNX file no longer matches the card."""
    try:
        card = json.loads((model_dir / CARD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"the model card {model_dir / CARD} cannot be read ({err}): re-export the model") from None
    for key in ("model_id", "branches", "preprocess", "inputs", "onnx_sha256", "card_sha256"):
        if key not in card:
            raise ModelError(f"the model card {model_dir / CARD} lacks {key!r}: re-export the model")
    if verify and card_digest(card) != card["card_sha256"]:
        raise ModelError(f"{model_dir / CARD} was altered after export (its sha256 no longer matches): "
                         "re-export the model with `igcli train`")
    if verify and sha256_file(model_dir / ONNX) != card["onnx_sha256"]:
        raise ModelError(f"{model_dir / ONNX} was altered after export (sha256 differs from the card): "
                         "re-export it with `igcli train`")
    return card
