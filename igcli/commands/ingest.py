"""Ingest posts (CSV or Parquet) into the store: validate, reject with reasons, upsert, snapshot.

    from igcli.commands.ingest import ingest_posts
    result = ingest_posts("posts.csv", db="igcli.duckdb")

One file loads in one transaction. Parsing and validation run in DuckDB (``sql/ingest.sql``). The first
load of an empty store reads a CSV once, stages every value and writes from there; into a store with posts
it reads the file twice as a stream (check, then write only new and changed rows). Staged rows beyond
``MEMORY_LIMIT`` spill to disk, so neither path holds a large file in memory;
Python reads the header, places the records DuckDB's parser refused, and probes image files in a thread
pool. A Parquet file is read into memory by pyarrow first.

The same file again. When the store's latest ingest was this very file (same bytes, path, images folder and
encoding, under the same ``REUSE_VERSION``), nothing has been written to posts or snapshots since, so
comparing every row again would find every row unchanged: its outcome is reused (the rows count as unchanged,
its rejects and warnings stay, a new ``ingests`` row records the run) after checking that no image file the
posts point at changed on disk and that no reject depended on the date (a post dated in the future becomes
valid later). Edits made to the store by hand are not seen that way: ``recheck`` (``igcli ingest --recheck``)
compares every row whatever the file. ``keep_ids`` always compares.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from igcli import store
from igcli.errors import InputError
from igcli.files import InputFile, open_input
from igcli.util import sha256_file
from igcli.vision.decode import ImageProbe, probe_many, resolve_image

REQUIRED = ("post_id", "username", "posted_at")
COLUMNS = (
    "post_id", "username", "posted_at", "caption", "hashtags", "mentions", "likes",
    "followers", "following", "user_post_count", "image", "observed_at",
)
PROBLEMS_SHOWN = 10              # posts whose image is not used, named one line each, then a count
MAX_LINE_BYTES = 64 * 1024 * 1024
# Columns of a file: more is refused with the fix named (a CSV of ~1,000 columns would otherwise reach DuckDB's
# expression depth limit as a raw parser error; the real data has 11).
MAX_COLUMNS = 256
# DuckDB's memory while a file loads: beyond it the staged rows and hash tables spill to `<store>.tmp`,
# so a file ten times larger needs disk, not memory (about this much plus ~0.3 GB). Measured: at 1GB a 1M-row
# first load peaked at ~0.8 GiB and 10M rows at ~1.2 GiB; at 512MB, 0.64 and 0.77 GiB for a few % more CPU
# (0.63 and 0.71 GiB since the first load is staged in parallel and written in slices).
MEMORY_LIMIT = "512MB"
# The first load of an empty store writes its posts in slices of this many records (sql/ingest.sql, write_wide).
WRITE_SLICE = 1_000_000
# ... with these optimizers off, so its joins run as written: each builds its hash table on the small side (the
# lines, 16 bytes a record), never on the staged text. Left to them, a file of one slice (up to WRITE_SLICE
# records) had its 1M staged rows hashed: write_wide 1.8-1.9 s against 1.4-1.5 s at 1M rows (bench_ingest).
WRITE_AS_WRITTEN = ("join_order", "build_side_probe_side")
ENCODINGS = {"utf-8": "utf-8-sig", "utf-16": "utf-16", "latin-1": "latin-1"}  # DuckDB name -> Python codec
# The rules a file is loaded by: an earlier ingest of the same file is reused (module docstring) only when it
# was made under the same version. Bump it when ingest would store or reject a file's rows differently.
REUSE_VERSION = 2   # 2: post_id / username NFC-normalised, zero-width and bidi controls removed
FUTURE_DATE = "date more than a year in the future"   # the one reject that depends on when the file is read

_CSV_ERRORS = {
    "TOO MANY COLUMNS": "too many fields",
    "MISSING COLUMNS": "too few fields",
    "UNQUOTED VALUE": "unterminated or misplaced quote (file cut mid-field?)",
    "INVALID ENCODING": "invalid text encoding",
    "LINE SIZE OVER MAXIMUM": f"row longer than {MAX_LINE_BYTES // (1024 * 1024)} MB",
    "INVALID STATE": "malformed CSV row",
}


@dataclass
class IngestResult:
    source: str
    ingest_id: str
    rows_read: int = 0
    loaded: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    reasons: list[tuple[int | None, str | None, str]] = field(default_factory=list)  # first few
    warned: int = 0
    warnings: list[tuple[int | None, str | None, str]] = field(default_factory=list)  # first few
    ignored_columns: list[str] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)  # status -> posts of this file
    seconds: float = 0.0
    post_ids: list[str] = field(default_factory=list, repr=False)  # the file's loaded posts (with keep_ids)
    reused: str | None = None  # the earlier ingest of the same file whose outcome stands (no row compared)
    hints: list[str] = field(default_factory=list)  # unknown columns that look like ours, a missing likes column
    image_problems: list[str] = field(default_factory=list)  # posts of this file whose image is not used
    image_problems_total: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------------------------------------- CSV

def _detect_encoding(path: Path, encoding: str | None) -> str:
    """The encoding DuckDB reads with: as given, UTF-16 when the file starts with its BOM, else UTF-8
    (DuckDB validates it; a file that is not UTF-8 fails as a whole with the fix named)."""
    if encoding:
        if encoding not in ENCODINGS:
            raise InputError(f"unknown --encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
        return encoding
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"
    return "utf-8"


def _read_header(path: Path, encoding: str, name: str | None = None) -> list[str]:
    """The lower-cased column names of ``path`` (read through ``name``, its ``InputFile.name``, when given)."""
    with open(name or path, encoding=ENCODINGS[encoding], newline="") as fh:
        try:
            header = next(csv.reader(fh))
        except StopIteration:
            raise InputError(f"{path} is empty: expected a header line with {', '.join(REQUIRED)}") from None
        except csv.Error as err:
            raise InputError(f"{path}: the header line cannot be read ({err})") from None
        except UnicodeDecodeError:
            raise InputError(f"{path} is not valid {encoding}: if it is Latin-1 / Windows-1252, pass "
                             "--encoding latin-1") from None
    return [h.strip().lstrip("\ufeff").strip().lower() for h in header]


def _map_columns(path: Path, header: list[str]) -> tuple[list[str], list[str]]:
    """Our name for each position (unknown columns become ``extra_<i>``), and the ignored names."""
    if not any(header):
        raise InputError(f"{path} has no usable header: the first line must name the columns")
    if len(header) > MAX_COLUMNS:
        raise InputError(f"{path} has {len(header):,} columns, more than the {MAX_COLUMNS} igcli reads: keep the "
                         f"columns it uses ({', '.join(COLUMNS)}) and drop the others")
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise InputError(f"{path}: the header names column {name!r} twice; rename or drop one")
        seen.add(name)
    missing = [c for c in REQUIRED if c not in seen]
    if missing:
        raise InputError(
            f"{path} lacks required column(s) {', '.join(missing)} (found: {', '.join(h for h in header if h)})"
        )
    names = [h if h in COLUMNS else f"extra_{i}" for i, h in enumerate(header)]
    return names, [h or f"(unnamed column {i + 1})" for i, h in enumerate(header) if h not in COLUMNS]


def column_hints(header: list[str]) -> list[str]:
    """What the ingest summary says about the columns: each unknown one that looks like one of ours ("did you
    mean"), and a missing likes column (the rows load, but train needs likes)."""
    present = set(header)
    hints = []
    for name in header:
        if name and name not in COLUMNS:
            close = difflib.get_close_matches(name, [c for c in COLUMNS if c not in present], n=1, cutoff=0.6)
            if close:
                hints.append(f"column {name!r} is not read: did you mean {close[0]!r}?")
    if "likes" not in present:
        hints.append("no likes column: these posts load without likes (fine for scoring; train needs likes)")
    return hints


def image_problems(con: duckdb.DuckDBPyConnection, post_ids: list[str]) -> tuple[list[str], int]:
    """One line per post of ``post_ids`` whose image could not be used (missing, refused, undecodable), the
    first ``PROBLEMS_SHOWN``, and how many there are."""
    store.temp_table(con, "igc_problem_ids", {"post_id": ("VARCHAR", post_ids)})
    try:
        rows = store.run_block(con, "images", "image_problems", {"shown": PROBLEMS_SHOWN}).fetchall()
    finally:
        con.execute("DROP TABLE IF EXISTS igc_problem_ids")
    total = rows[0][3] if rows else 0
    return [f"{pid}: image {ref!r} not used ({why})" for pid, ref, why, _ in rows], total


def _csv_source(con: duckdb.DuckDBPyConnection, src: InputFile, encoding: str | None):
    """Define the source macros over the CSV file (read through its open descriptor: a name would be taken
    as a glob pattern); returns (params, names, ignored)."""
    path = src.path
    enc = _detect_encoding(src.name, encoding)
    header = _read_header(path, enc, src.name)
    names, ignored = _map_columns(path, header)
    # Every name below is ours (COLUMNS or extra_<i>); the path and types travel as macro arguments.
    cols = _canonical(set(names))
    newlines = " + ".join(f"igc_nl({n})" for n in names)
    reader = ("read_csv(p, header = true, auto_detect = false, columns = c, delim = ',', quote = '\"', "
              "escape = '\"', encoding = e, strict_mode = true, max_line_size = m, buffer_size = 2 * m, {})")
    rejects = "store_rejects = true, rejects_table = 'igc_rej', rejects_scan = 'igc_scan'"
    con.execute(
        f"""CREATE OR REPLACE TEMP MACRO igc_recs(p, c, e, m) AS TABLE
            SELECT {newlines} AS nl, {cols} FROM {reader.format(rejects)}"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP MACRO igc_src(p, c, e, m) AS TABLE
            SELECT row_number() OVER () AS rn, {cols} FROM {reader.format("ignore_errors = true")}"""
    )
    params = {"path": src.name, "columns": {n: "VARCHAR" for n in names}, "encoding": enc,
              "max_line": MAX_LINE_BYTES, "header_lines": 1}
    return params, names, ignored


def _csv_rejects(con: duckdb.DuckDBPyConnection, src: InputFile, params: dict, width: int
                 ) -> list[tuple[int, str]]:
    """Records DuckDB's parser refused, as (physical line, reason); shifts the lines of the rows after them."""
    rejected = con.execute(
        """SELECT line, min(line_byte_position), first(error_type ORDER BY column_idx),
                  max(TRY_CAST(regexp_extract(error_message, 'Found: ([0-9]+)', 1) AS INTEGER)),
                  first(csv_line)
           FROM igc_rej GROUP BY line ORDER BY line"""
    ).fetchall()
    if not rejected:
        return []
    lines = _lines_at(src.name, [r[1] or 0 for r in rejected])
    bad_encoding = [i for i, r in enumerate(rejected) if r[2] == "INVALID ENCODING"]
    if bad_encoding:
        raise InputError(f"{src.path} is not valid {params['encoding']} (first bad bytes on line "
                         f"{lines[bad_encoding[0]]}): if it is Latin-1 / Windows-1252, pass --encoding latin-1")
    out: list[tuple[int, str]] = []
    shifts: dict[int, int] = {}
    total = 0
    for m, ((rec, _, etype, found, csv_line), line) in enumerate(zip(rejected, lines, strict=True)):
        total += 1 + (csv_line or "").rstrip("\r\n").count("\n")
        # DuckDB numbers records from 1 with the header as record 1: `rec - 2 - m` parsed rows precede
        # this reject, so rows from rn = rec - 1 - m on start `total` lines further down
        shifts[rec - 1 - m] = total
        reason = _CSV_ERRORS.get(etype, f"malformed CSV row ({etype.lower()})")
        if etype in ("TOO MANY COLUMNS", "MISSING COLUMNS") and found:
            reason += f" (expected {width}, found {found})"
        out.append((line, reason))
    store.temp_table(con, "igc_shift_in", {"from_rn": ("BIGINT", list(shifts)),
                                           "add": ("BIGINT", list(shifts.values()))})
    try:
        con.execute(
            """UPDATE igc_lines SET line = igc_lines.line + x.add
               FROM (SELECT r.rn, s.add FROM igc_lines r ASOF JOIN igc_shift_in s ON r.rn >= s.from_rn) x
               WHERE igc_lines.rn = x.rn"""
        )
    finally:
        con.execute("DROP TABLE igc_shift_in")
    return out


def _lines_at(path: Path | str, positions: list[int]) -> list[int]:
    """The 1-based line of each byte offset (sorted ascending), reading the file once in blocks."""
    out, line, done = [], 1, 0
    todo = iter(positions)
    pos = next(todo, None)
    with open(path, "rb") as fh:
        while pos is not None:
            block = fh.read(1 << 24)
            while pos is not None and pos < done + len(block):
                out.append(line + block.count(b"\n", 0, pos - done))
                pos = next(todo, None)
            if not block:
                out += [line] * (len(positions) - len(out))
                break
            line += block.count(b"\n")
            done += len(block)
    return out


# ------------------------------------------------------------------------------------------ Parquet

def _parquet_source(con: duckdb.DuckDBPyConnection, src: InputFile):
    path = src.path
    try:
        with open(src.name, "rb") as fh:    # the open file, read whole: a name could be taken for a dataset
            table = pq.read_table(fh)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path} cannot be read as Parquet: {err}") from None
    header = [c.strip().lower() for c in table.column_names]
    names, ignored = _map_columns(path, header)
    cols = []
    for name, col in zip(names, table.columns, strict=True):
        if name.startswith("extra_"):
            continue
        try:
            cols.append(pc.cast(col, pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InputError(
                f"{path}: column {name!r} has type {col.type}, which cannot be read as text; "
                "write it as a string, number or timestamp"
            ) from None
    kept = [n for n in names if not n.startswith("extra_")]
    con.register("igc_parquet", pa.table(cols, names=kept))
    cols_sql = _canonical(set(kept))  # our names only
    # Parquet has no physical lines: line is the 1-based row number.
    con.execute(f"""CREATE OR REPLACE TEMP MACRO igc_recs(p, c, e, m) AS TABLE
                    SELECT 0 AS nl, {cols_sql} FROM igc_parquet""")
    con.execute(f"""CREATE OR REPLACE TEMP MACRO igc_src(p, c, e, m) AS TABLE
                    SELECT row_number() OVER () AS rn, {cols_sql} FROM igc_parquet""")
    return {"path": src.name, "columns": {}, "encoding": "", "max_line": 0, "header_lines": 0}, kept, ignored


def _stage_view(con: duckdb.DuckDBPyConnection) -> int:
    """Define the view ``staged`` over ``staged_w`` with each record's number ``rn`` (1 = the file's first
    parsed record); returns the rowid of record 1. The table holds the records in file order (DuckDB keeps
    the insertion order of a CTAS from one reader, and a table's rowids follow it), so rn is the rowid's
    rank; the rowids of a table made in this transaction start at a large offset, hence the base."""
    base, top, n = con.execute("SELECT min(rowid), max(rowid), count(*) FROM staged_w").fetchall()[0]
    base = int(base or 0)
    if n and top - base + 1 != n:  # would break rn = rank; never seen (a DuckDB that numbers rows otherwise)
        raise RuntimeError(f"staged rows are not numbered consecutively ({base}..{top} for {n} rows): "
                           "this DuckDB version stores rows differently; please report it")
    con.execute(f"CREATE OR REPLACE TEMP VIEW staged AS "
                f"SELECT (rowid - {base} + 1)::BIGINT AS rn, * EXCLUDE (nl) FROM staged_w")
    return base


def _canonical(present: set[str]) -> str:
    return ", ".join(c if c in present else f"NULL::VARCHAR AS {c}" for c in COLUMNS)


# --------------------------------------------------------------------------------------------- main

def _image_keys(
    con: duckdb.DuckDBPyConnection, images_dir: Path, progress: Callable[[str, int, int], None] | None,
) -> None:
    refs = [r[0] for r in con.execute(
        "SELECT DISTINCT image_ref FROM staged WHERE image_ref IS NOT NULL AND errs IS NULL "
        "AND rn NOT IN (SELECT rn FROM row_errors)").fetchall()]
    keys, refused, to_probe = [], {}, []
    known = dict(
        con.execute("SELECT path, (byte_size, mtime_ns, status) FROM images").fetchall()
    )
    for ref in refs:
        key, why = resolve_image(ref, images_dir)
        keys.append((ref, key))
        if why:
            refused[key] = why
            continue
        old = known.get(key)
        if old and old[2] in ("ok", "corrupt"):
            try:
                st = Path(key).stat()
                if (st.st_size, st.st_mtime_ns) == (old[0], old[1]):
                    continue
            except OSError:
                pass
        to_probe.append(key)
    to_probe = sorted(set(to_probe))
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress("images", done, len(to_probe))

    probes: list[ImageProbe] = probe_many(to_probe, progress=tick) if to_probe else []
    probes += [ImageProbe(key, "unsafe_path", why) for key, why in refused.items()]
    store.temp_table(con, "image_keys", {"image_ref": ("VARCHAR", [r for r, _ in keys]),
                                         "image_path": ("VARCHAR", [k for _, k in keys])})
    if probes:
        fields = {"path": "VARCHAR", "status": "VARCHAR", "error": "VARCHAR", "sha256": "VARCHAR",
                  "byte_size": "BIGINT", "mtime_ns": "BIGINT", "width": "INTEGER", "height": "INTEGER"}
        store.temp_table(con, "igc_probes", {f: (t, [getattr(p, f) for p in probes]) for f, t in fields.items()})
        con.execute(
            "INSERT OR REPLACE INTO images SELECT path, status, error, sha256, byte_size, mtime_ns, "
            "width, height, ? FROM igc_probes", [store.utcnow()]
        )
        con.execute("DROP TABLE igc_probes")


def ingest_posts(
    source: Path | str,
    db: Path | str = store.DEFAULT_DB,
    images_dir: Path | str | None = None,
    encoding: str | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    keep_ids: bool = False,
    recheck: bool = False,
) -> IngestResult:
    """Load one CSV or Parquet file of posts; bad rows go to ``rejects``, good rows are upserted. The same
    file again right after its last ingest reuses that outcome unless ``recheck`` (module docstring)."""
    t0 = time.perf_counter()
    source = Path(source)
    images_dir = Path(images_dir) if images_dir else source.parent
    with open_input(source, "posts file") as src:
        if not images_dir.is_dir():
            raise InputError(f"images folder {images_dir} does not exist: pass --images DIR")
        with store.opened(db, con) as con:
            return _ingest_posts(con, src, images_dir, encoding, progress, keep_ids, recheck, t0)


def _ingest_posts(con: duckdb.DuckDBPyConnection, src_file: InputFile, images_dir: Path, encoding: str | None,
                  progress: Callable[[str, int, int], None] | None, keep_ids: bool, recheck: bool,
                  t0: float) -> IngestResult:
    """The file is read through ``src_file``'s descriptor only, and refused (the transaction rolled back)
    when it was written to between its first read and its last."""
    source = src_file.path
    now = store.utcnow()
    result = IngestResult(source=str(source.resolve()), ingest_id=uuid.uuid4().hex[:12])
    is_csv = source.suffix.lower() not in (".parquet", ".pq")
    hashing = None
    settings = ExitStack()      # the caller's settings come back when the load ends, whichever way
    try:
        # rn is the file order of the records (their rank in the staged table, and a streaming row_number
        # over the reader on the second read), so the reader's order must be kept
        settings.enter_context(store.setting(con, "preserve_insertion_order", True))
        settings.enter_context(store.setting(con, "memory_limit", MEMORY_LIMIT))
        store.run_block(con, "ingest", "macros")
        if is_csv:
            src, names, ignored = _csv_source(con, src_file, encoding)
        else:
            src, names, ignored = _parquet_source(con, src_file)
        result.ignored_columns = ignored
        result.hints = column_hints([n for n in names if not n.startswith("extra_")] + ignored)
        present = set(names)
        flags = {f"has_{c}": c in present for c in ("caption", "hashtags", "mentions", "image")}
        full = {"full": flags["has_caption"] and flags["has_image"]}  # compares every stored value
        hashing = ThreadPoolExecutor(1)
        sha = hashing.submit(sha256_file, src_file.name)  # hashlib releases the GIL: it overlaps the load
        with store.transaction(con):
            con.execute("DROP TABLE IF EXISTS igc_rej; DROP TABLE IF EXISTS igc_scan")
            store.run_block(con, "ingest", "backfill")
            if not con.execute("SELECT count(*) FROM key_hash WHERE hash_of_igcli = hash('igcli')").fetchall()[0][0]:
                store.run_block(con, "ingest", "rekey")
            if not (recheck or keep_ids) and _reuse(con, result, sha, images_dir, encoding, now):
                src_file.check_unchanged()
                return result
            # an empty store has nothing to compare with: stage every value and read the file once
            wide = {"wide": not con.execute("SELECT count(*) FROM (SELECT 1 FROM posts LIMIT 1)").fetchall()[0][0]}
            try:
                store.run_block(con, "ingest", "stage", {"now": now, **flags, **src, **wide})
            except duckdb.Error as err:
                raise InputError(f"{source} cannot be read: {str(err).splitlines()[0]}") from None
            rowid_base = _stage_view(con)
            store.run_block(con, "ingest", "lines", src)
            store.run_block(con, "ingest", "match", {**flags, **full})
            csv_rejects = _csv_rejects(con, src_file, src, len(names)) if is_csv else []
            store.run_block(con, "ingest", "row_errors")
            _image_keys(con, images_dir, progress)
            store.run_block(con, "ingest", "plan")
            counts = store.run_block(con, "ingest", "counts", flags).fetchall()
            result.images = {status: sum(n) for status, *n in counts}
            result.loaded, result.updated, result.unchanged = (sum(c[i] for c in counts) for i in (1, 2, 3))
            parsed = con.execute("SELECT count(*) FROM staged").fetchall()[0][0]
            write = {"now": now, "source": result.source, "pick_new": result.loaded <= parsed - result.loaded,
                     **flags, **src}
            if wide["wide"]:
                # the plan as written (sql/ingest.sql, write_wide): the hash join builds on the narrow lines
                with store.setting(con, "disabled_optimizers",
                                   lambda callers: ",".join(filter(None, (callers, *WRITE_AS_WRITTEN)))):
                    for lo in range(1, parsed + 1, WRITE_SLICE):
                        store.run_block(con, "ingest", "write_wide",
                                        {**write, "rowid_base": rowid_base, "lo": lo, "hi": lo + WRITE_SLICE})
            elif result.loaded or result.updated:
                store.run_block(con, "ingest", "pick", write)
            if result.loaded and not wide["wide"]:
                store.run_block(con, "ingest", "write_new", write)
            if result.updated:
                store.run_block(con, "ingest", "write_changed", write)
            store.run_block(con, "ingest", "snapshots", write)
            store.temp_table(con, "igc_csv_rejects", {"line": ("BIGINT", [r[0] for r in csv_rejects]),
                                                      "reason": ("VARCHAR", [r[1] for r in csv_rejects])})
            con.execute("DELETE FROM rejects WHERE source_file = ?", [result.source])  # latest ingest wins
            con.execute(
                """INSERT INTO rejects
                   SELECT ?, ?, line, column_name, left(value, 200), reason, ? FROM row_errors
                   UNION ALL SELECT ?, ?, line, NULL, NULL, reason, ? FROM igc_csv_rejects""",
                [result.ingest_id, result.source, now] * 2,
            )
            con.execute("DROP TABLE igc_csv_rejects")
            con.execute("DELETE FROM ingest_warnings WHERE source_file = ?", [result.source])
            con.execute(
                "INSERT INTO ingest_warnings SELECT ?, ?, line, column_name, left(value, 200), message, ? "
                "FROM row_warnings", [result.ingest_id, result.source, now],
            )
            result.warnings = [tuple(r) for r in con.execute(
                "SELECT line, column_name, message FROM row_warnings ORDER BY line LIMIT 5").fetchall()]
            result.warned = con.execute("SELECT count(*) FROM row_warnings").fetchall()[0][0]
            bad_rows = con.execute("SELECT count(DISTINCT rn) FROM row_errors").fetchall()[0][0]
            result.rejected = bad_rows + len(csv_rejects)
            result.rows_read = parsed + len(csv_rejects)
            result.reasons = [
                tuple(r) for r in con.execute(
                    "SELECT line_number, column_name, reason FROM rejects WHERE ingest_id = ? "
                    "ORDER BY line_number LIMIT 5",
                    [result.ingest_id],
                ).fetchall()
            ]
            summary = {"rows_read": result.rows_read, "images": result.images, "ignored_columns": ignored}
            con.execute(
                "INSERT INTO ingests VALUES (?, 'posts', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [result.ingest_id, result.source, sha.result(), now, store.utcnow(), result.loaded,
                 result.updated, result.unchanged, result.rejected, _file_key(sha.result(), images_dir, encoding),
                 json.dumps(summary)],
            )
            if keep_ids:
                result.post_ids = [r[0] for r in con.execute(
                    "SELECT post_id FROM igc_plan(?)", [flags["has_image"]]).fetchall()]
            src_file.check_unchanged()   # after the last read: what was stored is what the file held
            store.fault_point("ingest.before_commit")
    finally:
        if hashing:
            hashing.shutdown(cancel_futures=True)
        settings.close()
        con.execute("DROP VIEW IF EXISTS good")
        con.execute("DROP VIEW IF EXISTS staged")
        for name in ("staged_w", "igc_lines", "stored_rows", "matched", "row_errors", "row_warnings", "pick",
                     "changed", "snap_in", "image_keys"):
            con.execute(f"DROP TABLE IF EXISTS {name}")  # our names; temp tables would outlive the call
        if not is_csv:
            con.unregister("igc_parquet")  # a no-op when it was never registered
        result.seconds = time.perf_counter() - t0
    if any(status not in ("ok", "no image") for status in result.images):
        ids = result.post_ids or [r[0] for r in con.execute("SELECT post_id FROM posts WHERE source_file = ?",
                                                            [result.source]).fetchall()]
        result.image_problems, result.image_problems_total = image_problems(con, ids)
    return result


def _file_key(sha256: str, images_dir: Path, encoding: str | None) -> str:
    """The file's bytes (their sha256) and what decides how they load, as one sha256."""
    text = f"{REUSE_VERSION}\0{sha256}\0{images_dir.resolve()}\0{encoding or ''}"
    return hashlib.sha256(text.encode()).hexdigest()


def _reuse(con: duckdb.DuckDBPyConnection, result: IngestResult, sha, images_dir: Path, encoding: str | None,
           now) -> bool:
    """When the store's latest ingest was this file and nothing it depends on changed since, record this run
    as that outcome again (every row unchanged) and fill ``result``; False when the file must be compared.
    ``sha``: the future of the file's sha256, waited for only when the latest ingest was of this path."""
    last = con.execute(
        "SELECT ingest_id, source_file, file_key, loaded + updated + unchanged, rejected, summary FROM ingests "
        "ORDER BY finished_at DESC, started_at DESC LIMIT 1").fetchall()
    if not last or last[0][1] != result.source or last[0][2] is None or last[0][5] is None:
        return False
    last_id, _, last_key, usable, rejected, summary_json = last[0]
    key = _file_key(sha.result(), images_dir, encoding)
    if last_key != key:
        return False
    if con.execute("SELECT count(*) FROM rejects WHERE source_file = ? AND reason = ?",
                   [result.source, FUTURE_DATE]).fetchall()[0][0]:
        return False
    summary = json.loads(summary_json)
    if not _images_unchanged(con, limit=2 * summary["rows_read"] + 16):
        return False
    result.reused = last_id
    result.unchanged, result.rejected, result.rows_read = usable, rejected, summary["rows_read"]
    result.images = dict(summary["images"])
    result.ignored_columns = summary["ignored_columns"]
    con.execute("UPDATE rejects SET ingest_id = ?, rejected_at = ? WHERE source_file = ?",
                [result.ingest_id, now, result.source])
    con.execute("UPDATE ingest_warnings SET ingest_id = ?, warned_at = ? WHERE source_file = ?",
                [result.ingest_id, now, result.source])
    result.reasons = [tuple(r) for r in con.execute(
        "SELECT line_number, column_name, reason FROM rejects WHERE ingest_id = ? ORDER BY line_number LIMIT 5",
        [result.ingest_id]).fetchall()]
    result.warnings = [tuple(r) for r in con.execute(
        "SELECT line_number, column_name, message FROM ingest_warnings WHERE ingest_id = ? ORDER BY line_number "
        "LIMIT 5", [result.ingest_id]).fetchall()]
    result.warned = con.execute("SELECT count(*) FROM ingest_warnings WHERE ingest_id = ?",
                                [result.ingest_id]).fetchall()[0][0]
    con.execute("INSERT INTO ingests VALUES (?, 'posts', ?, ?, ?, ?, 0, 0, ?, ?, ?, ?)",
                [result.ingest_id, result.source, sha.result(), now, store.utcnow(), usable,
                 rejected, key, summary_json])
    return True


def _images_unchanged(con: duckdb.DuckDBPyConnection, limit: int) -> bool:
    """Every image file the stored posts point at is as it was probed (a re-ingest would probe it again
    otherwise). False, to compare the file instead, when there are more than ``limit`` of them: the posts of
    other files then dominate, and the file's own images are the ones a comparison stats."""
    rows = con.execute(
        "SELECT path, status, byte_size, mtime_ns FROM images "
        "WHERE path IN (SELECT image_path FROM posts WHERE image_path IS NOT NULL) LIMIT ?", [limit + 1]).fetchall()
    if len(rows) > limit:
        return False
    for path, status, size, mtime in rows:
        if status == "unsafe_path":
            continue                                # refused from its text alone
        try:
            st = os.stat(path)
        except OSError:
            if status != "missing":
                return False
            continue
        regular = stat.S_ISREG(st.st_mode)
        if status in ("ok", "corrupt") and not (regular and (st.st_size, st.st_mtime_ns) == (size, mtime)):
            return False
        if status == "missing" or (status == "not_a_file" and regular):
            return False
    return True


# ------------------------------------------------------------------------------------ ingest-classes

@dataclass
class ClassesResult:
    source: str
    rows: int
    posts: int
    posts_unknown: int
    replaced: int
    rejected: int
    seconds: float


def ingest_classes(
    source: Path | str, db: Path | str = store.DEFAULT_DB, con: duckdb.DuckDBPyConnection | None = None
) -> ClassesResult:
    """Load precomputed ImageNet top-k rows (post_id, rank, wnid, prob[, label]) as backbone 'precomputed'.

    Reloading the same file replaces its rows; the source file's sha256 is the weights fingerprint, so
    a model trained on one file's classes can tell another file's apart.
    """
    t0 = time.perf_counter()
    source = Path(source)
    with open_input(source, "classes file") as src, store.opened(db, con) as con:
        header = _read_header(source, _detect_encoding(src.name, None), src.name)
        missing = [c for c in ("post_id", "rank", "wnid", "prob") if c not in header]
        if missing:
            raise InputError(f"{source} lacks column(s) {', '.join(missing)} (expected post_id, rank, wnid, prob)")
        sha = sha256_file(src.name)
        store.run_block(con, "ingest", "macros")
        try:
            con.execute(
                """CREATE OR REPLACE TEMP TABLE cls_in AS
                   SELECT igc_ident(post_id) AS post_id, TRY_CAST(rank AS INTEGER) AS rank, trim(wnid) AS wnid,
                          TRY_CAST(prob AS DOUBLE) AS prob
                   FROM read_csv(?, header = true, all_varchar = true, delim = ',', quote = '"')""",
                [src.name],
            )
        except duckdb.Error as err:
            raise InputError(f"{source} cannot be read as CSV: {str(err).splitlines()[0]}") from None
        src.check_unchanged()       # the rows read are the bytes hashed
        with store.transaction(con):
            ok = """post_id IS NOT NULL AND rank IS NOT NULL AND regexp_full_match(wnid, 'n[0-9]{8}')
                    AND prob BETWEEN 0 AND 1"""
            total = con.execute("SELECT count(*) FROM cls_in").fetchall()[0][0]
            good = con.execute(f"SELECT count(*) FROM cls_in WHERE {ok}").fetchall()[0][0]
            replaced = con.execute(
                "SELECT count(*) FROM image_classes WHERE backbone = 'precomputed' AND weights_fp = ?", [sha]
            ).fetchall()[0][0]
            con.execute("DELETE FROM image_classes WHERE backbone = 'precomputed' AND weights_fp = ?", [sha])
            con.execute(
                f"""INSERT INTO image_classes
                    SELECT c.post_id, i.sha256, 'precomputed', ?, false, ?, c.rank, c.wnid, c.prob
                    FROM cls_in c LEFT JOIN posts p USING (post_id) LEFT JOIN images i ON i.path = p.image_path
                    WHERE {ok}""",
                [sha, source.name],
            )
            posts, unknown = con.execute(
                """SELECT count(DISTINCT c.post_id), count(DISTINCT c.post_id) FILTER (WHERE p.post_id IS NULL)
                   FROM cls_in c LEFT JOIN posts p USING (post_id)"""
            ).fetchall()[0]
    return ClassesResult(str(source), good, posts, unknown, replaced, total - good, time.perf_counter() - t0)

