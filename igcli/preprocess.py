"""From stored features to model inputs, for both `train` and `score`.

``load_frame`` reads the feature rows of some posts from the store (metadata, weight-free image quality,
object classes, aesthetics embeddings). ``Preprocessor`` is fitted on the training part only and then
travels in the model card: ``Preprocessor.from_card(card).transform(frame)`` rebuilds exactly the inputs
the model was trained on. Scaling constants live in the model itself (see ``igcli.model``); here we only
apply fixed transforms (log1p), one-hot encodings and family vectors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import duckdb
import numpy as np

from igcli.errors import FeatureMismatch
from igcli.families import DEFAULT_FAMILY_DEPTH, family_table
from igcli.imagequality import QUALITY_FEATURES
from igcli.store import float_column, temp_table

# (name, transform) of each numeric input of the metadata branch, in order.
NUMERIC = (
    ("hist_n", "log1p"), ("hist_mean", "none"), ("hist_median", "none"), ("hist_std", "none"),
    ("hist_last5", "none"), ("hist_last10", "none"), ("hist_decayed", "none"),
    ("days_since_prev", "log1p"), ("days_since_first", "log1p"),
    ("followers", "log1p"), ("following", "log1p"), ("user_post_count", "log1p"),
    ("caption_len", "log1p"), ("n_hashtags", "log1p"), ("n_mentions", "log1p"), ("hashtag_weight", "log1p"),
)
QUALITY = tuple((q, "log1p" if q in ("sharpness", "colorfulness") else "none")
                for q in QUALITY_FEATURES if q != "face_count")
FLAGS = ("no_history", "hist_std_missing", "has_image_quality")
# Columns of the newer feature groups (igcli.features DYNAMICS_FEATURES / CAPTION_FEATURES) that are counts
# or durations: log1p like the others. The groups are used when the store has them.
_LOG1P_EXTRA = {"days_since_last_liked", "n_posts_before", "posts_last30d", "tag_perf_n", "n_emoji",
                "n_question", "n_exclaim", "n_words", "n_lines"}
# What "this post's content" means for usual_likes: inputs set to their training mean (igcli.score).
CONTENT_COLUMNS = frozenset({"caption_len", "n_hashtags", "n_mentions", "hashtag_weight", "tag_perf", "tag_perf_n",
                             "tag_novel_frac", "has_image_quality"} | {q for q, _ in QUALITY})


def extra_numeric() -> list[tuple[str, str]]:
    """(name, transform) of the optional feature groups this igcli's featurize defines."""
    from igcli import features

    names = list(getattr(features, "DYNAMICS_FEATURES", ())) + list(getattr(features, "CAPTION_FEATURES", ()))
    return [(n, "log1p" if n in _LOG1P_EXTRA else "none") for n in names]


def content_columns() -> frozenset[str]:
    from igcli import features

    return CONTENT_COLUMNS | frozenset(getattr(features, "CAPTION_FEATURES", ()))
CATEGORICAL = ("month", "weekday", "hour_group")
OTHER_FAMILY = "other"
# Relative history: the user's recent / extreme levels as differences from their history mean (the anchor the
# model corrects), so the head sees "recent posts did better than usual" directly. Computed here from stored
# columns, for train and score alike; NaN where either side is missing.
RELATIVE_TO = "hist_mean"
RELATIVE = ("hist_median", "hist_last5", "hist_last10", "hist_decayed", "h_last1", "h_max", "h_min")
# The history trend extrapolated to the post: h_slope (per 30 days) times the days from the middle of the liked
# history (approximated as halfway between the first post and the last liked one) to the post.
SLOPE_AT_NOW = "rel_slope_at_now"


def relative_columns(cols: dict[str, np.ndarray], bases: list[str]) -> dict[str, np.ndarray]:
    """``rel_<X>`` = X - hist_mean for each of ``bases`` (and ``rel_slope_at_now`` when listed)."""
    out = {}
    for b in bases:
        if b == SLOPE_AT_NOW:
            mid = 0.5 * (cols["days_since_first"] + cols["days_since_last_liked"])
            out[b] = cols["h_slope"] / 30.0 * mid
        else:
            out[f"rel_{b}"] = cols[b] - cols[RELATIVE_TO]
    return out


def relative_columns_names(bases: list[str]) -> list[str]:
    return [b if b == SLOPE_AT_NOW else f"rel_{b}" for b in bases]


def _relative_bases(cols: dict) -> list[str]:
    bases = [b for b in RELATIVE if b in cols]
    if {"h_slope", "days_since_first", "days_since_last_liked"} <= set(cols):
        bases.append(SLOPE_AT_NOW)
    return bases


# Inputs unknown (or meaningless) for a post whose user has no liked history: left out of the cold-start prior.
_HISTORY_PREFIXES = ("hist_", "days_since_", "rel_", "h_", "tag_perf", "tag_novel")
_HISTORY_NAMES = {"n_posts_before", "posts_last30d", "no_history", "hist_std_missing"}


def is_history_input(name: str) -> bool:
    return name.startswith(_HISTORY_PREFIXES) or name in _HISTORY_NAMES


@dataclass
class Frame:
    """Column arrays for a set of posts, aligned by row."""

    post_id: np.ndarray
    username: np.ndarray
    posted_at: np.ndarray
    ln_likes: np.ndarray                      # NaN where likes are unknown or 0
    likes: np.ndarray                         # -1 where unknown
    cols: dict[str, np.ndarray]               # numeric metadata + quality + categorical, float64 with NaN
    feature_params: dict                      # hashtag_source, half_life_days, leaky_user_stats
    classes: list[list[tuple[str, float]]] | None = None   # per row: [(wnid, prob), ...]
    embedding: np.ndarray | None = None        # (N, D) float32, NaN rows where missing
    nima_mean: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.post_id)

    def take(self, idx: np.ndarray) -> Frame:
        return Frame(
            self.post_id[idx], self.username[idx], self.posted_at[idx], self.ln_likes[idx], self.likes[idx],
            {k: v[idx] for k, v in self.cols.items()}, self.feature_params,
            [self.classes[i] for i in idx] if self.classes is not None else None,
            self.embedding[idx] if self.embedding is not None else None,
            self.nima_mean[idx] if self.nima_mean is not None else None,
        )


def _register_ids(con: duckdb.DuckDBPyConnection, post_ids: list[str] | None, features_table: str) -> str:
    """SQL selecting the wanted post ids: every row of ``features_table``, or the registered ``post_ids``."""
    if post_ids is None:
        return f"SELECT post_id FROM {features_table}"  # one of our two table names, checked by the caller
    temp_table(con, "igc_ids", {"post_id": ("VARCHAR", post_ids)})
    return "SELECT post_id FROM igc_ids"


def _posts_of(con: duckdb.DuckDBPyConnection, post_ids: list[str] | None, ids_sql: str) -> str:
    """The table to join for the posts' image paths: ``posts``, or for a list of ids the temp table
    ``igc_frame_posts`` of those posts alone, found by ``post_key`` (one integer column) and fetched by rowid,
    so a batch does not join every ``post_id`` string of a large store. When the keys do not find every post
    (a store whose keys are stale or missing until its next ingest), ``posts`` as before."""
    if post_ids is None:
        return "posts"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE igc_frame_rids AS
                    SELECT rowid AS rid FROM posts WHERE post_key IN (SELECT hash(post_id) FROM ({ids_sql}))""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE igc_frame_posts AS
                    SELECT post_id, image_path FROM posts WHERE rowid IN (SELECT rid FROM igc_frame_rids)
                    AND post_id IN ({ids_sql})""")
    found = con.execute("SELECT count(DISTINCT post_id) FROM igc_frame_posts").fetchall()[0][0]
    return "igc_frame_posts" if found == len(set(post_ids)) else "posts"


def load_frame(
    con: duckdb.DuckDBPyConnection,
    post_ids: list[str] | None = None,
    objects: dict | None = None,
    aesthetics: dict | None = None,
    features_table: str = "post_features",
) -> Frame:
    """Feature rows of ``post_ids`` (all featurized posts when None), in the store's post order.

    ``objects``: {"backbone": ..., "weights_fp": ...} ('precomputed' matches every precomputed file);
    ``aesthetics``: {"backbone": ..., "weights_fp": ...}. None leaves that branch out.
    """
    if features_table not in ("post_features", "pf_new"):
        raise ValueError(f"unknown features table {features_table!r}")
    ids_sql = _register_ids(con, post_ids, features_table)
    posts_sql = _posts_of(con, post_ids, ids_sql)
    has_pf = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [features_table]).fetchall()[0][0]
    if not has_pf:
        raise FeatureMismatch("the store has no features yet: run `igcli featurize` first")
    q_cols = ", ".join(f"q.{q}" for q, _ in QUALITY)
    stored = {d[0] for d in con.execute(f"SELECT * FROM {features_table} LIMIT 0").description}
    extra = [c for c, _ in extra_numeric() if c in stored]
    num_cols = ", ".join(f"f.{c}" for c in [c for c, _ in NUMERIC] + extra)
    tbl = con.sql(
        f"""SELECT f.post_id, f.username, f.posted_at, f.likes, f.ln_likes, {num_cols},
                   f.no_history, f.month, f.weekday, f.hour_group, {q_cols},
                   f.hashtag_source, f.half_life_days, f.leaky_user_stats
            FROM {features_table} f JOIN ({ids_sql}) ids USING (post_id)
            JOIN {posts_sql} p USING (post_id)
            LEFT JOIN images i ON i.path = p.image_path AND i.status = 'ok'
            LEFT JOIN image_quality q ON q.sha256 = i.sha256
            ORDER BY f.posted_at, f.post_id"""  # column names are constants of this module
    ).fetchnumpy()  # numpy, not pyarrow's to_numpy: see igcli.store.temp_table
    n = len(tbl["post_id"])
    if post_ids is not None and n < len(set(post_ids)):
        raise FeatureMismatch(
            f"{len(set(post_ids)) - n} of the posts have no features: run `igcli featurize` first")

    def num(name: str) -> np.ndarray:
        return float_column(tbl[name])

    cols = {c: num(c) for c in [c for c, _ in NUMERIC] + extra}
    cols.update({q: num(q) for q, _ in QUALITY})
    cols.update({c: num(c) for c in CATEGORICAL})
    cols["no_history"] = num("no_history")
    params = {}
    if n:
        values = {k: np.ma.asarray(tbl[k]).tolist() for k in ("hashtag_source", "half_life_days", "leaky_user_stats")}
        params = {k: v[0] for k, v in values.items()}
        for k, v in values.items():
            if len(set(v)) > 1:
                raise FeatureMismatch(f"stored features mix several {k} values: rerun `igcli featurize`")
    likes = num("likes")
    frame = Frame(
        np.asarray(tbl["post_id"], dtype=object),
        np.asarray(tbl["username"], dtype=object),
        np.asarray(tbl["posted_at"]),
        np.where(likes > 0, np.log(np.where(likes > 0, likes, 1)), np.nan),
        np.where(np.isnan(likes), -1, likes),
        cols, params,
    )
    order = {pid: i for i, pid in enumerate(frame.post_id)}
    if objects is not None:
        frame.classes = [[] for _ in range(n)]
        if objects["backbone"] == "precomputed":
            rows = con.execute(
                f"""SELECT c.post_id, c.wnid, c.prob FROM image_classes c JOIN ({ids_sql}) ids USING (post_id)
                    WHERE c.backbone = 'precomputed' ORDER BY c.post_id, c.rank"""
            ).fetchall()
        else:
            rows = con.execute(
                f"""SELECT p.post_id, c.wnid, c.prob FROM {posts_sql} p JOIN ({ids_sql}) ids USING (post_id)
                    JOIN images i ON i.path = p.image_path AND i.status = 'ok'
                    JOIN image_classes c ON c.sha256 = i.sha256 AND c.post_id IS NULL
                     AND c.backbone = ? AND c.weights_fp = ?
                    ORDER BY p.post_id, c.rank""",
                [objects["backbone"], objects["weights_fp"]],
            ).fetchall()
        for pid, wnid, prob in rows:
            frame.classes[order[pid]].append((wnid, float(prob)))
    if aesthetics is not None:
        rows = con.execute(
            f"""SELECT p.post_id, e.embedding, e.nima_mean FROM {posts_sql} p JOIN ({ids_sql}) ids USING (post_id)
                JOIN images i ON i.path = p.image_path AND i.status = 'ok'
                JOIN image_embeddings e ON e.sha256 = i.sha256 AND e.backbone = ? AND e.weights_fp = ?""",
            [aesthetics["backbone"], aesthetics["weights_fp"]],
        ).fetchall()
        dim = aesthetics.get("dim") or (len(rows[0][1]) if rows else 0)
        emb = np.full((n, dim), np.nan, dtype=np.float32)
        nima = np.full(n, np.nan)
        for pid, vec, nm in rows:
            emb[order[pid]] = vec
            if nm is not None:
                nima[order[pid]] = nm
        frame.embedding, frame.nima_mean = emb, nima
    if post_ids is not None:
        con.execute("DROP TABLE IF EXISTS igc_ids; DROP TABLE IF EXISTS igc_frame_rids; "
                    "DROP TABLE IF EXISTS igc_frame_posts")
    return frame


def _apply(x: np.ndarray, transform: str) -> np.ndarray:
    if transform == "log1p":
        return np.log1p(np.clip(x, 0, None))
    return x


@dataclass
class Preprocessor:
    """Fixed transforms and vocabularies; ``fit`` sees the training rows only."""

    numeric: list[tuple[str, str]] = field(default_factory=list)
    categories: dict[str, list[int]] = field(default_factory=dict)
    families: list[str] = field(default_factory=list)
    family_depth: int = DEFAULT_FAMILY_DEPTH
    embedding_dim: int = 0
    use_nima: bool = False
    objects_mean: list[float] = field(default_factory=list)   # training mean of the objects input (usual)
    relative: list[str] = field(default_factory=list)         # bases of the rel_* inputs (relative_columns)

    @classmethod
    def fit(cls, frame: Frame, branches: tuple[str, ...], family_depth: int = DEFAULT_FAMILY_DEPTH,
            min_family_count: int = 5, relative: bool = True) -> Preprocessor:
        numeric = list(NUMERIC) + list(QUALITY) + [(c, tf) for c, tf in extra_numeric() if c in frame.cols]
        cats = {c: sorted({int(v) for v in frame.cols[c] if not np.isnan(v)}) for c in CATEGORICAL}
        fams: list[str] = []
        if "objects" in branches and frame.classes is not None:
            table = family_table(family_depth)
            counts = Counter(table.get(w, OTHER_FAMILY) for row in frame.classes for w, _ in row)
            fams = sorted(f for f, n in counts.items() if n >= min_family_count and f != OTHER_FAMILY)
            fams.append(OTHER_FAMILY)
        dim, nima = 0, False
        if "aesthetics" in branches and frame.embedding is not None:
            dim = frame.embedding.shape[1]
            nima = bool(frame.nima_mean is not None and np.isfinite(frame.nima_mean).any())
        rel = _relative_bases(frame.cols) if relative else []
        return cls(numeric, cats, fams, family_depth, dim, nima, relative=rel)

    # ------------------------------------------------------------------ names, in input order
    def meta_names(self) -> list[str]:
        names = [n for n, _ in self.numeric] + list(relative_columns_names(self.relative)) + list(FLAGS)
        for c, vocab in self.categories.items():
            names += [f"{c}={v}" for v in vocab]
        return names

    def transform(self, frame: Frame) -> dict[str, np.ndarray]:
        """Model inputs: ``meta`` (N, n_meta) with NaN for missing values (the model imputes and scales),
        and where fitted ``objects`` (N, F) + ``objects_mask`` (N, 1), ``aesthetics`` (N, D) +
        ``aesthetics_mask`` (N, 1)."""
        n = len(frame)
        lacking = [name for name, _ in self.numeric if name not in frame.cols]
        if lacking:
            raise FeatureMismatch(f"the model needs features {', '.join(lacking[:4])} that the store lacks: "
                                  "run `igcli featurize --rebuild` with this igcli")
        parts = [_apply(frame.cols[name], tf) for name, tf in self.numeric]
        parts += list(relative_columns(frame.cols, self.relative).values())
        hist_std = frame.cols["hist_std"]
        quality_present = np.isfinite(frame.cols["brightness"])
        parts += [frame.cols["no_history"], (~np.isfinite(hist_std)).astype(np.float64),
                  quality_present.astype(np.float64)]
        for c, vocab in self.categories.items():
            vals = frame.cols[c]
            parts += [(vals == v).astype(np.float64) for v in vocab]
        out = {"meta": np.stack(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)}
        if self.families:
            if frame.classes is None:
                raise FeatureMismatch("the model needs object classes but none were loaded")
            table = family_table(self.family_depth)
            index = {f: i for i, f in enumerate(self.families)}
            other = index[OTHER_FAMILY]
            obj = np.zeros((n, len(self.families)), dtype=np.float32)
            for r, row in enumerate(frame.classes):
                for wnid, prob in row:
                    obj[r, index.get(table.get(wnid, OTHER_FAMILY), other)] += prob
            out["objects"] = obj
            out["objects_mask"] = np.array([[1.0 if row else 0.0] for row in frame.classes], dtype=np.float32)
        if self.embedding_dim:
            if frame.embedding is None:
                raise FeatureMismatch("the model needs aesthetics embeddings but none were loaded")
            emb = frame.embedding
            if emb.shape[1] != self.embedding_dim:
                raise FeatureMismatch(
                    f"aesthetics embeddings have {emb.shape[1]} dims, the model expects {self.embedding_dim}")
            present = np.isfinite(emb).all(axis=1)
            feats = np.where(present[:, None], emb, 0.0)
            if self.use_nima:
                nm = np.where(np.isfinite(frame.nima_mean), frame.nima_mean, 0.0)[:, None]
                feats = np.concatenate([feats, nm], axis=1)
            out["aesthetics"] = feats.astype(np.float32)
            out["aesthetics_mask"] = present.astype(np.float32)[:, None]
        return out

    def to_card(self) -> dict:
        return {"numeric": [list(x) for x in self.numeric], "flags": list(FLAGS), "categories": self.categories,
                "families": self.families, "family_depth": self.family_depth,
                "embedding_dim": self.embedding_dim, "use_nima": self.use_nima, "meta_names": self.meta_names(),
                "objects_mean": [float(v) for v in self.objects_mean], "relative": list(self.relative)}

    @classmethod
    def from_card(cls, card: dict) -> Preprocessor:
        p = card["preprocess"]
        return cls([tuple(x) for x in p["numeric"]], {k: list(v) for k, v in p["categories"].items()},
                   list(p["families"]), int(p["family_depth"]), int(p["embedding_dim"]), bool(p["use_nima"]),
                   [float(v) for v in p.get("objects_mean", [])], list(p.get("relative", [])))

    def usual_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` with this post's content at the training mean: content columns of ``meta`` become NaN
        (the model imputes the training mean), the embedding NaN with its mask on (mean embedding), the
        objects the training mean family vector. History, timing, followers and calendar stay."""
        out = dict(inputs)
        content = content_columns()
        cols = [i for i, name in enumerate(self.meta_names()) if name in content]
        meta = inputs["meta"].copy()
        meta[:, cols] = np.nan
        out["meta"] = meta
        if "aesthetics" in inputs:
            out["aesthetics"] = np.full_like(inputs["aesthetics"], np.nan)
            out["aesthetics_mask"] = np.ones_like(inputs["aesthetics_mask"])
        if "objects" in inputs:
            out["objects"] = np.broadcast_to(np.asarray(self.objects_mean, np.float32),
                                             inputs["objects"].shape).copy()
            out["objects_mask"] = np.ones_like(inputs["objects_mask"])
        return out


def data_fingerprint(con: duckdb.DuckDBPyConnection, post_ids: list[str]) -> str:
    """sha256 over the training rows' ids, targets and feature rows, so a card names its exact data."""
    import hashlib

    temp_table(con, "igc_fp", {"post_id": ("VARCHAR", sorted(post_ids))})
    digest = con.execute(
        """SELECT sha256(string_agg(f.post_id || ':' || coalesce(f.likes::VARCHAR, '') || ':' ||
                  md5(f::VARCHAR), ',' ORDER BY f.post_id))
           FROM (SELECT * EXCLUDE (computed_at) FROM post_features) f JOIN igc_fp USING (post_id)"""
    ).fetchall()[0][0]
    con.execute("DROP TABLE igc_fp")
    return hashlib.sha256((digest or "").encode()).hexdigest()


def available_sources(con: duckdb.DuckDBPyConnection) -> dict[str, list[dict]]:
    """Object-class and embedding sources in the store, most posts first."""
    objects = [
        {"backbone": b, "weights_fp": fp, "random_init": bool(ri), "posts": n}
        for b, fp, ri, n in con.execute(
            """SELECT backbone, CASE WHEN backbone = 'precomputed' THEN 'precomputed' ELSE weights_fp END,
                      bool_or(random_init), count(DISTINCT coalesce(post_id, sha256))
               FROM image_classes GROUP BY 1, 2 ORDER BY 4 DESC"""
        ).fetchall()
    ]
    aesthetics = [
        # Without a NIMA checkpoint the embedding is a classifier's pooled features: say so, not "aesthetics".
        {"backbone": b, "weights_fp": fp, "random_init": bool(ri), "posts": n, "dim": d,
         "kind": "NIMA aesthetics embedding and scores" if nima else "ImageNet embedding"}
        for b, fp, ri, n, d, nima in con.execute(
            """SELECT backbone, weights_fp, bool_or(random_init), count(*), max(len(embedding)),
                      bool_or(nima_mean IS NOT NULL)
               FROM image_embeddings GROUP BY 1, 2 ORDER BY 4 DESC"""
        ).fetchall()
    ]
    # Among sources covering as many posts, rows of this igcli's image geometry first (a store featurized
    # again after the preprocessing changed holds both).
    from igcli.runtime import CROP_SUFFIX

    for sources in (objects, aesthetics):
        sources.sort(key=lambda s: (-s["posts"], CROP_SUFFIX not in s["weights_fp"]))
    return {"objects": objects, "aesthetics": aesthetics}


