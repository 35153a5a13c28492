"""Point-in-time correctness of the metadata features, on hand-built histories and against brute force."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pit_reference as ref
import pytest
from conftest import execute, query

from igcli.commands.featurize import featurize
from igcli.commands.ingest import ingest_posts
from igcli.features.metadata import CAPTION_FEATURES, DYNAMICS_FEATURES, FeaturizeOptions

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


def test_a_run_with_other_parameters_says_it_recomputed_every_post(tmp_path: Path, db: Path):
    (tmp_path / "rank.txt").write_text("love\nsun\n")
    load(tmp_path, db, ['t1,ann,2020-01-01,"x",#love,,1,1,1,1,', "t2,ann,2020-01-02,,#sun,,5,1,1,1,"])
    first = featurize(db, meta_only(hashtag_ranking=tmp_path / "rank.txt"))
    assert first.messages == []                                        # a new store: nothing to compare with
    same = featurize(db, meta_only(hashtag_ranking=tmp_path / "rank.txt"))
    assert same.messages == [] and same.updated == 0
    plain = featurize(db, meta_only(half_life_days=10))                 # no ranking, another half-life
    assert plain.updated == 2 and len(plain.messages) == 1
    note = plain.messages[0]
    assert note.startswith("every post's features were recomputed: ")
    assert "hashtag weights from tag frequency in the store, were the ranking file " in note
    assert "give --hashtag-ranking FILE to keep the ranking" in note and "--half-life 10 days, was 30" in note
    back = featurize(db, meta_only(hashtag_ranking=tmp_path / "rank.txt", half_life_days=10))
    assert back.messages == ["every post's features were recomputed: hashtag weights from the ranking file "
                             f"{first.hashtag_source.split(':')[1][:12]}, were tag frequency in the store"]


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
    from igcli.features.metadata import compute_metadata

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


# ------------------------------------------------------------------ determinism and incremental featurize

FEATURES_SQL = "SELECT * EXCLUDE (computed_at) FROM post_features ORDER BY post_id"


def random_rows(seed: int, users: int = 8, per_user: int = 30, tags: int = 6) -> list[tuple]:
    """(post_id, user, time, likes, hashtags, followers): repeated timestamps, posts without likes, shared tags."""
    rng = random.Random(seed)
    out = []
    for u in range(users):
        for i in range(rng.randint(1, per_user)):
            t = datetime(2020, 1, 1) + timedelta(days=rng.randint(0, 60), hours=rng.choice([0, 6, 12]))
            likes = rng.choice([None, 0, rng.randint(1, 100000), rng.randint(1, 100000)])
            hashtags = " ".join(f"#t{rng.randint(0, tags)}" for _ in range(rng.randint(0, 3)))
            out.append((f"u{u}p{i}", f"user{u}", t, likes, hashtags, 100 * (u + 1)))
    return out


# captions for the caption cues (no comma, quote or newline: as_csv writes them as they are)
CAPTIONS = ["", "Love this \U0001f600\u2600\ufe0f #sun", "Link in bio! Shop now!!", "what do you THINK?",
            "\u00c9T\u00c9 \u00e0 Paris \u2728 www.example.com", "check https://x.io DM me", "followers are great",
            "Double TAP if you agree?", "12345"]


def caption_of(pid: str) -> str:
    return CAPTIONS[sum(map(ord, pid)) % len(CAPTIONS)]


def as_csv(rows: list[tuple]) -> list[str]:
    return [f"{pid},{user},{t.isoformat()},{caption_of(pid)},{tags},,{'' if lk is None else lk},{fol},1,1,"
            for pid, user, t, lk, tags, fol in rows]


def stored(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(FEATURES_SQL).fetchall()
    finally:
        con.close()


def full_computation(db: Path, **kw) -> list[tuple]:
    """compute_metadata over every user, from history, with no state (the brute-force SQL path)."""
    from igcli import store
    from igcli.features.metadata import compute_metadata

    con = store.connect(db)
    try:
        compute_metadata(con, meta_only(**kw))
        return con.execute("SELECT * FROM pf_new ORDER BY post_id").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("ranking", [False, True])
def test_values_are_bit_identical_across_reruns_threads_and_row_order(tmp_path: Path, ranking: bool):
    rows = random_rows(11)
    kw = {}
    if ranking:
        (tmp_path / "rank.txt").write_text("\n".join(f"t{i}" for i in range(7)) + "\n")
        kw["hashtag_ranking"] = tmp_path / "rank.txt"
    a, b, c = tmp_path / "a.duckdb", tmp_path / "b.duckdb", tmp_path / "c.duckdb"
    load(tmp_path, a, as_csv(rows), name="a.csv")
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    load(tmp_path, b, as_csv(shuffled), name="b.csv")           # other insertion order
    load(tmp_path, c, as_csv(rows[::-1]), name="c.csv")
    featurize(a, meta_only(**kw))
    first = stored(a)
    featurize(a, meta_only(rebuild=True, **kw))                 # a rerun from scratch
    assert stored(a) == first
    featurize(b, meta_only(**kw))
    assert stored(b) == first
    from igcli import store

    con = store.connect(c)
    con.execute("SET threads = 1")
    featurize(c, meta_only(**kw), con=con)
    con.close()
    assert stored(c) == first
    assert len(first) > 50 and any(r[0] for r in first)
    assert full_computation(a, **kw) == first


def test_incremental_equals_rebuild_and_full_computation(tmp_path: Path, db: Path):
    """Posts arrive in chunks, later ones, back-dated ones, same-timestamp ones, changed likes, a new snapshot;
    after every featurize the stored rows equal a rebuild and the state-free computation, bit for bit."""
    rows = sorted(random_rows(21, users=6, per_user=40), key=lambda r: r[2])
    chunks = [rows[:60], rows[60:90], rows[90:91], rows[91:]]
    later = rows[91:]
    back = random.Random(1).sample(rows[:60], 5)
    edits = [(pid, u, t, (lk or 0) + 7, tags + " #t9", fol) for pid, u, t, lk, tags, fol in back]
    likes_only = [(pid, u, t, (lk or 0) + 3, tags, fol) for pid, u, t, lk, tags, fol in rows[70:74]]
    moved = [(pid, u, t - timedelta(days=3), lk, tags, fol + 1) for pid, u, t, lk, tags, fol in later[:3]]
    rebuilt = tmp_path / "rebuilt.duckdb"
    seen: dict[str, tuple] = {}
    for i, chunk in enumerate([*chunks, edits, likes_only, moved, rows[:2]]):
        load(tmp_path, db, as_csv(chunk), name=f"chunk{i}.csv")
        for r in chunk:
            seen[r[0]] = r
        r = featurize(db, meta_only())
        got = stored(db)
        assert r.posts == len(seen) == len(got)
        counts = query(db, "SELECT count(*) FILTER (WHERE no_history), list(DISTINCT snapshot_choice ORDER BY 1) "
                           "FROM post_features")[0]
        assert (r.no_history, sorted(r.snapshot_choices)) == counts   # kept in feature_counts, not scanned
        assert sum(r.snapshot_choices.values()) == r.posts
        if rebuilt.exists():
            rebuilt.unlink()
        load(tmp_path, rebuilt, as_csv(sorted(seen.values())), name=f"all{i}.csv")
        featurize(rebuilt, meta_only())
        assert got == stored(rebuilt), f"after chunk {i}"
        assert got == full_computation(db), f"after chunk {i}"
    again = featurize(db, meta_only())
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, len(seen))


@pytest.mark.parametrize("state_knows_ties", [True, False])
def test_posts_at_a_tags_latest_use_count_from_state(tmp_path: Path, db: Path, state_knows_ties: bool):
    """Day-level dates make a new part's first posts share a time with the store's latest uses of their tags.
    The uses strictly before them come from tag_state's count at that time, with no recount of the store; a
    store made before that count existed (last_n NULL) recounts those tags. Both equal a rebuild."""
    from igcli import store

    rows = sorted(random_rows(8, users=5, per_user=25, tags=3), key=lambda r: r[2])
    t_end = max(r[2] for r in rows)
    last_tags = sorted({tag for r in rows if r[2] == t_end for tag in r[4].split()})
    assert last_tags, "the fixture needs a tag used at the store's latest time"
    load(tmp_path, db, as_csv(rows), name="a.csv")
    featurize(db, meta_only())
    if not state_knows_ties:
        con = store.connect(db)
        con.execute("UPDATE tag_state SET last_n = NULL")
        con.close()
    tie = [(f"n{i}", f"user{i % 5}", t_end, 10 + i, " ".join(last_tags[:1 + i % len(last_tags)]), 100 * (i % 5 + 1))
           for i in range(4)]
    tie.append(("n9", "user1", t_end + timedelta(hours=6), 3, " ".join(last_tags), 200))
    load(tmp_path, db, as_csv(tie), name="b.csv")
    con = store.connect(db)
    r = featurize(db, meta_only(), con=con)
    dirty, recounted = con.execute("SELECT (SELECT count(*) FROM fz_dirty_tags), (SELECT count(*) FROM fz_full_posts)"
                                   ).fetchall()[0]
    state = con.execute("SELECT tag, uses, last_at, last_n FROM tag_state ORDER BY tag").fetchall()
    con.close()
    assert r.inserted == len(tie)
    if state_knows_ties:
        assert (dirty, recounted) == (0, 0)
    else:
        assert dirty > 0 and recounted > 0
    rebuilt = tmp_path / "rebuilt.duckdb"
    load(tmp_path, rebuilt, as_csv(sorted(rows + tie)), name="all.csv")
    featurize(rebuilt, meta_only())
    assert stored(db) == stored(rebuilt) == full_computation(db)
    assert state == query(rebuilt, "SELECT tag, uses, last_at, last_n FROM tag_state ORDER BY tag")
    n9_tags = set(last_tags)
    assert all(n == 1 and at == t_end + timedelta(hours=6) for tag, _, at, n in state if tag in n9_tags)


def test_appending_later_posts_only_writes_them(tmp_path: Path, db: Path):
    rows = sorted(random_rows(4, users=5, per_user=20), key=lambda r: r[2])
    load(tmp_path, db, as_csv(rows), name="a.csv")
    featurize(db, meta_only())
    t_end = max(r[2] for r in rows)
    new = [(f"n{i}", f"user{i % 5}", t_end + timedelta(hours=i + 1), 10 + i, "#t1", 100 * (i % 5 + 1))
           for i in range(4)]
    load(tmp_path, db, as_csv(new), name="b.csv")
    from igcli import store

    con = store.connect(db)
    r = featurize(db, meta_only(), con=con)
    computed = con.execute("SELECT count(*) FROM fz_posts").fetchall()[0][0]   # the engine's input rows
    con.close()
    assert (r.inserted, r.updated, computed) == (4, 0, 4)
    noop = featurize(db, meta_only())
    assert (noop.inserted, noop.updated, noop.unchanged) == (0, 0, len(rows) + 4)


@pytest.mark.parametrize("ranking", [False, True])
def test_batch_from_state_equals_full_computation(tmp_path: Path, db: Path, ranking: bool):
    """score's features: a batch with several posts per user (two at one timestamp), a cold-start user, a
    back-dated post and an already featurized post, from the state, equal the full computation."""
    from igcli import store
    from igcli.features.metadata import compute_batch, compute_metadata

    kw = {}
    if ranking:
        (tmp_path / "rank.txt").write_text("t3\nt1\nt0\n")
        kw["hashtag_ranking"] = tmp_path / "rank.txt"
    rows = random_rows(8, users=6, per_user=60)
    load(tmp_path, db, as_csv(rows), name="hist.csv")
    featurize(db, meta_only(**kw))
    end = max(r[2] for r in rows)
    batch = [(f"b{i}", f"user{i % 3}", end + timedelta(hours=1 + i // 2), None if i % 3 else 50 + i, f"#t{i % 4}", 7)
             for i in range(9)]
    batch += [("cold1", "newbie", end + timedelta(days=1), None, "#t1", 3),
              ("back1", "user4", end - timedelta(days=20), None, "#t2", 500)]
    load(tmp_path, db, as_csv(batch), name="batch.csv")
    ids = [b[0] for b in batch] + [rows[0][0]]
    con = store.connect(db)
    try:
        if ranking:
            kw = {"ranking_id": con.execute("SELECT any_value(ranking_id) FROM hashtag_rankings").fetchall()[0][0]}
        compute_batch(con, meta_only(**kw), ids)
        got = con.execute("SELECT * FROM pf_new ORDER BY post_id").fetchall()
        cols = [d[0] for d in con.execute("SELECT * FROM pf_new LIMIT 0").description]
        scanned = con.execute("SELECT count(*) FROM fz_posts").fetchall()[0][0]
        user4 = sum(r[1] == "user4" for r in rows) + 1
        users = [r[0] for r in con.execute("SELECT DISTINCT username FROM posts WHERE post_id IN "
                                           "(SELECT post_id FROM fz_ids)").fetchall()]
        compute_metadata(con, meta_only(**kw), users=users)
        want = con.execute("SELECT * FROM pf_new WHERE post_id IN (SELECT post_id FROM fz_ids) "
                           "ORDER BY post_id").fetchall()
    finally:
        con.close()
    assert len(got) == len(ids) and got == want
    # the dynamics of the batch come from the state plus the batch's earlier posts: b6 (user0) sees b0 and b3
    f = {r[0]: dict(zip(cols, r, strict=True)) for r in got}
    assert set(DYNAMICS_FEATURES + CAPTION_FEATURES) <= set(cols)
    assert f["b6"]["h_last1"] == pytest.approx(math.log(53))
    assert f["b6"]["n_posts_before"] == sum(r[1] == "user0" for r in rows) + 2
    assert f["b6"]["posts_last30d"] == sum(r[1] == "user0" and r[2] >= end + timedelta(hours=4) - timedelta(days=30)
                                          for r in rows) + 2
    assert f["b6"]["h_slope"] is not None and f["b6"]["days_since_last_liked"] == pytest.approx(2 / 24)
    assert f["cold1"]["n_posts_before"] == 0 and f["cold1"]["h_last1"] is None and f["cold1"]["tag_novel_frac"] == 1
    # only the batch was computed, plus the history of the user with the back-dated post
    assert scanned == len(batch) + user4 - 1
    assert len(rows) > 2 * scanned


# ------------------------------------------------------------------ history dynamics and caption cues

def brute_dynamics(posts: list[tuple], pid: str) -> dict:
    """The dynamics features of one post from its user's posts (post_id, user, time, likes, tags) by brute force."""
    me = next(p for p in posts if p[0] == pid)
    _, user, t, _, tags = me
    before = [p for p in posts if p[1] == user and p[2] < t]
    liked = sorted((p for p in before if p[3]), key=lambda p: (p[2], p[0]))
    ys = [math.log(p[3]) for p in liked]
    out = {"h_last1": ys[-1] if ys else None, "h_max": max(ys, default=None), "h_min": min(ys, default=None),
           "h_slope": None, "n_posts_before": len(before),
           "posts_last30d": sum(t - timedelta(days=30) <= p[2] for p in before),
           "days_since_last_liked": (t - liked[-1][2]).total_seconds() / 86400 if liked else None}
    if len(ys) >= 3:
        ts = [(p[2] - datetime(2020, 1, 1)).total_seconds() / 86400 for p in liked]
        tm, ym = sum(ts) / len(ts), sum(ys) / len(ys)
        sxx = sum((x - tm) ** 2 for x in ts)
        if sxx > 0:
            out["h_slope"] = 30 * sum((x - tm) * (y - ym) for x, y in zip(ts, ys, strict=True)) / (sxx + 900)
    shared = [math.log(p[3]) for tag in tags for p in liked if tag in p[4]]   # once per shared tag
    m = len(shared)
    out["tag_perf_n"] = m
    out["tag_perf"] = (sum(shared) / m - sum(ys) / len(ys)) * m / (m + 2) if m else None
    used = {tag for p in before for tag in p[4]}
    out["tag_novel_frac"] = sum(tag not in used for tag in tags) / len(tags) if tags else None
    return out


@pytest.mark.parametrize("arrow_parts", [False, True])
def test_dynamics_and_caption_cues_match_brute_force(tmp_path: Path, db: Path, monkeypatch, arrow_parts: bool):
    """Also with the caption cues scanned from Arrow parts (the path of batches under two row groups, here
    forced on 240 posts) instead of the table."""
    from igcli.features import metadata as F

    if arrow_parts:
        monkeypatch.setattr(F, "PART_ROWS", 16)
    assert (F.cue_parts(240, 2) is not None) is arrow_parts
    rows = random_rows(17, users=6, per_user=40, tags=5)
    load(tmp_path, db, as_csv(rows))
    featurize(db, meta_only())
    f = features(db)
    captions = dict(query(db, "SELECT post_id, caption FROM posts"))
    posts = [(pid, u, t, lk, sorted({x.lstrip("#").lower() for x in tags.split()})) for pid, u, t, lk, tags, _ in rows]
    assert len(posts) > 80
    for pid, *_ in posts:
        want = brute_dynamics(posts, pid) | ref.caption_cues(captions[pid])
        assert set(want) == set(DYNAMICS_FEATURES) | set(CAPTION_FEATURES)
        for k, v in want.items():
            got = f[pid][k]
            if v is None:
                assert got is None, (pid, k, got)
            elif isinstance(v, bool):
                assert got is v, (pid, k, got)
            else:
                assert got == pytest.approx(v, rel=1e-9, abs=1e-9), (pid, k, got, v)
    # every feature takes more than one value here (the test exercises them)
    for k in DYNAMICS_FEATURES + CAPTION_FEATURES:
        assert len({f[p][k] for p in f}) > 1, k


def test_slope_of_a_perfect_line_and_counts(tmp_path: Path, db: Path):
    t0 = datetime(2021, 5, 1, 8)
    rows = [f"l{i},lin,{(t0 + timedelta(days=i)).isoformat()},,,,{2 ** i},1,1,1," for i in range(5)]   # ln = i ln 2
    rows += [f"old,lin,{(t0 - timedelta(days=40)).isoformat()},,,,,1,1,1,",            # no likes, out of the 30 days
             f"l5,lin,{(t0 + timedelta(days=5)).isoformat()},,,,3,1,1,1,"]
    load(tmp_path, db, rows)
    featurize(db, meta_only())
    f = features(db)["l5"]
    # Sxx = 10 days^2, Sxy = 10 ln 2: slope = 30 * 10 ln 2 / (10 + 900)
    assert f["h_slope"] == pytest.approx(300 * math.log(2) / 910, rel=1e-9)  # y in 2^-32 units
    assert (f["h_last1"], f["h_max"], f["h_min"]) == pytest.approx((4 * math.log(2), 4 * math.log(2), 0.0))
    assert (f["n_posts_before"], f["posts_last30d"], f["days_since_last_liked"]) == (6, 5, pytest.approx(1.0))
    first = features(db)["l2"]                                    # two liked posts before: no slope yet
    assert first["h_slope"] is None and first["n_posts_before"] == 3
    assert features(db)["old"]["h_last1"] is None and features(db)["old"]["n_posts_before"] == 0


def test_caption_cues_of_an_emoji_and_url_caption(tmp_path: Path, db: Path):
    caption = "Link in bio \U0001f600\u2728 https://x.io\nWin? Win!!"
    load(tmp_path, db, [f'e1,emo,2020-01-01,"{caption}",#a #b,,5,1,1,1,', "e2,emo,2020-01-02,,#b #c,,9,1,1,1,"])
    featurize(db, meta_only())
    f = features(db)
    e1, e2 = f["e1"], f["e2"]
    assert (e1["n_emoji"], e1["n_question"], e1["n_exclaim"], e1["n_words"], e1["n_lines"]) == (2, 1, 2, 7, 2)
    assert e1["frac_upper"] == pytest.approx(3 / 23) and e1["cta"] is True and e1["has_url"] is True
    assert e1["frac_ascii"] == pytest.approx((len(caption) - 2) / len(caption))
    assert (e2["n_words"], e2["n_lines"], e2["frac_upper"], e2["frac_ascii"], e2["cta"]) == (0, 0, None, None, False)
    # e2 shares #b with e1 (liked, the only earlier post): its deviation from the mean is 0, shrunk m/(m+2)
    assert (e2["tag_perf"], e2["tag_perf_n"], e2["tag_novel_frac"]) == (pytest.approx(0.0), 1, 0.5)
    assert (e1["tag_perf"], e1["tag_perf_n"], e1["tag_novel_frac"]) == (None, 0, 1.0)


def test_caption_cues_beside_the_blocks_are_the_cues_in_the_connection(monkeypatch):
    """The cues of a small batch, computed on a connection of their own in a thread (``_cues_start``), are the
    block ``cues`` run in the store's connection, bit for bit, on captions of every kind the block branches on."""
    from igcli import store
    from igcli.features import metadata as F

    monkeypatch.setattr(F, "PART_ROWS", 8)
    rng = random.Random(3)
    words = ["Link in bio", "WIN", "giveaway!", "Schöne Grüße", "ÉTÉ à Paris", "\U0001f600\u2728", "dm me?",
             "https://x.io", "www.a.b", "\t", "\n", "  ", "Ωμέγα", "漢字", "tag", "x"]
    captions = [None, ""] + [" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(120)]
    con = duckdb.connect()
    con.execute("SET threads = 2")
    store.run_block(con, "features", "macros")
    store.temp_table(con, "fz_posts", {"post_id": ("VARCHAR", [f"p{i}" for i in range(len(captions))]),
                                       "caption": ("VARCHAR", captions)})
    con.execute("UPDATE fz_posts SET caption = coalesce(caption, '')")      # as block inputs gives them
    F._cues_finish(con, None)
    want = con.execute("SELECT * FROM fz_cues ORDER BY post_id").fetchall()
    con.execute("DROP TABLE fz_cues")
    started = F._cues_start(con)
    assert started is not None                         # the batch is split into parts and computed apart
    F._cues_finish(con, started)
    got = con.execute("SELECT * FROM fz_cues ORDER BY post_id").fetchall()
    assert got == want and len(got) == len(captions)
    assert [d[1] for d in con.execute("DESCRIBE fz_cues").fetchall()] == [
        "VARCHAR", "INTEGER", "INTEGER", "INTEGER", "INTEGER", "INTEGER", "DOUBLE", "DOUBLE", "BOOLEAN", "BOOLEAN"]
    assert len({r[1] for r in got}) > 1 and len({r[6] for r in got}) > 2   # emoji counts and upper shares vary


def test_a_store_without_the_new_columns_is_recomputed(tmp_path: Path, db: Path):
    """A store featurized before the dynamics / caption columns existed gets them on the next featurize."""
    rows = random_rows(5, users=4, per_user=15)
    load(tmp_path, db, as_csv(rows))
    featurize(db, meta_only())
    want = stored(db)
    execute(db, "ALTER TABLE post_features DROP COLUMN h_slope", "ALTER TABLE post_features DROP COLUMN n_emoji",
            "ALTER TABLE user_state DROP COLUMN s_ty")
    r = featurize(db, meta_only())                 # nothing new ingested, yet not a no-op
    assert stored(db) == want and r.updated + r.inserted == len(rows)
    later = [(f"x{i}", "user0", max(x[2] for x in rows) + timedelta(days=i + 1), 10 + i, "#t1", 100) for i in range(3)]
    load(tmp_path, db, as_csv(later), name="later.csv")
    featurize(db, meta_only())                     # incremental again, from the rebuilt state
    assert stored(db) == full_computation(db)


def test_hashtag_history_with_many_tags_per_user_full_and_incremental(tmp_path: Path, db: Path):
    """Users with hundreds of distinct tags, counted in one full featurize and then from user_tag_state after
    appending later posts: both equal brute force."""
    rows = random_rows(23, users=4, per_user=150, tags=300)
    cut = datetime(2020, 2, 10)
    early = [r for r in rows if r[2] < cut]
    load(tmp_path, db, as_csv(early), "early.csv")
    featurize(db, meta_only())
    load(tmp_path, db, as_csv([r for r in rows if r[2] >= cut]), "late.csv")
    res = featurize(db, meta_only())
    assert res.inserted == len(rows) - len(early) and res.updated == 0
    f = features(db)
    posts = [(pid, u, t, lk, sorted({x.lstrip("#").lower() for x in tags.split()})) for pid, u, t, lk, tags, _ in rows]
    most = max(len({tag for p in posts if p[1] == u for tag in p[4]}) for u in {p[1] for p in posts})
    assert most > 128
    for pid, *_ in posts:
        want = brute_dynamics(posts, pid)
        for k in ("tag_perf", "tag_perf_n", "tag_novel_frac"):
            if want[k] is None:
                assert f[pid][k] is None, (pid, k)
            else:
                assert f[pid][k] == pytest.approx(want[k], rel=1e-9, abs=1e-9), (pid, k, f[pid][k], want[k])
    assert sum(f[p]["tag_perf_n"] for p in f) > 40            # shared earlier tags do occur


def test_featurize_runs_under_its_memory_limit_and_restores_the_callers(tmp_path: Path, db: Path):
    from igcli import store
    from igcli.features import metadata as fmod

    load(tmp_path, db, as_csv(random_rows(3, users=3, per_user=10)))
    con = store.connect(db)
    try:
        con.execute("SET memory_limit = '2GiB'")   # shown as 2.0 GiB: restored exactly
        seen = []
        real = fmod._update

        def spy(c, *a):
            seen.append(c.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
            return real(c, *a)

        fmod._update = spy
        try:
            featurize(db, meta_only(), con=con)
        finally:
            fmod._update = real
        after = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    finally:
        con.close()
    ref = duckdb.connect()
    ref.execute("SET memory_limit = ?", [fmod.MEMORY_LIMIT])
    want_inside = ref.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    ref.execute("SET memory_limit = '2GiB'")
    want_after = ref.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    ref.close()
    assert want_inside != want_after
    assert seen == [want_inside] and after == want_after, (seen, after)


def test_user_tag_state_counts_each_users_tags_after_appends_and_a_back_dated_post(tmp_path: Path, db: Path):
    """user_tag_state, advanced by two incremental featurizes (later posts, then a back-dated post that makes
    its user be recomputed), holds every (user, tag)'s uses, liked uses and exact ln-likes sum; the features
    equal the full computation; and a store made before feature version 2 is recomputed once."""
    rows = random_rows(29, users=12, per_user=40, tags=8)
    cut = datetime(2020, 2, 10)
    load(tmp_path, db, as_csv([r for r in rows if r[2] < cut]), "early.csv")
    featurize(db, meta_only())
    load(tmp_path, db, as_csv([r for r in rows if r[2] >= cut]), "late.csv")
    featurize(db, meta_only())
    back = [("back1", "user3", datetime(2020, 1, 2), 777, "#t1 #t2 #new", 400)]
    load(tmp_path, db, as_csv(back), "back.csv")
    res = featurize(db, meta_only())
    assert res.inserted == 1
    want: dict[tuple, list] = {}
    for _, user, _, likes, tags, _ in rows + back:
        for tag in {x.lstrip("#").lower() for x in tags.split()}:
            w = want.setdefault((user, tag), [0, 0, 0])
            w[0] += 1
            if likes:
                w[1] += 1
                w[2] += round(math.log(likes) * 2 ** 32)
    state_sql = "SELECT username, tag, uses, n_liked, sy FROM user_tag_state"
    got = {(u, t): [a, b, int(c)] for u, t, a, b, c in query(db, state_sql)}
    assert got == want and ("user3", "new") in got
    keys = query(db, "SELECT count(DISTINCT k), count(*) FROM user_tag_state")[0]
    assert keys[0] == keys[1] == len(want)
    assert stored(db) == full_computation(db)
    execute(db, "UPDATE feature_state SET feature_version = NULL", "DELETE FROM user_tag_state")
    again = featurize(db, meta_only())             # nothing new ingested, yet recomputed
    assert again.updated == 0 and again.inserted == 0 and stored(db) == full_computation(db)
    assert {(u, t): [a, b, int(c)] for u, t, a, b, c in query(db, state_sql)} == want
    # keys made by a DuckDB whose hash() differs: rebuilt too
    execute(db, "UPDATE feature_state SET key_hash = 0", "UPDATE user_tag_state SET k = 0, k2 = 0")
    featurize(db, meta_only())
    assert query(db, "SELECT count(*) FROM user_tag_state WHERE k <> hash(username, tag)") == [(0,)]
    assert stored(db) == full_computation(db)


def test_user_tag_state_rows_sharing_a_key_are_told_apart_by_the_second_hash(tmp_path: Path, db: Path):
    """A stored (user, tag) row whose k equals that of a pair the next batch looks up (a collision of the
    first hash, made here by hand) is fetched as a candidate, but its k2 differs: it is neither counted for
    that pair nor deleted with it."""
    rows = random_rows(31, users=6, per_user=40, tags=6)
    cut = datetime(2020, 2, 10)
    load(tmp_path, db, as_csv([r for r in rows if r[2] < cut]), "early.csv")
    featurize(db, meta_only())
    late = [r for r in rows if r[2] >= cut]
    late_pairs = {(u, x.lstrip("#").lower()) for _, u, _, _, tags, _ in late for x in tags.split()}
    stored_pairs = {(u, t) for u, t in query(db, "SELECT username, tag FROM user_tag_state")}
    # a pair of the same user, so the lookup (by the batch's users) fetches it
    target, other = next((t, o) for t in sorted(late_pairs & stored_pairs)
                         for o in sorted(stored_pairs - late_pairs) if o[0] == t[0])
    con = duckdb.connect(str(db))
    con.execute("UPDATE user_tag_state SET k = hash(?, ?) WHERE username = ? AND tag = ?", [*target, *other])
    before = con.execute("SELECT uses, n_liked, sy FROM user_tag_state WHERE username = ? AND tag = ?",
                         other).fetchall()
    con.close()
    load(tmp_path, db, as_csv(late), "late.csv")
    featurize(db, meta_only())
    assert stored(db) == full_computation(db)
    assert query(db, f"SELECT uses, n_liked, sy FROM user_tag_state WHERE username = '{other[0]}' "
                     f"AND tag = '{other[1]}'") == before


def test_state_order_statistics_match_the_sorted_values_and_older_stores_are_upgraded(tmp_path: Path, db: Path):
    import statistics

    from igcli import store

    rows = random_rows(3, users=5, per_user=25)
    load(tmp_path, db, as_csv(rows[:60]), name="a.csv")
    featurize(db, meta_only())
    load(tmp_path, db, as_csv(rows[60:]), name="b.csv")   # advanced from state
    featurize(db, meta_only())
    con = duckdb.connect(str(db))
    sql = "SELECT username, sorted_y, med_y, max_y, min_y FROM user_state ORDER BY username"
    states = con.execute(sql).fetchall()
    assert len(states) == 5
    for _, ys, med, hi, lo in states:
        assert ys == sorted(ys) and (hi, lo) == ((ys[-1], ys[0]) if ys else (None, None))
        assert med == (statistics.median(ys) / 4294967296.0 if ys else None)
    tags_sql = "SELECT username, tag, uses, n_liked, sy FROM user_tag_state ORDER BY username, tag"
    tags = con.execute(tags_sql).fetchall()
    assert tags and all(isinstance(r[4], int) for r in tags)
    # a store of schema version 2: the columns empty, sy a HUGEINT; opening it fills them and narrows sy
    con.execute("UPDATE user_state SET med_y = NULL, max_y = NULL, min_y = NULL")
    con.execute("ALTER TABLE user_tag_state ALTER COLUMN sy SET DATA TYPE HUGEINT")
    con.execute("UPDATE schema_version SET version = 2")
    con.close()
    store.connect(db).close()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute(sql).fetchall() == states
    assert con.execute(tags_sql).fetchall() == tags
    assert con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'user_tag_state' "
                       "AND column_name = 'sy'").fetchall() == [("BIGINT",)]
    assert con.execute("SELECT max(version) FROM schema_version").fetchall() == [(store.SCHEMA_VERSION,)]
    con.close()


def test_a_no_op_featurize_imports_neither_torch_nor_timm(tmp_path: Path, db: Path):
    """Nothing pending: the backbones' weights are fingerprinted from their files, and neither torch nor timm
    (seconds of imports) is loaded."""
    import os
    import subprocess
    import sys

    load(tmp_path, db, HISTORY)
    featurize(db, FeaturizeOptions())  # backbones on; posts without images leave them nothing to run
    code = ("import sys; from igcli.features.metadata import FeaturizeOptions; "
            "from igcli.commands.featurize import featurize; r = featurize(sys.argv[1], "
            "FeaturizeOptions()); print(r.inserted, r.updated, 'torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.split() == ["0", "0", "False", "False"]
