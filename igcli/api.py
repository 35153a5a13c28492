"""igcli as a Python library: the command line's stages on one store, returning result objects and pyarrow tables.

    import igcli.api as ig

    store = ig.open_store("igcli.duckdb")
    store.ingest("posts.csv")
    store.featurize(hashtag_ranking="hashtag_ranking.txt")
    run = store.train(branches=("metadata",))
    store.score("new_posts.csv")
    train = store.training_frame()          # pyarrow.Table: train.to_pandas(), polars.from_arrow(train)

Every method raises what the command raises (``igcli.errors.IgcliError`` subclasses, one line that names the
fix) and prints nothing. A ``Store`` holds its path, not a connection: each call opens the store and closes it,
so ``igcli`` commands in another process can use it between calls. The frames are the store's two reads
(``igcli.commands.features``): pandas and polars read them through Arrow, and neither is a dependency.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from igcli import store
from igcli.commands.features import serving_table, training_table, user_features
from igcli.commands.featurize import featurize
from igcli.commands.ingest import ClassesResult, IngestResult, ingest_classes, ingest_posts
from igcli.commands.sample import SampleSummary, generate_sample
from igcli.commands.score import ScoreOptions, ScoreResult, score
from igcli.commands.status import store_status
from igcli.commands.train import RunResult, TrainOptions, train
from igcli.features.frames import Frame
from igcli.features.images import ImageFeatureOptions
from igcli.features.metadata import DEFAULT_HALF_LIFE_DAYS, FeaturizeOptions, FeaturizeResult
from igcli.features.schema import POST_FEATURES_MEANING

__all__ = ["Store", "frame_from_table", "open_store", "sample", "store_tables"]


class Store:
    """One igcli store (a DuckDB file) and the folder its models are exported to."""

    def __init__(self, path: Path | str = store.DEFAULT_DB, exports: Path | str = "exports"):
        self.path = Path(path)
        self.exports = Path(exports)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, exports={str(self.exports)!r})"

    # ------------------------------------------------------------------ the pipeline
    def ingest(self, posts: Path | str, images: Path | str | None = None, encoding: str | None = None,
               recheck: bool = False) -> IngestResult:
        """``igcli ingest POSTS``: load a CSV or Parquet file of posts; bad rows go to ``rejects``."""
        return ingest_posts(posts, db=self.path, images_dir=images, encoding=encoding, recheck=recheck)

    def ingest_classes(self, classes: Path | str) -> ClassesResult:
        """``igcli ingest-classes FILE``: precomputed ImageNet top-k classes for the objects branch."""
        return ingest_classes(classes, db=self.path)

    def featurize(self, hashtag_ranking: Path | str | None = None, half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
                  backbones: bool = True, rebuild: bool = False,
                  images: ImageFeatureOptions | None = None) -> FeaturizeResult:
        """``igcli featurize``: point-in-time metadata features, image quality and (``backbones``) the image
        backbones; ``images`` takes every option of the image half (``ImageFeatureOptions``)."""
        images = images or ImageFeatureOptions()
        if not backbones:
            images = replace(images, skip_backbones=True)
        return featurize(self.path, FeaturizeOptions(hashtag_ranking=Path(hashtag_ranking) if hashtag_ranking else None,
                                                     half_life_days=half_life_days, rebuild=rebuild, images=images))

    def train(self, branches: Sequence[str] = ("metadata",), split: str = "random", seed: int = 0,
              **options: Any) -> RunResult:
        """``igcli train``: fit, evaluate and export a model to ``exports``; ``options`` are ``TrainOptions``
        fields (``epochs``, ``ensemble``, ``objects_source``...)."""
        return train(self.path, TrainOptions(branches=tuple(branches), split=split, seed=seed,
                                             exports_dir=self.exports, **options))

    def score(self, posts: Path | str, model: str = "best", out: Path | str | None = None,
              **options: Any) -> ScoreResult:
        """``igcli score POSTS``: ingest a batch and write its predictions (``options``: ``ScoreOptions`` fields)."""
        return score(posts, self.path, ScoreOptions(model=model, exports_dir=self.exports,
                                                    out=Path(out) if out else None, **options))

    def status(self) -> dict:
        """``igcli status``: rows per table, rejects, images by status, latest runs."""
        return store_status(self.path)

    # ------------------------------------------------------------------ the frames
    def training_frame(self, columns: Sequence[str] | None = None, objects_source: str | None = None,
                       aesthetics_source: str | None = None) -> pa.Table:
        """One row per labelled post with every input the model can use as of its time and the label
        ``ln_likes``: exactly what ``train`` loads."""
        return training_table(self.path, objects_source=objects_source, aesthetics_source=aesthetics_source,
                                     columns=columns)

    def serving_frame(self, posts: Path | str | None = None, ids: Sequence[str] | None = None,
                      model: str = "best", columns: Sequence[str] | None = None,
                      images: Path | str | None = None) -> pa.Table:
        """What ``score`` feeds ``model`` for the posts of a file (ingested as ``score`` ingests it) or for
        stored post ``ids``."""
        return serving_table(self.path, posts, ids, model, self.exports, images, columns)

    def user_features(self, entities: Any, columns: Sequence[str] | None = None) -> pa.Table:
        """Per (``username``, ``as_of``) row of ``entities`` (a file, an Arrow table, a data frame or a list of
        dicts), what the store knew about the user strictly before ``as_of``."""
        return user_features(entities, self.path, columns)

    def query(self, sql: str, params: Sequence[Any] | dict | None = None) -> pa.Table:
        """A read-only query of the store's tables (``store_tables()`` says what their columns mean)."""
        with store.opened(self.path, read_only=True) as con:
            return con.sql(sql, params=params).to_arrow_table()


def open_store(path: Path | str = store.DEFAULT_DB, exports: Path | str = "exports") -> Store:
    """The store at ``path``, created (or migrated) now, so a path that cannot hold one fails here."""
    store.connect(path).close()
    return Store(path, exports)


def sample(out_dir: Path | str, posts: int = 2000, users: int = 100, seed: int = 0, images: bool = True,
           image_size: int = 224) -> SampleSummary:
    """``igcli sample DIR``: a synthetic dataset in the real data's layout, with a planted, learnable signal."""
    return generate_sample(Path(out_dir), posts=posts, users=users, seed=seed, image_size=image_size, images=images)


def frame_from_table(table: pa.Table) -> Frame:
    """A training or serving frame (as a table, or read back from its file) as the ``Frame`` the model's
    preprocessing takes: ``Preprocessor.from_card(card).transform(frame_from_table(t))``."""
    return Frame.from_arrow(table)


def store_tables() -> pa.Table:
    """The store's tables and what each column means: ``table``, ``about`` (the table), ``column``, ``type``,
    ``meaning``, in the schema's order, ``post_features`` after ``posts``. Read from a store made for the
    purpose (one post, ingested and featurized), the comments of ``sql/schema.sql`` and
    ``igcli.features.schema.POST_FEATURES_MEANING``."""
    with tempfile.TemporaryDirectory(prefix="igcli-tables-") as tmp:
        db, posts = Path(tmp) / "store.duckdb", Path(tmp) / "posts.csv"
        posts.write_text("post_id,username,posted_at,likes\np1,someone,2020-01-01,10\n", encoding="utf-8")
        ingest_posts(posts, db=db)
        featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
        with store.opened(db, read_only=True) as con:
            columns = con.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                                  "WHERE table_schema = 'main' ORDER BY ordinal_position").fetchall()
    notes = store.schema_comments()
    notes["post_features"] = {"about": "One row per featurized post: its point-in-time features (`featurize`); "
                                       "the training frame reads it.", "columns": POST_FEATURES_MEANING}
    order = [t for t in notes if t != "post_features"]
    order.insert(order.index("posts") + 1, "post_features")
    rank = {t: i for i, t in enumerate(order)}
    rows = sorted(columns, key=lambda r: rank.get(r[0], len(rank)))   # stable: each table's column order stays
    out = {k: [] for k in ("table", "about", "column", "type", "meaning")}
    for table, column, typ in rows:
        note = notes.get(table, {"about": "", "columns": {}})
        for k, v in zip(out, (table, note["about"], column, typ, note["columns"].get(column, "")), strict=True):
            out[k].append(v)
    return pa.Table.from_pydict(out)
