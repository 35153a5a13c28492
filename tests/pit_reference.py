"""An independent, plain-Python statement of every point-in-time feature of ``post_features``.

Nothing here uses igcli's feature engine, its SQL or its regular expressions: each feature is written the way
igcli/README.md defines it, one post at a time, by looping over the raw posts of the store (the inputs the engine
reads: ``posts`` and ``user_snapshots``, and the hashtag ranking file). It is slow on purpose (quadratic) and
meant for a few hundred posts. Tests compare every column the engine writes with this (``FEATURES``: a column
of ``post_features`` missing here fails the comparison, so a new feature needs its statement here too).

Definitions (igcli/README.md, "Point in time"): a post's history is the same user's posts STRICTLY BEFORE it (posts at
the same timestamp never see each other); "liked" means likes > 0 and its value is ln(likes); the order of
earlier posts is (time, post_id).
"""

from __future__ import annotations

import math
import statistics
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path

# The call-to-action words and phrases of the ``cta`` cue, matched as whole words (ASCII letters, digits and
# underscore are word characters), case-insensitively.
CTA_WORDS = ("tag", "comment", "link in bio", "follow", "giveaway", "win", "swipe", "click", "shop", "discount",
             "code", "double tap", "let me know", "dm")
EMOJI_RANGES = ((0x1F300, 0x1FAFF), (0x2600, 0x27BF))
WHITESPACE = "\t\n\f\r "          # what separates words in n_words
HOUR_GROUP_STARTS = (8, 12, 14, 17, 20)   # hour groups 0..5: [0, 8), [8, 12), [12, 14), [14, 17), [17, 20), [20, 24)

FEATURES = (
    "post_id", "username", "posted_at", "likes", "ln_likes", "hist_n", "no_history", "hist_mean", "hist_median",
    "hist_std", "hist_last5", "hist_last10", "hist_decayed", "days_since_prev", "days_since_first", "followers",
    "following", "user_post_count", "snapshot_choice", "caption_len", "n_hashtags", "n_mentions", "hashtag_weight",
    "h_last1", "h_max", "h_min", "h_slope", "days_since_last_liked", "n_posts_before", "posts_last30d", "tag_perf",
    "tag_perf_n", "tag_novel_frac", "n_emoji", "n_question", "n_exclaim", "n_words", "n_lines", "frac_upper",
    "frac_ascii", "cta", "has_url", "month", "weekday", "hour", "hour_group", "hashtag_source", "half_life_days",
    "leaky_user_stats", "tags",
)


@dataclass
class Post:
    post_id: str
    username: str
    posted_at: datetime
    caption: str | None
    hashtags: str | None
    mentions: str | None
    likes: int | None

    @property
    def y(self) -> float | None:
        return math.log(self.likes) if self.likes is not None and self.likes > 0 else None

    @cached_property
    def tags(self) -> list[str]:
        """Distinct hashtags, '#' stripped and lower-cased, sorted (a token is '#' and at least one more char)."""
        return sorted({tok.lstrip("#").lower() for tok in self.hashtags.split(" ") if _is_token(tok, "#")}
                      ) if self.hashtags else []


@dataclass
class Snapshot:
    username: str
    observed_at: datetime
    followers: int | None
    following: int | None
    user_post_count: int | None


def _is_token(tok: str, mark: str) -> bool:
    return len(tok) >= 2 and tok[0] == mark


def _days(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds() / 86400


def read_store(db: Path) -> tuple[list[Post], list[Snapshot]]:
    """The raw inputs, read with plain SELECTs."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        posts = [Post(*r) for r in con.execute(
            "SELECT post_id, username, posted_at, caption, hashtags, mentions, likes FROM posts").fetchall()]
        snaps = [Snapshot(*r) for r in con.execute(
            "SELECT username, observed_at, followers, following, user_post_count FROM user_snapshots").fetchall()]
    finally:
        con.close()
    return posts, snaps


def read_ranking(path: Path) -> dict[str, int]:
    """tag -> rank (1 = most popular) of a ranking file written by a test: one tag per line, '#' optional."""
    ranks: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        tag = line.strip().lstrip("#").lower()
        if tag and tag not in ranks:
            ranks[tag] = len(ranks) + 1
    return ranks


# ----------------------------------------------------------------------------------------- caption cues

def _ascii_lower(ch: str) -> str:
    return ch.lower() if ch.isascii() else ch


def _word_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def has_cta(caption: str) -> bool:
    """One of CTA_WORDS with no word character right before or after it, ignoring (ASCII) case."""
    low = "".join(_ascii_lower(ch) for ch in caption)
    for word in CTA_WORDS:
        start = low.find(word)
        while start >= 0:
            end = start + len(word)
            if (start == 0 or not _word_char(low[start - 1])) and (end == len(low) or not _word_char(low[end])):
                return True
            start = low.find(word, start + 1)
    return False


def caption_cues(caption: str | None) -> dict:
    c = caption or ""
    letters = [ch for ch in c if unicodedata.category(ch).startswith("L")]
    words = "".join(" " if ch in WHITESPACE else ch for ch in c).split(" ")
    low = c.lower()
    return {
        "n_emoji": sum(any(a <= ord(ch) <= b for a, b in EMOJI_RANGES) for ch in c),
        "n_question": c.count("?"),
        "n_exclaim": c.count("!"),
        "n_words": sum(1 for w in words if w),
        "n_lines": c.count("\n") + 1 if c else 0,
        "frac_upper": sum(unicodedata.category(ch) == "Lu" for ch in letters) / len(letters) if letters else None,
        "frac_ascii": sum(ord(ch) < 128 for ch in c) / len(c) if c else None,
        "cta": has_cta(c),
        "has_url": "http://" in low or "https://" in low or "www." in low,
    }


# ------------------------------------------------------------------------------------------- features

def features(posts: list[Post], snapshots: list[Snapshot], *, half_life_days: float = 30.0,
             ranking: dict[str, int] | None = None, ranking_source: str | None = None,
             leaky: bool = False) -> dict[str, dict]:
    """Every ``post_features`` column of every post, by brute force. ``ranking``: the hashtag ranking (tag ->
    rank) and its ``ranking_source`` label; without one the hashtag weight counts tag uses in the store."""
    by_user: dict[str, list[Post]] = {}
    for p in posts:
        by_user.setdefault(p.username, []).append(p)
    snaps_of: dict[str, list[Snapshot]] = {}
    for s in snapshots:
        snaps_of.setdefault(s.username, []).append(s)
    return {p.post_id: _one(p, by_user[p.username], posts, snaps_of.get(p.username, []), half_life_days, ranking,
                            ranking_source, leaky) for p in posts}


def _one(p: Post, mine: list[Post], everyone: list[Post], snaps: list[Snapshot], half_life: float,
         ranking: dict[str, int] | None, ranking_source: str | None, leaky: bool) -> dict:
    t = p.posted_at
    before = sorted((q for q in mine if q.posted_at < t), key=lambda q: (q.posted_at, q.post_id))
    liked = [q for q in before if q.y is not None]
    ys = [q.y for q in liked]
    out: dict = {"post_id": p.post_id, "username": p.username, "posted_at": t, "likes": p.likes, "ln_likes": p.y}

    # history statistics (the paper's leaky variant: every liked post of the user, itself and later ones too)
    hist = ys if not leaky else [q.y for q in sorted(mine, key=lambda q: (q.posted_at, q.post_id))
                                 if q.y is not None]
    n = len(hist)
    mean = sum(hist) / n if n else None
    out.update(hist_n=n, no_history=n == 0, hist_mean=mean,
               hist_median=statistics.median(hist) if n else None,
               hist_std=statistics.stdev(hist) if n > 1 else None)
    if leaky:
        out.update(hist_last5=mean, hist_last10=mean, hist_decayed=mean)
    else:
        last = liked[-1].posted_at if liked else None
        w = [2.0 ** (-_days(last, q.posted_at) / half_life) for q in liked]
        out.update(hist_last5=sum(ys[-5:]) / len(ys[-5:]) if ys else None,
                   hist_last10=sum(ys[-10:]) / len(ys[-10:]) if ys else None,
                   hist_decayed=sum(a * b for a, b in zip(w, ys, strict=True)) / sum(w) if ys else None)
    pit_mean = sum(ys) / len(ys) if ys else None

    # times
    out["days_since_prev"] = _days(t, before[-1].posted_at) if before else None
    out["days_since_first"] = _days(t, before[0].posted_at) if before else None

    # user values: the latest snapshot observed at or before the post, else the earliest one
    at_or_before = [s for s in snaps if s.observed_at <= t]
    if at_or_before:
        snap, choice = max(at_or_before, key=lambda s: s.observed_at), "at_or_before"
    elif snaps:
        snap, choice = min(snaps, key=lambda s: s.observed_at), "earliest_after"
    else:
        snap, choice = None, "none"
    out.update(followers=snap and snap.followers, following=snap and snap.following,
               user_post_count=snap and snap.user_post_count, snapshot_choice=choice)

    # text counts and the hashtag weight
    tags = p.tags
    out["caption_len"] = len(p.caption or "")
    out["n_hashtags"] = sum(_is_token(x, "#") for x in (p.hashtags or "").split(" "))
    out["n_mentions"] = sum(_is_token(x, "@") for x in (p.mentions or "").split(" "))
    if ranking is not None:
        out["hashtag_weight"] = float(sum(1 - (ranking[x] - 1) / len(ranking) for x in tags if x in ranking))
        out["hashtag_source"] = ranking_source
    else:   # ln(1 + the store's posts, any user, that used the tag strictly before)
        out["hashtag_weight"] = float(sum(math.log(1 + sum(1 for q in everyone if q.posted_at < t and x in q.tags))
                                          for x in tags))
        out["hashtag_source"] = "store-frequency"

    # history dynamics (point in time in every mode)
    out.update(h_last1=ys[-1] if ys else None, h_max=max(ys, default=None), h_min=min(ys, default=None),
               h_slope=None, days_since_last_liked=_days(t, liked[-1].posted_at) if liked else None,
               n_posts_before=len(before),
               posts_last30d=sum(1 for q in before if q.posted_at >= t - timedelta(days=30)))
    if len(ys) >= 3:
        xs = [_days(q.posted_at, liked[0].posted_at) for q in liked]
        xm, ym = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - xm) ** 2 for x in xs)
        if sxx > 0:
            out["h_slope"] = 30 * sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True)) / (sxx + 900)
    shared = [q.y for x in tags for q in liked if x in q.tags]       # an earlier post once per tag it shares
    m = len(shared)
    out["tag_perf_n"] = m
    out["tag_perf"] = (sum(shared) / m - pit_mean) * m / (m + 2) if m else None
    used = {x for q in before for x in q.tags}
    out["tag_novel_frac"] = sum(x not in used for x in tags) / len(tags) if tags else None

    out.update(caption_cues(p.caption))
    hour = t.hour
    out.update(month=t.month, weekday=t.weekday(), hour=hour,
               hour_group=sum(hour >= h for h in HOUR_GROUP_STARTS),
               half_life_days=half_life, leaky_user_stats=leaky, tags=tags)
    return out


def mismatches(got: dict[str, dict], want: dict[str, dict], columns=FEATURES, rel: float = 1e-9,
               abs_: float = 1e-9) -> list[tuple]:
    """(post_id, column, got, want) for every value that differs: floats within rel / abs tolerance (the
    engine holds ln-likes in units of 2^-32), everything else exactly; a missing post or column differs."""
    bad = []
    if set(got) != set(want):
        bad.append(("<posts>", sorted(set(got) ^ set(want))[:5], len(got), len(want)))
    for pid in sorted(set(got) & set(want)):
        g, w = got[pid], want[pid]
        for k in columns:
            if k not in g or k not in w:
                bad.append((pid, k, "missing" if k not in g else g[k], "missing" if k not in w else w[k]))
                continue
            a, b = g[k], w[k]
            if isinstance(b, float) and isinstance(a, int | float) and not isinstance(a, bool):
                if not math.isclose(a, b, rel_tol=rel, abs_tol=abs_):
                    bad.append((pid, k, a, b))
            elif isinstance(b, list):
                if list(a or []) != b:
                    bad.append((pid, k, a, b))
            elif a != b or type(a) is not type(b) and not (isinstance(a, int) and isinstance(b, int)):
                bad.append((pid, k, a, b))
    return bad
