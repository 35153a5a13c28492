"""Deterministic synthetic Instagram data: the embedded demo dataset and the test suite's fixture.

CI never sees real data, so this module writes a dataset in the layout of the real one
(``posts.csv`` + ``images/*.jpg`` + ``hashtag_ranking.txt``) with a planted, learnable signal:

    from pathlib import Path
    from igcli.commands.sample import generate_sample
    print(generate_sample(Path("sample"), posts=2000, users=100, seed=0))

or, from a shell, ``python -m igcli.commands.sample OUT_DIR [POSTS] [USERS] [SEED]``.

Files written to ``out_dir`` (which must be new or empty):

- ``posts.csv``: post_id, username, posted_at, caption, hashtags, mentions, likes, followers, following,
  user_post_count, image. RFC 4180 quoting (captions hold commas, double quotes, newlines, emoji,
  accents, Cyrillic and Arabic); ``posted_at`` is UTC ``YYYY-MM-DD HH:MM:SS`` over 2024; rows are
  grouped by user, newest first, like the real file. About 2% of posts have an empty ``image``.
- ``new_posts.csv``: the same columns with ``likes`` empty: January 2025 posts (after every post in
  ``posts.csv``) from a subset of users plus 3-5 cold-start users who have no row in ``posts.csv``.
- ``new_posts_truth.csv``: post_id, likes, the generated true likes of ``new_posts.csv``.
- ``new_posts_with_likes.csv``: ``new_posts.csv`` as scraped again once the likes came in (the same rows, with
  those likes): ``igcli ingest`` it after scoring, then ``igcli evaluate``.
- ``hashtag_ranking.txt``: the fixed 300-tag vocabulary, most popular first, no ``#``.
- ``images/<post_id>.jpg``: gradients, shapes and noise (skipped with ``images=False``).

The planted model, in natural-log units (the constants below are the effect sizes)::

    ln(likes) = LIKES_INTERCEPT + FOLLOWERS_ELASTICITY * ln(followers) + user baseline ~ N(0, USER_BASELINE_SD)
              + HASHTAG_EFFECT * n_hashtags + CAPTION_LENGTH_EFFECT * caption_chars / 100
              + WEEKDAY_EFFECT[weekday] + HOUR_EFFECT[hour]
              + BRIGHTNESS_EFFECT * (brightness - BRIGHTNESS_CENTER)          (0 for posts without image)
              + noise ~ N(0, NOISE_SD)
    likes = max(1, round(exp(ln(likes))))

``brightness`` is what :func:`image_brightness` measures on the written JPEG (mean Pillow ``L`` / 255);
each image is drawn so that its brightness hits a target drawn uniformly from ``BRIGHTNESS_RANGE``.
Colourfulness varies too but carries no signal (a distractor). The same arguments give byte-identical
files; ``images=False`` gives the same CSVs as ``images=True``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw

from igcli.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

# ---------------------------------------------------------------------------------------------
# Planted effects on ln(likes). Tests and demos refer to these by name.
LIKES_INTERCEPT = -2.0
FOLLOWERS_ELASTICITY = 0.9  # per unit of ln(followers)
USER_BASELINE_SD = 0.4  # per-user popularity beyond followers, constant across a user's posts
NOISE_SD = 0.25  # per-post noise: the floor on any model's RMSE in ln(likes)
HASHTAG_EFFECT = 0.02  # per distinct tag in the `hashtags` column
CAPTION_LENGTH_EFFECT = -0.05  # per 100 characters (code points) of caption, hashtags included
WEEKDAY_EFFECT = (-0.04, -0.03, -0.01, 0.0, 0.02, 0.06, 0.05)  # Monday .. Sunday, UTC
HOUR_EFFECT = tuple(round(0.12 * math.cos(2 * math.pi * (h - 20) / 24), 3) for h in range(24))  # best 20:00 UTC
BRIGHTNESS_EFFECT = 1.0  # per unit of mean image brightness (0 = black, 1 = white)
BRIGHTNESS_CENTER = 0.5  # brightness with no effect; posts without an image get no effect either
BRIGHTNESS_RANGE = (0.15, 0.85)  # image brightness targets are uniform on this range

# User-level distributions.
FOLLOWERS_RANGE = (1_000, 5_000_000)  # truncated Pareto
FOLLOWERS_PARETO_ALPHA = 0.45
NO_IMAGE_SHARE = 0.02

# Calendar: posts.csv covers 2024, new_posts.csv the 31 days after it.
_EPOCH_2024 = 1_704_067_200  # 2024-01-01 00:00:00 UTC
_TRAIN_DAYS = 366
_NEW_DAYS = 31
_MIN_NEW_POSTS = 6  # 3 cold-start users + 3 returning ones
_IMAGE_STREAM = 7919  # separates per-image random streams from the tabular one

COLUMNS = tuple(
    "post_id username posted_at caption hashtags mentions likes followers following user_post_count image".split()
)

# ---------------------------------------------------------------------------------------------
# Vocabularies. Hashtag rank = position; popularity is Zipf-like (p ~ 1/rank).
_BASE_TAGS = (
    "love instagood photooftheday fashion beautiful happy cute tbt followme nature picoftheday selfie "
    "summer art friends travel instadaily fitness food girl fun style smile family life beach sunset "
    "photography music nofilter dog cat sky beauty makeup hair motivation design architecture wanderlust "
    "coffee vegan yoga workout gym instafood foodie streetstyle ootd sun tattoo wedding mountains "
    "adventure hiking weekend mood vintage flowers blackandwhite city night friday sunday throwback baby "
    "puppy goodvibes running healthy café amour été путешествия любовь حب صباح_الخير naturaleza "
    "fotografía münchen surf skate garden books reading cycling snow autumn spring winter rain ocean "
    "lake forest desert roadtrip camping paris london tokyo newyork berlin"
).split()
_TAG_SUFFIXES = ("life", "lovers", "daily", "addict")
HASHTAGS: tuple[str, ...] = tuple(
    dict.fromkeys(_BASE_TAGS + [w + s for w in _BASE_TAGS if w.isascii() for s in _TAG_SUFFIXES])
)[:300]

_ADJECTIVES = (
    "sunny urban wild golden little happy lazy cosmic salty vintage midnight rosy misty silver cozy brave "
    "quiet electric velvet lucky rustic nordic tropical boho retro minimal crazy sweet bold pure"
).split()
_NOUNS = (
    "traveler kitchen studio lens wanderer bakery paws garden closet journal fitness diaries nomad atelier "
    "eats vibes frames beats threads soul coast peaks canvas roots crew stories moments grams bites style"
).split()
_NAME_PATTERNS = ("{a}_{b}", "{a}{b}", "{a}.{b}", "the{a}{b}", "{a}_{b}_")
_BRANDS = tuple(
    "brightbrew northtrail_outdoors luma_cosmetics urbanthread saltwater_co peakfuel moss_and_stone "
    "velvetcinema kettlebellclub papercrane_books solsticeswim ironroast".split()
)
_MENTION_PREFIXES = ("with", "📸", "thanks", "w/", "by", "cc")
_EMOJI = tuple("❤️ 😍 🔥 ✨ 🙌 😂 🌊 ☀️ 🍕 📸 🌸 💪 🙈 🎉 🇫🇷 👌🏽 👨‍👩‍👧 🔥🔥🔥 😍😍 💯".split())
_HASHTAG_SEPARATORS = (" ", " ", " ", " ", " ", " ", "\n\n", "\n\n", "\n.\n.\n.\n", " · ")
_PHRASES = (
    "Sunday lessons",
    "Anyone else feels like that?",
    "Tag someone who needs to see this",
    "Throwback to last summer",
    "Double tap if you agree",
    "Can't wait for the weekend",
    "Golden hour never gets old",
    "New post is up, link in bio",
    "Monday mood",
    "Home sweet home",
    "Høme",
    "Coffee, croissants, and a little bit of sunshine",
    'She said "yes"!',
    'Quote of the day: "Stay hungry, stay foolish."',
    'The "best" burger in town, no doubt',
    'When your mom says "just one more photo"',
    "Bonne journée à tous, café au lait et crème brûlée",
    "Niño, ¿dónde está la playa? Mañana vamos",
    "Schönes Wochenende aus München",
    "Доброе утро",
    "Привет из Москвы, здесь холодно",
    "صباح الخير",
    "شكرا لكم",
    "Line one\nline two",
    "Grateful.\nThat's it, that's the caption.",
    "Recipe below!\n1. Flour, 2 cups\n2. Butter, very cold\n3. Patience",
    "Out of office",
    "First snow of the season",
    "Sunsets like this one make up for the long drive",
    "We made it to the top, 4 hours, 2 blisters, 1 amazing view",
    "Nothing beats a slow morning with a good book",
    "Back in the studio working on something new",
    "My favourite corner of the city",
    "Trying something different today, let me know what you think",
    "Happy birthday to my best friend, love you to the moon and back",
    "Weekend vibes",
    "Fresh cut, fresh start",
    "Little things",
    "Can we go back?",
    "Sun's out, buns out",
    "Meal prep Sunday: chicken, rice, broccoli, repeat",
    "5am club. Who's with me?",
    "Less perfection, more authenticity",
    "Life update: we moved! New city, new apartment, same old coffee addiction",
    "Lost in the right direction",
    "This view though",
    "Rainy days call for hot chocolate",
    "Behind the scenes of today's shoot, a lot of waiting around, a lot of laughing",
    "Exploring the old town, every street feels like a painting",
    "Swipe for a surprise",
    "It's the little things, like a clean kitchen and a full fridge",
    "Road trip day 3: 600 miles, two flat tyres and zero regrets",
    "Finally finished this piece after three weeks of late nights",
    "Morning run done, now breakfast",
    "Say yes to new adventures",
    "Not all who wander are lost",
    "Summer in a glass",
    "Feeling thankful for this amazing community. When I started sharing my work a few years ago I never "
    "imagined that so many of you would follow along, comment, share and support every small step. Thank "
    "you, truly, for all of it.",
    "Long post, sorry! A lot of you asked about my skincare routine, so here it is: cleanser morning and "
    "night, a light moisturiser, sunscreen every single day (yes, even when it's cloudy), and water, lots "
    "of water. Nothing fancy, just consistent.",
    "We spent the whole day on the water, no phones, no plans, just the four of us and a cooler full of "
    "sandwiches. Days like this are the reason we work so hard the rest of the year.",
    "Ten years ago today I opened the doors of this tiny shop with one oven, two tables and a lot of "
    'hope. People said "a bakery? in this economy?" and here we are. Thank you for every loaf.',
)


@dataclass(frozen=True)
class SampleSummary:
    """What :func:`generate_sample` wrote. ``images`` counts JPEG files (both CSVs);
    ``posts_without_image`` counts rows of ``posts.csv`` with an empty ``image``."""

    out_dir: Path
    posts: int
    users: int
    images: int
    posts_without_image: int
    new_posts: int
    cold_start_users: int
    seed: int


@dataclass(frozen=True)
class SampleTables:
    """The sample in memory, before any file is written.

    ``posts`` and ``new_posts`` hold :data:`COLUMNS` (``new_posts.likes`` all null); ``truth`` is
    post_id, likes for ``new_posts``; ``signal`` holds, for every post of both tables (posts first),
    post_id, brightness (the image's target brightness, null without image) and expected_ln_likes
    (the planted model without per-post noise), for demos that want to show the noise floor.
    """

    posts: pa.Table
    new_posts: pa.Table
    truth: pa.Table
    signal: pa.Table
    users: int
    cold_start_users: int


def generate_sample(
    out_dir: Path,
    posts: int = 2000,
    users: int = 100,
    seed: int = 0,
    image_size: int = 224,
    images: bool = True,
    new_posts: int | None = None,
) -> SampleSummary:
    """Write the synthetic dataset to ``out_dir`` (created; must be new or empty).

    ``new_posts`` defaults to about 10% of ``posts`` (at least 6); 0 writes no new_posts files.
    ``images=False`` skips the JPEGs but still fills the ``image`` column.
    """
    out_dir = Path(out_dir)
    if not 16 <= image_size <= 2048:
        raise InputError(f"image_size={image_size} is out of range: pass a size between 16 and 2048 pixels")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} already exists and is not an empty directory: pass a new directory")
    tables = draw_sample_tables(posts=posts, users=users, seed=seed, new_posts=new_posts)


    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")  # the library prints nothing
        con.from_arrow(tables.posts).write_csv(str(out_dir / "posts.csv"), header=True)
        if tables.new_posts.num_rows:
            con.from_arrow(tables.new_posts).write_csv(str(out_dir / "new_posts.csv"), header=True)
            con.from_arrow(tables.truth).write_csv(str(out_dir / "new_posts_truth.csv"), header=True)
            later = tables.new_posts.set_column(COLUMNS.index("likes"), "likes", tables.truth["likes"])
            con.from_arrow(later).write_csv(str(out_dir / "new_posts_with_likes.csv"), header=True)
    finally:
        con.close()
    (out_dir / "hashtag_ranking.txt").write_text("\n".join(HASHTAGS) + "\n", encoding="utf-8")

    written = 0
    if images:
        written = _write_images(out_dir, tables, image_size, seed)
    return SampleSummary(
        out_dir=out_dir,
        posts=tables.posts.num_rows,
        users=tables.users,
        images=written,
        posts_without_image=tables.posts["image"].null_count,
        new_posts=tables.new_posts.num_rows,
        cold_start_users=tables.cold_start_users,
        seed=seed,
    )


def image_brightness(path: Path) -> float:
    """Mean brightness of an image in [0, 1]: mean of Pillow's ``L`` channel / 255 (the planted property)."""

    with Image.open(path) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).mean() / 255.0)


def draw_sample_tables(
    posts: int = 2000, users: int = 100, seed: int = 0, new_posts: int | None = None
) -> SampleTables:
    """Draw the whole sample as Arrow tables; :func:`generate_sample` writes what this returns."""

    n_new = _check_counts(posts, users, seed, new_posts)
    rng = np.random.default_rng(seed)

    # Who posts, and how often. Cold-start users come last and only post in new_posts.csv.
    n_cold = min(5, max(3, n_new // 20)) if n_new else 0
    n_cold_posts = min(n_new - 3, max(n_cold, round(0.15 * n_new))) if n_new else 0
    n_all_users = users + n_cold
    activity = rng.lognormal(0.0, 0.8, users)
    share = activity / activity.sum()
    per_user = 1 + rng.multinomial(posts - users, share)  # (users,)
    n_returning_posts = n_new - n_cold_posts
    per_user_new = np.zeros(n_all_users, dtype=np.int64)
    if n_new:
        k = max(1, min(users, n_returning_posts, math.ceil(users / 2)))
        returning = rng.choice(users, size=k, replace=False, p=share)
        per_user_new[returning] = 1 + rng.multinomial(n_returning_posts - k, share[returning] / share[returning].sum())
        per_user_new[users:] = 1 + rng.multinomial(n_cold_posts - n_cold, np.full(n_cold, 1.0 / n_cold))

    names, signature = _usernames(rng, n_all_users)
    lo, hi = FOLLOWERS_RANGE
    u01 = rng.random(n_all_users)
    trunc = 1.0 - (lo / hi) ** FOLLOWERS_PARETO_ALPHA
    followers = np.floor(lo * (1.0 - u01 * trunc) ** (-1.0 / FOLLOWERS_PARETO_ALPHA)).astype(np.int64)
    following = np.clip(rng.lognormal(math.log(600), 0.9, n_all_users), 20, 7500).astype(np.int64)
    total_posts = np.concatenate([per_user, np.zeros(n_cold, np.int64)]) + per_user_new
    user_post_count = total_posts + rng.lognormal(math.log(300), 1.0, n_all_users).astype(np.int64)
    baseline = rng.normal(0.0, USER_BASELINE_SD, n_all_users)
    start_day = rng.uniform(0, 150, n_all_users)  # each user joins the year at their own time
    hour_weights = np.array([0.2] * 7 + [1.0] * 10 + [1.5] * 6 + [0.6])
    pref_hour = rng.choice(24, size=n_all_users, p=hour_weights / hour_weights.sum())
    tag_rate = rng.lognormal(math.log(3.0), 0.7, n_all_users)
    uses_signature = rng.random(n_all_users) < 0.3

    # One row per post; posts.csv rows first, grouped by user, newest first.
    user = np.concatenate([np.repeat(np.arange(users), per_user), np.repeat(np.arange(n_all_users), per_user_new)])
    is_new = np.concatenate([np.zeros(posts, bool), np.ones(n_new, bool)])
    n = user.size
    span = _TRAIN_DAYS - start_day[user]
    day = np.where(is_new, _TRAIN_DAYS + rng.random(n) * _NEW_DAYS, start_day[user] + rng.random(n) * span)
    hour = (pref_hour[user] + np.rint(rng.normal(0.0, 3.0, n)).astype(np.int64)) % 24
    minute = rng.integers(0, 60, n)
    ts = _EPOCH_2024 + np.floor(day).astype(np.int64) * 86_400 + hour * 3_600 + minute * 60
    order = np.lexsort((-ts, user, is_new))
    user, is_new, ts, hour = user[order], is_new[order], ts[order], hour[order]
    weekday = (ts // 86_400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0

    # Text. Tags are Zipf over the fixed vocabulary, plus some users' own signature tag.
    n_tags = np.clip(rng.poisson(tag_rate[user]), 0, 15)
    zipf = 1.0 / np.arange(1, len(HASHTAGS) + 1)
    tag_counts, tag_idx = _token_lists(
        rng, n_tags, lambda m: rng.choice(len(HASHTAGS), size=m, p=zipf / zipf.sum()), len(HASHTAGS)
    )
    sig_used = uses_signature[user] & (rng.random(n) < 0.6)
    n_mentions = np.clip(rng.poisson(0.35, n), 0, 3)

    def draw_mentions(m: int) -> np.ndarray:
        brand = rng.random(m) < 0.5
        return np.where(brand, n_all_users + rng.integers(0, len(_BRANDS), m), rng.integers(0, n_all_users, m))

    mention_counts, mention_idx = _token_lists(rng, n_mentions, draw_mentions, n_all_users + len(_BRANDS))

    empty_body = rng.random(n) < 0.02
    phrase_a = rng.integers(0, len(_PHRASES), n)
    phrase_b = rng.integers(0, len(_PHRASES), n)
    with_b = (rng.random(n) < 0.35) & ~empty_body
    emoji = rng.integers(0, len(_EMOJI), n)
    with_emoji = (rng.random(n) < 0.45) & ~empty_body
    prefix = rng.integers(0, len(_MENTION_PREFIXES), n)
    separator = rng.integers(0, len(_HASHTAG_SEPARATORS), n)

    has_image = rng.random(n) >= NO_IMAGE_SHARE
    brightness = rng.uniform(*BRIGHTNESS_RANGE, n)
    noise = rng.normal(0.0, NOISE_SD, n)
    id_chars = rng.integers(0, 36, (n, 15), dtype=np.uint8)

    null = pa.scalar(None, pa.string())
    names_arr = pa.array(names, pa.string())
    username = names_arr.take(pa.array(user))
    sig_tags = pa.array([f"#{s}" for s in signature], pa.string()).take(pa.array(user))
    vocab_tags = _joined(tag_counts, tag_idx, pa.array([f"#{t}" for t in HASHTAGS], pa.string()))
    hashtags = _concat(
        pc.if_else(pa.array(sig_used), sig_tags, null), (pc.if_else(pa.array(sig_used), " ", ""), vocab_tags)
    )
    handles = pa.array([f"@{h}" for h in (*names, *_BRANDS)], pa.string())
    mentions = _joined(mention_counts, mention_idx, handles)
    phrases = pa.array(_PHRASES, pa.string())
    # Separators must not lead the caption when the body is empty.
    no_mention = pa.array(empty_body & (mention_counts == 0))
    caption = _concat(
        pc.if_else(pa.array(empty_body), null, phrases.take(pa.array(phrase_a))),
        (" ", pc.if_else(pa.array(with_b), phrases.take(pa.array(phrase_b)), null)),
        (" ", pc.if_else(pa.array(with_emoji), pa.array(_EMOJI).take(pa.array(emoji)), null)),
        (
            pc.if_else(pa.array(empty_body), "", " "),
            pc.binary_join_element_wise(pa.array(_MENTION_PREFIXES).take(pa.array(prefix)), mentions, " "),
        ),
        (pc.if_else(no_mention, "", pa.array(_HASHTAG_SEPARATORS).take(pa.array(separator))), hashtags),
    )

    caption_chars = pc.fill_null(pc.utf8_length(caption), 0).to_numpy(zero_copy_only=False)
    n_hashtags = tag_counts + sig_used
    expected = (
        LIKES_INTERCEPT
        + FOLLOWERS_ELASTICITY * np.log(followers[user])
        + baseline[user]
        + HASHTAG_EFFECT * n_hashtags
        + CAPTION_LENGTH_EFFECT * caption_chars / 100.0
        + np.asarray(WEEKDAY_EFFECT)[weekday]
        + np.asarray(HOUR_EFFECT)[hour]
        + np.where(has_image, BRIGHTNESS_EFFECT * (brightness - BRIGHTNESS_CENTER), 0.0)
    )  # (n,)
    likes = np.maximum(1, np.rint(np.exp(expected + noise))).astype(np.int64)

    alphabet = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
    suffix = pa.array(alphabet[id_chars].view("S15").ravel()).cast(pa.string())
    post_id = pc.binary_join_element_wise(username, suffix, "_")
    image = pc.if_else(pa.array(has_image), pc.binary_join_element_wise("images/", post_id, ".jpg", ""), null)
    posted_at = pa.array(ts.astype("datetime64[s]"))  # DuckDB writes it as 2024-03-05 14:23:00

    table = pa.table(
        {
            "post_id": post_id,
            "username": username,
            "posted_at": posted_at,
            "caption": caption,
            "hashtags": hashtags,
            "mentions": mentions,
            "likes": pa.array(likes),
            "followers": pa.array(followers[user]),
            "following": pa.array(following[user]),
            "user_post_count": pa.array(user_post_count[user]),
            "image": image,
        }
    )
    train_mask = pa.array(~is_new)
    new_table = table.filter(pc.invert(train_mask))
    signal = pa.table(
        {
            "post_id": post_id,
            "brightness": pa.array(brightness, mask=~has_image),
            "expected_ln_likes": pa.array(expected),
        }
    )
    return SampleTables(
        posts=table.filter(train_mask),
        new_posts=new_table.set_column(6, "likes", pa.nulls(new_table.num_rows, pa.int64())),
        truth=new_table.select(["post_id", "likes"]),
        signal=signal,
        users=users,
        cold_start_users=n_cold,
    )


def _check_counts(posts: int, users: int, seed: int, new_posts: int | None) -> int:
    """Validate the counts; return the number of new posts to draw."""
    if users < 1:
        raise InputError(f"users={users}: the sample needs at least one user; pass users >= 1")
    if posts < users:
        raise InputError(
            f"posts={posts} is less than users={users}: every user needs a post; pass posts >= users or fewer users"
        )
    if seed < 0:
        raise InputError(f"seed={seed} is negative: pass a seed >= 0")
    if new_posts is None:
        return max(_MIN_NEW_POSTS, round(0.1 * posts))
    if new_posts != 0 and new_posts < _MIN_NEW_POSTS:
        raise InputError(
            f"new_posts={new_posts} cannot cover both returning and cold-start users: "
            f"pass 0 (no new posts) or at least {_MIN_NEW_POSTS}"
        )
    return new_posts


def _usernames(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    """n unique usernames like ``sunny_traveler`` and each one's CamelCase signature tag."""
    adj = rng.integers(0, len(_ADJECTIVES), n)
    noun = rng.integers(0, len(_NOUNS), n)
    pattern = rng.integers(0, len(_NAME_PATTERNS), n)
    number = rng.integers(1, 1000, n)
    names: list[str] = []
    signatures: list[str] = []
    seen: set[str] = set()
    for i in range(n):
        a, b = _ADJECTIVES[adj[i]], _NOUNS[noun[i]]
        name = _NAME_PATTERNS[pattern[i]].format(a=a, b=b)
        if name in seen:
            name = f"{name}{number[i]}"
        if name in seen:  # base names never end in a digit, so base + the row number is unique
            name = f"{_NAME_PATTERNS[pattern[i]].format(a=a, b=b)}{1000 + i}"
        seen.add(name)
        names.append(name)
        signatures.append(f"The{a.title()}{b.title()}")
    return names, signatures


def _token_lists(
    rng: np.random.Generator, counts: np.ndarray, draw: Callable[[int], np.ndarray], vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw counts[i] tokens in [0, vocab_size) for row i, drop repeats within a row, shuffle each row.

    Returns the new per-row counts and the flat token indices, row after row. One sort does both jobs:
    within a row, tokens are keyed by ``(token * step + shift[row]) mod prime``, a bijection, so repeats
    stay adjacent while the order looks random.
    """

    prime = _next_prime(vocab_size)
    step = 7_919 % prime or 1
    shift = rng.integers(0, prime, counts.size)  # (rows,)
    rows = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    keyed = (draw(rows.size).astype(np.int64) * step + shift[rows]) % prime
    key = np.sort(rows * prime + keyed)
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]  # repeats dropped (np.unique hashes: slower)
    rows = key // prime
    tokens = ((key % prime - shift[rows]) * pow(step, -1, prime)) % prime
    return np.bincount(rows, minlength=counts.size), tokens


def _next_prime(n: int) -> int:
    """Smallest prime above n (n is a vocabulary size, so trial division is plenty)."""
    k = n + 1
    while any(k % d == 0 for d in range(2, math.isqrt(k) + 1)):
        k += 1
    return k


def _joined(counts: np.ndarray, flat: np.ndarray, vocab: pa.Array) -> pa.Array:
    """Space-join each row's tokens; null where a row has none."""

    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), vocab.take(pa.array(flat, pa.int64())))
    return pc.if_else(pa.array(counts > 0), pc.binary_join(lists, " "), pa.scalar(None, pa.string()))


def _concat(first: pa.Array, *rest: tuple[str | pa.Array, pa.Array]) -> pa.Array:
    """Concatenate optional parts, each after its separator when present; null when all are null.

    The caller blanks a separator that would lead. Written by hand because
    ``binary_join_element_wise(null_handling="skip")`` drops all-null rows (pyarrow 26).
    """

    pieces = [pc.fill_null(first, "")]
    pieces += [pc.fill_null(pc.binary_join_element_wise(sep, part, ""), "") for sep, part in rest]
    joined = pc.binary_join_element_wise(*pieces, "")
    return pc.if_else(pc.equal(joined, ""), pa.scalar(None, pa.string()), joined)


def _write_images(out_dir: Path, tables: SampleTables, size: int, seed: int) -> int:
    """Draw and write every post's JPEG; a thread pool because numpy and Pillow release the GIL."""


    (out_dir / "images").mkdir(exist_ok=True)
    paths = tables.posts["image"].to_pylist() + tables.new_posts["image"].to_pylist()
    targets = tables.signal["brightness"].to_pylist()
    jobs = [(out_dir / p, targets[i], i) for i, p in enumerate(paths) if p is not None]

    def one(job: tuple[Path, float, int]) -> None:
        path, target, index = job
        _draw_image(path, size, target, np.random.default_rng([seed, _IMAGE_STREAM, index]))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, jobs))
    return len(jobs)


def _draw_image(path: Path, size: int, target: float, rng: np.random.Generator) -> None:
    """A gradient, a few shapes and grain, desaturated, then moved toward black or white so that its mean
    brightness is ``target`` up to rounding. Pillow does the pixel work in C."""

    corners = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)  # (3, 3, RGB), stretched into a gradient
    canvas = Image.fromarray(corners).resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.1, 0.6, 2) * size
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=fill)
        else:
            draw.polygon([tuple(float(v) for v in p) for p in rng.uniform(0, size, (3, 2))], fill=fill)
    grain = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).convert("RGB")
    canvas = Image.blend(canvas, grain, float(rng.uniform(0.0, 0.15)))

    # One affine colour matrix: saturation s (a distractor, no signal) keeps the luma, then
    # out = gain * x + lift moves the mean luma from `mean` to `target`. s <= 1 and gain, lift
    # inside [0, 255] never clip, so the mean lands on target up to rounding and JPEG.
    mean = float(np.asarray(canvas.convert("L"), dtype=np.float32).mean()) / 255.0
    if mean > target:
        gain, lift = target / mean, 0.0
    else:
        t = (target - mean) / (1.0 - mean)
        gain, lift = 1.0 - t, 255.0 * t
    sat = float(rng.uniform(0.2, 1.0))
    luma = ((1.0 - sat) * 0.299, (1.0 - sat) * 0.587, (1.0 - sat) * 0.114)
    matrix = tuple(
        v for c in range(3) for v in (*(gain * (luma[k] + (sat if k == c else 0.0)) for k in range(3)), lift)
    )
    canvas.convert("RGB", matrix).save(path, format="JPEG", quality=85)


if __name__ == "__main__":
    import sys

    if not 2 <= len(sys.argv) <= 5:
        sys.exit("usage: python -m igcli.commands.sample OUT_DIR [POSTS] [USERS] [SEED]")
    counts = [int(a) for a in sys.argv[2:]]
    print(generate_sample(Path(sys.argv[1]), *counts))
