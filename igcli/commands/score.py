"""Score a batch of posts with an exported model (onnxruntime); by default write the predictions back to the
store, or with ``what_if`` score drafts against the stored history and store nothing.

    from igcli.commands.score import ScoreOptions, score
    result = score("new_posts.csv", "igcli.duckdb", ScoreOptions())                # stored: posts become history
    result = score("drafts.csv", "igcli.duckdb", ScoreOptions(what_if=True))       # nothing stored

Order of work: read and verify the model card -> ingest the batch -> compute image features the card
needs and the store lacks -> point-in-time metadata features with the card's parameters, from the stored
per-user state plus the batch's own order (a scored post sees the earlier posts of its user, never itself
or later ones) -> check feature names against the card
-> onnxruntime in large batches -> usual_likes, the drivers and the inputs' drift (``igcli.model.explain``) ->
`predictions` rows (replaced, never duplicated; a prediction made before the post's likes were known is kept over
one the same model makes after) with the batch's drift rows, and optional file.

What-if. Every row is an alternative: it is scored against the stored history only, never against another
row of the file, whatever their times. The file is ingested once inside a transaction that is rolled back
(to learn each row's post, user and tags), the rows are split into rounds in which no two rows share a user
(or, with store-frequency hashtag weights, a hashtag: a tag's weight counts other posts' uses), and each
round is ingested, featurized and scored inside its own rolled-back transaction.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from igcli import store
from igcli.commands.evaluate import record_batch
from igcli.commands.ingest import ENCODINGS, PROBLEMS_SHOWN, image_problems, ingest_posts
from igcli.commands.ingest import _detect_encoding as detect_encoding
from igcli.commands.train import chosen_model
from igcli.engines import Engine, get_engine
from igcli.errors import InputError, ModelError, StoreError
from igcli.features.frames import serving_batch
from igcli.features.images import ImageFeatureOptions, compute_image_features
from igcli.files import atomic_write, check_output, open_input, spreadsheet_safe
from igcli.model.explain import (
    CONTENT,
    GROUPS,
    Recorder,
    batch_drift,
    describe,
    drift_summary,
    drivers,
    one_call,
)
from igcli.model.export import load_card, resolve_model_dir
from igcli.model.preprocess import Preprocessor
from igcli.vision.backbones import Fingerprint

OUTPUT_COLUMNS = ("post_id", "model_id", "predicted_log_likes", "predicted_likes", "p10_likes", "p90_likes",
                  "scored_at", "usual_likes", "vs_usual", "batch_id", "reference_likes",
                  *(f"effect_{g}" for g in GROUPS))
RECORD_COLUMNS = ("likes_known", "user_mean_log_likes")       # stored for `igcli evaluate`, not in --out
# A row this batch does not write: the post's likes are known now, and the same model scored it before they were
# (the prediction that counts in `igcli evaluate`).
KEEP_EARLIER = ("n.likes_known AND EXISTS (SELECT 1 FROM predictions p WHERE p.post_id = n.post_id "
                "AND p.model_id = n.model_id AND p.likes_known = false)")
# --out: who and when first, then the median with its band, rounded as a person reads them
FILE_COLUMNS = ("post_id", "username", "posted_at", "predicted_likes", "p10_likes", "p90_likes", "usual_likes",
                "vs_usual", "cold_start", "image_used", "model_id", "predicted_log_likes", "scored_at", "batch_id",
                "reference_likes", *(f"effect_{g}" for g in GROUPS))
EXTREMES = 3                                 # posts furthest above / below their usual in the summary
FAR_DAYS = 365                               # a post this long after its user's previous one: a typo in posted_at?


@dataclass
class ScoreOptions:
    model: str = "best"                     # best (train's choice for this store) | latest | an id | a directory
    exports_dir: Path = Path("exports")
    images_dir: Path | None = None
    out: Path | None = None
    device: str = "auto"                    # auto | cpu | cuda
    objects_weights: Path | None = None     # weights of the card's classifier, when it must run
    aesthetics_weights: Path | None = None
    nima_weights: Path | None = None
    engine: Any = "local"                 # "local" | "ray" | an igcli.engines engine
    ray: object | None = None               # igcli.engines.ray.RayOptions for engine="ray"; None = defaults
    what_if: bool = False                   # score each row against the stored history alone; store nothing


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
    above_usual: list[dict] = field(default_factory=list)      # furthest above their usual (vs_usual > 1), first
    below_usual: list[dict] = field(default_factory=list)      # furthest below (vs_usual < 1)
    model_note: str = ""                   # why this model: "chosen by train for this store", "latest", ...
    stored: bool = True                    # False for --what-if
    batch_id: str | None = None            # the scoring batch (igcli forget --batch removes it)
    image_problems: list[str] = field(default_factory=list)    # one line per post whose image was not used
    image_problems_total: int = 0
    what_if: list[dict] = field(default_factory=list)          # per user: their alternatives, best first
    date_warnings: list[str] = field(default_factory=list)     # posts dated long after their user's previous one
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
    cold = np.isnan(inputs["meta"][:, prior["anchor_index"]]) if prior and meta_scale and len(usual) else None
    if cold is not None and cold.any():
        # the cold rows alone are scaled (the same values, row by row, as scaling the whole batch then taking them)
        meta = neutral["meta"][cold].astype(np.float64)
        mean, std = np.asarray(meta_scale["mean"]), np.asarray(meta_scale["std"])
        z = (np.where(np.isnan(meta), mean, meta) - mean) / std
        clip = (card.get("scaling") or {}).get("clip")     # the graph clips the scaled inputs (igcli.model.net)
        if clip is not None:
            z = np.clip(z, -clip, clip)
        usual[cold] = (z @ np.asarray(prior["w"], np.float64)) + prior["b"]
    return usual


def ensure_image_features(con, card: dict, opts: ScoreOptions, engine: Engine, progress) -> None:
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
    """Score the posts of a CSV or Parquet file; see the module docstring."""
    opts = opts or ScoreOptions()
    if opts.out:
        check_out(Path(opts.out), Path(posts))
    engine = get_engine(opts.engine, opts.ray)   # the local / Ray choice, once
    t0 = time.perf_counter()
    con = store.connect(db, create=False)
    try:
        _check_featurized(con, db)
        model = load_model(con, opts, engine)
        timings = {"model_load_s": time.perf_counter() - t0}
        kept = 0
        if opts.what_if:
            batch, ing = _what_if(con, Path(posts), model, opts, engine, progress, timings)
            batch_id = None
        else:
            batch, ing, batch_id, kept = _score_and_store(con, Path(posts), model, opts, engine, progress, timings)
        problems, total = image_problems(con, batch.ids)
    finally:
        con.close()
    out_path = write_predictions(batch.file_table(), Path(opts.out)) if opts.out else None
    seconds = time.perf_counter() - t0
    table = batch.table
    vs = table["vs_usual"]
    examples = [batch.example(i) for i in range(min(5, len(vs)))]
    order = np.argsort(-vs, kind="mergesort")
    above_usual = [batch.example(int(i)) for i in order[:EXTREMES] if vs[i] > 1]
    below_usual = [batch.example(int(i)) for i in order[::-1][:EXTREMES] if vs[i] < 1]
    cold = batch.cold
    users = batch.frame.username
    return ScoreResult(
        model.card["model_id"], len(batch.ids), len(set(users[cold]) - set(users[~cold])),
        int(np.sum(cold)), int(np.sum(~batch.image_used)), batch.masked(), model.providers[0], model.providers,
        len(batch.ids) / seconds if seconds else 0.0,
        len(batch.ids) / timings["onnxruntime_s"] if timings.get("onnxruntime_s") else 0.0, seconds, ing.rejected,
        examples, out_path, timings, above_usual, below_usual, model.note, not opts.what_if, batch_id,
        problems, total, rank_alternatives(batch) if opts.what_if else [], batch.far_dates(),
        [d.as_json() for d in batch.drift] if batch.drift is not None else None,
        drift_summary(batch.drift, len(batch.ids)), kept,
    )


# ------------------------------------------------------------------------------------------- the model

@dataclass
class Model:
    """A verified model card, its preprocessing and its predictor on the chosen engine."""

    dir: Path
    card: dict
    pre: Preprocessor
    predict: Any                             # igcli.engines.Predictor
    providers: list[str]
    note: str


def load_model(con: duckdb.DuckDBPyConnection, opts: ScoreOptions, engine: Engine) -> Model:
    model_dir, note = choose_model(con, opts.model, Path(opts.exports_dir))
    card = load_card(model_dir)
    pre = Preprocessor.from_card(card)
    if pre.meta_names() != card["feature_names"]:
        raise ModelError(f"{model_dir}: the card's feature names do not match its preprocessing: re-export")
    predict = engine.predictor(model_dir / "model.onnx", opts.device)
    return Model(model_dir, card, pre, predict, list(predict.providers), note)


def choose_model(con: duckdb.DuckDBPyConnection, model: str, exports_dir: Path) -> tuple[Path, str]:
    """The model directory ``model`` names, and why it is the one: ``best`` is the model ``igcli train`` chose
    for this store (its runs table), else the latest export; ``latest``, an id or a directory as named."""
    if model != "best":
        return resolve_model_dir(model, exports_dir), "latest" if model == "latest" else "as named"
    chosen = chosen_model(con)
    if chosen is not None:
        path = exports_dir / chosen
        if (path / "model_card.json").is_file():
            return resolve_model_dir(path, exports_dir), "chosen by train as best for this store"
    return resolve_model_dir("latest", exports_dir), "latest (train has chosen none for this store)"


def _check_featurized(con: duckdb.DuckDBPyConnection, db: Path | str) -> None:
    if not con.execute("SELECT count(*) FROM feature_state").fetchall()[0][0]:
        raise StoreError(f"the store {db} has no features yet, so no model was trained on it: check --db, or "
                         "run `igcli ingest POSTS`, `igcli featurize` and `igcli train` first")


# ----------------------------------------------------------------------------------------- one batch

@dataclass
class Batch:
    """The predictions of a batch of posts, before anything is stored."""

    ids: list[str]
    frame: Any                               # igcli.features.frames.Frame
    inputs: dict[str, np.ndarray]
    table: dict[str, np.ndarray]             # post_id and the prediction columns, in the frame's order
    model_id: str
    scored_at: Any
    batch_id: str | None = None
    drift: list | None = None                # igcli.model.explain.InputDrift per input (None: no distribution)

    @property
    def cold(self) -> np.ndarray:
        return np.asarray(self.frame.cols["no_history"]) > 0

    @property
    def image_used(self) -> np.ndarray:
        used = np.isfinite(self.frame.cols["brightness"])
        for mask in ("aesthetics_mask", "objects_mask"):
            if mask in self.inputs:
                used = used | (self.inputs[mask][:, 0] > 0)
        return used

    def masked(self) -> dict[str, int]:
        return {b: int(np.sum(self.inputs[f"{b}_mask"][:, 0] == 0)) for b in ("objects", "aesthetics")
                if f"{b}_mask" in self.inputs}

    def far_dates(self) -> list[str]:
        """A line per post dated more than ``FAR_DAYS`` after its user's previous post (the first few)."""
        gap = np.asarray(self.frame.cols["days_since_prev"])
        far = np.flatnonzero(np.nan_to_num(gap, nan=0.0) > FAR_DAYS)
        return [f"{self.ids[i]} is dated {gap[i] / 365.25:.1f} years after @{self.frame.username[i]}'s previous "
                f"post: check its posted_at" for i in far[:PROBLEMS_SHOWN]]

    def example(self, i: int) -> dict:
        t = self.table
        return {"post_id": str(t["post_id"][i]), "username": str(self.frame.username[i]),
                "predicted_likes": round(float(t["predicted_likes"][i])),
                "p10_likes": round(float(t["p10_likes"][i])), "p90_likes": round(float(t["p90_likes"][i])),
                "usual_likes": round(float(t["usual_likes"][i])), "vs_usual": round(float(t["vs_usual"][i]), 3),
                "drivers": describe({g: float(t[f"effect_{g}"][i]) for g in GROUPS})}

    def file_table(self) -> pa.Table:
        """The rows of ``--out``: ``FILE_COLUMNS``, likes rounded to whole likes."""
        t, n = self.table, len(self.ids)
        cols = {
            "post_id": pa.array(t["post_id"].tolist(), pa.string()),
            "username": pa.array(self.frame.username.tolist(), pa.string()),
            "posted_at": pa.array(self.frame.posted_at.astype("datetime64[us]"), pa.timestamp("us")),
            **{c: pa.array(np.rint(t[c]).astype(np.int64)) for c in ("predicted_likes", "p10_likes", "p90_likes",
                                                                     "usual_likes")},
            "vs_usual": pa.array(np.round(t["vs_usual"], 3)),
            "cold_start": pa.array(self.cold),
            "image_used": pa.array(self.image_used),
            "model_id": pa.array([self.model_id] * n, pa.string()),
            "predicted_log_likes": pa.array(np.round(t["predicted_log_likes"], 4)),
            "scored_at": pa.array([self.scored_at] * n, pa.timestamp("us")),
            "batch_id": pa.array([self.batch_id] * n, pa.string()),
            # the drivers at full precision: they multiply to the stored (unrounded) prediction
            "reference_likes": pa.array(t["reference_likes"]),
            **{f"effect_{g}": pa.array(t[f"effect_{g}"]) for g in GROUPS},
        }
        return pa.table({c: cols[c] for c in FILE_COLUMNS})


def predict_posts(con: duckdb.DuckDBPyConnection, ids: list[str], model: Model, opts: ScoreOptions,
                  engine: Engine, progress, timings: dict[str, float]) -> Batch:
    """Image features, point-in-time features and the model's quantiles (and usual likes) of the stored posts
    ``ids``; nothing is written but image feature rows (a cache keyed by content)."""
    t1 = time.perf_counter()
    frame = serving_frame(con, model.card, ids, opts, engine, progress)
    timings["features_s"] = timings.get("features_s", 0.0) + time.perf_counter() - t1
    inputs = model.pre.transform(frame)
    post_ids = frame.post_id.tolist()
    runs = _driver_runs(model.predict, post_ids, con)
    neutral = Recorder(runs[-1])                                      # its pass serves the drivers
    t2 = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="igcli-usual") as side:
        # on two streams (the CPU) usual_likes' pass runs beside the prediction's, as the drivers' two paths do: two
        # 1-thread sessions take the pair in less time than one 2-thread session taking them in turn
        beside = side.submit(usual_log_likes, model.card, model.pre, inputs, neutral) if len(runs) > 1 else None
        quantiles = runs[0](inputs).astype(np.float64)
        ort_s = time.perf_counter() - t2
        usual = beside.result() if beside else usual_log_likes(model.card, model.pre, inputs, neutral)
    timings["onnxruntime_s"] = timings.get("onnxruntime_s", 0.0) + ort_s
    timings["usual_s"] = timings.get("usual_s", 0.0) + time.perf_counter() - t2 - ort_s   # beyond the prediction
    t3 = time.perf_counter()
    # on an engine whose every call is a job (Ray) the drivers' passes go in one call
    why = drivers(model.card, model.pre, inputs, runs, quantiles[:, 1],
                  known={CONTENT: neutral.last[:, 1]},
                  predict_all=None if engine.name == "local" else one_call(
                      lambda x, i: model.predict(x, i, con), post_ids))
    timings["drivers_s"] = timings.get("drivers_s", 0.0) + time.perf_counter() - t3
    table = {
        "post_id": np.asarray(frame.post_id, dtype=object),
        "predicted_log_likes": quantiles[:, 1],
        "predicted_likes": np.exp(quantiles[:, 1]),
        "p10_likes": np.exp(quantiles[:, 0]),
        "p90_likes": np.exp(quantiles[:, 2]),
        "usual_likes": np.exp(usual),
        "vs_usual": np.exp(quantiles[:, 1] - usual),
        **why.columns(),
        "likes_known": frame.likes >= 0,
        "user_mean_log_likes": frame.cols["hist_mean"],
    }
    return Batch(post_ids, frame, inputs, table, model.card["model_id"], store.utcnow())


def serving_frame(con: duckdb.DuckDBPyConnection, card: dict, ids: list[str], opts: ScoreOptions, engine: Engine,
                  progress=None):
    """What the model of ``card`` is fed for the stored posts ``ids``: their missing image features computed,
    then the serving read (``igcli.features.frames.serving_batch``)."""
    ensure_image_features(con, card, opts, engine, progress)
    with store.transaction(con):
        return serving_batch(con, card, ids)


def _driver_runs(predict, pids: list[str], con) -> list:
    """The model for passes that run side by side (the prediction and usual_likes', then the drivers' two paths):
    one callable per stream of the engine (the local engine: two sessions on the CPU, ``streams``), else the
    predictor itself."""
    streams = predict.streams() if hasattr(predict, "streams") else [predict]
    return [lambda x, p=p: p(x, pids, con) for p in streams]


def _ingest(con, posts: Path, opts: ScoreOptions, progress, timings: dict[str, float]):
    t = time.perf_counter()
    ing = ingest_posts(posts, con=con, images_dir=opts.images_dir, keep_ids=True, progress=progress)
    timings["ingest_s"] = timings.get("ingest_s", 0.0) + time.perf_counter() - t
    if not ing.post_ids:
        raise InputError(f"no post of {posts} could be loaded ({ing.rejected} rejected): see `igcli status`")
    return ing


def _score_and_store(con, posts: Path, model: Model, opts: ScoreOptions, engine: Engine, progress,
                     timings: dict[str, float]):
    ing = _ingest(con, posts, opts, progress, timings)
    batch = predict_posts(con, ing.post_ids, model, opts, engine, progress, timings)
    batch.batch_id = ing.ingest_id
    t = time.perf_counter()
    batch.drift = batch_drift(model.card, batch.inputs)
    timings["drift_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # numpy columns into DuckDB (igcli.store.temp_table says why not pyarrow); model_id, scored_at and batch_id
    # are the same on every row
    stored = OUTPUT_COLUMNS + RECORD_COLUMNS
    row_sql = (f"SELECT {', '.join(stored)} FROM (SELECT *, $model_id::VARCHAR AS model_id, "
               "$now::TIMESTAMP AS scored_at, $batch::VARCHAR AS batch_id FROM igc_pred)")  # our constants
    row_params = {"model_id": batch.model_id, "now": batch.scored_at, "batch": batch.batch_id}
    kept = 0
    with store.transaction(con):
        con.register("igc_pred", batch.table)
        try:
            if batch.table["likes_known"].any():   # keep what this model predicted before the likes were known
                kept = con.execute(f"SELECT count(*) FROM ({row_sql}) n WHERE {KEEP_EARLIER}", row_params
                                   ).fetchall()[0][0]
            keep = f"WHERE NOT ({KEEP_EARLIER})" if kept else ""
            con.execute(f"INSERT OR REPLACE INTO predictions ({', '.join(stored)}) SELECT * FROM ({row_sql}) n "
                        f"{keep}", row_params)
        finally:
            con.unregister("igc_pred")
        record_batch(con, batch.model_id, batch.scored_at, str(posts.resolve()), len(batch.ids), batch.drift)
        store.fault_point("score.before_commit")
    timings["write_s"] = time.perf_counter() - t
    return batch, ing, ing.ingest_id, kept


# --------------------------------------------------------------------------------------------- what-if

def _what_if(con, posts: Path, model: Model, opts: ScoreOptions, engine: Engine, progress,
             timings: dict[str, float]):
    """Each row scored against the stored history alone, in rounds of rows that cannot see each other; every
    round in a transaction that is rolled back, so the store is left as it was."""
    with store.scratch(con):
        ing = _ingest(con, posts, opts, progress, timings)
        keyed = con.execute("SELECT post_id, username, hashtags, source_line FROM posts WHERE post_id IN "
                            "(SELECT unnest(?::VARCHAR[]))", [ing.post_ids]).fetchall()
    by_tags = model.card["feature_params"].get("hashtag_source", "store-frequency") == "store-frequency"
    rounds = what_if_rounds([(pid, user, _tags(tags) if by_tags else ()) for pid, user, tags, _ in keyed])
    line_of = {pid: line for pid, _, _, line in keyed}
    images_dir = Path(opts.images_dir) if opts.images_dir else posts.parent
    parts = []
    with tempfile.TemporaryDirectory(prefix="igcli-whatif-") as tmp:
        for n, ids in enumerate(rounds):
            part = write_rows(posts, sorted(line_of[pid] for pid in ids), Path(tmp) / f"round-{n}{posts.suffix}")
            with store.scratch(con):
                round_ing = ingest_posts(part, con=con, images_dir=images_dir, keep_ids=True)
                parts.append(predict_posts(con, round_ing.post_ids, model, replace(opts, images_dir=images_dir),
                                           engine, None, timings))
    batch = concat_batches(parts)
    batch.drift = batch_drift(model.card, batch.inputs)      # the whole file's inputs, not a round's
    return batch, ing


def _tags(hashtags: str | None) -> tuple[str, ...]:
    return tuple(sorted({t.lstrip("#").lower() for t in (hashtags or "").split() if t.lstrip("#")}))


def what_if_rounds(rows: list[tuple[str, str, tuple[str, ...]]]) -> list[list[str]]:
    """Post ids in rounds: no two posts of a round share a user or a tag (greedy, in input order)."""
    rounds: list[tuple[list[str], set[str], set[str]]] = []
    for pid, user, tags in rows:
        for ids, users, used in rounds:
            if user not in users and not used.intersection(tags):
                ids.append(pid)
                users.add(user)
                used.update(tags)
                break
        else:
            rounds.append(([pid], {user}, set(tags)))
    return [ids for ids, _, _ in rounds]


def write_rows(source: Path, lines: list[int], dest: Path) -> Path:
    """A copy of ``source`` with its header and the records starting at ``lines`` (its physical line numbers,
    as ``posts.source_line`` records them; a Parquet file's row numbers), for one what-if round."""
    with open_input(source, "posts file") as src:      # read literally, as ingest reads it
        if source.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(src.name)
            pq.write_table(table.take(pa.array([line - 1 for line in lines], pa.int64())), dest)
            return dest
        encoding = ENCODINGS[detect_encoding(Path(src.name), None)]
        wanted = set(lines)
        with open(src.name, encoding=encoding, newline="") as fh, open(dest, "w", encoding="utf-8",
                                                                       newline="") as out:
            reader, writer = csv.reader(fh), csv.writer(out)
            start = 1
            for i, record in enumerate(reader):
                if i == 0 or start in wanted:
                    writer.writerow(record)
                start = reader.line_num + 1
    return dest


def concat_batches(parts: list[Batch]) -> Batch:
    """The rounds of a what-if run as one batch, in round order."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    frame = first.frame.concat([p.frame for p in parts[1:]])
    inputs = {k: np.concatenate([p.inputs[k] for p in parts]) for k in first.inputs}
    table = {k: np.concatenate([p.table[k] for p in parts]) for k in first.table}
    return Batch([i for p in parts for i in p.ids], frame, inputs, table, first.model_id, first.scored_at)


def rank_alternatives(batch: Batch) -> list[dict]:
    """Per user, their alternatives best first: ``{"username", "alternatives": [example, ...]}``."""
    by_user: dict[str, list[int]] = {}
    for i, u in enumerate(batch.frame.username):
        by_user.setdefault(str(u), []).append(i)
    pred = batch.table["predicted_likes"]
    return [{"username": u, "alternatives": [batch.example(i) for i in sorted(rows, key=lambda i: -pred[i])]}
            for u, rows in sorted(by_user.items())]


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
