"""``igcli features``: the store's frames for the user's own tools, as pyarrow tables and Parquet / CSV / Arrow files.

    from igcli.commands.features import training_table, serving_table, user_features, write_table
    table = training_table("igcli.duckdb")                  # what `igcli train` fits on
    write_table(table, "train.parquet")

There is no feature logic here: each frame is one of the store's two reads (``igcli.features.frames``), written
out through ``Frame.to_arrow``.

- **training**: ``training_frame`` with the image sources ``train`` picks by default (``choose_sources``), the rows
  ``train`` fits and evaluates on (``labelled_rows``, likes > 0), in the store's post order.
- **serving**: ``serving_batch`` with a model card's feature parameters for the posts of a file, ingested and
  with image features computed exactly as ``score`` does before it reads them, or for post ids already stored:
  what ``score`` feeds the model (``Frame.from_arrow`` + the card's ``Preprocessor`` + its ONNX file give its
  predictions).
- **users**: user features as of any time. Each (username, as_of) is answered by the serving read of a post
  the user would make at as_of, inserted in a transaction that is rolled back (``sql/frames.sql``): the user's
  history strictly before as_of, its timing and counts, its audience values from a snapshot observed at or
  before as_of. One user's as_of values are computed in separate rounds (one user's posts in one batch see
  each other), so the work grows with the most rows any one user has.
"""

from __future__ import annotations

import csv
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from igcli import store
from igcli.commands.ingest import ingest_posts
from igcli.commands.score import ScoreOptions, choose_model, serving_frame
from igcli.commands.train import TrainOptions, choose_sources, labelled_rows
from igcli.engines import get_engine
from igcli.errors import FeatureMismatch, InputError
from igcli.features.frames import available_sources, serving_batch, training_frame
from igcli.features.metadata import DEFAULT_HALF_LIFE_DAYS
from igcli.model.export import load_card

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arrow": "arrow", ".ipc": "arrow",
           ".feather": "arrow"}
ENTITY_COLUMNS = ("username", "as_of")


@dataclass
class FramesOptions:
    """Which frame ``export_frame`` writes: ``users`` with ``entities``, ``serving`` with ``posts`` or ``ids``,
    else ``training``."""

    entities: Path | None = None             # CSV / Parquet with username, as_of
    posts: Path | None = None                # a batch to read as score would (ingested first)
    ids: Path | None = None                  # post ids already stored, one per line or a post_id column
    model: str = "best"                      # serving: whose card's feature parameters and image sources
    exports_dir: Path = Path("exports")
    images_dir: Path | None = None           # serving --posts: image paths are relative to it
    columns: tuple[str, ...] | None = None   # chosen and ordered; None = all
    objects_source: str | None = None        # training: as `igcli train` takes them
    aesthetics_source: str | None = None

    @property
    def frame(self) -> str:
        return "users" if self.entities else "serving" if (self.posts or self.ids) else "training"


@dataclass
class FramesResult:
    frame: str
    rows: int
    columns: list[str]
    path: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- frames

def training_table(db: Path | str = store.DEFAULT_DB, con: duckdb.DuckDBPyConnection | None = None,
                   objects_source: str | None = None, aesthetics_source: str | None = None,
                   columns: Sequence[str] | None = None) -> pa.Table:
    """The training frame: one row per labelled post (likes > 0) with every input the model can use as of
    that post's time, its label (``ln_likes``), user, time and id; exactly the rows and values ``igcli train``
    loads. Image columns come from the sources ``train`` would pick (``objects_source`` / ``aesthetics_source``
    as its options take them; a branch without stored features is left out)."""
    with store.opened(db, con, read_only=con is None) as con:
        branches = tuple(b for b, found in available_sources(con).items() if found)
        sources = choose_sources(con, TrainOptions(objects_source=objects_source,
                                                   aesthetics_source=aesthetics_source), branches)
        frame = training_frame(con, None, sources["objects"], sources["aesthetics"])
    rows, _zero = labelled_rows(frame)
    if len(rows) < len(frame):                  # else every row is kept: no copy
        frame = frame.take(rows)
    return select(frame.to_arrow(), columns)


def serving_table(db: Path | str = store.DEFAULT_DB, posts: Path | str | None = None,
                  ids: Sequence[str] | None = None, model: str = "best", exports_dir: Path | str = "exports",
                  images_dir: Path | str | None = None, columns: Sequence[str] | None = None,
                  con: duckdb.DuckDBPyConnection | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> pa.Table:
    """The serving batch of a model: the rows ``score`` feeds it, for the posts of ``posts`` (ingested into the
    store and their image features computed, as ``score`` does) or the stored posts ``ids``, in time order."""
    if (posts is None) == (ids is None):
        raise InputError("name the posts of the serving frame: a file of posts (--posts) or stored ids (--ids)")
    opts = ScoreOptions(model=model, exports_dir=Path(exports_dir), images_dir=Path(images_dir) if images_dir else None)
    with store.opened(db, con) as con:
        card = load_card(choose_model(con, model, Path(exports_dir))[0])     # the model `score` would use
        if posts is not None:
            ing = ingest_posts(posts, con=con, images_dir=opts.images_dir, keep_ids=True, progress=progress)
            ids = ing.post_ids
            if not ids:
                raise InputError(f"no post of {posts} could be loaded ({ing.rejected} rejected): see `igcli status`")
        else:
            ids = list(dict.fromkeys(ids))
            _check_stored(con, ids)
        frame = serving_frame(con, card, list(ids), opts, get_engine(opts.engine, opts.ray), progress)
    return select(frame.to_arrow(), columns)


def _check_stored(con: duckdb.DuckDBPyConnection, ids: list[str]) -> None:
    if not ids:
        raise InputError("no post id given: one post_id per line")
    store.temp_table(con, "igc_want", {"post_id": ("VARCHAR", ids)})
    missing = con.execute("SELECT post_id FROM igc_want WHERE post_id NOT IN (SELECT post_id FROM posts)").fetchall()
    con.execute("DROP TABLE igc_want")
    if missing:
        raise InputError(f"{len(missing)} post ids are not in the store (first: {missing[0][0]!r}): ingest them, or "
                         "pass their file with --posts")


def user_features(entities: Any, db: Path | str = store.DEFAULT_DB, columns: Sequence[str] | None = None,
                  con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
    """User features as of any time, Feast-style: one row per entity row, in its order, answering
    (``username``, ``as_of``) with what the store knew strictly before ``as_of`` (module docstring). ``entities``:
    a CSV or Parquet file, a pyarrow table, a list of dicts, or any data frame DuckDB scans (pandas, polars)
    with those two columns; ``as_of`` a date or timestamp (ISO 8601 text: a zone is honoured, none is UTC)."""
    with store.opened(db, con) as con:
        n = _load_entities(con, entities)
        store.run_block(con, "frames", "entities", {"prefix": f"igcli-as-of:{uuid.uuid4().hex}:"})
        bad = con.execute("SELECT i, username, as_of_text FROM igc_entities WHERE username IS NULL OR as_of IS NULL "
                          "ORDER BY i LIMIT 1").fetchall()
        if bad:
            i, user, text = bad[0]
            what = "no username" if user is None else f"as_of {text!r} is not a date or timestamp (ISO 8601)"
            raise InputError(f"entity row {i}: {what}")
        card = {"model_id": "user features", "backbones": {}, "feature_params": _store_params(con)}
        answers = []
        rounds = con.execute("SELECT coalesce(max(round), 0) FROM igc_entity_pairs").fetchall()[0][0]
        for r in range(1, rounds + 1):
            con.execute("BEGIN TRANSACTION")
            try:
                store.run_block(con, "frames", "entity_posts", {"round": r})
                ids = [row[0] for row in con.execute(
                    "SELECT post_id FROM igc_entity_pairs WHERE round = ?", [r]).fetchall()]
                serving_batch(con, card, ids)
                answers.append(_arrow(con, "entity_rows", {"round": r}))
            finally:
                con.execute("ROLLBACK")
        con.register("igc_entity_answers", pa.concat_tables(answers))
        try:
            table = _arrow(con, "entity_answers")
        finally:
            con.unregister("igc_entity_answers")
        con.execute("DROP TABLE IF EXISTS igc_entity_in; DROP TABLE IF EXISTS igc_entities; "
                    "DROP TABLE IF EXISTS igc_entity_pairs")
    if table.num_rows != n:      # every pair was answered in its round: anything else is a bug
        raise FeatureMismatch(f"{n - table.num_rows} of {n} entity rows got no answer: report this as a bug")
    return select(table, columns)


def _arrow(con: duckdb.DuckDBPyConnection, block: str, params: dict | None = None) -> pa.Table:
    """The rows of one SELECT block of ``sql/frames.sql`` as Arrow."""
    return con.sql(store.sql_blocks("frames")[block], params=params).to_arrow_table()


def _load_entities(con: duckdb.DuckDBPyConnection, entities: Any) -> int:
    """``entities`` into the temp table ``igc_entity_in`` (i from 1 in their order, username, as_of_text), with
    ingest's date parser (its macros) ready; returns the row count."""
    if isinstance(entities, str | Path):
        path = Path(entities)
        if not path.is_file():
            raise InputError(f"no such entities file: {path}")
        reader = "read_parquet(?)" if path.suffix.lower() in (".parquet", ".pq") else \
            "read_csv(?, all_varchar = true, header = true)"
        try:
            source = con.sql(f"SELECT * FROM {reader}", params=[str(path)]).to_arrow_table()  # one of two constants
        except duckdb.Error as err:
            raise InputError(f"cannot read the entities file {path}: {str(err).splitlines()[0]}") from None
    elif isinstance(entities, list):
        source = {c: np.array([None if row.get(c) is None else str(row.get(c)) for row in entities], dtype=object)
                  for c in ENTITY_COLUMNS}
    else:
        source = entities                         # an Arrow table or a data frame: DuckDB scans it as it is
    con.register("igc_entity_src", source)
    try:
        names = [d[0] for d in con.execute("SELECT * FROM igc_entity_src LIMIT 0").description]
        lacking = [c for c in ENTITY_COLUMNS if c not in names]
        if lacking:
            raise InputError(f"the entities lack the column(s) {', '.join(lacking)}: give username and as_of "
                             f"(found: {', '.join(names) or 'none'})")
        con.execute("CREATE OR REPLACE TEMP TABLE igc_entity_src_rows AS SELECT username::VARCHAR AS username, "
                    "as_of::VARCHAR AS as_of_text FROM igc_entity_src")
    finally:
        con.unregister("igc_entity_src")
    # numbered here, by the table's own row order (a window over a parallel scan may not keep it)
    n = con.execute("SELECT count(*) FROM igc_entity_src_rows").fetchall()[0][0]
    if not n:
        raise InputError("the entities have no rows: one row per username and as_of")
    con.execute("CREATE OR REPLACE TEMP TABLE igc_entity_in AS SELECT rowid + 1 AS i, * FROM igc_entity_src_rows")
    con.execute("DROP TABLE igc_entity_src_rows")
    store.run_block(con, "ingest", "macros")
    return n


def _store_params(con: duckdb.DuckDBPyConnection) -> dict:
    """The feature parameters the store was featurized with (point in time always), or the defaults before
    the first featurize."""
    rows = con.execute("SELECT hashtag_source, half_life_days FROM feature_state").fetchall()
    source, half_life = rows[0] if rows else ("store-frequency", DEFAULT_HALF_LIFE_DAYS)
    return {"hashtag_source": source, "half_life_days": half_life, "leaky_user_stats": False}


# ---------------------------------------------------------------------------------------------- output

def select(table: pa.Table, columns: Sequence[str] | None) -> pa.Table:
    """``table`` with ``columns`` only, in that order (None: all)."""
    if not columns:
        return table
    unknown = [c for c in columns if c not in table.column_names]
    if unknown:
        raise InputError(f"no column {', '.join(map(repr, unknown))} in this frame: choose from "
                         f"{', '.join(table.column_names)}")
    return table.select(list(dict.fromkeys(columns)))


def write_table(table: pa.Table, path: Path | str) -> str:
    """Parquet (``.parquet``, ``.pq``), CSV (``.csv``) or Arrow IPC (``.arrow``, ``.ipc``, ``.feather``) by
    suffix, written under a temporary name and renamed when complete."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"--out {path}: name a .parquet, .csv or .arrow file")
    lists = [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
    if fmt == "csv" and lists:
        raise InputError(f"CSV cannot hold the list column(s) {', '.join(lists)}: write .parquet or .arrow, or "
                         "leave them out with --columns")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        elif fmt == "csv":
            pcsv.write_csv(table, tmp)
        else:
            with ipc.new_file(tmp, table.schema) as writer:
                writer.write_table(table)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {err.strerror or err}") from None
    return str(path)


def read_ids(path: Path | str) -> list[str]:
    """Post ids from a file: one per line, or the ``post_id`` column of a CSV with a header."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file of post ids: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r and any(v.strip() for v in r)]
    col = rows[0].index("post_id") if rows and "post_id" in rows[0] else None
    if col is None:
        return [r[0].strip() for r in rows]
    return [r[col].strip() for r in rows[1:] if len(r) > col]


def export_frame(out: Path | str, db: Path | str = store.DEFAULT_DB, opts: FramesOptions | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> FramesResult:
    """Write the frame ``opts`` names to ``out`` (format from the suffix); what ``igcli features`` runs."""
    opts = opts or FramesOptions()
    if opts.entities and (opts.posts or opts.ids):
        raise InputError("--entities asks for user features, --posts / --ids for a serving frame: give one")
    if opts.posts and opts.ids:
        raise InputError("give the serving frame's posts once: --posts FILE or --ids FILE")
    if Path(out).suffix.lower() not in FORMATS:
        raise InputError(f"--out {out}: name a .parquet, .csv or .arrow file")
    t0 = time.perf_counter()
    if opts.frame == "users":
        table = user_features(opts.entities, db, opts.columns)
    elif opts.frame == "serving":
        table = serving_table(db, opts.posts, read_ids(opts.ids) if opts.ids else None, opts.model, opts.exports_dir,
                              opts.images_dir, opts.columns, progress=progress)
    else:
        table = training_table(db, objects_source=opts.objects_source, aesthetics_source=opts.aesthetics_source,
                               columns=opts.columns)
    t1 = time.perf_counter()
    path = write_table(table, out)
    t2 = time.perf_counter()
    return FramesResult(opts.frame, table.num_rows, table.column_names, path, t2 - t0,
                        {"read_s": t1 - t0, "write_s": t2 - t1})
