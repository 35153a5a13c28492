"""What the store holds: rows per table, rejects, images by status, latest runs."""

from __future__ import annotations

from pathlib import Path

from igcli import store

# What a user reads status for, in this order; the other tables (per-user state, hashtag state, schema) are the
# store's bookkeeping, counted in one line.
USER_TABLES = ("posts", "user_snapshots", "images", "post_features", "image_quality", "image_classes",
               "image_embeddings", "runs", "predictions", "rejects", "ingest_warnings", "ingests", "featurize_runs")


def store_status(db: Path | str = store.DEFAULT_DB) -> dict:
    con = store.connect(db, read_only=True)
    try:
        tables = store.table_counts(con)
        images = dict(con.execute("SELECT status, count(*) FROM images GROUP BY 1 ORDER BY 2 DESC").fetchall())
        rejects = [
            f"{reason}: {n:,}"
            for reason, n in con.execute(
                "SELECT reason, count(*) FROM rejects GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
            ).fetchall()
        ]
        runs = []
        if "runs" in tables:
            runs = [
                f"{r[0]} {r[1]} split={r[2]} MAE={r[3]:.3f}" if r[3] is not None else f"{r[0]} {r[1]}"
                for r in con.execute(
                    "SELECT model_id, created_at, split, test_mae FROM runs ORDER BY created_at DESC LIMIT 5"
                ).fetchall()
            ]
    finally:
        con.close()
    shown = {n: tables[n] for n in USER_TABLES if n in tables}
    internal = sorted(n for n in tables if n not in shown)
    return {"tables": shown, "internal_tables": internal, "images": images, "rejects": rejects, "runs": runs}
