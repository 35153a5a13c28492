"""Score a batch of posts with an exported model (onnxruntime) and write predictions back to the store.

    from igcli.commands.score import ScoreOptions, score
    result = score("new_posts.csv", "igcli.duckdb", ScoreOptions(model="latest"))

Order of work: read and verify the model card -> ingest the batch -> compute image features the card
needs and the store lacks -> point-in-time metadata features with the card's parameters, from the stored
per-user state plus the batch's own order (a scored post sees the earlier posts of its user, never itself
or later ones) -> check feature names against the card
-> onnxruntime in large batches -> usual_likes, the drivers and the inputs' drift (``igcli.model.explain``) ->
`predictions` rows (replaced, never duplicated; a prediction made before the post's likes were known is kept over
one the same model makes after) with the batch's drift rows, and optional file.
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
from igcli.commands.evaluate import record_batch
from igcli.commands.ingest import ingest_posts
from igcli.engines import Engine, get_engine
from igcli.errors import InputError, ModelError
from igcli.features.frames import serving_batch
from igcli.features.images import ImageFeatureOptions, compute_image_features
from igcli.model.explain import CONTENT, GROUPS, Recorder, batch_drift, drift_summary, drivers, one_call
from igcli.model.export import load_card, resolve_model_dir
from igcli.model.preprocess import Preprocessor
from igcli.vision.backbones import Fingerprint

OUTPUT_COLUMNS = ("post_id", "model_id", "predicted_log_likes", "predicted_likes", "p10_likes", "p90_likes",
                  "scored_at", "usual_likes", "vs_usual", "reference_likes", *(f"effect_{g}" for g in GROUPS))
RECORD_COLUMNS = ("likes_known", "user_mean_log_likes")       # stored for `igcli evaluate`, not in --out
# A row this batch does not write: the post's likes are known now, and the same model scored it before they were
# (the prediction that counts in `igcli evaluate`).
KEEP_EARLIER = ("n.likes_known AND EXISTS (SELECT 1 FROM predictions p WHERE p.post_id = n.post_id "
                "AND p.model_id = n.model_id AND p.likes_known = false)")
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
    # per model input, largest PSI first (igcli.model.explain.batch_drift); None: the card has no distribution
    drift: list[dict] | None = None
    drift_summary: str = ""                # the inputs named as drift / notes, one line
    kept_earlier: int = 0                  # rows not replaced: the same model scored them before their likes

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
        neutral = Recorder(lambda x: predict(x, frame.post_id.tolist(), con))     # its pass serves the drivers
        usual = usual_log_likes(card, pre, inputs, neutral)
        timings["usual_s"] = time.perf_counter() - t2 - ort_s
        t3 = time.perf_counter()
        pids = frame.post_id.tolist()
        # on an engine whose every call is a job (Ray) the drivers' passes go in one call
        why = drivers(card, pre, inputs, _driver_runs(predict, pids, con), quantiles[:, 1],
                      known={CONTENT: neutral.last[:, 1]},
                      predict_all=None if engine.name == "local" else one_call(lambda x, i: predict(x, i, con), pids))
        drift = batch_drift(card, inputs)
        timings["drivers_s"] = time.perf_counter() - t3
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
            **why.columns(),
            "likes_known": frame.likes >= 0,
            "user_mean_log_likes": frame.cols["hist_mean"],
        }
        stored = OUTPUT_COLUMNS + RECORD_COLUMNS
        row_sql = (f"SELECT {', '.join(stored)} FROM (SELECT *, $model_id::VARCHAR AS model_id, "
                   "$now::TIMESTAMP AS scored_at FROM igc_pred)")  # constants of this module
        row_params = {"model_id": card["model_id"], "now": store.utcnow()}
        kept = 0
        with store.transaction(con):
            con.register("igc_pred", table)
            try:
                if table["likes_known"].any():   # keep what this model predicted before the likes were known
                    kept = con.execute(f"SELECT count(*) FROM ({row_sql}) n WHERE {KEEP_EARLIER}", row_params
                                       ).fetchall()[0][0]
                keep = f"WHERE NOT ({KEEP_EARLIER})" if kept else ""
                con.execute(f"INSERT OR REPLACE INTO predictions ({', '.join(stored)}) SELECT * FROM ({row_sql}) n "
                            f"{keep}", row_params)
                out_table = (con.sql(f"SELECT {', '.join(OUTPUT_COLUMNS)} FROM ({row_sql})", params=row_params
                                     ).to_arrow_table() if opts.out else None)
            finally:
                con.unregister("igc_pred")
            record_batch(con, card["model_id"], row_params["now"], str(Path(posts).resolve()), len(frame), drift)
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
                "vs_usual": round(float(table["vs_usual"][i]), 3), "drivers": why.describe(i)}

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
        above_usual, below_usual, [d.as_json() for d in drift] if drift is not None else None,
        drift_summary(drift, len(frame)), kept,
    )


def _driver_runs(predict, pids: list[str], con) -> list:
    """The model for the drivers' passes: one callable per stream the engine runs side by side (the local engine:
    two sessions on the CPU, ``streams``), else the predictor itself."""
    streams = predict.streams() if hasattr(predict, "streams") else [predict]
    return [lambda x, p=p: p(x, pids, con) for p in streams]


def write_predictions(table: pa.Table, path: Path) -> str:
    """CSV or Parquet by extension, written to a temporary name then renamed."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise InputError(f"--out {path}: use a .csv or .parquet file name")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if suffix == ".csv":

            pcsv.write_csv(table, tmp)
        else:

            pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}") from None
    return str(path)
