"""The bad-input corpus: each case with its expected outcome, and the store unchanged except for the valid
rows. Files are generated here (tests/data holds none of the real data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import query
from PIL import Image

from igcli.commands.ingest import ingest_posts
from igcli.errors import InputError

HEADER = "post_id,username,posted_at,caption,hashtags,mentions,likes,followers,following,user_post_count,image\n"
GOOD = "g1,ann,2020-01-01,ok,,,10,100,1,1,\n"


q = query


def rejects(db: Path) -> list[tuple]:
    return q(db, "SELECT line_number, column_name, reason FROM rejects ORDER BY line_number, column_name")


@pytest.fixture
def seeded(tmp_path: Path, db: Path) -> Path:
    """A store that already holds one valid post; every case must leave it intact."""
    (tmp_path / "seed.csv").write_text(HEADER + "s1,sam,2019-05-05,seed,,,42,7,7,7,\n")
    ingest_posts(tmp_path / "seed.csv", db=db)
    return db


def after_case(db: Path) -> None:
    assert q(db, "SELECT post_id, likes, caption FROM posts WHERE post_id = 's1'") == [("s1", 42, "seed")]


# ------------------------------------------------------------------------------------- whole-file errors

@pytest.mark.parametrize("name,content,match", [
    ("empty.csv", b"", "is empty"),
    ("dup_header.csv", b"post_id,username,posted_at,likes,likes\np1,a,2020-01-01,1,2\n", "names column 'likes' twice"),
    ("missing_col.csv", b"post_id,posted_at\np1,2020-01-01\n", "lacks required column.*username"),
    ("latin1.csv", (HEADER + "p1,ann,2020-01-01,caf\xe9,,,1,1,1,1,\n").encode("latin-1"), "--encoding latin-1"),
    ("blank_header.csv", b",,\n1,2,3\n", "no usable header"),
])
def test_unusable_file_is_one_clear_error_and_changes_nothing(tmp_path: Path, seeded: Path, name, content, match):
    (tmp_path / name).write_bytes(content)
    before = q(seeded, "SELECT count(*) FROM posts") + q(seeded, "SELECT count(*) FROM rejects")
    with pytest.raises(InputError, match=match) as exc:
        ingest_posts(tmp_path / name, db=seeded)
    assert "\n" not in str(exc.value)
    assert q(seeded, "SELECT count(*) FROM posts") + q(seeded, "SELECT count(*) FROM rejects") == before
    after_case(seeded)


def test_latin1_with_the_named_fix_loads(tmp_path: Path, db: Path):
    (tmp_path / "l.csv").write_bytes((HEADER + "p1,ann,2020-01-01,caf\xe9,,,1,1,1,1,\n").encode("latin-1"))
    ingest_posts(tmp_path / "l.csv", db=db, encoding="latin-1")
    assert q(db, "SELECT caption FROM posts") == [("café",)]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_bom_files_load(tmp_path: Path, db: Path, encoding: str):
    (tmp_path / "b.csv").write_bytes((HEADER + "p1,ann,2020-01-01,привет 😀,,,1,1,1,1,\n").encode(encoding))
    r = ingest_posts(tmp_path / "b.csv", db=db)
    assert (r.loaded, r.rejected) == (1, 0)
    assert q(db, "SELECT post_id, caption FROM posts") == [("p1", "привет 😀")]


def test_header_only_loads_nothing(tmp_path: Path, seeded: Path):
    (tmp_path / "h.csv").write_text(HEADER)
    r = ingest_posts(tmp_path / "h.csv", db=seeded)
    assert (r.rows_read, r.loaded, r.rejected) == (0, 0, 0)
    after_case(seeded)


def test_extra_columns_are_ignored_and_named(tmp_path: Path, db: Path):
    (tmp_path / "x.csv").write_text("post_id,username,posted_at,Mood,likes\np1,ann,2020-01-01,happy,5\n")
    r = ingest_posts(tmp_path / "x.csv", db=db)
    assert r.ignored_columns == ["mood"] and r.loaded == 1


# ------------------------------------------------------------------------------------------- row rejects

def test_truncated_file_keeps_the_complete_rows(tmp_path: Path, seeded: Path):
    (tmp_path / "t.csv").write_text(HEADER + GOOD + 'g2,ann,2020-01-02,"cut in the mid')
    r = ingest_posts(tmp_path / "t.csv", db=seeded)
    assert (r.loaded, r.rejected) == (1, 1)
    assert rejects(seeded) == [(3, None, "unterminated or misplaced quote (file cut mid-field?)")]
    after_case(seeded)


def test_huge_caption_loads(tmp_path: Path, db: Path):
    caption = "x" * (5 * 1024 * 1024)
    (tmp_path / "big.csv").write_text(HEADER + f"p1,ann,2020-01-01,{caption},,,1,1,1,1,\n")
    r = ingest_posts(tmp_path / "big.csv", db=db)
    assert r.loaded == 1 and q(db, "SELECT length(caption) FROM posts") == [(len(caption),)]


def test_value_rejects(tmp_path: Path, seeded: Path):
    rows = [
        "a1,ann,2020-01-01,nul\x00byte,,,1,1,1,1,",     # 2
        "a2,ann,2020-01-01,,,,NaN,1,1,1,",              # 3
        "a3,ann,2020-01-01,,,,inf,1,1,1,",              # 4
        "a4,ann,2020-01-01,,,,1,-3,1,1,",               # 5
        "a5,ann,2020-01-01,,,,1.2k,1,1,1,",             # 6 ok
        "a6,ann,2020-01-01,,,,\"3,4m\",1,1,1,",         # 7 ok
        "a7,ann,2020-01-01,,,,abc,1,1,1,",              # 8
        "a8,ann,1970-01-01,,,,1,1,1,1,",                # 9 ok, with a warning
        "a9,ann,2999-01-01,,,,1,1,1,1,",                # 10
        "b1,ann,01/02/2020,,,,1,1,1,1,",                # 11
        "a5,ann,2020-01-03,,,,9,1,1,1,",                # 12 duplicate of line 6
        "s1,bob,2020-01-03,,,,9,1,1,1,",                # 13 s1 belongs to sam
    ]
    (tmp_path / "v.csv").write_bytes((HEADER + "\n".join(rows) + "\n").encode())
    r = ingest_posts(tmp_path / "v.csv", db=seeded)
    assert r.loaded == 3 and r.warned == 1
    assert rejects(seeded) == [
        (2, None, "value contains a NUL byte"),
        (3, "likes", "not a count (expected e.g. 1234, 1,234, 1.2k or 3m)"),
        (4, "likes", "not a count (expected e.g. 1234, 1,234, 1.2k or 3m)"),
        (5, "followers", "negative count"),
        (8, "likes", "not a count (expected e.g. 1234, 1,234, 1.2k or 3m)"),
        (10, "posted_at", "date more than a year in the future"),
        (11, "posted_at", "unparseable date (expected ISO 8601, e.g. 2017-04-28 or 2017-04-28T14:05:00Z)"),
        (12, "post_id", "duplicate post_id in this file (first at line 6)"),
        (13, "username", f"post_id already belongs to user sam (from {(tmp_path / 'seed.csv').resolve()})"),
    ]
    assert dict(q(seeded, "SELECT post_id, likes FROM posts WHERE post_id IN ('a5', 'a6', 'a8')")) == {
        "a5": 1200, "a6": 3_400_000, "a8": 1}
    assert q(seeded, "SELECT line_number, message FROM ingest_warnings") == [
        (9, "date before Instagram existed (2010-10-06), loaded as given: a missing-date placeholder?")]
    after_case(seeded)


def test_parquet_with_wrong_types(tmp_path: Path, db: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"post_id": ["p1", "p2"], "username": ["a", "a"], "posted_at": [20200101, 20200102],
                             "likes": ["12", "many"]}), tmp_path / "w.parquet")
    r = ingest_posts(tmp_path / "w.parquet", db=db)
    assert (r.loaded, r.rejected) == (0, 2)
    assert {x[1] for x in rejects(db)} == {"posted_at", "likes"}
    pq.write_table(pa.table({"post_id": ["p1"], "username": ["a"], "posted_at": ["2020-01-01"],
                             "likes": pa.array([[1, 2]], pa.list_(pa.int64()))}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match="column 'likes' has type list"):
        ingest_posts(tmp_path / "n.parquet", db=db)


# ------------------------------------------------------------------------------------------------ images

def test_image_corpus(tmp_path: Path, db: Path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(d / "ok.jpg")
    (d / "zero.jpg").write_bytes(b"")
    full = (d / "ok.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(full[: len(full) // 2])
    Image.new("RGB", (20, 20), (1, 2, 3)).save(d / "png.jpg", format="PNG")
    Image.new("CMYK", (20, 20), (0, 255, 0, 0)).save(d / "cmyk.jpg", format="JPEG")
    Image.new("L", (20, 20), 128).save(d / "gray.jpg", format="JPEG")
    bomb = Image.new("1", (20000, 20000))
    bomb.save(d / "bomb.png", optimize=True)
    assert (d / "bomb.png").stat().st_size < 2_000_000
    Image.new("RGB", (5, 5)).save(tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", d / "link.jpg")
    (d / "folder.jpg").mkdir()
    refs = {"i1": "ok.jpg", "i2": "zero.jpg", "i3": "trunc.jpg", "i4": "png.jpg", "i5": "cmyk.jpg", "i6": "gray.jpg",
            "i7": "bomb.png", "i8": "../outside.jpg", "i9": str(tmp_path / "outside.jpg"), "j1": "link.jpg",
            "j2": "folder.jpg"}
    rows = [f"{pid},ann,2020-01-0{1 + i % 9},,,,1,1,1,1,{ref}" for i, (pid, ref) in enumerate(refs.items())]
    (d / "p.csv").write_text(HEADER + "\n".join(rows) + "\n")
    r = ingest_posts(d / "p.csv", db=db)
    assert r.loaded == len(refs)                    # an image problem never drops the post
    status = dict(q(db, "SELECT p.post_id, i.status FROM posts p JOIN images i ON i.path = p.image_path"))
    assert status == {"i1": "ok", "i2": "corrupt", "i3": "corrupt", "i4": "ok", "i5": "ok", "i6": "ok",
                      "i7": "corrupt", "i8": "unsafe_path", "i9": "unsafe_path", "j1": "unsafe_path",
                      "j2": "not_a_file"}
    errors = dict(q(db, "SELECT p.post_id, i.error FROM posts p JOIN images i ON i.path = p.image_path"))
    assert "0 bytes" in errors["i2"] and "limit" in errors["i7"] and "leaves the images folder" in errors["i8"]
    # the weight-free features run on every decodable image, CMYK and grayscale included
    from igcli.commands.featurize import featurize
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions

    featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    with_quality = {x[0] for x in q(db, "SELECT p.post_id FROM posts p JOIN images i ON i.path = p.image_path "
                                        "JOIN image_quality q ON q.sha256 = i.sha256")}
    assert with_quality == {"i1", "i4", "i5", "i6"}
    assert q(db, "SELECT count(*) FROM post_features") == [(len(refs),)]
