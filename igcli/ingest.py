"""Ingest posts (CSV or Parquet) into the store: validate, reject with reasons, upsert, snapshot.

    from igcli.ingest import ingest_posts
    result = ingest_posts("posts.csv", db="igcli.duckdb")

One file loads in one transaction. Parsing and validation run in DuckDB (``sql/ingest.sql``); Python
only reads the header, maps line numbers and probes image files in a thread pool.
"""

from __future__ import annotations

import codecs
import csv
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from igcli import store
from igcli.errors import InputError
from igcli.images import ImageProbe, probe_many, resolve_image
from igcli.util import sha256_file

REQUIRED = ("post_id", "username", "posted_at")
COLUMNS = (
    "post_id", "username", "posted_at", "caption", "hashtags", "mentions", "likes",
    "followers", "following", "user_post_count", "image", "observed_at",
)
MAX_LINE_BYTES = 64 * 1024 * 1024
ENCODINGS = {"utf-8": "utf-8-sig", "utf-16": "utf-16", "latin-1": "latin-1"}  # DuckDB name -> Python codec

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


def _read_header(path: Path, encoding: str) -> list[str]:
    with open(path, encoding=ENCODINGS[encoding], newline="") as fh:
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


def _load_csv(con: duckdb.DuckDBPyConnection, path: Path, encoding: str | None):
    enc = _detect_encoding(path, encoding)
    header = _read_header(path, enc)
    names, ignored = _map_columns(path, header)
    con.execute("DROP TABLE IF EXISTS igc_rej; DROP TABLE IF EXISTS igc_scan")
    try:
        con.execute(
            """CREATE OR REPLACE TEMP TABLE raw_in AS SELECT * FROM read_csv(?, header = true,
               auto_detect = false, columns = ?, delim = ',', quote = '"', escape = '"', encoding = ?,
               strict_mode = true, store_rejects = true, rejects_table = 'igc_rej',
               rejects_scan = 'igc_scan', max_line_size = ?)""",
            [str(path), {n: "VARCHAR" for n in names}, enc, MAX_LINE_BYTES],
        )
    except duckdb.Error as err:
        raise InputError(f"{path} cannot be read as CSV: {str(err).splitlines()[0]}") from None
    rejected = con.execute(
        """SELECT line, min(line_byte_position), first(error_type ORDER BY column_idx),
                  max(TRY_CAST(regexp_extract(error_message, 'Found: ([0-9]+)', 1) AS INTEGER)),
                  first(csv_line)
           FROM igc_rej GROUP BY line ORDER BY line"""
    ).fetchall()
    bad_encoding = [r for r in rejected if r[2] == "INVALID ENCODING"]
    if bad_encoding:
        line = path.read_bytes().count(b"\n", 0, bad_encoding[0][1] or 0) + 1
        raise InputError(f"{path} is not valid {enc} (first bad bytes on line {line}): if it is Latin-1 / "
                         "Windows-1252, pass --encoding latin-1")
    # Embedded newlines shift the physical lines of the rows after them; only rows holding one are listed.
    joined = "concat_ws('', " + ", ".join(names) + ")"  # column names are ours (COLUMNS or extra_<i>)
    multi = con.execute(
        f"SELECT rowid, length({joined}) - length(replace({joined}, chr(10), '')) FROM raw_in "
        f"WHERE strpos({joined}, chr(10)) > 0 ORDER BY rowid"
    ).fetchall()
    csv_rejects: list[tuple[int, str | None, str]] = []
    shifts: dict[int, int] = {}
    if rejected:
        raw_bytes = path.read_bytes()
        total = 0
        for m, (rec, byte_pos, etype, found, csv_line) in enumerate(rejected):
            line = raw_bytes.count(b"\n", 0, byte_pos or 0) + 1
            total += 1 + (csv_line or "").rstrip("\r\n").count("\n")
            # DuckDB numbers records from 1 with the header as record 1: `rec - 2 - m` good rows precede
            # this reject, so rows from that index on start `total` lines further down
            shifts[rec - 2 - m] = total
            reason = _CSV_ERRORS.get(etype, f"malformed CSV row ({etype.lower()})")
            if etype in ("TOO MANY COLUMNS", "MISSING COLUMNS") and found:
                reason += f" (expected {len(names)}, found {found})"
            csv_rejects.append((line, None, reason))
    line_info = (
        [r for r, _ in multi], np.cumsum([n for _, n in multi], dtype=np.int64).tolist(),
        list(shifts), list(shifts.values()),
    )
    return names, ignored, csv_rejects, line_info


# ------------------------------------------------------------------------------------------ Parquet

def _load_parquet(con: duckdb.DuckDBPyConnection, path: Path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
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
    con.execute("CREATE OR REPLACE TEMP TABLE raw_in AS SELECT * FROM igc_parquet")
    con.unregister("igc_parquet")
    return kept, ignored, [], None


def _build_raw(con: duckdb.DuckDBPyConnection, present: set[str], line_info) -> None:
    """``raw``: the canonical columns (absent ones NULL), file order ``rownum`` and physical ``line``.

    CSV: line = 2 + row index + newlines inside earlier rows + lines of earlier rejected records.
    Parquet (``line_info`` None): line is the 1-based row number.
    """
    n = con.execute("SELECT count(*) FROM raw_in").fetchall()[0][0]
    idx = np.arange(n, dtype=np.int64)
    if line_info is None:
        lines = idx + 1
    else:
        multi_rows, multi_cum, shift_rows, shift_lines = (np.asarray(x, dtype=np.int64) for x in line_info)
        lines = idx + 2
        if len(multi_rows):  # newlines inside rows strictly before each row
            k = np.searchsorted(multi_rows, idx, side="left")
            lines += np.where(k > 0, multi_cum[np.maximum(k - 1, 0)], 0)
        if len(shift_rows):  # lines of rejected records before each row
            k = np.searchsorted(shift_rows, idx, side="right")
            lines += np.where(k > 0, shift_lines[np.maximum(k - 1, 0)], 0)
    con.register("igc_lines", pa.table({"rownum": idx, "line": lines}))
    cols = ", ".join(f"r.{c}" if c in present else f"NULL::VARCHAR AS {c}" for c in COLUMNS)  # our constants
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE raw AS SELECT l.rownum, l.line, {cols} "
                    "FROM raw_in r POSITIONAL JOIN igc_lines l")
    finally:
        con.unregister("igc_lines")
    con.execute("DROP TABLE raw_in")


# --------------------------------------------------------------------------------------------- main

def _image_keys(
    con: duckdb.DuckDBPyConnection, images_dir: Path, progress: Callable[[str, int, int], None] | None,
) -> None:
    refs = [r[0] for r in con.execute("SELECT DISTINCT image_ref FROM good WHERE image_ref IS NOT NULL").fetchall()]
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
    con.register("igc_keys", pa.table({"image_ref": [r for r, _ in keys], "image_path": [k for _, k in keys]}))
    con.execute("CREATE OR REPLACE TEMP TABLE image_keys AS SELECT * FROM igc_keys")
    con.unregister("igc_keys")
    if probes:
        fields = ("path", "status", "error", "sha256", "byte_size", "mtime_ns", "width", "height")
        tbl = pa.table({f: [getattr(p, f) for p in probes] for f in fields})
        con.register("igc_probes", tbl)
        con.execute(
            "INSERT OR REPLACE INTO images SELECT path, status, error, sha256, byte_size, mtime_ns, "
            "width, height, ? FROM igc_probes", [store.utcnow()]
        )
        con.unregister("igc_probes")


def ingest_posts(
    source: Path | str,
    db: Path | str = store.DEFAULT_DB,
    images_dir: Path | str | None = None,
    encoding: str | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    keep_ids: bool = False,
) -> IngestResult:
    """Load one CSV or Parquet file of posts; bad rows go to ``rejects``, good rows are upserted."""
    t0 = time.perf_counter()
    source = Path(source)
    if not source.is_file():
        raise InputError(f"no such file: {source}")
    images_dir = Path(images_dir) if images_dir else source.parent
    if not images_dir.is_dir():
        raise InputError(f"images folder {images_dir} does not exist: pass --images DIR")
    own = con is None
    con = con or store.connect(db)
    now = store.utcnow()
    result = IngestResult(source=str(source.resolve()), ingest_id=uuid.uuid4().hex[:12])
    try:
        store.run_block(con, "ingest", "macros")
        if source.suffix.lower() in (".parquet", ".pq"):
            names, ignored, csv_rejects, line_info = _load_parquet(con, source)
        else:
            names, ignored, csv_rejects, line_info = _load_csv(con, source, encoding)
        result.ignored_columns = ignored
        present = set(names)
        _build_raw(con, present, line_info)
        # Every later step carries rownum / line explicitly, so DuckDB may write in parallel, out of order.
        con.execute("SET preserve_insertion_order = false")
        flags = {f"has_{c}": c in present for c in ("caption", "hashtags", "mentions", "image")}
        sha = sha256_file(source)
        with store.transaction(con):
            store.run_block(con, "ingest", "stage", {"now": now, **flags})
            _image_keys(con, images_dir, progress)
            store.run_block(con, "ingest", "plan", flags)
            store.run_block(con, "ingest", "apply", {"now": now, "source": result.source})
            result.loaded, result.updated, result.unchanged = con.execute(
                store.sql_blocks("ingest")["counts"]
            ).fetchall()[0]
            con.register("igc_csv_rejects", pa.table({
                "line": pa.array([r[0] for r in csv_rejects], pa.int64()),
                "reason": pa.array([r[2] for r in csv_rejects], pa.string()),
            }))
            con.execute("DELETE FROM rejects WHERE source_file = ?", [result.source])  # latest ingest wins
            con.execute(
                """INSERT INTO rejects
                   SELECT ?, ?, line, column_name, left(value, 200), reason, ? FROM row_errors
                   UNION ALL SELECT ?, ?, line, NULL, NULL, reason, ? FROM igc_csv_rejects""",
                [result.ingest_id, result.source, now] * 2,
            )
            con.unregister("igc_csv_rejects")
            con.execute("DELETE FROM ingest_warnings WHERE source_file = ?", [result.source])
            con.execute(
                "INSERT INTO ingest_warnings SELECT ?, ?, line, column_name, left(value, 200), message, ? "
                "FROM row_warnings", [result.ingest_id, result.source, now],
            )
            result.warnings = [tuple(r) for r in con.execute(
                "SELECT line, column_name, message FROM row_warnings ORDER BY line LIMIT 5").fetchall()]
            result.warned = con.execute("SELECT count(*) FROM row_warnings").fetchall()[0][0]
            bad_rows = con.execute("SELECT count(DISTINCT rownum) FROM row_errors").fetchall()[0][0]
            result.rejected = bad_rows + len(csv_rejects)
            result.rows_read = con.execute("SELECT count(*) FROM raw").fetchall()[0][0] + len(csv_rejects)
            result.reasons = [
                tuple(r) for r in con.execute(
                    "SELECT line_number, column_name, reason FROM rejects WHERE ingest_id = ? "
                    "ORDER BY line_number LIMIT 5",
                    [result.ingest_id],
                ).fetchall()
            ]
            result.images = dict(con.execute(
                """SELECT coalesce(i.status, 'no image'), count(*) FROM plan p
                   LEFT JOIN images i ON i.path = p.image_path GROUP BY ALL"""
            ).fetchall())
            con.execute(
                "INSERT INTO ingests VALUES (?, 'posts', ?, ?, ?, ?, ?, ?, ?, ?)",
                [result.ingest_id, result.source, sha, now, store.utcnow(), result.loaded,
                 result.updated, result.unchanged, result.rejected],
            )
            if keep_ids:
                result.post_ids = [r[0] for r in con.execute("SELECT post_id FROM plan").fetchall()]
            store.fault_point("ingest.before_commit")
    finally:
        con.execute("RESET preserve_insertion_order")
        if own:
            con.close()
    result.seconds = time.perf_counter() - t0
    return result


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
    if not source.is_file():
        raise InputError(f"no such file: {source}")
    header = _read_header(source, _detect_encoding(source, None))
    missing = [c for c in ("post_id", "rank", "wnid", "prob") if c not in header]
    if missing:
        raise InputError(f"{source} lacks column(s) {', '.join(missing)} (expected post_id, rank, wnid, prob)")
    own = con is None
    con = con or store.connect(db)
    sha = sha256_file(source)
    try:
        try:
            con.execute(
                """CREATE OR REPLACE TEMP TABLE cls_in AS
                   SELECT trim(post_id) AS post_id, TRY_CAST(rank AS INTEGER) AS rank, trim(wnid) AS wnid,
                          TRY_CAST(prob AS DOUBLE) AS prob
                   FROM read_csv(?, header = true, all_varchar = true, delim = ',', quote = '"')""",
                [str(source)],
            )
        except duckdb.Error as err:
            raise InputError(f"{source} cannot be read as CSV: {str(err).splitlines()[0]}") from None
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
    finally:
        if own:
            con.close()
    return ClassesResult(str(source), good, posts, unknown, replaced, total - good, time.perf_counter() - t0)

