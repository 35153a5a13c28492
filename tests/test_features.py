"""Point-in-time correctness of the metadata features, on hand-built histories and against brute force."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from igcli.features import FeaturizeOptions, featurize
from igcli.ingest import ingest_posts

HEADER = "post_id,username,posted_at,caption,hashtags,mentions,likes,followers,following,user_post_count,image\n"


def meta_only(**kw) -> FeaturizeOptions:
    return FeaturizeOptions(skip_images=True, **kw)


def load(tmp_path: Path, db: Path, rows: list[str], name: str = "p.csv") -> None:
    (tmp_path / name).write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    r = ingest_posts(tmp_path / name, db=db)
    assert r.rejected == 0, r.reasons


def features(db: Path) -> dict[str, dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM post_features")
        cols = [d[0] for d in cur.description]
        return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
    finally:
        con.close()


HISTORY = [
    "a1,ann,2020-01-01 10:00,,,,100,1000,10,5,",
    "a2,ann,2020-01-02 10:00,,,,1000,1000,10,5,",
    "a3,ann,2020-01-02 10:00,,,,10,1000,10,5,",   # same timestamp as a2
    "a4,ann,2020-01-03 09:00,,,,,1000,10,5,",     # no likes yet (to be scored)
    "a5,ann,2020-01-05 09:00,,,,50,1000,10,5,",
    "b1,bob,2020-01-04 12:00,,,,7,50,1,1,",       # cold-start user
]


def test_history_sees_only_strictly_earlier_posts(tmp_path: Path, db: Path):
    load(tmp_path, db, HISTORY)
    featurize(db, meta_only())
    f = features(db)
    assert f["a1"]["hist_n"] == 0 and f["a1"]["no_history"] and f["a1"]["hist_mean"] is None
    # a2 and a3 share a timestamp: each sees a1 only, never the other
    for pid in ("a2", "a3"):
        assert f[pid]["hist_n"] == 1 and f[pid]["hist_mean"] == pytest.approx(math.log(100))
    three = [math.log(100), math.log(1000), math.log(10)]
    assert f["a4"]["hist_n"] == 3
    assert f["a4"]["hist_mean"] == pytest.approx(sum(three) / 3)
    assert f["a4"]["hist_median"] == pytest.approx(math.log(100))
    # a4 has no likes: a5's history is the same three posts
    assert f["a5"]["hist_n"] == 3 and f["a5"]["hist_mean"] == pytest.approx(sum(three) / 3)
    assert f["a5"]["days_since_prev"] == pytest.approx(2.0)
    assert f["a5"]["days_since_first"] == pytest.approx(3 + 23 / 24)
    assert f["a1"]["days_since_prev"] is None and f["a1"]["days_since_first"] is None


def test_cold_start_user_is_flagged_not_zero(tmp_path: Path, db: Path):
    load(tmp_path, db, HISTORY)
    featurize(db, meta_only())
    b = features(db)["b1"]
    assert b["no_history"] is True and b["hist_n"] == 0
    assert all(b[k] is None for k in ("hist_mean", "hist_median", "hist_std", "hist_last5", "hist_decayed"))


HIST_KEYS = ("hist_n", "hist_mean", "hist_median", "hist_std", "hist_last5", "hist_decayed")


def test_own_and_later_likes_never_leak(tmp_path: Path, db: Path):
    load(tmp_path, db, HISTORY)
    featurize(db, meta_only())
    before = features(db)
    # the latest post's likes change: nobody's history may move, its own included
    load(tmp_path, db, ["a5,ann,2020-01-05 09:00,,,,1,1000,10,5,"], name="p2.csv")
    r = featurize(db, meta_only())
    after = features(db)
    assert all(after[p][k] == before[p][k] for p in after for k in HIST_KEYS)
    assert r.updated == 1 and after["a5"]["likes"] == 1  # only a5's target moved
    # a3's likes change: a1 (earlier), a2 and a3 (same timestamp) must not see it; a4 and a5 must
    load(tmp_path, db, ["a3,ann,2020-01-02 10:00,,,,99999,1000,10,5,"], name="p3.csv")
    featurize(db, meta_only())
    later = features(db)
    for pid in ("a1", "a2", "a3", "b1"):
        assert all(later[pid][k] == after[pid][k] for k in HIST_KEYS), pid
    for pid in ("a4", "a5"):
        assert later[pid]["hist_mean"] > after[pid]["hist_mean"] + 1, pid


def test_leaky_mode_reproduces_the_papers_average(tmp_path: Path, db: Path):
    load(tmp_path, db, HISTORY)
    r = featurize(db, meta_only(user_stats_as_of="end"))
    f = features(db)
    liked = [math.log(x) for x in (100, 1000, 10, 50)]
    assert r.leaky_user_stats and f["a1"]["leaky_user_stats"] is True
    assert f["a1"]["hist_mean"] == pytest.approx(sum(liked) / 4)  # includes its own and later likes


def test_last_k_and_decayed_mean(tmp_path: Path, db: Path):
    t0 = datetime(2021, 3, 1, 12)
    likes = [10, 20, 40, 80, 160, 320, 640]
    rows = [f"c{i},cat,{(t0 + timedelta(days=i)).isoformat()},,,,{x},1,1,1," for i, x in enumerate(likes)]
    rows.append(f"c9,cat,{(t0 + timedelta(days=10)).isoformat()},,,,5,1,1,1,")
    load(tmp_path, db, rows)
    featurize(db, meta_only(half_life_days=2.0))
    f = features(db)["c9"]
    logs = [math.log(x) for x in likes]
    assert f["hist_last5"] == pytest.approx(sum(logs[-5:]) / 5)
    assert f["hist_last10"] == pytest.approx(sum(logs) / 7)
    w = [2 ** (-(10 - i) / 2.0) for i in range(7)]
    assert f["hist_decayed"] == pytest.approx(sum(a * b for a, b in zip(w, logs, strict=True)) / sum(w))


@pytest.mark.parametrize("hour,group", [(0, 0), (7, 0), (8, 1), (11, 1), (12, 2), (13, 2), (14, 3), (16, 3),
                                        (17, 4), (19, 4), (20, 5), (23, 5)])
def test_hour_groups(tmp_path: Path, db: Path, hour: int, group: int):
    load(tmp_path, db, [f"h1,ann,2020-06-03 {hour:02d}:30,,,,1,1,1,1,"])
    featurize(db, meta_only())
    f = features(db)["h1"]
    assert (f["hour"], f["hour_group"], f["weekday"], f["month"]) == (hour, group, 2, 6)  # a Wednesday


def test_hashtag_weight_from_ranking(tmp_path: Path, db: Path):
    (tmp_path / "rank.txt").write_text("love\n#Sun\nbeach\nfood\n")
    load(tmp_path, db, ['t1,ann,2020-01-01,"x",#LOVE #beach #unlisted,,1,1,1,1,', "t2,ann,2020-01-02,,,,1,1,1,1,"])
    r = featurize(db, meta_only(hashtag_ranking=tmp_path / "rank.txt"))
    f = features(db)
    assert f["t1"]["hashtag_weight"] == pytest.approx(1.0 + 0.5)  # rank 1 of 4 -> 1, rank 3 -> 0.5
    assert f["t2"]["hashtag_weight"] == 0.0
    assert r.hashtag_source.startswith("ranking:") and f["t1"]["hashtag_source"] == r.hashtag_source
    assert (f["t1"]["n_hashtags"], f["t1"]["caption_len"]) == (3, 1)


def test_hashtag_weight_from_store_frequency_is_point_in_time(tmp_path: Path, db: Path):
    load(tmp_path, db, [
        "s1,ann,2020-01-01,,#x,,1,1,1,1,", "s2,bob,2020-01-02,,#x #y,,1,1,1,1,",
        "s3,cat,2020-01-02,,#x,,1,1,1,1,", "s4,dan,2020-01-03,,#x #y,,1,1,1,1,",
    ])
    r = featurize(db, meta_only())
    f = features(db)
    assert r.hashtag_source == "store-frequency"
    assert f["s1"]["hashtag_weight"] == 0.0                        # nobody used #x before
    assert f["s2"]["hashtag_weight"] == pytest.approx(math.log(2))  # #x once before, #y never
    assert f["s3"]["hashtag_weight"] == pytest.approx(math.log(2))  # s2 is simultaneous: unseen
    assert f["s4"]["hashtag_weight"] == pytest.approx(math.log(4) + math.log(2))


def test_snapshot_choice_is_recorded(tmp_path: Path, db: Path):
    (tmp_path / "s.csv").write_text(
        "post_id,username,posted_at,likes,followers,observed_at\n"
        "o1,ann,2020-01-01,1,100,2020-01-05\n"
        "o2,ann,2020-01-10,1,200,2020-01-08\n"
    )
    ingest_posts(tmp_path / "s.csv", db=db)
    featurize(db, meta_only())
    f = features(db)
    assert (f["o1"]["followers"], f["o1"]["snapshot_choice"]) == (100, "earliest_after")
    assert (f["o2"]["followers"], f["o2"]["snapshot_choice"]) == (200, "at_or_before")


def test_second_featurize_is_a_no_op(tmp_path: Path, db: Path):
    load(tmp_path, db, HISTORY)
    first = featurize(db, meta_only())
    second = featurize(db, meta_only())
    assert (first.inserted, second.inserted, second.updated, second.unchanged) == (6, 0, 0, 6)


def test_matches_brute_force_on_random_histories(tmp_path: Path, db: Path):
    rng = random.Random(3)
    rows, posts = [], []
    for u in range(8):
        for i in range(rng.randint(1, 25)):
            t = datetime(2020, 1, 1) + timedelta(days=rng.randint(0, 30), hours=rng.choice([0, 12]))
            likes = rng.choice([None, 0, rng.randint(1, 100000)])
            pid = f"u{u}p{i}"
            posts.append((pid, f"user{u}", t, likes))
            rows.append(f"{pid},user{u},{t.isoformat()},,,,{'' if likes is None else likes},1,1,1,")
    load(tmp_path, db, rows)
    featurize(db, meta_only())
    f = features(db)
    for pid, user, t, _ in posts:
        earlier = sorted((tt, pp, math.log(lk)) for pp, uu, tt, lk in posts if uu == user and tt < t and lk)
        got = f[pid]
        assert got["hist_n"] == len(earlier), pid
        if earlier:
            vals = [v for _, _, v in earlier]
            assert got["hist_mean"] == pytest.approx(sum(vals) / len(vals)), pid
            assert got["hist_last5"] == pytest.approx(sum(vals[-5:]) / len(vals[-5:])), pid
        else:
            assert got["hist_mean"] is None and got["no_history"], pid


def test_features_for_some_users_equal_the_full_computation(tmp_path: Path, db: Path):
    """score computes only the scored users' features: they must equal what a full featurize gives."""
    from igcli import store
    from igcli.features import compute_metadata

    load(tmp_path, db, [r.replace(",,,,", ",,#x #y,,") for r in HISTORY] + ["z1,zed,2020-01-03,,#x,,3,1,1,1,"])
    con = store.connect(db)
    compute_metadata(con, meta_only())
    full = {r[0]: r for r in con.execute("SELECT * FROM pf_new WHERE username = 'ann'").fetchall()}
    compute_metadata(con, meta_only(), users=["ann"])
    part = {r[0]: r for r in con.execute("SELECT * FROM pf_new").fetchall()}
    weight = con.execute("SELECT hashtag_weight FROM pf_new WHERE post_id = 'a5'").fetchall()[0][0]
    con.close()
    assert part == full and len(part) == 5
    # before a5: #x in a1-a4, bob's b1 and zed's z1; #y in a1-a4 and b1. Other users' posts count, though
    # only ann's features were computed
    assert weight == pytest.approx(math.log(7) + math.log(6))
