"""Every column of ``post_features`` against an independent brute force (``pit_reference``, plain Python, no
igcli code) over random histories with same-timestamp posts, tied likes, gaps of weeks, posts without likes,
snapshots before / between / after the posts, and then edits: changed likes, back-dated and moved posts, edited
tags and captions, an earlier snapshot, later appends. After every featurize the whole table is compared."""

from __future__ import annotations

import csv
import hashlib
import random
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pit_reference as ref
import pytest

from igcli.commands.featurize import featurize
from igcli.commands.ingest import ingest_posts
from igcli.features.metadata import FeaturizeOptions

COLUMNS = ["post_id", "username", "posted_at", "caption", "hashtags", "mentions", "likes", "followers", "following",
           "user_post_count", "observed_at", "image"]

# Captions: commas, quotes, newlines and tabs (written by the csv module), emoji, non-ASCII letters, call-to-action
# words alone, in upper case and inside longer words, URLs in any case.
CAPTIONS = [
    "", "Love this \U0001f600\u2600\ufe0f sunny day", "Link in bio! Shop now!!", "what do you THINK?",
    "\u00c9T\u00c9 \u00e0 Paris \u2728 www.example.com", "check HTTPS://x.io, DM me", "following my tagged winner",
    "Double TAP if you agree?", "12345", 'She said "wow",\nthen left', "tab\tseparated\twords", "double  tap",
    "shop_now codes", "giveaway\n\nline three", "Caf\u00e9 \u2615 \U0001f44d\U0001f3fd", "LET ME KNOW",
    "swipe\u2192 click", "\u00fcber Stra\u00dfe \u0130stanbul", "a\u00e9dm", "plain words only here",
]
TAGS = ["#t0", "#t1", "#T1", "#t2", "#t3", "#sun", "#t1", "##t2"]


def random_posts(seed: int, users: int = 7, max_posts: int = 26, start: datetime = datetime(2021, 1, 4),
                 prefix: str = "") -> list[dict]:
    """Rows of a posts CSV (dicts with COLUMNS) for ``users`` users."""
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        user = f"user{u}"
        day = rng.randint(0, 10)
        times = []
        for _ in range(rng.randint(1, max_posts)):
            day += rng.choice([0, 0, 1, 1, 2, 3, 6, 45])                 # same day, days, and gaps of weeks
            t = start + timedelta(days=day, hours=rng.choice([0, 9, 9, 13, 21]))
            times.append(times[-1] if times and rng.random() < 0.15 else t)   # exact repeats of a timestamp
        first, last = min(times), max(times)
        snaps = [(first - timedelta(days=rng.randint(1, 20)), rng.randint(10, 10**6)),
                 (first + (last - first) / 2, rng.randint(10, 10**6)),
                 (last + timedelta(days=3), rng.randint(10, 10**6))]
        snaps = rng.sample(snaps, rng.randint(1, 3))
        for i, t in enumerate(times):
            observed, followers = rng.choice(snaps)
            rows.append({
                "post_id": f"{prefix}{user}p{i:02d}", "username": user, "posted_at": t.isoformat(sep=" "),
                "caption": rng.choice(CAPTIONS),
                "hashtags": " ".join(rng.choice(TAGS) for _ in range(rng.choice([0, 1, 1, 2, 3]))),
                "mentions": " ".join(rng.choice(["@a", "@b", "@", "x"]) for _ in range(rng.randint(0, 2))),
                "likes": rng.choice(["", "0", "10", "100", "100", "1000", str(rng.randint(1, 50000))]),
                "followers": str(followers), "following": str(followers % 997), "user_post_count": str(len(times)),
                "observed_at": observed.isoformat(sep=" "), "image": "",
            })
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def load(db: Path, path: Path, rows: list[dict]) -> None:
    r = ingest_posts(write(path, rows), db=db)
    assert r.rejected == 0, r.reasons


def stored(db: Path) -> dict[str, dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * EXCLUDE (computed_at) FROM post_features")
        cols = [d[0] for d in cur.description]
        return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
    finally:
        con.close()


def check(db: Path, **kw) -> dict[str, dict]:
    """post_features equals the reference on the store's current posts; returns the reference."""
    posts, snaps = ref.read_store(db)
    want = ref.features(posts, snaps, **kw)
    got = stored(db)
    assert set(next(iter(got.values()))) == set(ref.FEATURES), "post_features columns differ from the reference's"
    bad = ref.mismatches(got, want)
    assert not bad, f"{len(bad)} values differ from the brute force, e.g. {bad[:8]}"
    return want


def exercised(want: dict[str, dict]) -> None:
    """The data reaches the cases the features distinguish (else the comparison above would prove little)."""
    rows = list(want.values())
    for k in ref.FEATURES:
        if k not in ("hashtag_source", "half_life_days", "leaky_user_stats"):
            assert len({repr(r[k]) for r in rows}) > 1, f"{k} takes one value only"
    assert {r["snapshot_choice"] for r in rows} >= {"at_or_before", "earliest_after"}
    assert any(r["hist_n"] % 2 == 0 and r["hist_n"] > 0 for r in rows)              # even-count medians
    assert any(r["hist_n"] > 10 for r in rows) and any(r["h_slope"] is not None for r in rows)
    times = {}
    for r in rows:
        times.setdefault((r["username"], r["posted_at"]), []).append(r["post_id"])
    assert any(len(v) > 1 for v in times.values()), "no two posts of a user at one timestamp"
    assert any(r["posts_last30d"] < r["n_posts_before"] for r in rows)                  # gaps over 30 days
    assert any(r["cta"] for r in rows) and not all(r["cta"] for r in rows)


@pytest.mark.parametrize("ranking", [False, True])
def test_a_full_featurize_matches_the_brute_force(tmp_path: Path, db: Path, ranking: bool):
    rows = random_posts(1)
    load(db, tmp_path / "posts.csv", rows)
    kw, opts = {"half_life_days": 7.0}, {"half_life_days": 7.0}
    if ranking:
        rank = tmp_path / "rank.txt"
        rank.write_text("sun\n#T3\nt0\nt1\nnever_used\n", encoding="utf-8")
        opts["hashtag_ranking"] = rank
        kw["ranking"] = ref.read_ranking(rank)
        kw["ranking_source"] = "ranking:" + hashlib.sha256(rank.read_bytes()).hexdigest()
    featurize(db, FeaturizeOptions(skip_images=True, **opts))
    want = check(db, **kw)
    assert len(want) == len(rows) > 60
    exercised(want)


def test_incremental_featurizes_through_edits_match_the_brute_force(tmp_path: Path, db: Path):
    rows = sorted(random_posts(2), key=lambda r: r["posted_at"])
    cut = len(rows) // 2
    current = {r["post_id"]: r for r in rows[:cut]}
    steps: list[tuple[str, list[dict]]] = [("first half", rows[:cut]), ("later posts", rows[cut:])]
    rng = random.Random(5)
    old = rng.sample(rows[:cut], 12)
    steps.append(("changed likes", [{**r, "likes": str(int(r["likes"] or 0) + 77)} for r in old[:4]]))
    steps.append(("back-dated and moved posts", [
        {**r, "posted_at": (datetime.fromisoformat(r["posted_at"]) + timedelta(days=d)).isoformat(sep=" ")}
        for r, d in zip(old[4:8], (-30, -2, 3, 60), strict=True)]))
    steps.append(("edited tags and captions", [{**r, "hashtags": "#t9 #T1", "caption": "Comment below \U0001f525"}
                                               for r in old[8:12]]))
    user = rows[0]["username"]
    first = min(datetime.fromisoformat(r["posted_at"]) for r in rows if r["username"] == user)
    steps.append(("an earlier snapshot", [{**next(r for r in rows if r["username"] == user), "post_id": "snap1",
                                           "posted_at": (first + timedelta(hours=1)).isoformat(sep=" "),
                                           "observed_at": (first - timedelta(days=90)).isoformat(sep=" "),
                                           "followers": "5", "likes": "3"}]))
    tie = rows[len(rows) // 3]
    steps.append(("a post at an existing post's timestamp", [{**tie, "post_id": "tie1", "likes": "999",
                                                              "hashtags": tie["hashtags"] + " #t0"}]))
    steps.append(("a new user and later posts", random_posts(9, users=2, max_posts=6, start=datetime(2021, 9, 1),
                                                             prefix="late-")))
    for i, (what, chunk) in enumerate(steps):
        load(db, tmp_path / f"step{i}.csv", chunk)
        for r in chunk:
            current[r["post_id"]] = r
        res = featurize(db, FeaturizeOptions(skip_images=True))
        assert res.posts == len(current), what
        try:
            check(db)
        except AssertionError as err:
            raise AssertionError(f"after step {i} ({what}): {err}") from None


def test_the_leaky_mode_is_the_papers_average_and_the_rest_stays_point_in_time(tmp_path: Path, db: Path):
    """Also for a user none of whose posts has likes (that made featurize fail on a NULL history count)."""
    rows = random_posts(3, users=5)
    rows += [{**rows[0], "post_id": f"nolikes{i}", "username": "nolikes", "likes": ""} for i in range(3)]
    load(db, tmp_path / "posts.csv", rows)
    featurize(db, FeaturizeOptions(skip_images=True, user_stats_as_of="end"))
    want = check(db, leaky=True)
    assert want["nolikes0"]["hist_n"] == 0 and want["user0p00"]["hist_n"] > 0


def test_the_comparison_can_fail(tmp_path: Path, db: Path):
    """``check``'s comparison reports a value off by a part in a million, a flipped flag, a NULL for a value, a
    changed list and a missing post."""
    load(db, tmp_path / "posts.csv", random_posts(4, users=3))
    featurize(db, FeaturizeOptions(skip_images=True))
    want = check(db)
    got = stored(db)
    pid = next(p for p, f in got.items() if f["hist_mean"] is not None and f["tags"])
    for k, v in (("hist_mean", got[pid]["hist_mean"] * (1 + 1e-6)), ("no_history", not got[pid]["no_history"]),
                 ("hist_mean", None), ("tags", got[pid]["tags"][1:]), ("n_words", got[pid]["n_words"] + 1)):
        assert ref.mismatches({**got, pid: {**got[pid], k: v}}, want) == [(pid, k, v, want[pid][k])]
    assert ref.mismatches({p: f for p, f in got.items() if p != pid}, want)


# The call-to-action words, stated here (not copied from the SQL): each one alone, in any case, between
# punctuation, and never as a part of a longer word.
CTA = ["tag", "comment", "link in bio", "follow", "giveaway", "win", "swipe", "click", "shop", "discount", "code",
       "double tap", "let me know", "dm"]
NOT_CTA = ["tagged", "comments", "links in bio", "link  in bio", "following", "giveaways", "winner", "twin",
           "swiped", "clicks", "shopping", "shop_now", "discounted", "codes", "double  tap", "doubletap", "let me",
           "dms", "adm", "dm2", "bio link", "tap twice", "nothing here"]


def test_call_to_action_words(tmp_path: Path, db: Path):
    assert ref.CTA_WORDS == tuple(CTA)
    captions = {}
    for i, word in enumerate(CTA):
        captions[f"y{i}a"] = word
        captions[f"y{i}b"] = f"Hello, {word.upper()}!"
        captions[f"y{i}c"] = f"({word.title()})\n\u00e9{word}\u00e9"      # non-ASCII letters are not word chars
    for i, text in enumerate(NOT_CTA):
        captions[f"n{i}"] = text
    rows = [{"post_id": pid, "username": "ann", "posted_at": f"2021-01-{1 + i % 28:02d} 10:00", "caption": c,
             "hashtags": "", "mentions": "", "likes": "1", "followers": "1", "following": "1",
             "user_post_count": "1", "observed_at": "2021-01-01 00:00", "image": ""}
            for i, (pid, c) in enumerate(captions.items())]
    load(db, tmp_path / "cta.csv", rows)
    featurize(db, FeaturizeOptions(skip_images=True))
    got = {pid: f["cta"] for pid, f in stored(db).items()}
    assert {pid for pid, v in got.items() if v} == {pid for pid in captions if pid.startswith("y")}
    assert all(ref.has_cta(c) is pid.startswith("y") for pid, c in captions.items())
