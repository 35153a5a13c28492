"""The DuckDB feature store: one file holds every table (default ``./igcli.duckdb``).

``connect(path)`` opens (and creates or migrates) the store; ``load_sql(name)`` returns the text of
``sql/<name>.sql``. SQL never takes user values by string formatting: parameters only.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import duckdb
import numpy as np

from igcli.errors import StoreError, StoreLocked

DEFAULT_DB = Path("igcli.duckdb")
# 2: ingests.file_key and ingests.summary (an igcli of version 1 inserts into ingests by position, so it
# must refuse this store rather than fail mid-ingest); 3: user_state.med_y / max_y / min_y (an igcli of
# version 2 would write user_state rows without them); 4: predictions.likes_known and the drivers, score_batches,
# batch_drift, evaluations (an igcli of version 3 would replace a prediction made before the likes were known with
# one made after, and score without recording drift), and runs.chosen_by (an igcli of version 3 inserts into runs
# by position)
SCHEMA_VERSION = 4
# user_state's order statistics from the sorted values, for the rows of a store made before version 3
_FILL_ORDER_STATS = ("UPDATE user_state SET med_y = igc_median_sorted(sorted_y), max_y = sorted_y[-1], "
                     "min_y = sorted_y[1]")
SCHEMA_FILES = ("schema",)
# A DuckDB database file: bytes 8..12 of its main header
DUCKDB_MAGIC, DUCKDB_MAGIC_END = b"DUCK", 12

_PKG_DIR = Path(__file__).resolve().parent


def sql_dir() -> Path:
    """``igcli/sql`` inside an installed wheel, else the repository's top-level ``sql/``."""
    for candidate in (_PKG_DIR / "sql", _PKG_DIR.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise StoreError("igcli's SQL files are missing: reinstall igcli (pip install -e .)")


@cache
def load_sql(name: str) -> str:
    return (sql_dir() / f"{name}.sql").read_text(encoding="utf-8")


def split_statements(text: str) -> list[str]:
    """Split a file of ';'-terminated statements (no ';' inside literals in our files)."""
    text = re.sub(r"--[^\n]*", "", text)
    return [s.strip() for s in text.split(";") if s.strip()]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _translate(err: Exception, path: Path) -> Exception:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    if "lock" in msg.lower():
        return StoreLocked(f"{path} is locked by another igcli process; wait for it to finish ({msg})")
    if "read-only" in msg.lower() or "permission denied" in msg.lower():
        return StoreError(
            f"cannot write the store {path}: {msg}. Pass --db with a writable path, or use a "
            "read-only command"
        )
    if any(w in msg.lower() for w in ("could not read", "not a valid", "corrupt", "checksum")):  # damaged
        return StoreError(f"cannot open the store {path}: {msg}. The file looks damaged: restore a copy of it, "
                          "or pass another --db")
    return StoreError(f"cannot open the store {path}: {msg}. Pass --db with a path in a writable folder")


def connect(path: Path | str = DEFAULT_DB, read_only: bool = False, create: bool = True
            ) -> duckdb.DuckDBPyConnection:
    """Open the store at ``path``, creating it (and its schema) on first use unless ``create`` is False."""
    path = Path(path)
    if (read_only or not create) and not path.exists():
        raise StoreError(f"no store at {path}: check the --db path, or create the store with "
                         f"`igcli ingest POSTS --db {path}`")
    if not read_only and not path.parent.exists():
        raise StoreError(f"the folder {path.parent} does not exist: create it or pass another --db")
    _check_store_file(path, read_only)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except (duckdb.IOException, duckdb.Error) as err:
        raise _translate(err, path) from err
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")  # DuckDB's own bar would write into our stdout
    if not read_only:
        try:
            _migrate(con)
        except duckdb.Error as err:
            con.close()
            raise _translate(err, path) from err
    return con


def _check_store_file(path: Path, read_only: bool) -> None:
    """A store is a DuckDB database file, or a path to make one at (absent, or an empty file). Anything else
    is refused before DuckDB sees it: DuckDB would open a CSV or Parquet file given as ``--db`` as a view in
    an in-memory database, and everything written to it would be lost at exit."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise StoreError(f"cannot open the store {path}: {err.strerror}; pass another --db") from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"--db {path} is a folder: pass a store file name, e.g. {path / DEFAULT_DB}")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"--db {path} is not a regular file (a pipe, socket or device): pass a store file")
    if st.st_size == 0:
        if read_only:
            raise StoreError(f"{path} is empty, not a store yet: run `igcli ingest POSTS --db {path}` first")
        os.unlink(path)    # nothing to lose; DuckDB refuses an existing empty file and makes the store anew
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            head = os.read(fd, DUCKDB_MAGIC_END)
        finally:
            os.close(fd)
    except OSError as err:
        raise StoreError(f"cannot read the store {path}: {err.strerror}; pass another --db") from None
    if head[DUCKDB_MAGIC_END - len(DUCKDB_MAGIC):] != DUCKDB_MAGIC:
        raise StoreError(f"--db {path} is not a DuckDB store (its first bytes are not DuckDB's); nothing was "
                         "written to it: pass the store file, or a new name to create one")


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("BEGIN TRANSACTION")
    for name in SCHEMA_FILES:
        for stmt in split_statements(load_sql(name)):
            con.execute(stmt)
    current = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
    if current is not None and current > SCHEMA_VERSION:
        con.execute("ROLLBACK")
        raise StoreError(
            f"the store has schema version {current}, newer than this igcli ({SCHEMA_VERSION}): upgrade igcli"
        )
    if current is not None and current < 3:
        run_block(con, "features", "macros")
        con.execute(_FILL_ORDER_STATS)
    sy_type = con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'user_tag_state' "
                          "AND column_name = 'sy'").fetchall()
    if sy_type and sy_type[0][0] == "HUGEINT":  # a store made before schema 3 (or by its first commits)
        con.execute("ALTER TABLE user_tag_state ALTER COLUMN sy SET DATA TYPE BIGINT")
    if current is None or current < SCHEMA_VERSION:
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, utcnow()])
    con.execute("COMMIT")


@contextmanager
def opened(db: Path | str, con: duckdb.DuckDBPyConnection | None = None, read_only: bool = False
           ) -> Iterator[duckdb.DuckDBPyConnection]:
    """``con`` as it is, or the store at ``db`` opened for the block and closed after it: a command's one
    connection, which a caller holding one (a test, a benchmark, ``score``'s ingest) passes in."""
    if con is not None:
        yield con
        return
    con = connect(db, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


# Connections (by id) inside a ``transaction`` or ``scratch`` block: a transaction opened there joins the open one
# (DuckDB has no nested transactions, and a failed BEGIN would abort the open one).
_OPEN: set[int] = set()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: an exception (or a killed process) leaves the store as it was. Inside another
    ``transaction`` (or a ``scratch`` block) it is part of that one, which commits (or rolls back) it."""
    if id(con) in _OPEN:
        yield con
        return
    con.execute("BEGIN TRANSACTION")
    _OPEN.add(id(con))
    try:
        yield con
    except BaseException:
        _OPEN.discard(id(con))
        con.execute("ROLLBACK")
        raise
    _OPEN.discard(id(con))
    con.execute("COMMIT")


@contextmanager
def scratch(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A transaction that is always rolled back: whatever the block writes (ingest, features, image rows)
    is seen inside it and gone after it, also when it fails."""
    if id(con) in _OPEN:
        raise RuntimeError("a scratch block cannot run inside a transaction")
    con.execute("BEGIN TRANSACTION")
    _OPEN.add(id(con))
    try:
        yield con
    finally:
        _OPEN.discard(id(con))
        con.execute("ROLLBACK")


@contextmanager
def setting(con: duckdb.DuckDBPyConnection, name: str, value) -> Iterator[None]:
    """``con`` with DuckDB setting ``name`` (ours, never a user's text) at ``value`` for the block, or at
    ``value(callers_value)`` when it is a function; the caller's value is given back after it, also when it fails."""
    callers = con.execute("SELECT current_setting(?)", [name]).fetchall()[0][0]
    con.execute(f"SET {name} = ?", [value(callers) if callable(value) else value])
    try:
        yield
    finally:
        con.execute(f"SET {name} = ?", [callers])


def table_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    names = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY table_name"
    ).fetchall()]
    return {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchall()[0][0] for n in names}


@cache
def sql_blocks(name: str) -> dict[str, str]:
    """Named statements of ``sql/<name>.sql``: each starts at a ``-- name: <block>`` line."""
    blocks: dict[str, str] = {}
    current = None
    for line in load_sql(name).splitlines():
        m = re.match(r"--\s*name:\s*(\w+)", line)
        if m:
            current = m.group(1)
            blocks[current] = ""
        elif current is not None:
            blocks[current] += line + "\n"
    return blocks


def run_block(con: duckdb.DuckDBPyConnection, file: str, block: str, params: dict | None = None):
    """Execute every statement of one named block with the ``$name`` parameters it uses.

    Returns the connection, so a block ending in a SELECT can be fetched from.
    """
    params = params or {}
    for stmt in split_statements(sql_blocks(file)[block]):
        used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", stmt)}
        con.execute(stmt, used or None)
    return con


# Python values reach DuckDB as numpy arrays (DuckDB scans a dict of them) and come back with ``fetchnumpy``
# on the paths every ingest, featurize and score runs. pyarrow's ``pa.array`` / ``pa.table`` /
# ``to_numpy`` are kept off them: their first call in a process imports pandas where it is installed (it
# is, with the ray extra), 0.45-0.55 s here, more than a whole incremental featurize.

def temp_table(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, tuple[str, object]]) -> None:
    """``CREATE OR REPLACE TEMP TABLE name`` with one typed column per entry of ``columns``:
    ``{"post_id": ("VARCHAR", ids)}``, the values a sequence of Python scalars (None is NULL) or a numpy
    array, in order. ``name`` and the types are the caller's constants."""

    arrays = {}
    for col, (_, values) in columns.items():
        if isinstance(values, np.ndarray):
            arrays[col] = values
        else:
            arr = np.empty(len(values), dtype=object)   # one Python object per row, whatever the values
            arr[:] = list(values)
            arrays[col] = arr
    select = ", ".join(f'"{col}"::{sql_type} AS "{col}"' for col, (sql_type, _) in columns.items())
    con.register("igc_arrays", arrays)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {select} FROM igc_arrays")
    finally:
        con.unregister("igc_arrays")


def float_column(values):
    """A numeric column of ``fetchnumpy`` as float64 with NULL as NaN (a column with NULLs comes back as a
    masked array)."""

    out = np.ma.getdata(values).astype(np.float64)       # one copy (astype, then filled, made two)
    mask = np.ma.getmask(values)
    if mask is not np.ma.nomask:
        out[mask] = np.nan
    return out


def fault_point(name: str) -> None:
    """Fault injection for the kill tests: with ``IGCLI_FAULT=<name>`` the process announces itself on
    stderr and waits to be killed, so a test can SIGKILL it at exactly this point."""

    if os.environ.get("IGCLI_FAULT") == name:
        print(f"IGCLI_FAULT reached {name}", file=sys.stderr, flush=True)
        time.sleep(600)


def schema_comments() -> dict[str, dict]:
    """What ``sql/schema.sql`` says about each table and column: ``{table: {"about": text, "columns": {column:
    text}}}``. A table's text is the comment block right above its ``CREATE TABLE``; a column's is the comment on
    its line in ``CREATE TABLE`` (else in ``ALTER TABLE ... ADD COLUMN``) and on the comment-only lines right after
    it."""
    tables: dict[str, dict] = {}
    block: list[str] = []
    table = column = None
    for raw in load_sql("schema").splitlines():
        line = raw.strip()
        code, _, note = line.partition("--")
        code, note = code.strip(), note.strip()
        if not line:
            block, column = [], None
            continue
        if not code:                                   # a comment-only line
            if column is not None and raw.startswith((" ", "\t")):
                tables[column[0]]["columns"][column[1]] += " " + note
            else:
                block.append(note)
                column = None
            continue
        if m := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", code, re.I):
            table = m.group(1)
            tables[table] = {"about": " ".join(block), "columns": {}}
            block, column = [], None
        elif m := re.match(r"ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (\w+)", code, re.I):
            columns = tables[m.group(1)]["columns"]
            if columns.get(m.group(2)):          # declared in CREATE TABLE too: the note there says what it is
                column = None
            else:
                columns[m.group(2)] = note
                column = (m.group(1), m.group(2))
            block = []
        elif table is not None and (m := re.match(r"(\w+)\s+[A-Z]", code)) and not re.match(
                r"(PRIMARY|UNIQUE|FOREIGN|CHECK)\b", code, re.I):
            tables[table]["columns"][m.group(1)] = note
            column = (table, m.group(1))
        else:
            column = None
        if code.endswith(";"):
            table = None
    return tables
