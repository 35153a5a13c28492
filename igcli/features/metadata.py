"""Featurize: point-in-time metadata features (SQL in ``sql/features.sql``) and image features.

    from igcli.commands.featurize import featurize
    result = featurize("igcli.duckdb", FeaturizeOptions(hashtag_ranking="hashtag_ranking.txt"))

Metadata features are raw values (no scaling, no one-hot: those are fitted by ``train`` on the training
part only). Every history value of a post comes from the same user's posts strictly before it.

Incremental. The store keeps a running state per user (``user_state``: counts, exact sums of ln-likes and
of their squares, the last 10 values, the sorted values for the median, the decayed sums at the latest liked
post, exact sums of t, t^2 and t*y for the trend (t in whole seconds), first / latest post time, the post
times of the last 30 days, earliest snapshot), per user and hashtag (``user_tag_state``: uses, uses in
liked posts and the exact sum of their ln-likes, for ``tag_perf`` / ``tag_novel_frac``) and per hashtag
(``tag_state``: uses, latest use), plus ``feature_state`` (parameters, feature version, and how far into
``posts`` / ``ingests`` they reach). A featurize finds the posts ingested or changed since then
(``posts.updated_at``), advances each user's state from its new posts only, and writes their rows. A user
with a back-dated or edited post, or a snapshot at or before its latest post, is recomputed from its own
history; a hashtag used again at or before its latest use is recounted from every post that has it.
``rebuild`` (``--rebuild``) recomputes everything from empty state, and so does a change of parameters or
of ``FEATURE_VERSION``, or the leaky ``user_stats_as_of="end"`` mode. ``compute_batch`` gives ``score``
a batch's features from the same state without writing anything; ``compute_metadata`` is the full
computation from history (no state), which the tests compare both with.

Determinism. ln(likes) is held in fixed point (2^-32 units) and every count and sum is an exact integer,
so values do not depend on summation order, DuckDB's thread count or row order; the decayed mean is a
recurrence run in one fixed order per user (time, post_id), the same whether the posts arrive one run at a
time or all at once.

Adding a running-sum feature (e.g. the trend of ln-likes over time from sums of t, t^2 and t*y):
1. a column in ``user_state`` (``sql/schema.sql``), e.g. ``s_ty HUGEINT`` (integer sums stay exact);
2. in ``sql/features.sql``: its running value in block ``cum`` (``coalesce(s.s_ty, 0) + sum(...) OVER w``),
   its new total in ``advance_state`` (``coalesce(s.s_ty, 0) + coalesce(b.s_ty, 0)``, with ``b.s_ty`` the
   batch's ``sum(...)``), and the feature's expression in ``history`` (from ``c.*`` when the batch has
   earlier liked posts, else from the state ``s.*``), selected in ``assemble``;
3. its name in ``HISTORY_FEATURES`` (or ``DYNAMICS_FEATURES``) below; a store whose ``post_features`` lacks
   a column of ``DYNAMICS_FEATURES`` / ``CAPTION_FEATURES`` is recomputed by the next featurize
   (``_current``); for other new columns, ``featurize --rebuild``;
4. its definition, written plainly, in ``tests/pit_reference.py``: ``tests/test_point_in_time.py`` compares
   every column of ``post_features`` with that brute force and fails on a column it does not know.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from igcli import store
from igcli.errors import InputError
from igcli.features.schema import CAPTION_FEATURES, DYNAMICS_FEATURES
from igcli.util import sha256_file

DEFAULT_HALF_LIFE_DAYS = 30.0
# The definitions stored features follow; a store featurized under another version is recomputed. 2: tag_perf
# and tag_novel_frac from per-(user, tag) state (matches counted per shared tag); 3: that state found by a hash key.
FEATURE_VERSION = 3
# DuckDB's memory while the metadata features are computed: beyond it joins and sorts spill to disk, so a
# full featurize of a large store needs disk rather than memory (without it, 1M posts peaked at 7.4 GiB).
MEMORY_LIMIT = "1GB"
ROW_GROUP_ROWS = 122_880     # DuckDB's rows per row group: a table scan gives each to one thread
PART_ROWS = 2_048            # the smallest part of a batch scanned from Arrow (one DuckDB vector)


@dataclass
class FeaturizeOptions:
    hashtag_ranking: Path | None = None     # one tag per line, most popular first
    ranking_id: str | None = None            # reuse a ranking already in the store (scoring)
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    user_stats_as_of: str = "post"           # "post" (point in time) | "end" (the paper's leak; benchmark only)
    images: Any = None                       # igcli.features.images.ImageFeatureOptions; None = defaults
    skip_images: bool = False
    rebuild: bool = False                    # recompute every post from empty state


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
    images: Any = None                       # igcli.features.images.ImageFeaturesResult
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0


def load_ranking(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """Store a hashtag ranking file (idempotent per content); returns its id (the file's sha256)."""
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


@dataclass(frozen=True)
class _Params:
    half_life_days: float
    hashtag_source: str                      # "store-frequency" | "ranking:<sha256>"
    ranking_id: str | None
    leaky: bool
    key_hash: int                            # DuckDB's hash('igcli'): the hash keys of user_tag_state

    def matches(self, row: tuple | None) -> bool:
        """Same parameters, feature version and hash() as a ``_feature_state`` row."""
        return row is not None and (row[0], row[1], row[2], row[5], row[6]) == (
            self.half_life_days, self.hashtag_source, self.leaky, FEATURE_VERSION, self.key_hash)


def _params(con: duckdb.DuckDBPyConnection, opts: FeaturizeOptions) -> _Params:
    if opts.user_stats_as_of not in ("post", "end"):
        raise InputError("--user-stats-as-of takes 'post' (point in time) or 'end' (the paper's leak)")
    if not opts.half_life_days > 0:
        raise InputError("--half-life must be a positive number of days")
    ranking_id = opts.ranking_id
    if opts.hashtag_ranking is not None:
        ranking_id = load_ranking(con, opts.hashtag_ranking)
    source = f"ranking:{ranking_id}" if ranking_id else "store-frequency"
    key_hash = con.execute("SELECT hash('igcli')").fetchall()[0][0]
    return _Params(float(opts.half_life_days), source, ranking_id, opts.user_stats_as_of == "end", key_hash)


def _decay(con: duckdb.DuckDBPyConnection, half_life_days: float) -> None:
    """The decayed-mean recurrence over the liked posts in ``fz_liked``, into ``fz_decay``.

    Per user, in (time, post_id) order from its state: num = num * f + y, den = den * f + 1 with
    f = 2^(-days since the previous liked post / half-life); decayed mean = num / den. One fixed order of
    IEEE operations (numpy multiply, then add: no fused multiply-add), vectorised across users per step.
    The columns travel as numpy arrays both ways (``fetchnumpy``, a registered dict of arrays), not through
    pyarrow's ``to_numpy``, which imports pandas where it is installed (0.45-0.55 s of every featurize and
    score here).
    """

    store.run_block(con, "features", "decay_input", {"half_life_days": half_life_days})
    cols = con.sql("SELECT u, k, y, f, num0, den0 FROM fz_decay_in").fetchnumpy()
    order = np.lexsort((cols["u"], cols["k"]))   # by step k, then user u: the order the recurrence runs
    u, k, y, f, num0, den0 = (np.asarray(cols[c])[order] for c in ("u", "k", "y", "f", "num0", "den0"))
    num_out, den_out = np.empty(len(u)), np.empty(len(u))
    if len(u):
        n_users = int(u.max()) + 1
        num, den = np.zeros(n_users), np.zeros(n_users)
        first = k == 1                             # every user starts at k = 1
        num[u[first]], den[u[first]] = num0[first], den0[first]
        bounds = np.flatnonzero(np.diff(k)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(u)], strict=True):
            uu = u[lo:hi]
            num[uu] = num[uu] * f[lo:hi] + y[lo:hi]
            den[uu] = den[uu] * f[lo:hi] + 1.0
            num_out[lo:hi], den_out[lo:hi] = num[uu], den[uu]
    con.register("igc_decay", {"u": u, "k": k, "num": num_out, "den": den_out})
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE fz_decay AS SELECT i.post_id, d.num, d.den "
                    "FROM fz_decay_in i JOIN igc_decay d USING (u, k)")
    finally:
        con.unregister("igc_decay")


def _engine(con: duckdb.DuckDBPyConnection, p: _Params, *, all_posts: bool, seen, use_state: bool,
            carry: bool, full_tags: bool) -> None:
    """Fill ``pf_new`` with the metadata features of the posts selected by the ``fz_*`` input tables.

    all_posts: every post (else the posts updated after ``seen`` and every post of the users in ``fz_slow``);
    use_state: users not in ``fz_slow`` start from ``user_state``; carry: stored hashtag weights of posts
    neither fresh nor touched by a dirty tag are kept; full_tags: every tag is recounted from all posts.
    """
    run = store.run_block
    run(con, "features", "posts_pending", {"all_posts": all_posts, "seen": seen})
    more = con.execute("SELECT count(*) FROM fz_slow").fetchall()[0][0]
    if more and not all_posts:
        run(con, "features", "posts_more")
    cues = _cues_start(con)              # fz_posts is complete: its captions' cues run beside the blocks below
    run(con, "features", "posts_state", {"use_state": use_state})
    run(con, "features", "liked")
    _decay(con, p.half_life_days)
    run(con, "features", "cum")
    run(con, "features", "tag_history")
    run(con, "features", "history", {"leaky": p.leaky})
    run(con, "features", "snapshots")
    if p.ranking_id:
        run(con, "features", "hashtags_ranked", {"ranking_id": p.ranking_id})
        run(con, "features", "tag_uses", {"use_state": use_state})   # tag_state is kept whatever the source
        run(con, "features", "tag_uses_none")
    else:
        if full_tags:
            con.execute("INSERT INTO fz_dirty_tags SELECT DISTINCT unnest(tags) FROM fz_posts")
        run(con, "features", "tag_uses", {"use_state": use_state})
        dirty = con.execute("SELECT count(*) FROM fz_dirty_tags").fetchall()[0][0]
        run(con, "features", "tag_uses_full" if dirty else "tag_uses_none")
        run(con, "features", "hashtags_store")
        if carry and more:                             # posts of recomputed users that are not fresh
            run(con, "features", "hashtags_carry")
    _cues_finish(con, cues)
    run(con, "features", "assemble",
        {"hashtag_source": p.hashtag_source, "half_life_days": p.half_life_days, "leaky": p.leaky})


def cue_parts(n: int, threads: int) -> int | None:
    """Rows per Arrow part for the caption cues of ``n`` posts, or None to scan ``fz_posts`` itself (a batch
    of two row groups or more is parallel already; one of a few thousand rows is not worth splitting)."""
    if n >= 2 * ROW_GROUP_ROWS or n < 2 * PART_ROWS or threads < 2:
        return None
    return max(PART_ROWS, -(-n // (4 * threads)))


def _cues_start(con: duckdb.DuckDBPyConnection) -> Future | None:
    """Start the caption cues of ``fz_posts`` (block ``cues``) beside the other blocks, or None to compute them
    in ``con`` later (``_cues_finish``). DuckDB gives each row group of a table scan to one thread, so the blocks
    of a batch under two row groups (a score batch, an append) run on one core, and so would the cues, most of
    such a batch's time: its captions are read out as Arrow record batches, one part per thread or more, and
    scanned from there in parallel, on a connection of their own (in memory, in a thread: DuckDB releases the
    GIL while it runs), so that they use the cores the other blocks leave idle. The values are the same either
    way: pure functions of each caption, by the same SQL in the same DuckDB."""
    n = con.execute("SELECT count(*) FROM fz_posts").fetchall()[0][0]
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    parts = cue_parts(n, threads)
    if parts is None:
        return None
    table = con.sql("SELECT post_id, caption FROM fz_posts").to_arrow_table()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="igcli-cues")
    try:
        return pool.submit(_cues_apart, pa.Table.from_batches(table.to_batches(max_chunksize=parts)), threads)
    finally:
        pool.shutdown(wait=False)


def _cues_apart(captions: pa.Table, threads: int) -> pa.Table:
    """The block ``cues`` over ``captions`` (post_id, caption) on an in-memory connection of its own."""
    side = duckdb.connect()
    try:
        side.execute(f"SET threads = {int(threads)}")
        store.run_block(side, "features", "macros")
        side.register("igc_captions", captions)
        side.execute("CREATE TEMP VIEW fz_caption_src AS SELECT post_id, caption FROM igc_captions")
        store.run_block(side, "features", "cues")
        return side.sql("SELECT * FROM fz_cues").to_arrow_table()
    finally:
        side.close()


def _cues_finish(con: duckdb.DuckDBPyConnection, started: Future | None) -> None:
    """``fz_cues``: the table ``_cues_start`` started, or the block ``cues`` over ``fz_posts`` in ``con``."""
    if started is not None:
        con.register("igc_cues", started.result())
        try:
            con.execute("CREATE OR REPLACE TEMP TABLE fz_cues AS SELECT * FROM igc_cues")
        finally:
            con.unregister("igc_cues")
        return
    try:
        con.execute("CREATE OR REPLACE TEMP VIEW fz_caption_src AS SELECT post_id, caption FROM fz_posts")
        store.run_block(con, "features", "cues")
    finally:
        con.execute("DROP VIEW IF EXISTS fz_caption_src")


def _start(con: duckdb.DuckDBPyConnection) -> None:
    store.run_block(con, "features", "macros")
    store.run_block(con, "features", "inputs")


def compute_metadata(con: duckdb.DuckDBPyConnection, opts: FeaturizeOptions, users: list[str] | None = None) -> str:
    """The full computation: fill the temp table ``pf_new`` with the metadata features of every post of
    ``users`` (all users when None) from their whole history, without the stored state; returns the
    hashtag source. Nothing in the store changes."""
    p = _params(con, opts)
    _start(con)
    if users is not None:
        store.temp_table(con, "igc_users", {"username": ("VARCHAR", users)})
        con.execute("INSERT INTO fz_slow SELECT DISTINCT username FROM igc_users")
        con.execute("DROP TABLE igc_users")
    _engine(con, p, all_posts=users is None, seen=None, use_state=False, carry=False, full_tags=True)
    return p.hashtag_source


def _current(con: duckdb.DuckDBPyConnection) -> bool:
    """post_features exists and has every feature column of this igcli (an older store is recomputed)."""
    if not _has_table(con, "post_features"):
        return False
    cols = {d[0] for d in con.execute("SELECT * FROM post_features LIMIT 0").description}
    return set(DYNAMICS_FEATURES + CAPTION_FEATURES) <= cols


def _feature_state(con: duckdb.DuckDBPyConnection) -> tuple | None:
    rows = con.execute("SELECT half_life_days, hashtag_source, leaky, posts_seen, ingests_seen, feature_version, "
                       "key_hash FROM feature_state").fetchall()
    return rows[0] if rows else None


def _plan_incremental(con: duckdb.DuckDBPyConnection, fs: tuple) -> None:
    """fz_pending, fz_slow, fz_fresh, fz_dirty_tags for the changes since ``fs``."""
    store.run_block(con, "features", "pending", {"seen": fs[3], "ingests_seen": fs[4]})
    store.run_block(con, "features", "plan", {"seen": fs[3]})


def compute_batch(con: duckdb.DuckDBPyConnection, opts: FeaturizeOptions, post_ids: list[str]) -> str:
    """Features of ``post_ids`` into ``pf_new`` from the stored state, for ``score``: the batch's posts (and
    any other post ingested since the last featurize) advance their users' state in their own time order,
    without rescanning histories; a user with a post at or before its latest featurized one is recomputed
    from its history. Posts already featurized and unchanged are read from ``post_features``. When the
    state was made with other parameters, this is ``compute_metadata`` for the batch's users. Nothing is
    written to the store. Runs under ``MEMORY_LIMIT`` like ``featurize``."""
    with store.setting(con, "memory_limit", MEMORY_LIMIT):
        return _compute_batch(con, opts, post_ids)


def _compute_batch(con: duckdb.DuckDBPyConnection, opts: FeaturizeOptions, post_ids: list[str]) -> str:
    p = _params(con, opts)
    fs = _feature_state(con)
    store.temp_table(con, "fz_ids", {"post_id": ("VARCHAR", list(dict.fromkeys(post_ids)))})  # each id once
    if p.leaky or not p.matches(fs) or not _current(con):
        users = [r[0] for r in con.execute(
            "SELECT DISTINCT username FROM posts WHERE post_id IN (SELECT post_id FROM fz_ids)").fetchall()]
        compute_metadata(con, opts, users=users)
    else:
        _start(con)
        _plan_incremental(con, fs)
        _engine(con, p, all_posts=False, seen=fs[3], use_state=True, carry=True, full_tags=False)
        missing = "SELECT count(*) FROM fz_ids WHERE post_id NOT IN (SELECT post_id FROM pf_new)"
        if con.execute(missing).fetchall()[0][0]:
            store.run_block(con, "features", "batch_rows")
    con.execute("DELETE FROM pf_new WHERE post_id NOT IN (SELECT post_id FROM fz_ids)")
    return p.hashtag_source


def _write_state(con: duckdb.DuckDBPyConnection, p: _Params, posts_seen, ingests_seen) -> None:
    con.execute("DELETE FROM feature_state")
    con.execute("INSERT INTO feature_state BY NAME SELECT ? AS half_life_days, ? AS hashtag_source, ? AS leaky, "
                "? AS posts_seen, ? AS ingests_seen, ? AS feature_version, ? AS key_hash",
                [p.half_life_days, p.hashtag_source, p.leaky, posts_seen, ingests_seen, FEATURE_VERSION, p.key_hash])


def _update(con: duckdb.DuckDBPyConnection, p: _Params, now, rebuild: bool) -> tuple[int, int]:
    """Bring post_features and the state up to date; returns (inserted, updated)."""
    run = store.run_block
    fs = _feature_state(con)
    ingests_seen = con.execute("SELECT max(finished_at) FROM ingests").fetchall()[0][0]
    full = rebuild or p.leaky or not p.matches(fs) or not _current(con)
    if not full and ingests_seen == fs[4]:
        return 0, 0                                           # nothing ingested since: a no-op
    _start(con)
    inserted = 0
    if full:
        con.execute("DELETE FROM user_state")
        con.execute("DELETE FROM tag_state")
        con.execute("DELETE FROM user_tag_state")
        con.execute("INSERT INTO fz_fresh SELECT post_id FROM posts")
        _engine(con, p, all_posts=True, seen=None, use_state=False, carry=False, full_tags=False)
        posts_seen = con.execute("SELECT max(updated_at) FROM posts").fetchall()[0][0]
        cols = [d[0] for d in con.execute("SELECT * FROM pf_new LIMIT 0").description] + ["computed_at"]
        if _has_table(con, "post_features") and [
                d[0] for d in con.execute("SELECT * FROM post_features LIMIT 0").description] != cols:
            con.execute("DROP TABLE post_features")              # made by an older igcli
    else:
        _plan_incremental(con, fs)
        _engine(con, p, all_posts=False, seen=fs[3], use_state=True, carry=True, full_tags=False)
        if not p.ranking_id and con.execute("SELECT count(*) FROM fz_full_posts").fetchall()[0][0]:
            run(con, "features", "reweighted")
        posts_seen = con.execute("SELECT greatest(?, max(updated_at)) FROM posts WHERE updated_at > ?",
                                 [fs[3], fs[3]]).fetchall()[0][0]
    run(con, "features", "advance_state")
    if con.execute("SELECT count(*) FROM fz_slow").fetchall()[0][0]:       # (empty in a full recompute)
        run(con, "features", "drop_user_tags")
    run(con, "features", "advance_user_tags")
    run(con, "features", "advance_tags")
    con.execute("CREATE TABLE IF NOT EXISTS post_features AS SELECT *, NULL::TIMESTAMP AS computed_at "
                "FROM pf_new LIMIT 0")
    if full and not con.execute("SELECT count(*) FROM post_features").fetchall()[0][0]:
        con.execute("INSERT INTO post_features SELECT *, ? FROM pf_new", [now])   # the first featurize
        inserted, updated = con.execute("SELECT count(*) FROM pf_new").fetchall()[0][0], 0
    else:
        if not full:
            _count(con, "SELECT * FROM pf_new WHERE post_id IN (SELECT post_id FROM fz_pending WHERE is_new)", 1)
            inserted = con.execute("SELECT count(*) FROM pf_counted").fetchall()[0][0]
            run(con, "features", "merge_new", {"now": now})
        updated = 0
        if con.execute("SELECT count(*) FROM pf_new").fetchall()[0][0]:
            run(con, "features", "merge")
            new_here, updated = con.execute(
                "SELECT count(*) FILTER (WHERE post_id NOT IN (SELECT post_id FROM post_features)), count(*) "
                "FILTER (WHERE post_id IN (SELECT post_id FROM post_features)) FROM pf_changed").fetchall()[0]
            inserted += new_here
            if not full:
                _count(con, "SELECT * FROM post_features WHERE post_id IN (SELECT post_id FROM pf_changed)", -1)
                _count(con, "SELECT * FROM pf_changed", 1)
            run(con, "features", "merge_apply", {"now": now})
    if full:
        run(con, "features", "counts_full")
    _write_state(con, p, posts_seen, ingests_seen)
    return inserted, updated


def _count(con: duckdb.DuckDBPyConnection, rows_sql: str, sign: int) -> None:
    """Add (sign 1) or take away (-1) the rows of ``rows_sql`` (a constant query) in ``feature_counts``."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW pf_counted AS {rows_sql}")
    store.run_block(con, "features", "counts_add", {"sign": sign})


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ? "
                            "AND table_schema = 'main'", [name]).fetchall()[0][0])


def update_metadata(con: duckdb.DuckDBPyConnection, opts: FeaturizeOptions, now) -> tuple[_Params, int, int]:
    """Bring post_features and the state up to date in one transaction, under ``MEMORY_LIMIT``; returns the
    parameters and (inserted, updated)."""
    with store.setting(con, "memory_limit", MEMORY_LIMIT), store.transaction(con):
        p = _params(con, opts)
        inserted, updated = _update(con, p, now, opts.rebuild)
        store.fault_point("featurize.before_commit")
    return p, inserted, updated
