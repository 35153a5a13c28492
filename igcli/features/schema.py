"""The feature columns, named once: what ``post_features`` holds (``igcli.features.metadata`` computes it),
which of them the model reads and with which fixed transform (``igcli.model.preprocess``), and which count as
a post's own content (``usual_likes``). Adding a feature: its SQL in ``sql/features.sql``, its name here."""

from __future__ import annotations

from igcli.vision.quality import QUALITY_FEATURES

# Feature columns of post_features, by kind, each with the fixed transform the model applies to it.
# History of the user's earlier posts (point in time).
HISTORY_FEATURES = (("hist_n", "log1p"), ("hist_mean", "none"), ("hist_median", "none"), ("hist_std", "none"),
                    ("hist_last5", "none"), ("hist_last10", "none"), ("hist_decayed", "none"),
                    ("days_since_prev", "log1p"), ("days_since_first", "log1p"))
# The paper's own metadata.
PAPER_FEATURES = (("followers", "log1p"), ("following", "log1p"), ("user_post_count", "log1p"),
                  ("caption_len", "log1p"), ("n_hashtags", "log1p"), ("n_mentions", "log1p"),
                  ("hashtag_weight", "log1p"))
CATEGORICAL_FEATURES = ("month", "weekday", "hour_group")
FLAG_FEATURES = ("no_history",)
# History dynamics (point in time, every mode): last / max / min earlier ln-likes, their trend per 30 days,
# days since the latest liked post, earlier posts (all, and in the 30 days before), and how the user's own
# earlier liked posts sharing a hashtag did against its history mean (tag_perf over tag_perf_n matches, an
# earlier post counted once per tag it shares), and
# the share of the post's tags the user never used before (tag_novel_frac). NULL where undefined.
DYNAMICS_FEATURES = ("h_last1", "h_max", "h_min", "h_slope", "days_since_last_liked", "n_posts_before",
                     "posts_last30d", "tag_perf", "tag_perf_n", "tag_novel_frac")
# Caption cues (raw counts and fractions of the caption text; flags are booleans).
CAPTION_FEATURES = ("n_emoji", "n_question", "n_exclaim", "n_words", "n_lines", "frac_upper", "frac_ascii",
                    "cta", "has_url")

# (name, transform) of each numeric input of the metadata branch, in order.
NUMERIC = HISTORY_FEATURES + PAPER_FEATURES
QUALITY = tuple((q, "log1p" if q in ("sharpness", "colorfulness") else "none")
                for q in QUALITY_FEATURES if q != "face_count")
FLAGS = FLAG_FEATURES + ("hist_std_missing", "has_image_quality")
CATEGORICAL = CATEGORICAL_FEATURES
# Columns of the newer feature groups (DYNAMICS_FEATURES / CAPTION_FEATURES) that are counts or durations:
# log1p like the others. The groups are used when the store has them.
_LOG1P_EXTRA = {"days_since_last_liked", "n_posts_before", "posts_last30d", "tag_perf_n", "n_emoji",
                "n_question", "n_exclaim", "n_words", "n_lines"}
EXTRA_NUMERIC = tuple((n, "log1p" if n in _LOG1P_EXTRA else "none") for n in DYNAMICS_FEATURES + CAPTION_FEATURES)
# What "this post's content" means for usual_likes: inputs set to their training mean.
CONTENT_COLUMNS = frozenset({"caption_len", "n_hashtags", "n_mentions", "hashtag_weight", "tag_perf", "tag_perf_n",
                             "tag_novel_frac", "has_image_quality"} | {q for q, _ in QUALITY}
                            | set(CAPTION_FEATURES))


def extra_numeric() -> list[tuple[str, str]]:
    """(name, transform) of the optional feature groups this igcli's featurize defines."""
    return list(EXTRA_NUMERIC)


def content_columns() -> frozenset[str]:
    return CONTENT_COLUMNS

# What each column of post_features means (the README's table of the store is generated from it and from
# sql/schema.sql, igcli.api.store_tables). "Earlier" is strictly before the post, of the same user; a "liked"
# post has likes > 0; ln-likes is ln(likes).
POST_FEATURES_MEANING = {
    "post_id": "the post (posts.post_id)",
    "username": "its author",
    "posted_at": "when it was posted",
    "likes": "its likes as stored; NULL when not known",
    "ln_likes": "ln(likes), the label; NULL when likes are unknown or 0",
    "hist_n": "earlier liked posts",
    "no_history": "hist_n = 0: the history values are NULL, not zeros",
    "hist_mean": "mean ln-likes of the earlier liked posts",
    "hist_median": "their median ln-likes",
    "hist_std": "their standard deviation (2 or more)",
    "hist_last5": "mean ln-likes of the last 5 of them",
    "hist_last10": "mean ln-likes of the last 10",
    "hist_decayed": "their mean weighted by 2^(-age / half_life_days) at the latest one",
    "days_since_prev": "days since the user's previous post (any)",
    "days_since_first": "days since the user's first post",
    "followers": "followers from the latest snapshot at or before the post, else the earliest",
    "following": "accounts followed, same snapshot",
    "user_post_count": "the profile's post count, same snapshot",
    "snapshot_choice": "at_or_before | earliest_after | none: which snapshot gave those three",
    "caption_len": "caption length in characters",
    "n_hashtags": "#tags in the post",
    "n_mentions": "@mentions in the post",
    "hashtag_weight": "sum over its tags of the ranking weight, or of ln(1 + earlier uses in the store)",
    "h_last1": "ln-likes of the latest earlier liked post",
    "h_max": "largest earlier ln-likes",
    "h_min": "smallest earlier ln-likes",
    "h_slope": "trend of the earlier ln-likes per 30 days (3 or more, not all at one time)",
    "days_since_last_liked": "days since the latest earlier liked post",
    "n_posts_before": "earlier posts, liked or not",
    "posts_last30d": "earlier posts in the 30 days before",
    "tag_perf": "how the user's earlier liked posts sharing a tag did against hist_mean, shrunk by m / (m + 2)",
    "tag_perf_n": "m: the (earlier liked post, shared tag) matches behind tag_perf",
    "tag_novel_frac": "share of the post's tags the user never used before; NULL without tags",
    "n_emoji": "emoji in the caption (U+1F300-1FAFF, U+2600-27BF)",
    "n_question": "question marks in the caption",
    "n_exclaim": "exclamation marks in the caption",
    "n_words": "whitespace-separated words",
    "n_lines": "lines (0 for an empty caption)",
    "frac_upper": "upper case share of the caption's letters",
    "frac_ascii": "ASCII share of the caption's characters",
    "cta": "a call to action (link in bio, giveaway, dm, ...)",
    "has_url": "a URL in the caption",
    "month": "month of posted_at, 1-12",
    "weekday": "weekday, 0 = Monday",
    "hour": "hour of the day, UTC",
    "hour_group": "hour band: 0 (0-7 h), 1 (8-11), 2 (12-13), 3 (14-16), 4 (17-19), 5 (20-23)",
    "hashtag_source": "what hashtag_weight came from: ranking:<sha256> or store-frequency",
    "half_life_days": "half-life of hist_decayed",
    "leaky_user_stats": "the paper's leaky averages (benchmark only): the post's own likes are in its history",
    "tags": "the post's distinct tags, lower case",
    "computed_at": "when featurize wrote the row",
}
