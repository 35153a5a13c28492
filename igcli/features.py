"""Featurize: point-in-time metadata features (SQL in ``sql/features.sql``) and image features.

    from igcli.features import FeaturizeOptions, featurize
    result = featurize("igcli.duckdb", FeaturizeOptions(hashtag_ranking="hashtag_ranking.txt"))

Metadata features are raw values (no scaling, no one-hot: those are fitted by ``train`` on the training
part only). Every history value of a post comes from the same user's posts strictly before it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from igcli import store
from igcli.errors import InputError

DEFAULT_HALF_LIFE_DAYS = 30.0

# Feature columns of post_features, by kind. `train` fits scaling / one-hot on these.
HISTORY_FEATURES = ("hist_n", "hist_mean", "hist_median", "hist_std", "hist_last5", "hist_last10",
                    "hist_decayed", "days_since_prev", "days_since_first")
PAPER_FEATURES = ("followers", "following", "user_post_count", "caption_len", "n_hashtags", "n_mentions",
                  "hashtag_weight")
CATEGORICAL_FEATURES = ("month", "weekday", "hour_group")
FLAG_FEATURES = ("no_history",)


@dataclass
class FeaturizeOptions:
    hashtag_ranking: Path | None = None     # one tag per line, most popular first
    ranking_id: str | None = None            # reuse a ranking already in the store (scoring)
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    user_stats_as_of: str = "post"           # "post" (point in time) | "end" (the paper's leak; benchmark only)
    images: object | None = None             # igcli.imagefeatures.ImageFeatureOptions; None = defaults
    skip_images: bool = False


@dataclass
class FeaturizeResult:
    run_id: str
    posts: int
    inserted: int
    updated: int
    unchanged: int
    hashtag_source: str
    leaky_user_stats: bool
    snapshot_choices: dict[str, int]
    no_history: int
    images: object | None = None             # igcli.imagefeatures.ImageFeaturesResult
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0


def load_ranking(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """Store a hashtag ranking file (idempotent per content); returns its id (the file's sha256)."""
    from igcli.util import sha256_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such hashtag ranking file: {path}")
    ranking_id = sha256_file(path)
    if con.execute("SELECT count(*) FROM hashtag_rankings WHERE ranking_id = ?", [ranking_id]).fetchall()[0][0]:
        return ranking_id
    tags, seen = [], set()
    for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        tag = line.strip().lstrip("#").lower()
        if tag and tag not in seen:
            seen.add(tag)
            tags.append(tag)
    if not tags:
        raise InputError(f"hashtag ranking {path} has no tags: one tag per line, most popular first")
    con.register("igc_rank", pa.table({"tag": tags, "rank": list(range(1, len(tags) + 1))}))
    con.execute("INSERT INTO hashtag_rankings SELECT ?, tag, rank FROM igc_rank", [ranking_id])
    con.unregister("igc_rank")
    return ranking_id


def compute_metadata(con: duckdb.DuckDBPyConnection, opts: FeaturizeOptions, users: list[str] | None = None) -> str:
    """Fill the temp table ``pf_new`` with the metadata features of every post of ``users`` (all users when
    None); returns the hashtag source."""
    if opts.user_stats_as_of not in ("post", "end"):
        raise InputError("--user-stats-as-of takes 'post' (point in time) or 'end' (the paper's leak)")
    if not opts.half_life_days > 0:
        raise InputError("--half-life must be a positive number of days")
    ranking_id = opts.ranking_id
    if opts.hashtag_ranking is not None:
        ranking_id = load_ranking(con, opts.hashtag_ranking)
    leaky = opts.user_stats_as_of == "end"
    con.register("igc_users", pa.table({"username": pa.array(users or [], pa.string())}))
    con.execute("CREATE OR REPLACE TEMP TABLE pf_users AS SELECT DISTINCT username FROM igc_users")
    con.unregister("igc_users")
    store.run_block(con, "features", "base", {"all_users": users is None})
    store.run_block(con, "features", "history", {"half_life_days": opts.half_life_days})
    store.run_block(con, "features", "snapshots")
    if ranking_id:
        store.run_block(con, "features", "hashtags_ranked", {"ranking_id": ranking_id})
        source = f"ranking:{ranking_id}"
    else:
        store.run_block(con, "features", "hashtags_store")
        source = "store-frequency"
    store.run_block(con, "features", "assemble",
                    {"hashtag_source": source, "half_life_days": opts.half_life_days, "leaky": leaky})
    return source


def _merge(con: duckdb.DuckDBPyConnection, now) -> tuple[int, int, int]:
    con.execute("CREATE TABLE IF NOT EXISTS post_features AS SELECT *, NULL::TIMESTAMP AS computed_at "
                "FROM pf_new LIMIT 0")
    con.execute("""CREATE OR REPLACE TEMP TABLE pf_changed AS
                   SELECT * FROM pf_new EXCEPT SELECT * EXCLUDE (computed_at) FROM post_features""")
    inserted, updated = con.execute(
        """SELECT count(*) FILTER (WHERE f.post_id IS NULL), count(*) FILTER (WHERE f.post_id IS NOT NULL)
           FROM pf_changed c LEFT JOIN post_features f USING (post_id)"""
    ).fetchall()[0]
    con.execute("DELETE FROM post_features WHERE post_id IN (SELECT post_id FROM pf_changed)")
    con.execute("INSERT INTO post_features SELECT *, ? FROM pf_changed", [now])
    total = con.execute("SELECT count(*) FROM pf_new").fetchall()[0][0]
    return inserted, updated, total - inserted - updated


def featurize(
    db: Path | str = store.DEFAULT_DB,
    opts: FeaturizeOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> FeaturizeResult:
    """Compute metadata features for every post, then image features for images that lack them."""
    opts = opts or FeaturizeOptions()
    t0 = time.perf_counter()
    own = con is None
    con = con or store.connect(db)
    started = store.utcnow()
    try:
        if not con.execute("SELECT count(*) FROM posts").fetchall()[0][0]:
            raise InputError("the store has no posts: run `igcli ingest POSTS` first")
        with store.transaction(con):
            source = compute_metadata(con, opts)
            inserted, updated, unchanged = _merge(con, started)
            store.fault_point("featurize.before_commit")
        choices = dict(con.execute("SELECT snapshot_choice, count(*) FROM pf_new GROUP BY 1").fetchall())
        no_history = con.execute("SELECT count(*) FROM pf_new WHERE no_history").fetchall()[0][0]
        posts = inserted + updated + unchanged
        result = FeaturizeResult(uuid.uuid4().hex[:12], posts, inserted, updated, unchanged, source,
                                 opts.user_stats_as_of == "end", choices, no_history)
        if not opts.skip_images:
            from igcli.imagefeatures import ImageFeatureOptions, featurize_images

            img = featurize_images(con, opts.images or ImageFeatureOptions(), progress=progress)
            result.images = img
            result.messages.extend(img.messages)
        params = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "images"}
        params["hashtag_source"] = source
        images_json = json.dumps(asdict(result.images), default=str) if result.images is not None else "{}"
        con.execute(
            "INSERT INTO featurize_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [result.run_id, started, store.utcnow(), json.dumps(params), posts, inserted, updated, unchanged,
             images_json],
        )
    finally:
        if own:
            con.close()
    result.seconds = time.perf_counter() - t0
    return result
