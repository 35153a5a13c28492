"""igcli features: the training frame is what train loads, the serving frame what score feeds the model, user
features as of any time; point in time for all three; formats, --columns and refusals."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from conftest import csv_rows, run_cli, write_csv_rows
from typer.testing import CliRunner

from igcli import ort
from igcli.cli import app
from igcli.commands.features import serving_table, training_table, user_features, write_table
from igcli.commands.featurize import featurize
from igcli.commands.ingest import ingest_posts
from igcli.commands.score import ScoreOptions, score
from igcli.commands.train import TrainOptions, train
from igcli.errors import InputError
from igcli.features.frames import Frame
from igcli.features.images import ImageFeatureOptions
from igcli.features.metadata import FeaturizeOptions
from igcli.model.export import load_card, resolve_model_dir
from igcli.model.preprocess import Preprocessor
from igcli.vision.families import family_table

LABEL = ("likes", "ln_likes")
HISTORY = ("hist_n", "hist_mean", "hist_median", "hist_std", "hist_last5", "hist_last10", "hist_decayed", "h_last1",
           "h_max", "h_min", "h_slope", "days_since_prev", "days_since_first", "days_since_last_liked",
           "n_posts_before", "posts_last30d")


def digest(frame: Frame, skip: tuple[str, ...] = ()) -> str:
    """sha256 over a frame's ids, users, times, labels and every feature column (by name), NaN made canonical."""
    h = hashlib.sha256()
    for values in (frame.post_id, frame.username):
        h.update("\x1f".join(values).encode())
    h.update(np.asarray(frame.posted_at).astype("datetime64[us]").view(np.int64).tobytes())
    named = {"ln_likes": frame.ln_likes, "likes": frame.likes, **frame.cols}
    for name in sorted(k for k in named if k not in skip):
        x = np.asarray(named[name], dtype=np.float64)
        h.update(name.encode() + np.where(np.isnan(x), np.nan, x).tobytes())
    return h.hexdigest()


def invoke(*args: str):
    r = CliRunner().invoke(app, ["features", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_training_frame_hashes_equal_what_train_fitted(trained_store, tmp_path: Path):
    sub = trained_store["run"].split_rows[0]           # the labelled frame train split and fitted
    for name in ("train.parquet", "train.arrow"):
        out = tmp_path / name
        r = invoke("--db", str(trained_store["db"]), "--out", str(out))
        assert f"{len(sub):,} rows" in r.output
        table = pq.read_table(out) if name.endswith(".parquet") else ipc.open_file(out).read_all()
        frame = Frame.from_arrow(table)
        assert digest(frame) == digest(sub)
        assert frame.feature_params == sub.feature_params and list(frame.cols) == list(sub.cols)
    # the digest sees a changed value
    changed = Frame.from_arrow(pq.read_table(tmp_path / "train.parquet"))
    changed.cols["hist_mean"][np.flatnonzero(np.isfinite(changed.cols["hist_mean"]))[0]] += 1e-12
    assert digest(changed) != digest(sub)


def test_training_frame_keeps_the_rows_train_keeps(trained_store, tmp_path: Path):
    """Posts with 0 or unknown likes are featurized but neither trained on nor in the training frame."""
    db, user, posts = _changed_user_store(trained_store, tmp_path)
    last = datetime.fromisoformat(posts[-1]["posted_at"])
    extra = [dict(posts[-1], post_id="zero-likes", posted_at=str(last + timedelta(days=1)), likes="0"),
             dict(posts[-1], post_id="no-likes", posted_at=str(last + timedelta(days=2)), likes="")]
    write_csv_rows(tmp_path / "extra.csv", extra)
    ingest_posts(tmp_path / "extra.csv", db=db, images_dir=trained_store["sample"])
    featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    run = train(db, TrainOptions(split="random", epochs=1, ensemble=1, export=False))  # stored rows, no holdout
    sub = run.split_rows[0]
    frame = Frame.from_arrow(training_table(db))
    assert digest(frame) == digest(sub) and len(frame) == len(csv_rows(trained_store["sample"] / "posts.csv"))
    assert not {"zero-likes", "no-likes"} & set(frame.post_id)


def test_frame_round_trip_gives_the_same_model_inputs(trained_store, tmp_path: Path):
    """With object classes and embeddings (NaN rows, a NIMA score) too: to_arrow, Parquet, from_arrow, and the
    preprocessing of every branch gives the same inputs, bit for bit."""
    frame = Frame.from_arrow(training_table(trained_store["db"]))
    rng = np.random.default_rng(0)
    wnids = sorted(family_table())
    frame.classes = [[(wnids[j], float(p)) for j, p in zip(rng.choice(len(wnids), k, replace=False),
                                                             rng.dirichlet(np.ones(5))[:k], strict=False)]
                     for k in rng.integers(0, 6, len(frame))]
    frame.embedding = rng.normal(size=(len(frame), 16)).astype(np.float32)
    frame.embedding[::7] = np.nan
    frame.nima_mean = np.where(np.arange(len(frame)) % 3 == 0, np.nan, rng.uniform(1, 10, len(frame)))
    pq.write_table(frame.to_arrow(), tmp_path / "f.parquet")
    back = Frame.from_arrow(pq.read_table(tmp_path / "f.parquet"))
    assert back.classes == frame.classes and digest(back) == digest(frame)
    pre = Preprocessor.fit(frame, ("metadata", "objects", "aesthetics"), min_family_count=1)
    pre.use_nima = True
    want, got = pre.transform(frame), pre.transform(back)
    assert want.keys() == got.keys() == {"meta", "objects", "objects_mask", "aesthetics", "aesthetics_mask"}
    for k in want:
        assert np.array_equal(want[k], got[k], equal_nan=True), k
    assert got["aesthetics_mask"][::7].sum() == 0 and got["objects_mask"].sum() < len(frame)


def test_columns_and_csv(trained_store, tmp_path: Path):
    out = tmp_path / "t.csv"
    invoke("--db", str(trained_store["db"]), "--out", str(out), "--columns", "post_id,ln_likes,hist_mean")
    table = pcsv.read_csv(out)
    assert table.column_names == ["post_id", "ln_likes", "hist_mean"]
    full = training_table(trained_store["db"])
    assert table.column("post_id").to_pylist() == full.column("post_id").to_pylist()
    assert table.column("hist_mean").to_pylist() == full.column("hist_mean").to_pylist()
    with pytest.raises(InputError, match="no column 'nope' in this frame: choose from post_id"):
        training_table(trained_store["db"], columns=["post_id", "nope"])
    lists = pa.table({"embedding": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))})
    with pytest.raises(InputError, match="CSV cannot hold the list column"):
        write_table(lists, tmp_path / "x.csv")
    with pytest.raises(InputError, match="name a .parquet, .csv or .arrow file"):
        write_table(full, tmp_path / "x.xlsx")
    assert not (tmp_path / "x.csv").exists()


def _run_model(model_dir: Path, frame: Frame) -> np.ndarray:
    card = load_card(model_dir)
    inputs = Preprocessor.from_card(card).transform(frame)
    return ort.run_batched(ort.session(model_dir / "model.onnx", "cpu"), inputs)


def test_serving_frame_through_the_card_reproduces_predictions(trained_store, tmp_path: Path):
    db = trained_store["db_copy"](tmp_path)
    batch = trained_store["sample"] / "new_posts.csv"
    score(batch, db, ScoreOptions(exports_dir=trained_store["exports"]))
    con = duckdb.connect(str(db), read_only=True)
    stored = dict(con.execute("SELECT post_id, predicted_log_likes FROM predictions").fetchall())
    posts_before = con.execute("SELECT count(*) FROM posts").fetchall()[0][0]
    con.close()
    out = tmp_path / "serve.parquet"
    invoke("--db", str(db), "--posts", str(batch), "--exports", str(trained_store["exports"]), "--out", str(out))
    frame = Frame.from_arrow(pq.read_table(out))
    assert sorted(frame.post_id) == sorted(stored) and len(frame) == len({r["post_id"] for r in csv_rows(batch)})
    model_dir = resolve_model_dir("latest", trained_store["exports"])
    p50 = _run_model(model_dir, frame)[:, 1]
    assert np.max(np.abs(p50 - np.array([stored[p] for p in frame.post_id]))) < 1e-6
    # the same batch again changed nothing in the store (its ingest is reused, as score's would be)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM posts").fetchall()[0][0] == posts_before
    con.close()
    # the serving frame of stored, featurized posts is their stored row: the training frame's
    train = Frame.from_arrow(training_table(db))
    ids = list(train.post_id[:25])
    (tmp_path / "ids.txt").write_text("post_id\n" + "\n".join(ids) + "\n")
    invoke("--db", str(db), "--ids", str(tmp_path / "ids.txt"), "--exports", str(trained_store["exports"]),
           "--out", str(tmp_path / "ids.parquet"))
    by_ids = Frame.from_arrow(pq.read_table(tmp_path / "ids.parquet"))
    assert digest(by_ids) == digest(train.take(np.arange(25)))


def _changed_user_store(trained_store, tmp_path: Path):
    """A copy of the store, a user with 6+ posts, and its middle post (with history)."""
    db = trained_store["db_copy"](tmp_path)
    rows = csv_rows(trained_store["sample"] / "posts.csv")
    by_user: dict[str, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["username"], []).append(r)
    user = next(u for u, rs in sorted(by_user.items()) if len(rs) >= 6 and all(r["likes"] for r in rs))
    posts = sorted(by_user[user], key=lambda r: r["posted_at"])
    return db, user, posts


def test_a_row_never_changes_with_its_own_likes_or_later_posts(trained_store, tmp_path: Path):
    db, user, posts = _changed_user_store(trained_store, tmp_path)
    target, following = posts[3], posts[4]
    before = Frame.from_arrow(training_table(db))
    entity = [{"username": user, "as_of": target["posted_at"]}]
    as_of_before = user_features(entity, db)
    # its own likes change, and the user posts again after everything (with likes)
    edited = dict(target, likes=str(int(float(target["likes"])) * 50 + 7))
    last = datetime.fromisoformat(posts[-1]["posted_at"])
    later = dict(posts[-1], post_id="later-1", posted_at=str(last + timedelta(days=1)), likes="999999")
    write_csv_rows(tmp_path / "change.csv", [edited, later])
    images = trained_store["sample"]
    r = ingest_posts(tmp_path / "change.csv", db=db, images_dir=images)
    assert (r.loaded, r.updated) == (1, 1)
    featurize(db, FeaturizeOptions(hashtag_ranking=images / "hashtag_ranking.txt",
                                   images=ImageFeatureOptions(skip_backbones=True)))
    after = Frame.from_arrow(training_table(db))

    def row(frame: Frame, post_id: str) -> Frame:
        return frame.take(np.flatnonzero(frame.post_id == post_id))

    assert digest(row(after, target["post_id"]), skip=LABEL) == digest(row(before, target["post_id"]), skip=LABEL)
    assert row(after, target["post_id"]).likes[0] != row(before, target["post_id"]).likes[0]
    # ... while the next post of the user, which sees the target's likes, did change: the check can fail
    assert digest(row(after, following["post_id"])) != digest(row(before, following["post_id"]))
    assert user_features(entity, db).equals(as_of_before)


def test_user_features_as_of(trained_store, tmp_path: Path):
    db, user, posts = _changed_user_store(trained_store, tmp_path)
    train = Frame.from_arrow(training_table(db))
    con = duckdb.connect(str(db), read_only=True)
    state = con.execute("SELECT count(*), max(updated_at), (SELECT count(*) FROM post_features) FROM posts").fetchall()
    con.close()
    at = [posts[3]["posted_at"], posts[5]["posted_at"]]
    entities = [{"username": user, "as_of": at[1]}, {"username": user, "as_of": "2001-01-01"},
                {"username": "nobody-at-all", "as_of": at[0]}, {"username": user, "as_of": at[0]},
                {"username": user, "as_of": at[1]}]
    table = user_features(entities, db)
    got = table.to_pylist()
    assert [r["username"] for r in got] == [e["username"] for e in entities]       # one row each, in order
    assert got[0] == got[4]
    # as of a post's time: exactly that post's history features
    for r, post in ((got[3], posts[3]), (got[0], posts[5])):
        i = int(np.flatnonzero(train.post_id == post["post_id"])[0])
        for col in HISTORY:
            want = train.cols[col][i]
            assert (r[col] is None and np.isnan(want)) or r[col] == want, col
        assert r["no_history"] is False and r["hist_n"] == train.cols["hist_n"][i] > 0
    # before the user's first post, and for a user the store never saw: no history, not zeros
    for r in (got[1], got[2]):
        assert r["no_history"] is True and r["hist_n"] == 0 and r["n_posts_before"] == 0
        assert all(r[c] is None for c in ("hist_mean", "hist_median", "h_slope", "h_last1", "days_since_prev",
                                          "days_since_first", "days_since_last_liked", "followers"))
    assert got[2]["snapshot_choice"] == "none"
    # the sample's snapshots were observed at ingest, after every post: not known as of then
    assert got[3]["snapshot_choice"] == "earliest_after" and got[3]["followers"] is None
    # the store keeps none of the posts the answers were computed with
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), max(updated_at), (SELECT count(*) FROM post_features) "
                       "FROM posts").fetchall() == state
    con.close()
    # the same entities as an Arrow table with a zoned timestamp column, and as a CSV file
    zoned = pa.table({"username": [user], "as_of": pa.array([datetime.fromisoformat(at[0]).replace(tzinfo=UTC)],
                                                             pa.timestamp("us", tz="UTC"))})
    assert user_features(zoned, db).to_pylist() == [got[3]]
    (tmp_path / "e.csv").write_text("username,as_of\n" + "\n".join(f"{e['username']},{e['as_of']}"
                                                                      for e in entities) + "\n")
    out = tmp_path / "users.parquet"
    invoke("--db", str(db), "--entities", str(tmp_path / "e.csv"), "--out", str(out))
    assert pq.read_table(out).equals(table)


def test_entities_with_a_zone_are_read_in_utc(trained_store, tmp_path: Path):
    db, user, posts = _changed_user_store(trained_store, tmp_path)
    t = posts[3]["posted_at"]                                           # UTC, no zone
    hour = int(t[11:13])
    shifted = f"{t[:11]}{(hour + 2) % 24:02d}{t[13:]}+02:00"
    if (hour + 2) >= 24:
        pytest.skip("the post is too late in the day for this shift")
    a, b = user_features([{"username": user, "as_of": t}, {"username": user, "as_of": shifted}], db).to_pylist()
    assert a == b


def test_refusals_name_the_fix(trained_store, tmp_path: Path):
    db = str(trained_store["db"])
    (tmp_path / "e.csv").write_text("user,when\nx,2020-01-01\n")
    r = run_cli("features", "--db", db, "--entities", str(tmp_path / "e.csv"), "--out", str(tmp_path / "u.parquet"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "the entities lack the column(s) username, as_of" in r.stderr and "found: user, when" in r.stderr
    assert not (tmp_path / "u.parquet").exists()
    (tmp_path / "e.csv").write_text("username,as_of\nx,2020-01-01\ny,yesterday\n")
    with pytest.raises(InputError, match="entity row 2: as_of 'yesterday' is not a date or timestamp"):
        user_features(tmp_path / "e.csv", trained_store["db_copy"](tmp_path))
    with pytest.raises(InputError, match="post ids are not in the store .*'no-such-post'"):
        serving_table(trained_store["db_copy"](tmp_path), ids=["no-such-post"], exports_dir=trained_store["exports"])
    with pytest.raises(InputError, match="--entities asks for user features, --posts / --ids for a serving frame"):
        CliRunner().invoke(app, ["features", "--db", db, "--entities", "e.csv", "--ids", "i.txt", "--out", "x.csv"],
                           catch_exceptions=False)


def test_frame_read_through_arrow_gives_fetchnumpys_values():
    """``load_frame`` reads its query as Arrow; each column must hold exactly what ``fetchnumpy`` (+ float_column
    for the numbers) gave: NULLs as NaN / NaT, booleans and integers as float64, strings as Python str, across
    several Arrow chunks and a sliced array."""
    from igcli.features.frames import _numpy_column
    from igcli.store import float_column

    con = duckdb.connect()
    query = """SELECT i::INTEGER AS i32, (i * 3000000000)::BIGINT AS i64, i / 7 AS dbl, i % 3 = 0 AS flag,
                      CASE WHEN i % 5 = 0 THEN NULL ELSE i END::INTEGER AS nullable,
                      CASE WHEN i % 4 = 0 THEN NULL ELSE i % 2 = 0 END AS nullable_flag,
                      TIMESTAMP '2020-01-01' + to_seconds(i) AS ts,
                      CASE WHEN i % 6 = 0 THEN NULL ELSE TIMESTAMP '2021-05-01' + to_seconds(i) END AS nullable_ts,
                      'p' || i AS s, CASE WHEN i % 7 = 0 THEN 'naïve ✓ ' || i END AS nullable_s
               FROM range(2500) t(i) ORDER BY i"""
    want = con.sql(query).fetchnumpy()
    table = con.sql(query).to_arrow_table()
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=700))     # four chunks
    assert chunked.column("i32").num_chunks > 1
    for got_from in (table, chunked, chunked.slice(3, 1000)):
        for name in table.column_names:
            got = _numpy_column(got_from.column(name))
            expected = want[name]
            if got_from.num_rows != table.num_rows:
                expected = expected[3:1003]
            data = np.ma.getdata(expected)
            if data.dtype == object:
                assert got.dtype == object and got.tolist() == [None if np.ma.is_masked(v) else v
                                                               for v in expected.tolist()], name
            elif np.issubdtype(data.dtype, np.datetime64):
                mask = np.ma.getmaskarray(expected)
                assert got.dtype == data.dtype and np.array_equal(np.isnat(got), mask), name
                assert (got[~mask] == data[~mask]).all(), name
            else:
                assert got.dtype == np.float64, name
                assert got.tobytes() == float_column(expected).tobytes(), name
    # a float64 column without NULLs is the Arrow buffer itself (no copy), read-only
    dbl = _numpy_column(table.column("dbl"))
    assert not dbl.flags.writeable and not dbl.flags.owndata
