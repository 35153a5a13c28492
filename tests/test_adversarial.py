"""Hostile inputs (issue 31): paths, names, encodings, sizes, swapped files, links, races, markup, formulas and
control characters, given to igcli the way a careless user or an attacker would.

Each CLI case runs ``igcli`` in this process (``igcli.cli.main``, what ``python -m igcli`` runs) in a workspace
of its own holding a copy of one trained store, and asserts: the exit code; on an error exactly one line on
stderr, ``error: ...`` naming the problem; no traceback; no control, bidi or invisible character reaching the
terminal; nothing created, changed or removed in the workspace or the shared base folder but the store and
the outputs the case names (so a link's target is never written); and the store's rows unchanged (a digest of
every table), or, where the case loads rows, every earlier row still there as it was. The other tests drive
the mechanisms the CLI cannot reach on cue: a file written to mid-ingest, two exports at once, planted temporary
names, a tampered model card.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from PIL import Image

from igcli import cli, store
from igcli.commands.featurize import featurize
from igcli.commands.ingest import ingest_posts
from igcli.commands.sample import generate_sample
from igcli.commands.score import ScoreOptions, score
from igcli.commands.train import TrainOptions, train
from igcli.errors import InputError, ModelError
from igcli.features.images import ImageFeatureOptions
from igcli.features.metadata import FeaturizeOptions
from igcli.files import atomic_write, open_input
from igcli.model import export
from igcli.vision.decode import UNSAFE_KEY, open_file, probe_image

HEADER = "post_id,username,posted_at,caption,likes,image"
VICTIM = b"the victim's own bytes\n"
# what must never reach a terminal from user text: C0 controls but tab / newline, DEL, C1, bidi controls
TERMINAL_BAD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


# ------------------------------------------------------------------------------------------ the world

@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One trained, scored store, copied into each case's workspace. Trained while another export is in
    progress in the same folder (its lock held, its folder there) and a link waits at the old fixed name
    of ``latest``'s temporary file: the facts ``test_train_beside_another_export`` checks."""
    root = tmp_path_factory.mktemp("adv-base")
    sample = root / "sample"
    generate_sample(sample, posts=120, users=10, seed=3, image_size=32, new_posts=6)
    db = root / "store.duckdb"
    exports = root / "exports"
    ingest_posts(sample / "posts.csv", db=db)
    featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    exports.mkdir()
    outside = root / "outside.txt"
    outside.write_bytes(VICTIM)
    os.symlink(outside, exports / ".latest.tmp")
    with export.export_folder(exports, "other-run") as busy:
        (busy / "model.onnx").write_bytes(b"half written")
        stale = exports / f"{export.TMP_PREFIX}killed-run"   # what a killed export leaves: no lock holder
        stale.mkdir()
        run = train(db, TrainOptions(epochs=3, ensemble=1, exports_dir=exports))
        facts = {"busy_survived": (busy / "model.onnx").read_bytes() == b"half written",
                 "stale_kept_while_busy": stale.is_dir()}
    facts["outside"] = outside.read_bytes()
    facts["latest"] = (exports / "latest").read_text().strip()
    os.unlink(exports / ".latest.tmp")
    shutil.rmtree(busy)
    score(sample / "new_posts.csv", db, ScoreOptions(exports_dir=exports))
    with duckdb.connect(str(db), read_only=True) as con:
        image = con.execute("SELECT path, sha256 FROM images WHERE status = 'ok' ORDER BY path LIMIT 1").fetchall()[0]
    return {"root": root, "sample": sample, "db": db, "exports": exports, "run": run, "facts": facts,
            "image": image}


@dataclass
class World:
    root: Path          # the case's workspace (and working directory)
    db: Path
    exports: Path
    base: dict
    victim: Path        # a file links point at; it must keep its bytes

    def csv(self, name: str, rows: list[str], header: str = HEADER) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
        return path

    def image(self, name: str, color=(200, 30, 30), size=(24, 24)) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color).save(path)
        return path


@pytest.fixture
def w(base: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(base["db"], ws / "store.duckdb")
    shutil.copytree(base["exports"], ws / "exports", symlinks=True)
    victim = ws / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM)
    monkeypatch.chdir(ws)
    return World(ws, ws / "store.duckdb", ws / "exports", base, victim)


@dataclass
class Run:
    code: int
    out: str
    err: str


def igcli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args) -> Run:
    """``python -m igcli ARGS`` in this process: any exception but the exit escapes and fails the test."""
    monkeypatch.setattr(sys, "argv", ["igcli", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    out, err = capsys.readouterr()
    return Run(code, out, err)


def tables(db: Path) -> dict[str, Counter]:
    """Every table's rows, as a multiset of row hashes (DuckDB's ``hash`` of the whole row), in one query."""
    with duckdb.connect(str(db), read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = 'main'").fetchall()]
        union = " UNION ALL ".join(f"SELECT '{n}' AS t, list(hash(x)) AS h FROM \"{n}\" x" for n in names)
        return {t: Counter(h) for t, h in con.execute(union).fetchall()}


def digest(rows: dict[str, Counter], skip: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for name in sorted(rows):
        if name not in skip:
            h.update(name.encode() + b"\0" + repr(sorted(rows[name].elements())).encode())
    return h.hexdigest()


LOG_TABLES = ("rejects", "ingest_warnings", "ingests")


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots``, not following links: kind, size, mtime, a link's target."""
    out = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                p = os.path.join(folder, name)
                st = os.lstat(p)
                out[p] = (st.st_mode >> 12, st.st_size if not os.path.isdir(p) or os.path.islink(p) else 0,
                          st.st_mtime_ns if not os.path.isdir(p) or os.path.islink(p) else 0,
                          os.readlink(p) if os.path.islink(p) else None)
    return out


@dataclass
class Expect:
    args: list
    code: int = 0
    error: str | None = None            # regex the one stderr line matches
    store: str = "same"                 # same | data (only rejects / warnings / ingests rows) | grow | any
    outputs: tuple[str, ...] = ()       # workspace paths the command may create or replace
    shown: tuple[str, ...] = ()         # text the terminal shows (user text, escaped)
    check: Callable[[World, Run], None] | None = None
    db: Path | None = None              # the store to compare, when not the workspace's


CASES: dict[str, Callable[[World], Expect]] = {}


def case(fn: Callable[[World], Expect]) -> Callable[[World], Expect]:
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


def posts(w: World, source_like: str = "%") -> dict[str, tuple]:
    with duckdb.connect(str(w.db), read_only=True) as con:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT post_id, username, source_file, image_path FROM posts WHERE source_file LIKE ?",
            [source_like]).fetchall()}


def rows_of(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def ingest(w: World, path: Path, *more) -> list:
    return ["ingest", path, "--db", w.db, *more]


def loaded(ids: set[str], source_suffix: str, absent: set[str] = frozenset()) -> Callable[[World, Run], None]:
    def check(w: World, r: Run) -> None:
        got = posts(w, "%" + source_suffix)
        assert set(got) == ids, got
        assert not absent & set(posts(w)), absent
    return check


def rejected(*expected: tuple[int, str]) -> Callable[[World, Run], None]:
    """The ingest's rejects: (line, a regex of the reason) each."""
    def check(w: World, r: Run) -> None:
        got = rows_of(w.db, "SELECT line_number, reason FROM rejects WHERE ingest_id = (SELECT ingest_id FROM "
                            "ingests ORDER BY finished_at DESC LIMIT 1) ORDER BY line_number")
        assert len(got) == len(expected), got
        for (line, reason), (want_line, pattern) in zip(got, expected, strict=True):
            assert line == want_line and re.search(pattern, reason), (line, reason)
    return check


def image_status(post_id: str, status: str) -> Callable[[World, Run], None]:
    def check(w: World, r: Run) -> None:
        got = rows_of(w.db, "SELECT i.status, p.image_path FROM posts p JOIN images i ON i.path = p.image_path "
                            "WHERE p.post_id = ?", [post_id])
        assert got and got[0][0] == status, got
        if status == "unsafe_path":
            assert got[0][1].startswith(UNSAFE_KEY)
        # the base's images rows are intact (the grow check), and no ok row points outside the folder
        assert rows_of(w.db, "SELECT path, sha256 FROM images WHERE path = ?", [w.base["image"][0]]) == \
            [w.base["image"]]
    return check


def both(*checks: Callable[[World, Run], None]) -> Callable[[World, Run], None]:
    def check(w: World, r: Run) -> None:
        for c in checks:
            c(w, r)
    return check


# ---------------------------------------------------------------------------- paths read as patterns

@case
def case_brackets_in_name(w: World) -> Expect:
    w.csv("g/a1.csv", ["decoy1,dee,2020-01-01,,1,"])
    return Expect(ingest(w, w.csv("g/a[1].csv", ["lit1,lee,2020-01-01,,1,"])), store="grow",
                  check=loaded({"lit1"}, "a[1].csv", {"decoy1"}))


@case
def case_star_in_name(w: World) -> Expect:
    w.csv("g/b1.csv", ["decoy2,dee,2020-01-01,,1,"])
    w.csv("g/b2.csv", ["decoy3,dee,2020-01-01,,1,"])
    return Expect(ingest(w, w.csv("g/b*.csv", ["lit2,lee,2020-01-01,,1,"])), store="grow",
                  check=loaded({"lit2"}, "b*.csv", {"decoy2", "decoy3"}))


@case
def case_question_mark_in_name(w: World) -> Expect:
    w.csv("g/c1.csv", ["decoy4,dee,2020-01-01,,1,"])
    return Expect(ingest(w, w.csv("g/c?.csv", ["lit3,lee,2020-01-01,,1,"])), store="grow",
                  check=loaded({"lit3"}, "c?.csv", {"decoy4"}))


@case
def case_braces_in_name(w: World) -> Expect:
    w.csv("g/d.csv", ["decoy5,dee,2020-01-01,,1,"])
    return Expect(ingest(w, w.csv("g/{d,e}.csv", ["lit4,lee,2020-01-01,,1,"])), store="grow",
                  check=loaded({"lit4"}, "{d,e}.csv", {"decoy5"}))


@case
def case_pattern_with_no_such_file(w: World) -> Expect:
    w.csv("g/z1.csv", ["decoy6,dee,2020-01-01,,1,"])
    return Expect(ingest(w, w.root / "g" / "z*.csv"), code=1, error="no such file")


@case
def case_parquet_with_brackets(w: World) -> Expect:
    import pyarrow as pa

    for name, pid in (("p1.parquet", "decoy7"), ("p[1].parquet", "lit5")):
        pq.write_table(pa.table({"post_id": [pid], "username": ["pq"], "posted_at": ["2020-01-01"]}), w.root / name)
    return Expect(ingest(w, w.root / "p[1].parquet"), store="grow", check=loaded({"lit5"}, "p[1].parquet", {"decoy7"}))


@case
def case_classes_with_brackets(w: World) -> Expect:
    pid = next(iter(posts(w)))
    w.csv("k1.csv", [f"{pid},1,n01440764,0.9"], header="post_id,rank,wnid,prob")
    lit = w.csv("k[1].csv", [f"{pid},1,n02085620,0.8"], header="post_id,rank,wnid,prob")

    def check(w: World, r: Run) -> None:
        assert rows_of(w.db, "SELECT wnid, source FROM image_classes WHERE backbone = 'precomputed'") == \
            [("n02085620", "k[1].csv")]
    return Expect(["ingest-classes", lit, "--db", w.db], store="grow", shown=("loaded 1 class rows",), check=check)


@case
def case_folder_as_posts(w: World) -> Expect:
    (w.root / "dir.csv").mkdir()
    return Expect(ingest(w, w.root / "dir.csv"), code=1, error="is a folder")


@case
def case_fifo_as_posts(w: World) -> Expect:
    os.mkfifo(w.root / "pipe.csv")
    return Expect(ingest(w, w.root / "pipe.csv"), code=1, error="not a regular file")


@case
def case_link_to_fifo_as_posts(w: World) -> Expect:
    os.mkfifo(w.root / "pipe2")
    os.symlink(w.root / "pipe2", w.root / "link.csv")
    return Expect(ingest(w, w.root / "link.csv"), code=1, error="not a regular file")


@case
def case_device_as_posts(w: World) -> Expect:
    return Expect(ingest(w, "/dev/zero"), code=1, error="not a regular file")


@case
def case_fifo_as_classes(w: World) -> Expect:
    os.mkfifo(w.root / "cls.csv")
    return Expect(["ingest-classes", w.root / "cls.csv", "--db", w.db], code=1, error="not a regular file")


@case
def case_markup_in_file_name(w: World) -> Expect:
    f = w.csv("[red]x[on blue].csv", ["mk1,lee,2020-01-01,,1,"])
    return Expect(ingest(w, f), store="grow", shown=("[red]x[on blue].csv",), check=loaded({"mk1"}, "[on blue].csv"))


@case
def case_markup_in_folder_name(w: World) -> Expect:
    f = w.csv("[/x]/p.csv", ["mk2,lee,2020-01-01,,1,missing.png"])
    return Expect(ingest(w, f, "--images", w.root / "[/x]" / "nope"), code=1, error=re.escape("[/x]/nope"))


@case
def case_escape_codes_in_file_name(w: World) -> Expect:
    f = w.csv("\x1b[2J\x1b]0;pwned\x07.csv", ["esc1,lee,2020-01-01,,1,"])
    return Expect(ingest(w, f), store="grow", shown=("\\x1b[2J\\x1b]0;pwned\\x07.csv",))


@case
def case_newline_in_file_name(w: World) -> Expect:
    return Expect(ingest(w, w.csv("two\nlines.csv", ["nl1,lee,2020-01-01,,1,"])), store="grow",
                  check=loaded({"nl1"}, "lines.csv"))


@case
def case_markup_in_missing_name(w: World) -> Expect:
    return Expect(ingest(w, "[/x]\x1b[31m.csv"), code=1, error=re.escape("no such file: [/x]\\x1b[31m.csv"))


@case
def case_images_folder_is_a_file(w: World) -> Expect:
    f = w.csv("i.csv", ["if1,lee,2020-01-01,,1,a.png"])
    return Expect(ingest(w, f, "--images", w.victim), code=1, error="images folder .* does not exist")


@case
def case_encoding_markup(w: World) -> Expect:
    f = w.csv("e.csv", ["en1,lee,2020-01-01,,1,"])
    return Expect(ingest(w, f, "--encoding", "[/x]"), code=1, error=re.escape("unknown --encoding '[/x]'"))


# ------------------------------------------------------------------------------------ --db: not a store

@case
def case_db_is_a_csv(w: World) -> Expect:
    f = w.csv("posts.csv", ["db1,lee,2020-01-01,,1,"])
    shutil.copy(f, w.root / "preds.csv")
    return Expect(["ingest", f, "--db", w.root / "preds.csv"], code=1, error="is not a DuckDB store")


@case
def case_db_is_a_parquet(w: World) -> Expect:
    import pyarrow as pa

    pq.write_table(pa.table({"a": [1]}), w.root / "x.parquet")
    f = w.csv("posts.csv", ["db2,lee,2020-01-01,,1,"])
    return Expect(["ingest", f, "--db", w.root / "x.parquet"], code=1, error="is not a DuckDB store")


@case
def case_db_is_a_folder(w: World) -> Expect:
    (w.root / "folder.duckdb").mkdir()
    f = w.csv("posts.csv", ["db3,lee,2020-01-01,,1,"])
    return Expect(["ingest", f, "--db", w.root / "folder.duckdb"], code=1, error="is a folder")


@case
def case_db_is_a_fifo(w: World) -> Expect:
    os.mkfifo(w.root / "pipe.duckdb")
    return Expect(["status", "--db", w.root / "pipe.duckdb"], code=1, error="not a regular file")


@case
def case_db_is_sqlite(w: World) -> Expect:
    con = sqlite3.connect(w.root / "s.sqlite")
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()
    f = w.csv("posts.csv", ["db4,lee,2020-01-01,,1,"])
    return Expect(["ingest", f, "--db", w.root / "s.sqlite"], code=1, error="is not a DuckDB store")


@case
def case_status_of_a_text_file(w: World) -> Expect:
    return Expect(["status", "--db", w.victim], code=1, error="is not a DuckDB store")


@case
def case_db_truncated(w: World) -> Expect:
    damaged = w.root / "damaged.duckdb"
    damaged.write_bytes(w.db.read_bytes()[:5000])
    return Expect(["status", "--db", damaged], code=1, error="looks damaged")


@case
def case_db_empty_file_becomes_a_store(w: World) -> Expect:
    (w.root / "empty.duckdb").write_bytes(b"")
    f = w.csv("posts.csv", ["db5,lee,2020-01-01,,1,"])

    def check(w: World, r: Run) -> None:
        assert rows_of(w.root / "empty.duckdb", "SELECT post_id FROM posts") == [("db5",)]
    return Expect(["ingest", f, "--db", w.root / "empty.duckdb"], outputs=("empty.duckdb",), check=check)


@case
def case_db_name_with_brackets(w: World) -> Expect:
    f = w.csv("posts.csv", ["db6,lee,2020-01-01,,1,"])

    def check(w: World, r: Run) -> None:
        assert rows_of(w.root / "s[1].duckdb", "SELECT post_id FROM posts") == [("db6",)]
    return Expect(["ingest", f, "--db", w.root / "s[1].duckdb"], outputs=("s[1].duckdb",), check=check)


@case
def case_db_in_missing_folder(w: World) -> Expect:
    f = w.csv("posts.csv", ["db7,lee,2020-01-01,,1,"])
    return Expect(["ingest", f, "--db", w.root / "nope" / "s.duckdb"], code=1, error="does not exist")


# ------------------------------------------------------------------------------------------------ images

@case
def case_absolute_path_of_a_stored_image(w: World) -> Expect:
    f = w.csv("elsewhere/p.csv", [f"ab1,lee,2020-01-01,,1,{w.base['image'][0]}"])
    return Expect(ingest(w, f), store="grow", check=image_status("ab1", "unsafe_path"))


@case
def case_dotdot_out_of_the_folder(w: World) -> Expect:
    w.image("secret.png")
    f = w.csv("data/p.csv", ["dd1,lee,2020-01-01,,1,../secret.png"])
    return Expect(ingest(w, f), store="grow", check=image_status("dd1", "unsafe_path"))


@case
def case_link_out_of_the_folder(w: World) -> Expect:
    w.image("secret.png")
    (w.root / "data").mkdir()
    os.symlink(w.root / "secret.png", w.root / "data" / "in.png")
    f = w.csv("data/p.csv", ["ln1,lee,2020-01-01,,1,in.png"])
    return Expect(ingest(w, f), store="grow", check=image_status("ln1", "unsafe_path"))


@case
def case_image_is_a_device_path(w: World) -> Expect:
    f = w.csv("data/p.csv", ["dv1,lee,2020-01-01,,1,/dev/zero", "dv2,lee,2020-01-01,,1,/proc/self/environ"])
    return Expect(ingest(w, f), store="grow",
                  check=both(image_status("dv1", "unsafe_path"), image_status("dv2", "unsafe_path")))


@case
def case_image_is_a_fifo(w: World) -> Expect:
    (w.root / "data").mkdir()
    os.mkfifo(w.root / "data" / "pipe.png")
    f = w.csv("data/p.csv", ["ff1,lee,2020-01-01,,1,pipe.png"])
    return Expect(ingest(w, f), store="grow", check=image_status("ff1", "not_a_file"))


@case
def case_image_is_a_folder(w: World) -> Expect:
    (w.root / "data" / "dir.png").mkdir(parents=True)
    f = w.csv("data/p.csv", ["fd1,lee,2020-01-01,,1,dir.png"])
    return Expect(ingest(w, f), store="grow", check=image_status("fd1", "not_a_file"))


@case
def case_image_over_the_byte_limit(w: World) -> Expect:
    (w.root / "data").mkdir()
    with open(w.root / "data" / "huge.png", "wb") as fh:   # sparse: 65 MiB that take no disk
        fh.truncate(65 * 2**20)
    f = w.csv("data/p.csv", ["hb1,lee,2020-01-01,,1,huge.png"])
    return Expect(ingest(w, f), store="grow", check=image_status("hb1", "corrupt"))


@case
def case_image_decompression_bomb(w: World) -> Expect:
    (w.root / "data").mkdir()
    (w.root / "data" / "bomb.png").write_bytes(png_header(50_000, 50_000))   # 2,500 MP declared in 57 bytes
    f = w.csv("data/p.csv", ["bm1,lee,2020-01-01,,1,bomb.png"])
    return Expect(ingest(w, f), store="grow", check=image_status("bm1", "corrupt"))


@case
def case_image_truncated(w: World) -> Expect:
    good = w.image("data/full.png", size=(64, 64))
    (w.root / "data" / "cut.png").write_bytes(good.read_bytes()[:60])
    f = w.csv("data/p.csv", ["tr1,lee,2020-01-01,,1,cut.png"])
    return Expect(ingest(w, f), store="grow", check=image_status("tr1", "corrupt"))


@case
def case_image_empty(w: World) -> Expect:
    (w.root / "data").mkdir()
    (w.root / "data" / "empty.jpg").write_bytes(b"")
    f = w.csv("data/p.csv", ["em1,lee,2020-01-01,,1,empty.jpg"])
    return Expect(ingest(w, f), store="grow", check=image_status("em1", "corrupt"))


@case
def case_image_postscript_named_jpg(w: World) -> Expect:
    (w.root / "data").mkdir()
    (w.root / "data" / "ps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    f = w.csv("data/p.csv", ["ps1,lee,2020-01-01,,1,ps.jpg"])
    return Expect(ingest(w, f), store="grow", check=image_status("ps1", "corrupt"))


@case
def case_image_name_with_brackets(w: World) -> Expect:
    w.image("data/i1.png", color=(0, 0, 255))
    lit = w.image("data/i[1].png", color=(0, 255, 0))
    f = w.csv("data/p.csv", ["ib1,lee,2020-01-01,,1,i[1].png"])

    def check(w: World, r: Run) -> None:
        assert rows_of(w.db, "SELECT i.sha256 FROM posts p JOIN images i ON i.path = p.image_path "
                             "WHERE post_id = 'ib1'") == [(hashlib.sha256(lit.read_bytes()).hexdigest(),)]
    return Expect(ingest(w, f), store="grow", check=check)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------- the CSV's content

@case
def case_thousand_columns(w: World) -> Expect:
    header = HEADER + "," + ",".join(f"x{i}" for i in range(994))
    f = w.csv("wide.csv", ["w1,lee,2020-01-01,,1," + ",v" * 994], header=header)
    return Expect(ingest(w, f), code=1, error="1,000 columns, more than the 256")


@case
def case_cut_mid_record(w: World) -> Expect:
    f = w.root / "cut.csv"
    f.write_text(HEADER + "\ncm1,lee,2020-01-01,a,1,\ncm2,lee,2020-01-02,\"two\nlines\",2,\ncm3,lee,2020-01-0")
    return Expect(ingest(w, f), store="grow", check=both(loaded({"cm1", "cm2"}, "cut.csv"),
                                                         rejected((5, "too few fields"))))


@case
def case_cut_inside_a_quoted_field(w: World) -> Expect:
    f = w.root / "cutq.csv"
    f.write_text(HEADER + "\ncq1,lee,2020-01-01,a,1,\ncq2,lee,2020-01-02,\"cut in the mid")
    return Expect(ingest(w, f), store="grow", check=both(loaded({"cq1"}, "cutq.csv"),
                                                         rejected((3, "unterminated"))))


@case
def case_cut_mid_record_into_an_empty_store(w: World) -> Expect:
    f = w.root / "cut.csv"
    f.write_text(HEADER + "\nce1,lee,2020-01-01,a,1,\nce2,lee,2020-01-02,\"half a quote\nand a line")
    fresh = w.root / "fresh.duckdb"

    def check(w: World, r: Run) -> None:
        assert rows_of(fresh, "SELECT post_id FROM posts") == [("ce1",)]
        assert rows_of(fresh, "SELECT line_number, reason FROM rejects")[0][0] == 3
    return Expect(["ingest", f, "--db", fresh], outputs=("fresh.duckdb",), check=check)


@case
def case_nul_byte(w: World) -> Expect:
    f = w.root / "nul.csv"
    f.write_bytes((HEADER + "\nnb1,lee,2020-01-01,a\0b,1,\nnb2,lee,2020-01-01,ok,1,\n").encode())
    return Expect(ingest(w, f), store="grow", check=both(loaded({"nb2"}, "nul.csv"), rejected((2, "NUL"))))


@case
def case_invalid_utf8(w: World) -> Expect:
    f = w.root / "bad.csv"
    f.write_bytes((HEADER + "\nu1,lee,2020-01-01,caf").encode() + b"\xe9\xff,1,\n")
    return Expect(ingest(w, f), code=1, error="--encoding latin-1")


@case
def case_binary_garbage(w: World) -> Expect:
    f = w.root / "garbage.csv"
    f.write_bytes(bytes(range(256)) * 8)
    return Expect(ingest(w, f), code=1, error="garbage.csv")


@case
def case_empty_file(w: World) -> Expect:
    (w.root / "empty.csv").write_bytes(b"")
    return Expect(ingest(w, w.root / "empty.csv"), code=1, error="is empty")


@case
def case_header_twice_named(w: World) -> Expect:
    f = w.csv("dup.csv", ["d1,lee,2020-01-01,1,2"], header="post_id,username,posted_at,likes,likes")
    return Expect(ingest(w, f), code=1, error="names column 'likes' twice")


@case
def case_markup_column_name(w: World) -> Expect:
    f = w.csv("mcol.csv", ["mc1,lee,2020-01-01,,1,,v"], header=HEADER + ",[/x][link=file:///etc/passwd]")
    return Expect(ingest(w, f), store="grow", shown=("ignored unknown column(s): [/x][link=file:///etc/passwd]",))


@case
def case_post_id_of_another_user(w: World) -> Expect:
    pid, (user, *_) = next(iter(posts(w).items()))
    f = w.csv("steal.csv", [f"{pid},mallory,2020-01-01,,1,"])
    return Expect(ingest(w, f), store="data", check=rejected((2, f"already belongs to user {re.escape(user)}")))


@case
def case_impossible_dates_and_counts(w: World) -> Expect:
    f = w.csv("vals.csv", ["v1,lee,9999-01-01,,1,", "v2,lee,2017-02-30,,1,", "v3,lee,1969-12-31,,1,",
                           "v4,lee,2020-01-01,,1e400,", "v5,lee,2020-01-01,,NaN,", "v6,lee,2020-01-01,,-1,",
                           "v7,lee,2020-01-01,,99999999999999999999,"])
    return Expect(ingest(w, f), store="data", check=rejected(
        (2, "future"), (3, "unparseable date"), (4, "before 1970"), (5, "not a count"), (6, "not a count"),
        (7, "negative"), (8, "implausibly large")))


@case
def case_parquet_nested_column(w: World) -> Expect:
    import pyarrow as pa

    pq.write_table(pa.table({"post_id": [[1, 2]], "username": ["a"], "posted_at": ["2020-01-01"]}),
                   w.root / "n.parquet")
    return Expect(ingest(w, w.root / "n.parquet"), code=1, error="cannot be read as text")


@case
def case_csv_named_parquet(w: World) -> Expect:
    f = w.csv("fake.parquet", ["fp1,lee,2020-01-01,,1,"])
    return Expect(ingest(w, f), code=1, error="cannot be read as Parquet")


# ------------------------------------------------------------------------------------------- identifiers

IDENT_WARNING = "identifier normalised"


@case
def case_zero_width_twin_ids(w: World) -> Expect:
    f = w.csv("zw.csv", ["x4,lee,2020-01-01,,1,", "x4\u200b,lee,2020-01-02,,2,"])
    return Expect(ingest(w, f), store="grow", check=both(loaded({"x4"}, "zw.csv"), rejected((3, "duplicate post_id"))))


@case
def case_bidi_override_username(w: World) -> Expect:
    f = w.csv("bidi.csv", ["bd1,\u202eevil\u202c,2020-01-01,\u202ecaption kept\u202c,1,"])

    def check(w: World, r: Run) -> None:
        assert rows_of(w.db, "SELECT username, caption FROM posts WHERE post_id = 'bd1'") == \
            [("evil", "\u202ecaption kept\u202c")]
        warned = rows_of(w.db, "SELECT column_name, value, message FROM ingest_warnings WHERE line_number = 2 "
                               "AND source_file LIKE '%bidi.csv'")
        assert [(c, v) for c, v, _ in warned] == [("username", "\u202eevil\u202c")] and IDENT_WARNING in warned[0][2]
    return Expect(ingest(w, f), store="grow", shown=(IDENT_WARNING,), check=check)


@case
def case_decomposed_id_updates_the_composed_one(w: World) -> Expect:
    ingest_posts(w.csv("nfc.csv", ["caf\u00e9,lee,2020-01-01,first,1,"]), db=w.db)
    f = w.csv("nfd.csv", ["cafe\u0301,lee,2020-01-01,second,1,"])

    count = len(posts(w))

    def check(w: World, r: Run) -> None:     # the same post, updated: no second one
        assert rows_of(w.db, "SELECT post_id, caption FROM posts WHERE post_id LIKE 'caf%'") == \
            [("caf\u00e9", "second")]
        assert len(posts(w)) == count
    return Expect(ingest(w, f), store="any", check=check)


@case
def case_id_of_invisible_characters_only(w: World) -> Expect:
    f = w.csv("inv.csv", ["\u200b\u2060\ufeff,lee,2020-01-01,,1,", "iv2,\u200d,2020-01-01,,1,"])
    return Expect(ingest(w, f), store="data",
                  check=rejected((2, "missing required value"), (3, "missing required value")))


@case
def case_escape_codes_in_ids(w: World) -> Expect:
    f = w.csv("esc.csv", ["\x1b[2Jid1,\x1b]0;title\x07,2020-01-01,,1,"])

    def check(w: World, r: Run) -> None:
        assert ("\x1b[2Jid1",) in rows_of(w.db, "SELECT post_id FROM posts")
    return Expect(ingest(w, f), store="grow", check=check)


# ------------------------------------------------------------------------------------------------- score

def batch(w: World, rows: list[tuple[str, str]], name: str = "batch/b.csv", image: str = "") -> Path:
    return w.csv(name, [f'"{pid}",{user},2026-01-0{1 + i % 9},caption,,{image}' for i, (pid, user) in enumerate(rows)])


def scoring(w: World, posts_csv: Path, *more) -> list:
    return ["score", posts_csv, "--db", w.db, "--exports", w.exports, *more]


@case
def case_score_markup_ids(w: World) -> Expect:
    f = batch(w, [("[/x]", "mk"), ("[bold red]boom[/]", "[/u]"), ("[link=http://evil]c[/link]", "mk")])
    return Expect(scoring(w, f), store="grow", shown=("[/x]", "[bold red]boom[/]", "[link=http://evil]c[/link]"))


@case
def case_score_escape_codes_in_ids(w: World) -> Expect:
    f = batch(w, [("\x1b[2J\x1b]0;pwned\x07s1", "esc"), ("s2\x9b31m\u202eright", "esc")])
    return Expect(scoring(w, f), store="grow", shown=("\\x1b[2J\\x1b]0;pwned\\x07s1", "s2\\x9b31m"))


FORMULAS = ['=HYPERLINK(""http://evil"",""x"")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "\tx"]


@case
def case_score_out_formulas(w: World) -> Expect:
    f = batch(w, [(p, "fm") for p in [*FORMULAS, "-5", "plain"]])

    def check(w: World, r: Run) -> None:
        with open(w.root / "p.csv", newline="", encoding="utf-8") as fh:
            got = {row["post_id"] for row in csv.DictReader(fh)}
        want = {"'" + p.replace('""', '"') for p in FORMULAS if p != "\tx"} | {"-5", "plain"}
        assert want <= got, got
        assert not any(g[:1] in "=+@" or (g[:1] == "-" and g != "-5") for g in got), got
    return Expect(scoring(w, f, "--out", "p.csv"), store="grow", outputs=("p.csv",), check=check)


@case
def case_score_out_parquet_keeps_ids(w: World) -> Expect:
    f = batch(w, [("=1+1", "fm"), ("@x", "fm")])

    def check(w: World, r: Run) -> None:
        assert set(pq.read_table(w.root / "p.parquet").column("post_id").to_pylist()) == {"=1+1", "@x"}
    return Expect(scoring(w, f, "--out", "p.parquet"), store="grow", outputs=("p.parquet",), check=check)


@case
def case_score_out_link_at_old_temp_name(w: World) -> Expect:
    os.symlink(w.victim, w.root / ".p.csv.tmp")
    f = batch(w, [("lt1", "lt")])

    def check(w: World, r: Run) -> None:
        assert (w.root / "p.csv").is_file() and not (w.root / "p.csv").is_symlink()
        assert [p for p in os.listdir(w.root) if p.startswith(".p.csv.")] == [".p.csv.tmp"]
    return Expect(scoring(w, f, "--out", "p.csv"), store="grow", outputs=("p.csv",), check=check)


@case
def case_score_out_is_a_link(w: World) -> Expect:
    os.symlink(w.victim, w.root / "p.csv")
    f = batch(w, [("ol1", "ol")])

    def check(w: World, r: Run) -> None:
        assert not (w.root / "p.csv").is_symlink() and "ol1" in (w.root / "p.csv").read_text()
    return Expect(scoring(w, f, "--out", "p.csv"), store="grow", outputs=("p.csv",), check=check)


@case
def case_score_out_missing_folder(w: World) -> Expect:
    f = batch(w, [("mf1", "mf")])
    return Expect(scoring(w, f, "--out", w.root / "nope" / "p.csv"), code=1, error="does not exist")


@case
def case_score_out_is_a_folder(w: World) -> Expect:
    (w.root / "p.csv").mkdir()
    f = batch(w, [("of1", "of")])
    return Expect(scoring(w, f, "--out", "p.csv"), code=1, error="is a folder")


@case
def case_score_out_bad_suffix(w: World) -> Expect:
    f = batch(w, [("bs1", "bs")])
    return Expect(scoring(w, f, "--out", "p.txt"), code=1, error="use a .csv or .parquet")


@case
def case_score_out_is_the_batch(w: World) -> Expect:
    f = batch(w, [("ib1", "ib")])
    return Expect(scoring(w, f, "--out", f), code=1, error="is the posts file being scored")


@case
def case_score_model_markup(w: World) -> Expect:
    f = batch(w, [("mm1", "mm")])
    return Expect(scoring(w, f, "--model", "[/x]"), code=1, error=re.escape("[/x]"))


@case
def case_score_model_escape_codes(w: World) -> Expect:
    f = batch(w, [("me1", "me")])
    return Expect(scoring(w, f, "--model", "\x1b]0;t\x07m"), code=1, error=re.escape("\\x1b]0;t\\x07m"))


@case
def case_score_model_traversal(w: World) -> Expect:
    f = batch(w, [("mt1", "mt")])
    return Expect(scoring(w, f, "--model", "../../../../etc"), code=1, error="not a model directory")


@case
def case_score_fifo_batch(w: World) -> Expect:
    os.mkfifo(w.root / "b.csv")
    return Expect(scoring(w, w.root / "b.csv"), code=1, error="not a regular file")


@case
def case_score_batch_naming_a_stored_image(w: World) -> Expect:
    f = batch(w, [("si1", "si")], image=w.base["image"][0])
    return Expect(scoring(w, f), store="grow", check=image_status("si1", "unsafe_path"))


@case
def case_featurize_image_swapped_for_a_fifo(w: World) -> Expect:
    img = w.image("batch/f.png", color=(7, 70, 170))
    sha = hashlib.sha256(img.read_bytes()).hexdigest()
    ingest_posts(w.csv("batch/b.csv", ["fz1,fz,2020-01-01,c,5,f.png"]), db=w.db)
    os.unlink(img)
    os.mkfifo(img)            # featurize must not wait on it

    def check(w: World, r: Run) -> None:
        assert rows_of(w.db, "SELECT reason FROM image_feature_errors WHERE sha256 = ?", [sha]) == \
            [(f"{img}: image path is not a regular file",)]
        assert not rows_of(w.db, "SELECT 1 FROM image_quality WHERE sha256 = ?", [sha])
    return Expect(["featurize", "--db", w.db, "--no-backbones"], store="any", check=check)


# ---------------------------------------------------------------------------------------- report, status

@case
def case_report_out_links(w: World) -> Expect:
    other = w.root / "outside" / "other.txt"
    other.write_bytes(VICTIM)
    os.symlink(w.victim, w.root / ".r.html.tmp")
    os.symlink(other, w.root / "r.html")

    def check(w: World, r: Run) -> None:
        assert other.read_bytes() == VICTIM
        assert not (w.root / "r.html").is_symlink() and b"<html" in (w.root / "r.html").read_bytes()[:200]
    return Expect(["report", "--db", w.db, "--exports", w.exports, "--out", "r.html"], outputs=("r.html",),
                  check=check)


@case
def case_report_images_swapped_after_scoring(w: World) -> Expect:
    names = ["keep.png", "fifo.png", "link.png", "other.png"]
    for i, n in enumerate(names):
        w.image(f"batch/{n}", color=(60 * i, 90, 200))
    w.csv("batch/b.csv", [f"sw{i},sw,2026-01-0{i + 1},c,,{n}" for i, n in enumerate(names)])
    score(w.root / "batch" / "b.csv", w.db, ScoreOptions(exports_dir=w.exports))
    os.unlink(w.root / "batch" / "fifo.png")
    os.mkfifo(w.root / "batch" / "fifo.png")
    os.unlink(w.root / "batch" / "link.png")
    os.symlink(w.image("secret.png", color=(1, 2, 3)), w.root / "batch" / "link.png")
    w.image("batch/other.png", color=(9, 9, 9), size=(300, 300))   # another image where the ingested one was

    def check(w: World, r: Run) -> None:
        page = (w.root / "r.html").read_text()
        assert page.count("data:image/jpeg") == 1        # keep.png only
    return Expect(["report", "--db", w.db, "--exports", w.exports, "--out", "r.html"], outputs=("r.html",),
                  check=check)


@case
def case_report_out_missing_folder(w: World) -> Expect:
    return Expect(["report", "--db", w.db, "--exports", w.exports, "--out", w.root / "nope" / "r.html"],
                  code=1, error="does not exist")


@case
def case_report_out_is_a_folder(w: World) -> Expect:
    (w.root / "r.html").mkdir()
    return Expect(["report", "--db", w.db, "--exports", w.exports, "--out", "r.html"], code=1, error="is a folder")


@case
def case_report_model_markup(w: World) -> Expect:
    return Expect(["report", "--db", w.db, "--exports", w.exports, "--model", "[/x]\x1b[2J", "--out", "r.html"],
                  code=1, error=re.escape("[/x]\\x1b[2J"))


@case
def case_status_markup_in_stored_reject(w: World) -> Expect:
    ingest_posts(w.csv("one.csv", ["sr1,[/x][bold],2020-01-01,,1,"]), db=w.db)
    ingest_posts(w.csv("two.csv", ["sr1,bob,2020-01-01,,1,"]), db=w.db)
    return Expect(["status", "--db", w.db], shown=("post_id already belongs to user [/x][bold]",))


@case
def case_status_escape_codes_in_stored_reject(w: World) -> Expect:
    ingest_posts(w.csv("one.csv", ["se1,\x1b[2J\x1b]0;t\x07u,2020-01-01,,1,"]), db=w.db)
    ingest_posts(w.csv("two.csv", ["se1,bob,2020-01-01,,1,"]), db=w.db)
    return Expect(["status", "--db", w.db], shown=("user \\x1b[2J\\x1b]0;t\\x07u",))


@case
def case_status_markup_model_id(w: World) -> Expect:
    with duckdb.connect(str(w.db)) as con:
        con.execute("UPDATE runs SET model_id = '[/x]\x1b[31m' || model_id")
    return Expect(["status", "--db", w.db], shown=("[/x]\\x1b[31m",))


# ------------------------------------------------------------------------------------------- the runner

@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name: str, w: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    exp = CASES[name](w)
    db = exp.db or w.db
    before_rows = tables(db) if db.is_file() and db.stat().st_size else None
    before_files = snapshot(w.root, w.base["root"])
    r = igcli(monkeypatch, capsys, *exp.args)
    shown = r.out + r.err
    assert r.code == exp.code, shown
    assert "Traceback" not in shown
    assert not TERMINAL_BAD.search(shown), repr(TERMINAL_BAD.search(shown))
    if exp.code:
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.err
        assert re.search(exp.error, lines[0]), lines[0]
    for text in exp.shown:
        assert text in shown, (text, shown)
    if before_rows is not None:
        after_rows = tables(db)
        if exp.store == "same":
            assert digest(after_rows) == digest(before_rows)
        elif exp.store == "data":
            assert digest(after_rows, LOG_TABLES) == digest(before_rows, LOG_TABLES)
        elif exp.store == "grow":   # every earlier row still there, unchanged
            for t, rows in before_rows.items():
                if t not in LOG_TABLES:
                    assert not rows - after_rows[t], f"{t} lost or changed rows"
    allowed = {str(w.root / o) for o in exp.outputs} | {str(db)}
    after_files = snapshot(w.root, w.base["root"])
    changed = {p for p in before_files.keys() | after_files.keys()
               if before_files.get(p) != after_files.get(p) and p not in allowed
               and not p.startswith(str(db) + ".")}   # DuckDB's own .wal / .tmp beside the store
    assert not changed, sorted(changed)
    assert w.victim.read_bytes() == VICTIM
    if exp.check:
        exp.check(w, r)



# ------------------------------------------------------------------------ what the CLI cannot do on cue

def test_corpus_size():
    assert len(CASES) >= 60


def _append_during(block: str, monkeypatch: pytest.MonkeyPatch, act: Callable[[], None]) -> None:
    real = store.run_block

    def hooked(con, file, name, params=None):
        if name == block:
            act()
        return real(con, file, name, params)
    monkeypatch.setattr(store, "run_block", hooked)


def test_csv_written_to_between_its_reads_is_refused(w: World, monkeypatch: pytest.MonkeyPatch):
    f = w.csv("grow.csv", ["gr1,lee,2020-01-01,,1,"])
    owner = next(iter(posts(w).items()))

    def append() -> None:     # another writer, after the first read: a post_id owned by someone else
        with open(f, "a") as fh:
            fh.write(f"{owner[0]},mallory,2020-01-02,,1,\n")
    _append_during("pick", monkeypatch, append)
    before = digest(tables(w.db))
    with pytest.raises(InputError, match="changed while it was being read") as err:
        ingest_posts(f, db=w.db)
    assert "\n" not in str(err.value)
    assert digest(tables(w.db)) == before


def test_csv_replaced_between_its_reads_is_refused_too(w: World, monkeypatch: pytest.MonkeyPatch):
    """An editor saving the file (a rename over it) mid-ingest: the rows read all come from the file opened,
    and the rename is seen (the opened file lost its name: its ctime moved), so nothing is stored."""
    f = w.csv("swap.csv", ["sw1,lee,2020-01-01,,1,"])
    other = w.csv("other.csv", ["sw2,lee,2020-01-01,,1,"])
    _append_during("pick", monkeypatch, lambda: os.replace(other, f))
    before = digest(tables(w.db))
    with pytest.raises(InputError, match="changed while it was being read"):
        ingest_posts(f, db=w.db)
    assert digest(tables(w.db)) == before


def test_train_beside_another_export(base: dict):
    """Two trains with one --exports: the other run's folder in progress survives, a killed run's folder is
    left while another export runs, and a link at the old ``.latest.tmp`` name was not written through."""
    assert base["facts"]["busy_survived"] and base["facts"]["stale_kept_while_busy"]
    assert base["facts"]["outside"] == VICTIM
    assert base["facts"]["latest"] == base["run"].model_id


def test_stale_export_folders_go_only_when_no_export_runs(tmp_path: Path):
    exports = tmp_path / "exports"
    with export.export_folder(exports, "a") as a:
        (exports / f"{export.TMP_PREFIX}killed").mkdir()
        with export.export_folder(exports, "b") as b:
            assert a.is_dir() and b.is_dir() and a != b
        assert a.is_dir() and (exports / f"{export.TMP_PREFIX}killed").is_dir()
    with export.export_folder(exports, "c") as c:
        assert [p.name for p in exports.iterdir()] == [c.name]   # a, b, killed: no owner left, removed


def test_atomic_write_draws_past_planted_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, w: World):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr("igcli.files.secrets.token_hex", lambda n: next(names))
    os.symlink(w.victim, tmp_path / ".out.csv.aaaa.tmp")
    with atomic_write(tmp_path / "out.csv") as fh:
        fh.write(b"new")
    assert (tmp_path / "out.csv").read_bytes() == b"new" and w.victim.read_bytes() == VICTIM
    assert sorted(os.listdir(tmp_path)) == [".out.csv.aaaa.tmp", "out.csv"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path):
    (tmp_path / "out.csv").write_bytes(b"old")
    os.chmod(tmp_path / "out.csv", 0o600)
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "out.csv") as fh:
        fh.write(b"half")
        raise RuntimeError("killed mid-write")
    assert os.listdir(tmp_path) == ["out.csv"] and (tmp_path / "out.csv").read_bytes() == b"old"
    with atomic_write(tmp_path / "out.csv") as fh:
        fh.write(b"new")
    assert (os.stat(tmp_path / "out.csv").st_mode & 0o777) == 0o600   # a private file stays private


def test_image_swapped_for_a_link_or_fifo_after_resolving(tmp_path: Path, w: World):
    img = w.image("x.png")
    os.symlink(img, tmp_path / "link.png")
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(OSError):          # O_NOFOLLOW at the last step: a stored path is already resolved
        open_file(tmp_path / "link.png")
    assert probe_image(str(tmp_path / "link.png")).status == "not_a_file"
    assert probe_image(str(tmp_path / "pipe.png")).status == "not_a_file"
    with pytest.raises(InputError, match="not a regular file"), open_input(tmp_path / "pipe.png"):
        pass


def test_model_card_digest_is_a_checksum_not_a_signature(w: World):
    """A card edited by hand is refused; one edited with its digest recomputed is accepted (README, Security
    model: the exports folder is trusted)."""
    import json

    model_dir = w.exports / w.base["run"].model_id
    card = json.loads((model_dir / export.CARD).read_text())
    card["metrics"]["mae"] = 0.0
    (model_dir / export.CARD).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="altered after export"):
        export.load_card(model_dir)
    card["card_sha256"] = export.card_digest(card)
    (model_dir / export.CARD).write_text(json.dumps(card))
    assert export.load_card(model_dir)["metrics"]["mae"] == 0.0


def test_terminal_console_shows_user_text_as_text():
    import io

    from igcli.console import TerminalConsole, for_terminal

    buf = io.StringIO()
    con = TerminalConsole(file=buf, width=200, force_terminal=True, color_system="truecolor", highlight=False)
    con.print("[/x] :smile: \x1b[2J \u202eabc \x9b \x07", con.styled("ours", "red"))
    shown = buf.getvalue()
    assert "[/x] :smile: \\x1b[2J \\u202eabc \\x9b \\x07" in shown and "\x1b[31m" in shown  # our red, styled
    assert "\x1b[2J" not in shown and "\u202e" not in shown
    assert for_terminal("ok\ttab\nline") == "ok\ttab\nline"

