"""igcli.commands.sample: the synthetic dataset has the real layout, is deterministic, and carries its planted
signal."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from PIL import Image

from igcli.commands import sample
from igcli.commands.sample import SampleSummary, generate_sample
from igcli.errors import InputError

SMALL = {"posts": 300, "users": 20, "image_size": 32}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SampleSummary:
    return generate_sample(tmp_path_factory.mktemp("small") / "sample", seed=0, **SMALL)


def read_csv(path: Path) -> pa.Table:
    """Read as an ingest would: DuckDB's sniffer, no hints."""
    return duckdb.read_csv(str(path)).to_arrow_table()


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_writes_the_layout_of_the_real_data(small: SampleSummary) -> None:
    root = small.out_dir
    assert {p.name for p in root.iterdir()} == {
        "posts.csv",
        "new_posts.csv",
        "new_posts_truth.csv",
        "new_posts_with_likes.csv",
        "hashtag_ranking.txt",
        "images",
    }
    posts, new = read_csv(root / "posts.csv"), read_csv(root / "new_posts.csv")
    assert tuple(posts.column_names) == sample.COLUMNS
    assert tuple(new.column_names) == sample.COLUMNS
    assert read_csv(root / "new_posts_truth.csv").column_names == ["post_id", "likes"]
    assert posts.num_rows == small.posts == 300
    assert len(set(posts["username"].to_pylist())) == small.users == 20
    assert new.num_rows == small.new_posts == 30  # the default: 10% of posts
    ids = posts["post_id"].to_pylist() + new["post_id"].to_pylist()
    assert len(set(ids)) == len(ids)
    for post_id, user in zip(posts["post_id"].to_pylist(), posts["username"].to_pylist(), strict=True):
        assert re.fullmatch(re.escape(user) + r"_[0-9A-Z]{15}", post_id)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path, small: SampleSummary) -> None:
    again = generate_sample(tmp_path / "again", seed=0, **SMALL)
    assert digests(again.out_dir) == digests(small.out_dir)
    other = generate_sample(tmp_path / "other", seed=1, **SMALL)
    theirs, ours = digests(other.out_dir), digests(small.out_dir)
    for name in ("posts.csv", "new_posts.csv", "new_posts_truth.csv"):
        assert theirs[name] != ours[name]


def test_images_false_skips_only_the_jpegs(tmp_path: Path, small: SampleSummary) -> None:
    bare = generate_sample(tmp_path / "bare", seed=0, images=False, **SMALL)
    assert bare.images == 0
    assert not (bare.out_dir / "images").exists()
    with_images = {k: v for k, v in digests(small.out_dir).items() if not k.startswith("images")}
    assert digests(bare.out_dir) == with_images  # likes do not depend on whether pixels were drawn


def test_likes_are_integers_of_at_least_one(small: SampleSummary) -> None:
    rel = duckdb.read_csv(str(small.out_dir / "posts.csv"))
    types = dict(zip(rel.columns, map(str, rel.types), strict=True))
    for column in ("likes", "followers", "following", "user_post_count"):
        assert types[column] == "BIGINT"
    posts = rel.to_arrow_table()
    assert posts["likes"].null_count == 0
    assert min(posts["likes"].to_pylist()) >= 1
    followers = posts["followers"].to_numpy()
    lo, hi = sample.FOLLOWERS_RANGE
    assert lo <= followers.min() and followers.max() <= hi
    by_user = {}
    for user, f in zip(posts["username"].to_pylist(), followers.tolist(), strict=True):
        assert by_user.setdefault(user, f) == f  # a user-level value, repeated on each row


def test_posted_at_parses_as_timestamps_with_hours_and_minutes(small: SampleSummary) -> None:
    rel = duckdb.read_csv(str(small.out_dir / "posts.csv"))
    assert str(rel.types[rel.columns.index("posted_at")]) == "TIMESTAMP"
    when = rel.to_arrow_table()["posted_at"].to_pylist()
    assert len({t.hour for t in when}) >= 12
    assert len({t.minute for t in when}) >= 30
    assert (max(when) - min(when)).days >= 300
    new = duckdb.read_csv(str(small.out_dir / "new_posts.csv")).to_arrow_table()
    assert min(new["posted_at"].to_pylist()) > max(when)  # after every user's last post


def test_csv_round_trips_awkward_captions_exactly(small: SampleSummary) -> None:
    drawn = sample.draw_sample_tables(posts=300, users=20, seed=0)
    expected = drawn.posts["caption"].to_pylist()
    text = "".join(c for c in expected if c)
    for needle in ('"', "\n", ",", "é", "Д", "ص"):
        assert needle in text, f"no caption contains {needle!r}"
    assert any(ord(ch) > 0xFFFF for ch in text), "no emoji outside the BMP"
    assert any(c is None for c in expected) or min(len(c) for c in expected if c) < 20
    assert max(len(c) for c in expected if c) > 200

    assert read_csv(small.out_dir / "posts.csv")["caption"].to_pylist() == expected
    via_arrow = pacsv.read_csv(
        small.out_dir / "posts.csv",
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
    )
    assert via_arrow["caption"].to_pylist() == expected
    assert via_arrow["hashtags"].to_pylist() == drawn.posts["hashtags"].to_pylist()


def test_images_decode_at_the_requested_size(small: SampleSummary) -> None:
    root = small.out_dir
    referenced = [
        p
        for name in ("posts.csv", "new_posts.csv")
        for p in read_csv(root / name)["image"].to_pylist()
        if p is not None
    ]
    assert sorted(referenced) == sorted(str(p.relative_to(root)) for p in (root / "images").glob("*.jpg"))
    assert len(referenced) == small.images
    for rel in referenced[:50]:
        with Image.open(root / rel) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 32)
    missing = read_csv(root / "posts.csv")["image"].null_count
    assert missing == small.posts_without_image > 0


def test_new_posts_hide_likes_and_include_cold_start_users(small: SampleSummary) -> None:
    posts = read_csv(small.out_dir / "posts.csv")
    new = read_csv(small.out_dir / "new_posts.csv")
    truth = read_csv(small.out_dir / "new_posts_truth.csv")
    assert new["likes"].null_count == new.num_rows
    assert truth["post_id"].to_pylist() == new["post_id"].to_pylist()
    assert truth["likes"].null_count == 0 and min(truth["likes"].to_pylist()) >= 1
    later = read_csv(small.out_dir / "new_posts_with_likes.csv")      # the same rows, once the likes came in
    assert later.drop_columns(["likes"]).equals(new.drop_columns(["likes"]))
    assert later["likes"].to_pylist() == truth["likes"].to_pylist()
    known = set(posts["username"].to_pylist())
    new_users = set(new["username"].to_pylist())
    cold = new_users - known
    assert len(cold) == small.cold_start_users and 3 <= len(cold) <= 5
    assert new_users & known, "no returning users"


def test_hashtags_and_mentions_appear_in_the_caption(small: SampleSummary) -> None:
    posts = read_csv(small.out_dir / "posts.csv")
    ranking = (small.out_dir / "hashtag_ranking.txt").read_text(encoding="utf-8").splitlines()
    assert len(ranking) == len(set(ranking)) == 300
    assert not any(t.startswith("#") for t in ranking)
    counts: Counter[str] = Counter()
    rows = zip(*(posts[c].to_pylist() for c in ("caption", "hashtags", "mentions")), strict=True)
    for caption, hashtags, mentions in rows:
        for tag in (hashtags or "").split():
            assert tag.startswith("#") and tag in caption
            counts[tag[1:]] += 1
        for handle in (mentions or "").split():
            assert handle.startswith("@") and handle in caption
    assert sum(1 for h in posts["hashtags"].to_pylist() if h) > 200
    assert sum(1 for m in posts["mentions"].to_pylist() if m) > 20
    ranked = set(ranking)
    assert sum(n for t, n in counts.items() if t in ranked) / sum(counts.values()) > 0.9
    assert ranking.index(counts.most_common(1)[0][0]) < 5  # Zipf: the head of the ranking dominates


def test_planted_signal_is_recoverable_by_least_squares(tmp_path: Path) -> None:
    summary = generate_sample(tmp_path / "signal", posts=1500, users=60, image_size=32, new_posts=0, seed=3)
    posts = read_csv(summary.out_dir / "posts.csv")
    keep = [i for i, p in enumerate(posts["image"].to_pylist()) if p is not None]
    brightness = np.array([sample.image_brightness(summary.out_dir / posts["image"][i].as_py()) for i in keep])
    ln_followers = np.log(posts["followers"].to_numpy()[keep])
    ln_likes = np.log(posts["likes"].to_numpy()[keep])

    def fit(b: np.ndarray) -> np.ndarray:
        x = np.column_stack([np.ones_like(b), ln_followers, b])  # (n, 3)
        return np.linalg.lstsq(x, ln_likes, rcond=None)[0]

    _, slope_followers, slope_brightness = fit(brightness)
    assert slope_followers > 0.5 and slope_brightness > 0.5  # positive whatever the constants say
    assert abs(slope_followers - sample.FOLLOWERS_ELASTICITY) < 0.12
    assert abs(slope_brightness - sample.BRIGHTNESS_EFFECT) < 0.3
    # The same fit on shuffled brightness finds nothing: the signal lives in the pixels.
    shuffled = np.random.default_rng(0).permutation(brightness)
    assert abs(fit(shuffled)[2]) < 0.3


@pytest.mark.parametrize(
    ("kwargs", "fix"),
    [
        ({"posts": 10, "users": 20}, "posts >= users"),
        ({"posts": 10, "users": 0}, "users >= 1"),
        ({"posts": 100, "users": 10, "new_posts": 3}, "at least 6"),
        ({"posts": 100, "users": 10, "image_size": 8}, "between 16 and 2048"),
        ({"posts": 100, "users": 10, "seed": -1}, "seed >= 0"),
    ],
)
def test_nonsense_arguments_raise_input_error_naming_the_fix(tmp_path: Path, kwargs: dict, fix: str) -> None:
    with pytest.raises(InputError, match=re.escape(fix)):
        generate_sample(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="pass a new directory"):
        generate_sample(tmp_path, posts=20, users=5, images=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_new_posts_zero_writes_no_new_posts_files(tmp_path: Path) -> None:
    summary = generate_sample(tmp_path / "none", posts=20, users=5, new_posts=0, images=False)
    assert summary.new_posts == summary.cold_start_users == 0
    assert sorted(p.name for p in summary.out_dir.iterdir()) == ["hashtag_ranking.txt", "posts.csv"]
