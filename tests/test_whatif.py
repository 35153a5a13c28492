"""What-if scoring, the scoring batch and `forget`: drafts never become history, stored batches can be removed."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow.csv as pcsv
import pytest
from conftest import csv_rows, write_csv_rows

from igcli.commands.forget import forget
from igcli.commands.score import FILE_COLUMNS, ScoreOptions, score, what_if_rounds
from igcli.errors import InputError, StoreError

STATE_TABLES = ("posts", "post_features", "user_state", "user_tag_state", "tag_state", "user_snapshots",
                "feature_counts", "predictions")


def content_hashes(db: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """(rows, sum of row hashes) of every table, timestamps of when a row was written left out."""
    written = {"computed_at", "ingested_at", "updated_at", "checked_at", "scored_at", "started_at", "finished_at",
               "applied_at", "warned_at", "failed_at", "posts_seen", "ingests_seen", "created_at",
               "observed_at", "snap_first_at"}    # snapshots without observed_at are dated when ingested
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                                "ORDER BY 1").fetchall():
            if t in skip:
                continue
            cols = [c for (c,) in con.execute("SELECT column_name FROM information_schema.columns WHERE "
                                              "table_name = ? ORDER BY ordinal_position", [t]).fetchall()
                    if c not in written]
            row = ", ".join(f'"{c}" := "{c}"' for c in cols)
            out[t] = con.execute(f'SELECT count(*), sum(hash(struct_pack({row}))) FROM "{t}"').fetchall()[0]
        return out
    finally:
        con.close()


@pytest.fixture(scope="module")
def freq_store(tmp_path_factory, sample_dir: Path) -> dict:
    """A trained store whose hashtag weights count the store's own tag uses (so drafts could see each other's
    tags), and a drafts file: three alternatives of one user sharing tags, two other users sharing a tag."""
    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_posts
    from igcli.commands.train import TrainOptions, train
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions

    base = tmp_path_factory.mktemp("whatif")
    db = base / "store.duckdb"
    ingest_posts(sample_dir / "posts.csv", db=db)
    featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    train(db, TrainOptions(branches=("metadata",), split="random", seed=0, epochs=40, exports_dir=base / "exports"))
    new = csv_rows(sample_dir / "new_posts.csv")
    known = {r["username"] for r in csv_rows(sample_dir / "posts.csv")}
    first = next(r for r in new if r["username"] in known)
    others = [r for r in new if r["username"] in known and r["username"] != first["username"]][:2]
    drafts = []
    for i, (caption, when) in enumerate((("a quiet morning", "2025-03-01 09:00:00"),
                                         ("LINK IN BIO!!! #sale", "2025-02-01 09:00:00"),
                                         ("three words here", "2025-03-05 20:00:00"))):
        drafts.append({**first, "post_id": f"draft_{i}", "caption": caption, "posted_at": when,
                       "hashtags": "#shared #whatif", "likes": ""})
    for j, r in enumerate(others):
        drafts.append({**r, "post_id": f"other_{j}", "hashtags": "#whatif", "likes": "",
                       "posted_at": f"2025-03-0{2 + j} 10:00:00", "followers": str(int(r["followers"]) + 1)})
    path = base / "drafts.csv"
    write_csv_rows(path, drafts)
    return {"db": db, "exports": base / "exports", "drafts": path, "images": sample_dir, "rows": drafts,
            "user": first["username"]}


def _copy(store: dict, tmp: Path) -> Path:
    dst = tmp / "store.duckdb"
    shutil.copy(store["db"], dst)
    return dst


def _opts(store: dict, **kw) -> ScoreOptions:
    return ScoreOptions(exports_dir=store["exports"], images_dir=store["images"], **kw)


def test_what_if_stores_nothing_and_each_row_equals_scoring_it_alone(freq_store, tmp_path: Path):
    db = _copy(freq_store, tmp_path)
    before = content_hashes(db)
    r = score(freq_store["drafts"], db, _opts(freq_store, what_if=True, out=tmp_path / "wi.csv"))
    assert content_hashes(db) == before                      # every table, to the row
    assert not r.stored and r.batch_id is None and r.posts == len(freq_store["rows"])
    together = {row["post_id"]: row["predicted_log_likes"] for row in csv_rows(tmp_path / "wi.csv")}
    for row in freq_store["rows"]:
        one = tmp_path / f"{row['post_id']}.csv"
        write_csv_rows(one, [row])
        out = tmp_path / f"{row['post_id']}.out.csv"
        score(one, db, _opts(freq_store, what_if=True, out=out))
        alone = csv_rows(out)[0]["predicted_log_likes"]
        assert float(alone) == float(together[row["post_id"]]), row["post_id"]
    assert content_hashes(db) == before
    # the drafts differ (captions, times), so they are ranked, best first, per user
    mine = next(u for u in r.what_if if u["username"] == freq_store["user"])
    likes = [a["predicted_likes"] for a in mine["alternatives"]]
    assert len(likes) == 3 and likes == sorted(likes, reverse=True)


def test_scoring_drafts_together_would_have_moved_them(freq_store, tmp_path: Path):
    """The control: stored (not what-if), a later draft of the same user sees the earlier ones as history."""
    db = _copy(freq_store, tmp_path)
    score(freq_store["drafts"], db, _opts(freq_store, out=tmp_path / "stored.csv"))
    (tmp_path / "b").mkdir()
    score(freq_store["drafts"], _copy(freq_store, tmp_path / "b"), _opts(freq_store, what_if=True,
                                                                        out=tmp_path / "wi.csv"))
    stored = {r["post_id"]: float(r["predicted_log_likes"]) for r in csv_rows(tmp_path / "stored.csv")}
    alone = {r["post_id"]: float(r["predicted_log_likes"]) for r in csv_rows(tmp_path / "wi.csv")}
    assert stored["draft_1"] == alone["draft_1"]            # the earliest draft has no earlier draft either way
    assert stored["draft_0"] != alone["draft_0"] and stored["draft_2"] != alone["draft_2"]


def test_rounds_keep_users_and_tags_apart():
    rounds = what_if_rounds([("a", "u", ("x",)), ("b", "u", ()), ("c", "v", ("x",)), ("d", "w", ("y",)),
                             ("e", "v", ())])
    assert rounds == [["a", "d", "e"], ["b", "c"]]
    for ids in rounds:
        users = [u for pid, u in (("a", "u"), ("b", "u"), ("c", "v"), ("d", "w"), ("e", "v")) if pid in ids]
        assert len(users) == len(set(users))


def test_a_stored_batch_is_named_and_forget_restores_the_store(freq_store, tmp_path: Path):
    db = _copy(freq_store, tmp_path)
    never = content_hashes(db, skip=("images", "image_quality", "ingests", "ingest_warnings", "rejects"))
    r = score(freq_store["drafts"], db, _opts(freq_store))
    assert r.stored and r.batch_id
    assert content_hashes(db)["posts"] != content_hashes(freq_store["db"])["posts"]
    f = forget(db, batch=r.batch_id)
    assert f.posts == len(freq_store["rows"]) and f.predictions == f.posts and f.snapshots >= 1
    after = content_hashes(db, skip=("images", "image_quality", "ingests", "ingest_warnings", "rejects"))
    assert after == never                                   # features and state as if never scored
    with pytest.raises(InputError, match="no scoring batch"):
        forget(db, batch=r.batch_id)


def test_forget_by_id_equals_a_store_that_never_had_the_post(freq_store, tmp_path: Path):
    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_posts
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions

    rows = csv_rows(freq_store["images"] / "posts.csv")
    gone = rows[len(rows) // 2]["post_id"]
    never = tmp_path / "never.csv"
    write_csv_rows(never, [r for r in rows if r["post_id"] != gone])
    db_never = tmp_path / "never.duckdb"
    ingest_posts(never, db=db_never, images_dir=freq_store["images"])
    featurize(db_never, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    db = _copy(freq_store, tmp_path)
    forget(db, post_ids=[gone])
    want = content_hashes(db_never)
    got = content_hashes(db)
    for table in ("post_features", "user_state", "user_tag_state", "tag_state", "feature_counts"):
        assert got[table] == want[table], table


def test_score_refuses_a_missing_or_unfeaturized_store(freq_store, tmp_path: Path, sample_dir: Path):
    with pytest.raises(StoreError, match="no store at"):
        score(freq_store["drafts"], tmp_path / "typo.duckdb", _opts(freq_store))
    assert not (tmp_path / "typo.duckdb").exists()
    from igcli.commands.ingest import ingest_posts

    bare = tmp_path / "bare.duckdb"
    ingest_posts(sample_dir / "posts.csv", db=bare)
    before = content_hashes(bare)
    with pytest.raises(StoreError, match="no features yet"):
        score(freq_store["drafts"], bare, _opts(freq_store))
    assert content_hashes(bare) == before


def test_out_names_who_when_and_which_image_was_used(freq_store, tmp_path: Path):
    db = _copy(freq_store, tmp_path)
    rows = [dict(r) for r in freq_store["rows"]]
    folder = tmp_path / "imgs"
    (folder / "images").mkdir(parents=True)
    for r in rows[2:]:
        if r["image"]:
            shutil.copy(freq_store["images"] / r["image"], folder / r["image"])
    rows[0]["image"] = "images/not_there.jpg"
    rows[1]["image"] = "images/broken.jpg"
    (folder / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    drafts = folder / "drafts.csv"
    write_csv_rows(drafts, rows)
    r = score(drafts, db, ScoreOptions(exports_dir=freq_store["exports"], out=tmp_path / "out.csv"))
    table = pcsv.read_csv(tmp_path / "out.csv")
    assert tuple(table.column_names) == FILE_COLUMNS
    out = {row["post_id"]: row for row in table.to_pylist()}
    assert out["draft_0"]["image_used"] is False and out["draft_1"]["image_used"] is False
    assert all(out[r["post_id"]]["image_used"] for r in rows[2:] if r["image"])
    assert all(isinstance(row["predicted_likes"], int) and row["p10_likes"] <= row["predicted_likes"]
               <= row["p90_likes"] for row in out.values())
    assert {row["username"] for row in out.values()} == {r["username"] for r in rows}
    assert r.image_problems_total == 2
    assert any("draft_0" in line and "not_there.jpg" in line for line in r.image_problems)
    assert any("draft_1" in line and "broken.jpg" in line for line in r.image_problems)


def test_extremes_are_above_and_below_their_usual(trained_store, tmp_path: Path):
    db = trained_store["db_copy"](tmp_path)
    r = score(trained_store["sample"] / "new_posts.csv", db, ScoreOptions(exports_dir=trained_store["exports"]))
    assert all(e["vs_usual"] > 1 for e in r.above_usual) and all(e["vs_usual"] < 1 for e in r.below_usual)
    assert r.model_note == "chosen by train as best for this store"     # and named so in the summary
    assert r.model_id == trained_store["run"].model_id
