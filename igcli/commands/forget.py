"""``igcli forget``: remove posts from the store, by id or a whole scoring batch, and bring every feature back to
what it would be had the store never held them.

    from igcli.commands.forget import forget
    result = forget("igcli.duckdb", batch="e08a89ee8fa5")

In one transaction: the posts, their feature rows and predictions go, and so do the user snapshots a scoring
batch's ingest wrote (the rows it dated at its own time, as it does when the file has no observed_at column);
then the metadata features are recomputed from the remaining posts with the store's parameters (features are a
deterministic function of the posts, so the result equals a store that never had them). Image feature rows stay:
they are a cache keyed by the image's content.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from igcli import store
from igcli.errors import InputError
from igcli.features.metadata import FeaturizeOptions, update_metadata


@dataclass
class ForgetResult:
    posts: int
    predictions: int
    snapshots: int
    users: int
    unknown: list[str]
    seconds: float


def forget(db: Path | str = store.DEFAULT_DB, post_ids: list[str] | None = None, batch: str | None = None,
           con: duckdb.DuckDBPyConnection | None = None) -> ForgetResult:
    """Remove ``post_ids`` and / or the posts of scoring batch ``batch``; see the module docstring."""
    if not post_ids and not batch:
        raise InputError("name the posts to forget (POST_ID ...) or a scoring batch (--batch ID)")
    t0 = time.perf_counter()
    with store.opened(db, con) as con:
        return _forget(con, list(post_ids or []), batch, t0)


def _forget(con: duckdb.DuckDBPyConnection, post_ids: list[str], batch: str | None, t0: float) -> ForgetResult:
    with store.transaction(con):
        store.temp_table(con, "igc_forget_ids", {"post_id": ("VARCHAR", post_ids)})
        ingest = None
        if batch:
            ingest = con.execute("SELECT source_file, started_at FROM ingests WHERE ingest_id = ?", [batch]).fetchall()
            batch_posts = con.execute("SELECT count(*) FROM predictions WHERE batch_id = ?", [batch]).fetchall()[0][0]
            if not ingest or not batch_posts:
                raise InputError(f"no scoring batch {batch!r} in this store: `igcli score` prints the batch id of "
                                 "what it stored")
            con.execute("INSERT INTO igc_forget_ids SELECT DISTINCT post_id FROM predictions WHERE batch_id = ?",
                        [batch])
        counts = store.run_block(con, "forget", "plan").fetchall()[0]
        posts, users = counts
        unknown = [r[0] for r in con.execute(
            "SELECT DISTINCT post_id FROM igc_forget_ids WHERE post_id NOT IN (SELECT post_id FROM posts) "
            "ORDER BY 1 LIMIT 10").fetchall()]
        if not posts:
            raise InputError(f"none of the posts named is in the store ({', '.join(unknown)}): nothing to forget")
        predictions = con.execute("SELECT count(*) FROM predictions WHERE post_id IN "
                                  "(SELECT post_id FROM igc_forget_ids)").fetchall()[0][0]
        snapshots = 0
        if ingest:
            store.run_block(con, "forget", "delete_batch", {"batch": batch})
            source, started = ingest[0]
            snapshots = con.execute("SELECT count(*) FROM user_snapshots WHERE source_file = ? AND observed_at = ?",
                                    [source, started]).fetchall()[0][0]
            con.execute("DELETE FROM user_snapshots WHERE source_file = ? AND observed_at = ?", [source, started])
        featurized = bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' "
                                      "AND table_name = 'post_features'").fetchall()[0][0])
        if featurized:
            con.execute("DELETE FROM post_features WHERE post_id IN (SELECT post_id FROM igc_forget_ids)")
        store.run_block(con, "forget", "delete")
        _recompute(con)
        con.execute("DROP TABLE IF EXISTS igc_forget_ids")
    return ForgetResult(posts, predictions, snapshots, users, unknown, time.perf_counter() - t0)


def _recompute(con: duckdb.DuckDBPyConnection) -> None:
    """The metadata features of the remaining posts, from scratch, with the parameters the store was featurized
    with (a store never featurized has nothing to recompute)."""
    row = con.execute("SELECT half_life_days, hashtag_source, leaky FROM feature_state").fetchall()
    if not row:
        return
    half_life, source, leaky = row[0]
    ranking = source.split(":", 1)[1] if source.startswith("ranking:") else None
    opts = FeaturizeOptions(ranking_id=ranking, half_life_days=half_life, rebuild=True,
                            user_stats_as_of="end" if leaky else "post")
    if con.execute("SELECT count(*) FROM posts").fetchall()[0][0]:
        update_metadata(con, opts, store.utcnow())
    else:                                      # nothing left: no features and no state
        con.execute("DELETE FROM post_features")
        store.run_block(con, "forget", "empty")
