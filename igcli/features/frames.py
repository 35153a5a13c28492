"""The two reads of the feature store, by name:

- ``training_frame``: the historical, point-in-time rows of stored posts (``post_features``), with labels;
  what ``train`` fits and evaluates on.
- ``serving_batch``: the rows of posts to score, computed with a model card's feature parameters from the
  stored per-user state plus the batch's own order, written nowhere; what ``score`` feeds the model (and
  ``train``'s warm-holdout test part, scored as ``score`` would).

Both return a ``Frame`` (metadata, weight-free image quality, object classes, aesthetics embeddings).
``Frame.to_arrow`` / ``Frame.from_arrow`` turn one into a pyarrow table and back without changing a value, so a
frame written out (``igcli features``) goes through a model card's preprocessing as the one ``score`` read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from igcli.errors import FeatureMismatch, ModelError
from igcli.features.metadata import FeaturizeOptions, compute_batch
from igcli.features.schema import CATEGORICAL, IMAGE_HISTORY_FEATURES, NUMERIC, QUALITY, extra_numeric
from igcli.store import float_column, run_block, temp_table
from igcli.vision.backbones import Fingerprint


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

    def concat(self, others: list[Frame]) -> Frame:
        """This frame's rows, then those of ``others`` (frames of the same reads)."""
        frames = [self, *others]

        def cat(name: str):
            parts = [getattr(f, name) for f in frames]
            return None if parts[0] is None else np.concatenate(parts)

        return Frame(
            cat("post_id"), cat("username"), cat("posted_at"), cat("ln_likes"), cat("likes"),
            {k: np.concatenate([f.cols[k] for f in frames]) for k in self.cols}, self.feature_params,
            None if self.classes is None else [row for f in frames for row in f.classes],
            cat("embedding"), cat("nima_mean"),
        )

    def take(self, idx: np.ndarray) -> Frame:
        return Frame(
            self.post_id[idx], self.username[idx], self.posted_at[idx], self.ln_likes[idx], self.likes[idx],
            {k: v[idx] for k, v in self.cols.items()}, self.feature_params,
            [self.classes[i] for i in idx] if self.classes is not None else None,
            self.embedding[idx] if self.embedding is not None else None,
            self.nima_mean[idx] if self.nima_mean is not None else None,
        )

    def to_arrow(self) -> pa.Table:
        """One row per post: ``post_id``, ``username``, ``posted_at``, ``likes`` (int64), ``ln_likes``, every
        column of ``cols`` (float64: the values the model's fixed transforms read), then where loaded
        ``objects`` (list of {wnid, prob}), ``embedding`` (fixed-size list of float32) and ``nima_mean``.
        Missing values are nulls; ``feature_params`` travels in the schema metadata (``FEATURE_PARAMS_KEY``).
        Built from numpy buffers and DuckDB, not ``pa.array``, which imports pandas (``igcli.store.temp_table``)."""
        n = len(self)
        strings = _strings_to_arrow({"post_id": self.post_id, "username": self.username})
        names = ["post_id", "username", "posted_at", "likes", "ln_likes", *self.cols]
        arrays = [strings.column("post_id"), strings.column("username"),
                  _primitive(np.asarray(self.posted_at).astype("datetime64[us]").view(np.int64), pa.timestamp("us")),
                  _primitive(self.likes.astype(np.int64), pa.int64(), self.likes >= 0),
                  _floats(self.ln_likes)]
        arrays += [_floats(v) for v in self.cols.values()]
        if self.classes is not None:
            names.append("objects")
            arrays.append(_classes_to_arrow(self.classes))
        if self.embedding is not None:
            emb = np.ascontiguousarray(self.embedding, dtype=np.float32)
            dim = emb.shape[1] if emb.ndim == 2 else 0
            present = np.isfinite(emb).all(axis=1) if dim else np.zeros(n, dtype=bool)
            names.append("embedding")
            arrays.append(pa.FixedSizeListArray.from_arrays(_primitive(emb.reshape(-1), pa.float32()), dim,
                                                            mask=_mask_array(~present)))
            names.append("nima_mean")
            arrays.append(_floats(self.nima_mean if self.nima_mean is not None else np.full(n, np.nan)))
        meta = {FEATURE_PARAMS_KEY: json.dumps(self.feature_params, default=str)}
        return pa.Table.from_arrays(arrays, names=names, metadata=meta)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Frame:
        """The ``Frame`` a table of ``to_arrow`` holds (read back from Parquet or Arrow IPC too): the same values,
        null as NaN (``likes``: -1), ready for ``Preprocessor.transform``."""
        lists = [c for c in ("objects", "embedding") if c in table.column_names]
        con = duckdb.connect()
        try:
            con.register("igc_frame", table.drop_columns(lists))
            tbl = con.sql("SELECT * FROM igc_frame").fetchnumpy()
        finally:
            con.close()
        fixed = {"post_id", "username", "posted_at", "likes", "ln_likes", "nima_mean"}
        missing = sorted((fixed - {"nima_mean"}) - set(tbl))
        if missing:
            raise FeatureMismatch(f"the table lacks the frame columns {', '.join(missing)}: export it with them "
                                  "(leave --columns out)")
        likes = float_column(tbl["likes"])
        raw = (table.schema.metadata or {}).get(FEATURE_PARAMS_KEY.encode())
        frame = cls(np.asarray(tbl["post_id"], dtype=object), np.asarray(tbl["username"], dtype=object),
                    np.ma.getdata(tbl["posted_at"]).astype("datetime64[us]"), float_column(tbl["ln_likes"]),
                    np.where(np.isnan(likes), -1, likes),
                    {k: float_column(v) for k, v in tbl.items() if k not in fixed},
                    json.loads(raw) if raw else {})
        if "objects" in lists:
            frame.classes = [[(c["wnid"], float(c["prob"])) for c in row or []]
                             for row in table.column("objects").to_pylist()]
        if "embedding" in lists:
            frame.embedding = _fixed_lists_to_numpy(table.column("embedding").combine_chunks())
            frame.nima_mean = float_column(tbl["nima_mean"]) if "nima_mean" in tbl else np.full(len(frame), np.nan)
        return frame


FEATURE_PARAMS_KEY = "igcli.feature_params"


def _strings_to_arrow(columns: dict[str, np.ndarray]) -> pa.Table:
    """Object arrays of Python strings as Arrow string columns, scanned by DuckDB."""
    con = duckdb.connect()
    try:
        con.register("igc_strings", columns)
        return con.sql(f"SELECT {', '.join(columns)} FROM igc_strings").to_arrow_table()  # the caller's names
    finally:
        con.close()


def _mask_array(null: np.ndarray) -> pa.Array | None:
    """A boolean Arrow array from a numpy mask (True = null), or None when nothing is null."""
    if not null.any():
        return None
    return pa.Array.from_buffers(pa.bool_(), len(null), [None, pa.py_buffer(np.packbits(null, bitorder="little"))])


def _primitive(values: np.ndarray, typ: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """A fixed-width Arrow array over ``values``' bytes; ``valid`` False rows are null."""
    values = np.ascontiguousarray(values)
    bitmap = None
    if valid is not None and not valid.all():
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(typ, len(values), [bitmap, pa.py_buffer(values)])


def _floats(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, dtype=np.float64)
    return _primitive(values, pa.float64(), ~np.isnan(values))


def _classes_to_arrow(classes: list[list[tuple[str, float]]]) -> pa.Array:
    """list<struct<wnid, prob>>: each post's classes in rank order (an empty list for none)."""
    offsets = np.zeros(len(classes) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(row) for row in classes])
    wnids = np.empty(int(offsets[-1]), dtype=object)
    wnids[:] = [w for row in classes for w, _ in row]
    probs = np.array([p for row in classes for _, p in row], dtype=np.float64)
    struct = pa.StructArray.from_arrays([_strings_to_arrow({"wnid": wnids}).column("wnid").combine_chunks(),
                                         _primitive(probs, pa.float64())], names=["wnid", "prob"])
    return pa.ListArray.from_arrays(_primitive(offsets, pa.int32()), struct)


def _fixed_lists_to_numpy(arr: pa.FixedSizeListArray) -> np.ndarray:
    """(N, D) float32 of a fixed-size list column of floats, NaN rows (and values) where it is null. Read from
    the buffers: pyarrow's ``fill_null`` and ``to_numpy`` import pandas."""
    dim = arr.type.list_size
    values = arr.values.slice(arr.offset * dim, len(arr) * dim)
    dtype = {pa.float32(): np.float32, pa.float64(): np.float64}.get(values.type)
    if dtype is None:
        raise FeatureMismatch(f"the embedding column holds {values.type}, not floats: export it again")
    flat = np.frombuffer(values.buffers()[1], dtype=dtype, count=values.offset + len(values))[values.offset:]
    out = flat.astype(np.float32).reshape(len(arr), dim)
    if values.null_count:
        out.reshape(-1)[~_valid(values)] = np.nan
    if arr.null_count:
        out[~_valid(arr)] = np.nan
    return out


_NUMBERS = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
            pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.uint64(): np.uint64,
            pa.float32(): np.float32, pa.float64(): np.float64}


def _numpy_column(col: pa.ChunkedArray) -> np.ndarray:
    """A column of a DuckDB result read as Arrow, as ``load_frame`` keeps it: strings as an object array,
    timestamps as datetime64, every other column float64 with NULL as NaN (``float_column``'s values). DuckDB
    hands a result over as Arrow on every thread, where ``fetchnumpy`` converts it on one and masks each column
    with NULLs; the numbers are then read from the Arrow buffers (pyarrow's ``to_numpy`` imports pandas), and a
    float64 column without NULLs is not copied: it comes back read-only (the frame's columns are never written in
    place; ``take`` and ``concat`` make new arrays)."""
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    t, end = arr.type, arr.offset + len(arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        out = np.empty(len(arr), dtype=object)
        out[:] = arr.to_pylist()
        return out
    if pa.types.is_timestamp(t) and t.tz is None:
        out = np.frombuffer(arr.buffers()[1], np.int64, count=end)[arr.offset:].view(f"datetime64[{t.unit}]")
        if arr.null_count:
            out = out.copy()
            out[~_valid(arr)] = np.datetime64("NaT")
        return out
    if pa.types.is_boolean(t):
        bits = np.frombuffer(arr.buffers()[1], np.uint8)
        out = np.unpackbits(bits, count=end, bitorder="little")[arr.offset:].astype(np.float64)
    elif t in _NUMBERS:
        raw = np.frombuffer(arr.buffers()[1], _NUMBERS[t], count=end)[arr.offset:]
        if not arr.null_count:           # a DOUBLE column without NULLs: a read-only view of the Arrow buffer
            return raw.astype(np.float64, copy=False)
        out = raw.astype(np.float64)
    else:                                        # not a type of the frame's query: the slow general way
        return np.array([np.nan if v is None else float(v) for v in arr.to_pylist()], dtype=np.float64)
    if arr.null_count:
        out[~_valid(arr)] = np.nan
    return out


def _valid(arr: pa.Array) -> np.ndarray:
    """The validity bitmap of an array with nulls, as booleans."""
    bits = np.frombuffer(arr.buffers()[0], np.uint8)
    return np.unpackbits(bits, count=arr.offset + len(arr), bitorder="little")[arr.offset:].astype(bool)


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


def training_frame(
    con: duckdb.DuckDBPyConnection,
    post_ids: list[str] | None = None,
    objects: dict | None = None,
    aesthetics: dict | None = None,
) -> Frame:
    """The stored, point-in-time feature rows of ``post_ids`` (all featurized posts when None), with their
    labels, in the store's post order; ``objects`` / ``aesthetics`` as ``load_frame`` takes them."""
    return load_frame(con, post_ids, objects, aesthetics, "post_features")


def serving_batch(con: duckdb.DuckDBPyConnection, card: dict, post_ids: list[str]) -> Frame:
    """The rows ``score`` feeds the model for the stored posts ``post_ids``: metadata features computed with the
    card's parameters from the stored per-user state plus the batch's own order (a post sees the earlier posts
    of its user, never itself or later ones), into the temp table ``pf_new`` (``features.compute_batch``); the
    store is left as featurize made it. The card's image sources as stored. Run it inside a transaction."""
    params = card["feature_params"]
    if params.get("leaky_user_stats"):
        raise ModelError(f"model {card['model_id']} was trained on the paper's leaky user averages "
                         "(benchmark only) and cannot score new posts: train one on point-in-time features")
    source = params.get("hashtag_source", "store-frequency")
    ranking_id = None
    if source.startswith("ranking:"):
        ranking_id = source.split(":", 1)[1]
        known = con.execute("SELECT count(*) FROM hashtag_rankings WHERE ranking_id = ?", [ranking_id]).fetchall()
        if not known[0][0]:
            raise FeatureMismatch("the model's hashtag ranking is not in this store: run `igcli featurize "
                                  "--hashtag-ranking FILE` with the file it was trained with")
    compute_batch(con, FeaturizeOptions(ranking_id=ranking_id, half_life_days=float(params["half_life_days"])),
                  post_ids)
    backbones = card.get("backbones") or {}
    return load_frame(con, post_ids, backbones.get("objects"), backbones.get("aesthetics"), "pf_new")


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
                   f.no_history, f.month, f.weekday, f.hour_group, {q_cols}
            FROM {features_table} f JOIN ({ids_sql}) ids USING (post_id)
            JOIN {posts_sql} p USING (post_id)
            LEFT JOIN images i ON i.path = p.image_path AND i.status = 'ok'
            LEFT JOIN image_quality q ON q.sha256 = i.sha256
            ORDER BY f.posted_at, f.post_id"""  # column names are constants of this module
    ).to_arrow_table()
    tbl = {name: _numpy_column(tbl.column(name)) for name in tbl.column_names}
    n = len(tbl["post_id"])
    if post_ids is not None and n < len(set(post_ids)):
        raise FeatureMismatch(
            f"{len(set(post_ids)) - n} of the posts have no features: run `igcli featurize` first")

    def num(name: str) -> np.ndarray:
        return tbl[name]                          # float64 already (_numpy_column)

    cols = {c: num(c) for c in [c for c, _ in NUMERIC] + extra}
    cols.update({q: num(q) for q, _ in QUALITY})
    cols.update({c: num(c) for c in CATEGORICAL})
    cols["no_history"] = num("no_history")
    params = {}
    if n:
        # the distinct parameter values, not one per row: fetched with every row they took 2.5 s of CPU at 1M posts
        keys = ("hashtag_source", "half_life_days", "leaky_user_stats")
        found = con.execute(f"SELECT DISTINCT {', '.join(keys)} FROM {features_table} f "
                            f"JOIN ({ids_sql}) ids USING (post_id)").fetchall()
        for i, k in enumerate(keys):
            if len({row[i] for row in found}) > 1:
                raise FeatureMismatch(f"stored features mix several {k} values: rerun `igcli featurize`")
        params = dict(zip(keys, found[0], strict=True))
    likes = num("likes")
    frame = Frame(
        tbl["post_id"],
        tbl["username"],
        tbl["posted_at"],
        np.where(likes > 0, np.log(np.where(likes > 0, likes, 1)), np.nan),
        np.where(np.isnan(likes), -1, likes),
        cols, params,
    )
    # row of each post id, for the image rows (a dict of every id: 1.5 s at 1M posts, so only when needed)
    order = {pid: i for i, pid in enumerate(frame.post_id)} if objects is not None or aesthetics is not None else {}
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
        frame.cols.update(image_history_columns(con, frame, aesthetics))
    if post_ids is not None:
        con.execute("DROP TABLE IF EXISTS igc_ids; DROP TABLE IF EXISTS igc_frame_rids; "
                    "DROP TABLE IF EXISTS igc_frame_posts")
    return frame


IMAGE_KERNEL_TEMPERATURE = 0.05     # cosine similarity: 0.05 apart weighs e times less
IMAGE_SHRINK = 2.0                  # img_perf shrunk by n / (n + 2) toward 0 (the history mean)


def _unit_rows(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows scaled to unit length with 0 where missing, which rows exist)."""
    ok = np.isfinite(emb).all(axis=1)
    z = np.where(ok[:, None], emb, 0.0).astype(np.float32)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return np.where(norm > 0, z / np.where(norm > 0, norm, 1.0), 0.0), ok


def image_history_columns(con: duckdb.DuckDBPyConnection, frame: Frame, source: dict) -> dict[str, np.ndarray]:
    """``IMAGE_HISTORY_FEATURES`` of the frame's posts: how the user's earlier liked posts (strictly earlier
    ``posted_at``, likes > 0 in the store now) with a photo of ``source`` did, weighted by how alike the photos
    are. The same function for both reads: a scored post sees the stored likes of its user's earlier posts,
    and none of a post whose likes are unknown (a batch's, or a warm-holdout test post's, hidden)."""
    n = len(frame)
    out = {c: np.full(n, np.nan) for c in IMAGE_HISTORY_FEATURES}
    if not n:
        return out
    temp_table(con, "igc_photo_users", {"username": ("VARCHAR", sorted(set(frame.username.tolist())))})
    params = {"backbone": source["backbone"], "weights_fp": source["weights_fp"]}
    pool = run_block(con, "frames", "photo_history_posts", params).fetchnumpy()
    pid = np.asarray(pool["post_id"], dtype=object)
    pos = {p: i for i, p in enumerate(frame.post_id)}
    emb = np.full((len(pid), frame.embedding.shape[1]), np.nan, np.float32)
    in_frame = np.array([p in pos for p in pid], dtype=bool)
    emb[in_frame] = frame.embedding[[pos[p] for p in pid[in_frame]]]
    fetch = pid[~in_frame & np.asarray(pool["has_embedding"], dtype=bool)]
    if len(fetch):
        temp_table(con, "igc_photo_ids", {"post_id": ("VARCHAR", fetch.tolist())})
        where = {p: i for i, p in enumerate(pid)}
        for p, vec in run_block(con, "frames", "photo_history_embeddings", params).fetchall():
            emb[where[p]] = vec
        con.execute("DROP TABLE IF EXISTS igc_photo_ids")
    con.execute("DROP TABLE IF EXISTS igc_photo_users")
    likes = float_column(pool["likes"])
    y = np.where(likes > 0, np.log(np.where(likes > 0, likes, 1.0)), np.nan)
    unit, has = _unit_rows(emb)
    mine, mine_ok = _unit_rows(frame.embedding)
    users = np.asarray(pool["username"], dtype=object)
    times = np.asarray(pool["posted_at"])
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    span = {u: (int(a), int(b)) for u, a, b in zip(users[starts].tolist(), starts, ends, strict=True)}
    rows_of: dict[str, list[int]] = {}
    for r, u in enumerate(frame.username.tolist()):
        rows_of.setdefault(u, []).append(r)
    for u, all_rows in rows_of.items():
        for c in range(0, len(all_rows), 512):        # (rows, user's posts) blocks stay small for prolific users
            _image_history_block(out, frame, np.asarray(all_rows[c:c + 512]), span[u], times, y, unit, has, mine,
                                 mine_ok)
    return out


def _image_history_block(out, frame, rows, span, times, y, unit, has, mine, mine_ok) -> None:
    a, b = span
    liked = np.isfinite(y[a:b])
    earlier = times[a:b][None, :] < frame.posted_at[rows][:, None]                 # (k, m)
    seen = earlier & liked[None, :]
    n_seen = seen.sum(axis=1)
    mean = np.where(n_seen > 0, (seen * np.nan_to_num(y[a:b])).sum(axis=1) / np.maximum(n_seen, 1), np.nan)
    use = seen & has[a:b][None, :] & mine_ok[rows][:, None]
    k = use.sum(axis=1)
    if not k.any():
        return
    sim = mine[rows] @ unit[a:b].T                                                   # (k, m) cosine
    sim_max = np.where(k > 0, np.where(use, sim, -np.inf).max(axis=1), 0.0)
    w = np.where(use, np.exp(np.minimum(sim - sim_max[:, None], 0.0) / IMAGE_KERNEL_TEMPERATURE), 0.0)
    kernel = (w * np.nan_to_num(y[a:b])).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)
    top = np.nan_to_num(y[a:b])[np.argmax(np.where(use, sim, -np.inf), axis=1)]
    got = k > 0
    out["img_perf"][rows[got]] = ((kernel - mean) * k / (k + IMAGE_SHRINK))[got]
    out["img_top1"][rows[got]] = (top - mean)[got]
    out["img_sim_max"][rows[got]] = sim_max[got]


def data_fingerprint(con: duckdb.DuckDBPyConnection, post_ids: list[str]) -> str:
    """sha256 over the training rows' ids, targets and feature rows, so a card names its exact data."""

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
    for sources in (objects, aesthetics):
        sources.sort(key=lambda s: (-s["posts"], not Fingerprint.parse(s["weights_fp"]).current_geometry))
    return {"objects": objects, "aesthetics": aesthetics}


