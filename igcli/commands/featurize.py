"""``igcli featurize``: bring the point-in-time metadata features up to date (``igcli.features.metadata``),
then compute the image features the store lacks (``igcli.features.images``, the backbones on the chosen
engine), and record the run.

    from igcli.commands.featurize import featurize
    from igcli.features.metadata import FeaturizeOptions
    result = featurize("igcli.duckdb", FeaturizeOptions(hashtag_ranking="hashtag_ranking.txt"))
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import duckdb

from igcli import store
from igcli.engines import get_engine
from igcli.errors import InputError
from igcli.features.images import ImageFeatureOptions, ImageFeaturesResult, Progress, compute_image_features
from igcli.features.metadata import FeaturizeOptions, FeaturizeResult, update_metadata


def featurize(
    db: Path | str = store.DEFAULT_DB,
    opts: FeaturizeOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> FeaturizeResult:
    """Bring the metadata features up to date (incrementally, or from scratch with ``opts.rebuild``), then
    compute image features for images that lack them."""
    opts = opts or FeaturizeOptions()
    images = opts.images or ImageFeatureOptions()
    engine = get_engine(images.engine, images.ray)   # the local / Ray choice, once
    t0 = time.perf_counter()
    started = store.utcnow()
    with store.opened(db, con) as con:
        if not con.execute("SELECT count(*) FROM posts LIMIT 1").fetchall()[0][0]:
            raise InputError("the store has no posts: run `igcli ingest POSTS` first")
        before = con.execute("SELECT half_life_days, hashtag_source, leaky FROM feature_state").fetchall()
        p, inserted, updated = update_metadata(con, opts, started)
        posts, no_history = con.execute("SELECT coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE no_history), 0) "
                                        "FROM feature_counts").fetchall()[0]
        choices = dict(con.execute("SELECT snapshot_choice, sum(n) FROM feature_counts GROUP BY 1").fetchall())
        unchanged = posts - inserted - updated
        result = FeaturizeResult(uuid.uuid4().hex[:12], posts, inserted, updated, unchanged, p.hashtag_source,
                                 p.leaky, choices, no_history)
        if before:
            result.messages.extend(_changed_parameters(before[0], p))
        if not opts.skip_images:
            img = compute_image_features(con, images, engine, progress=progress)
            result.images = img
            result.messages.extend(img.messages)
        params = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "images"}
        params["hashtag_source"] = p.hashtag_source
        images_json = json.dumps(asdict(result.images), default=str) if result.images is not None else "{}"
        con.execute(
            "INSERT INTO featurize_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [result.run_id, started, store.utcnow(), json.dumps(params), posts, inserted, updated, unchanged,
             images_json],
        )
    result.seconds = time.perf_counter() - t0
    return result


def _hashtag_words(source: str) -> str:
    return f"the ranking file {source.split(':', 1)[1][:12]}" if source.startswith("ranking:") else \
        "tag frequency in the store"


def _changed_parameters(before: tuple, p) -> list[str]:
    """A note when this run's feature parameters differ from those the store's features were made with (every
    post's features are then recomputed): a plain ``igcli featurize`` after one with ``--hashtag-ranking`` switches
    the hashtag weights, which nobody should learn from the numbers alone."""
    half_life, source, leaky = before
    changes = []
    if source != p.hashtag_source:
        keep = " (give --hashtag-ranking FILE to keep the ranking)" if source.startswith("ranking:") else ""
        changes.append(f"hashtag weights from {_hashtag_words(p.hashtag_source)}, were {_hashtag_words(source)}"
                       f"{keep}")
    if float(half_life) != p.half_life_days:
        changes.append(f"--half-life {p.half_life_days:g} days, was {float(half_life):g}")
    if bool(leaky) != p.leaky:
        changes.append(f"--user-stats-as-of {'end' if p.leaky else 'post'}, was {'end' if leaky else 'post'}")
    return [f"every post's features were recomputed: {'; '.join(changes)}"] if changes else []


def featurize_images(con: duckdb.DuckDBPyConnection, options: ImageFeatureOptions,
                     progress: Progress | None = None) -> ImageFeaturesResult:
    """The image half of ``featurize`` alone: the features the store lacks, on the engine ``options`` names."""
    return compute_image_features(con, options, get_engine(options.engine, options.ray), progress)
