"""Score a batch of posts with an exported model (onnxruntime) and write predictions back to the store.

    from igcli.commands.score import ScoreOptions, score
    result = score("new_posts.csv", "igcli.duckdb", ScoreOptions(model="latest"))

Order of work: read and verify the model card -> ingest the batch -> compute image features the card
needs and the store lacks -> point-in-time metadata features with the card's parameters, from the stored
per-user state plus the batch's own order (a scored post sees the earlier posts of its user, never itself
or later ones) -> check feature names against the card
-> onnxruntime in large batches -> `predictions` rows (replaced, never duplicated) and optional file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from igcli import store
from igcli.commands.ingest import ingest_posts
from igcli.engines import Engine, get_engine
from igcli.errors import InputError, ModelError
from igcli.features.frames import serving_batch
from igcli.features.images import ImageFeatureOptions, compute_image_features
from igcli.files import atomic_write, check_output, spreadsheet_safe
from igcli.model.export import load_card, resolve_model_dir
from igcli.model.preprocess import Preprocessor
from igcli.vision.backbones import Fingerprint

OUTPUT_COLUMNS = ("post_id", "model_id", "predicted_log_likes", "predicted_likes", "p10_likes", "p90_likes",
                  "scored_at", "usual_likes", "vs_usual")
EXTREMES = 3                                 # posts furthest above / below their usual in the summary


@dataclass
class ScoreOptions:
    model: str = "latest"
    exports_dir: Path = Path("exports")
    images_dir: Path | None = None
    out: Path | None = None
    device: str = "auto"                    # auto | cpu | cuda
    objects_weights: Path | None = None     # weights of the card's classifier, when it must run
    aesthetics_weights: Path | None = None
    nima_weights: Path | None = None
    engine: Any = "local"                 # "local" | "ray" | an igcli.engines engine
    ray: object | None = None               # igcli.engines.ray.RayOptions for engine="ray"; None = defaults


@dataclass
class ScoreResult:
    model_id: str
    posts: int
    cold_start_users: int
    cold_start_posts: int
    without_image: int
    masked: dict[str, int]                 # image branch -> posts scored with it masked
    provider: str
    providers: list[str]
    posts_per_s: float
    ort_rows_per_s: float
    seconds: float
    rejected: int
    examples: list[dict] = field(default_factory=list)
    out: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    above_usual: list[dict] = field(default_factory=list)      # furthest above their usual (vs_usual), first
    below_usual: list[dict] = field(default_factory=list)      # furthest below

    def as_json(self) -> dict:
        return asdict(self)


def usual_log_likes(card: dict, pre, inputs: dict[str, np.ndarray], predict) -> np.ndarray:
    """ln of usual_likes: the model's median with this post's content at the training mean
    (``Preprocessor.usual_inputs``); for a post without history (cold start) the model's prior, the anchor
    it starts from, on the same neutral inputs. ``predict(inputs) -> (N, 3)`` runs the model."""
    neutral = pre.usual_inputs(inputs)
    usual = predict(neutral)[:, 1].astype(np.float64)
    prior = (card.get("scaling") or {}).get("prior")
    meta_scale = (card.get("scaling") or {}).get("metadata")
    if prior and meta_scale and len(usual):
        meta = neutral["meta"].astype(np.float64)
        mean, std = np.asarray(meta_scale["mean"]), np.asarray(meta_scale["std"])
        z = (np.where(np.isnan(meta), mean, meta) - mean) / std
        clip = (card.get("scaling") or {}).get("clip")     # the graph clips the scaled inputs (igcli.model.net)
        if clip is not None:
            z = np.clip(z, -clip, clip)
        cold = np.isnan(inputs["meta"][:, prior["anchor_index"]])
        usual[cold] = (z[cold] @ np.asarray(prior["w"], np.float64)) + prior["b"]
    return usual


def _ensure_image_features(con, card: dict, opts: ScoreOptions, engine: Engine, progress) -> None:
    """Run the weight-free quality features, and the card's backbones, for images that lack them."""
    backbones = card.get("backbones") or {}
    obj, aes = backbones.get("objects"), backbones.get("aesthetics")
    run_obj = obj is not None and obj["backbone"] != "precomputed"
    if not run_obj and aes is None:
        compute_image_features(con, ImageFeatureOptions(skip_backbones=True), engine, progress=progress)
        return

    expect = {r: s["weights_fp"] for r, s in (("objects", obj), ("aesthetics", aes))
              if s and (r != "objects" or run_obj)}
    img = ImageFeatureOptions(
        objects=obj["backbone"] if run_obj else None, objects_explicit=run_obj,
        aesthetics=aes["backbone"] if aes else None, aesthetics_explicit=aes is not None,
        objects_weights=opts.objects_weights, aesthetics_weights=opts.aesthetics_weights,
        nima_weights=opts.nima_weights,
        random_init=bool((obj and obj.get("random_init")) or (aes and aes.get("random_init"))),
        device=opts.device, roles=tuple(r for r, on in (("objects", run_obj), ("aesthetics", aes)) if on),
        expect_fingerprints=expect,
        quantize="int8" if any(Fingerprint.parse(fp).int8 for fp in expect.values()) else None,
    )
    compute_image_features(con, img, engine, progress=progress)


def score(
    posts: Path | str,
    db: Path | str = store.DEFAULT_DB,
    opts: ScoreOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ScoreResult:
    opts = opts or ScoreOptions()
    if opts.out:
        check_out(Path(opts.out), Path(posts))
    engine = get_engine(opts.engine, opts.ray)   # the local / Ray choice, once
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    model_dir = resolve_model_dir(opts.model, opts.exports_dir)
    card = load_card(model_dir)
    pre = Preprocessor.from_card(card)
    if pre.meta_names() != card["feature_names"]:
        raise ModelError(f"{model_dir}: the card's feature names do not match its preprocessing: re-export")
    predict = engine.predictor(model_dir / "model.onnx", opts.device)
    providers = predict.providers
    con = store.connect(db)
    try:
        t_ing = time.perf_counter()
        timings["model_load_s"] = t_ing - t0
        ing = ingest_posts(posts, con=con, images_dir=opts.images_dir, keep_ids=True, progress=progress)
        ids = ing.post_ids
        timings["ingest_s"] = time.perf_counter() - t_ing
        if not ids:
            raise InputError(f"no post of {posts} could be loaded ({ing.rejected} rejected): see `igcli status`")
        t1 = time.perf_counter()
        _ensure_image_features(con, card, opts, engine, progress)
        with store.transaction(con):
            frame = serving_batch(con, card, ids)
        timings["features_s"] = time.perf_counter() - t1
        inputs = pre.transform(frame)
        t2 = time.perf_counter()
        quantiles = predict(inputs, frame.post_id.tolist(), con)
        ort_s = time.perf_counter() - t2
        timings["onnxruntime_s"] = ort_s
        usual = usual_log_likes(card, pre, inputs, lambda x: predict(x, frame.post_id.tolist(), con))
        timings["usual_s"] = time.perf_counter() - t2 - ort_s
        # numpy columns into DuckDB (igcli.store.temp_table says why not pyarrow); model_id and scored_at are
        # the same on every row
        table = {
            "post_id": np.asarray(frame.post_id, dtype=object),
            "predicted_log_likes": quantiles[:, 1].astype(np.float64),
            "predicted_likes": np.exp(quantiles[:, 1].astype(np.float64)),
            "p10_likes": np.exp(quantiles[:, 0].astype(np.float64)),
            "p90_likes": np.exp(quantiles[:, 2].astype(np.float64)),
            "usual_likes": np.exp(usual),
            "vs_usual": np.exp(quantiles[:, 1].astype(np.float64) - usual),
        }
        row_sql = (f"SELECT {', '.join(OUTPUT_COLUMNS)} FROM (SELECT *, $model_id::VARCHAR AS model_id, "
                   "$now::TIMESTAMP AS scored_at FROM igc_pred)")  # constants of this module
        row_params = {"model_id": card["model_id"], "now": store.utcnow()}
        with store.transaction(con):
            con.register("igc_pred", table)
            try:
                con.execute(f"INSERT OR REPLACE INTO predictions ({', '.join(OUTPUT_COLUMNS)}) {row_sql}",
                            row_params)
                out_table = con.sql(row_sql, params=row_params).to_arrow_table() if opts.out else None
            finally:
                con.unregister("igc_pred")
            store.fault_point("score.before_commit")
        users_seen = {u for u, nh in zip(frame.username, frame.cols["no_history"], strict=True) if not nh}
        cold_users = {u for u in frame.username if u not in users_seen}
        masked = {}
        if "objects_mask" in inputs:
            masked["objects"] = int(np.sum(inputs["objects_mask"][:, 0] == 0))
        if "aesthetics_mask" in inputs:
            masked["aesthetics"] = int(np.sum(inputs["aesthetics_mask"][:, 0] == 0))
        without_image = int(np.sum(~np.isfinite(frame.cols["brightness"])))
    finally:
        con.close()
    out_path = None
    if opts.out:
        out_path = write_predictions(out_table, Path(opts.out))
    seconds = time.perf_counter() - t0
    def example(i: int) -> dict:
        return {"post_id": str(table["post_id"][i]), "predicted_likes": round(float(table["predicted_likes"][i])),
                "p10_likes": round(float(table["p10_likes"][i])), "p90_likes": round(float(table["p90_likes"][i])),
                "usual_likes": round(float(table["usual_likes"][i])),
                "vs_usual": round(float(table["vs_usual"][i]), 3)}

    vs = table["vs_usual"]
    examples = [example(i) for i in range(min(5, len(vs)))]
    order = np.argsort(-vs, kind="mergesort")
    k = min(EXTREMES, len(vs) // 2) if len(vs) > 1 else len(vs)
    above_usual = [example(int(i)) for i in order[:k]]
    below_usual = [example(int(i)) for i in order[::-1][:k]] if len(vs) > 1 else []
    return ScoreResult(
        card["model_id"], len(frame), len(cold_users), int(np.sum(frame.cols["no_history"] > 0)), without_image,
        masked, providers[0], providers, len(frame) / seconds if seconds else 0.0,
        len(frame) / ort_s if ort_s else 0.0, seconds, ing.rejected, examples, out_path, timings,
        above_usual, below_usual,
    )


def check_out(path: Path, posts: Path | None = None) -> None:
    """Refuse, before anything is scored, an ``--out`` that cannot be written or would replace ``posts``."""
    if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise InputError(f"--out {path}: use a .csv or .parquet file name")
    check_output(path, "--out")
    if posts is not None and path.exists() and posts.exists() and os.path.samefile(path, posts):
        raise InputError(f"--out {path} is the posts file being scored: pass another file name")


def write_predictions(table: pa.Table, path: Path) -> str:
    """CSV or Parquet by extension, written whole or not at all (``igcli.files.atomic_write``). In a CSV,
    text a spreadsheet would run as a formula (a post_id ``=HYPERLINK(...)``) starts with ``'``."""
    check_out(path)
    with atomic_write(path, "--out") as fh:
        if path.suffix.lower() == ".csv":
            pcsv.write_csv(spreadsheet_safe(table), fh)
        else:
            pq.write_table(table, fh)
    return str(path)
