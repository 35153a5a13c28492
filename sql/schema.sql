-- igcli store schema, at the version igcli.store.SCHEMA_VERSION. Applied by igcli.store.connect(); every statement
-- is idempotent.
-- Timestamps are UTC, stored as naive TIMESTAMP.

CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER NOT NULL,
    applied_at TIMESTAMP NOT NULL
);

-- post_id is unique by construction (ingest dedupes each file and upserts by post_id); no PRIMARY KEY
-- index, which would make bulk loads several times slower.
CREATE TABLE IF NOT EXISTS posts (
    post_id      VARCHAR NOT NULL,
    username     VARCHAR NOT NULL,
    posted_at    TIMESTAMP NOT NULL,
    caption      VARCHAR,
    hashtags     VARCHAR,          -- space separated '#tag' tokens
    mentions     VARCHAR,          -- space separated '@user' tokens
    likes        BIGINT,           -- NULL: not known yet (a post to be scored)
    image_ref    VARCHAR,          -- the image value as written in the source file
    image_path   VARCHAR,          -- resolved absolute path, key into images; NULL when no image
    source_file  VARCHAR NOT NULL,
    source_line  BIGINT NOT NULL,
    ingested_at  TIMESTAMP NOT NULL,
    updated_at   TIMESTAMP NOT NULL,
    content_hash UBIGINT,          -- hash of posted_at, caption, hashtags, mentions, image_ref: what a re-ingest
                                   -- compares, without reading the text back (ingest fills it)
    post_key     UBIGINT           -- hash(post_id): ingest finds a file's posts by this integer, then compares
                                   -- the post_id text of those rows only (no scan of every post_id string)
);
ALTER TABLE posts ADD COLUMN IF NOT EXISTS content_hash UBIGINT;  -- stores made before it existed
ALTER TABLE posts ADD COLUMN IF NOT EXISTS post_key UBIGINT;
-- DuckDB's hash('igcli') when the stored post_key values were computed: a DuckDB whose hash() differs (an
-- upgrade) recomputes every post_key before comparing a file with the store, so no post is taken for new.
CREATE TABLE IF NOT EXISTS key_hash (hash_of_igcli UBIGINT NOT NULL);

-- User-level values are dated snapshots: a new row only when the values change.
CREATE TABLE IF NOT EXISTS user_snapshots (
    username        VARCHAR NOT NULL,
    observed_at     TIMESTAMP NOT NULL,
    followers       BIGINT,
    following       BIGINT,
    user_post_count BIGINT,
    source_file     VARCHAR NOT NULL,
    PRIMARY KEY (username, observed_at)
);

CREATE TABLE IF NOT EXISTS images (
    path        VARCHAR PRIMARY KEY,  -- absolute path (or the raw reference when it was refused)
    status      VARCHAR NOT NULL,     -- ok | missing | corrupt | unsafe_path | not_a_file
    error       VARCHAR,              -- a reason a person understands, when status <> 'ok'
    sha256      VARCHAR,
    byte_size   BIGINT,
    mtime_ns    BIGINT,
    width       INTEGER,
    height      INTEGER,
    checked_at  TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS rejects (
    ingest_id    VARCHAR NOT NULL,
    source_file  VARCHAR NOT NULL,
    line_number  BIGINT,
    column_name  VARCHAR,
    value        VARCHAR,
    reason       VARCHAR NOT NULL,
    rejected_at  TIMESTAMP NOT NULL
);

-- Rows that loaded but deserve a look (e.g. a 1970-01-01 placeholder date).
CREATE TABLE IF NOT EXISTS ingest_warnings (
    ingest_id    VARCHAR NOT NULL,
    source_file  VARCHAR NOT NULL,
    line_number  BIGINT,
    column_name  VARCHAR,
    value        VARCHAR,
    message      VARCHAR NOT NULL,
    warned_at    TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS ingests (
    ingest_id    VARCHAR PRIMARY KEY,
    kind         VARCHAR NOT NULL,    -- posts | classes
    source_file  VARCHAR NOT NULL,
    file_sha256  VARCHAR NOT NULL,
    started_at   TIMESTAMP NOT NULL,
    finished_at  TIMESTAMP NOT NULL,
    loaded       BIGINT NOT NULL,
    updated      BIGINT NOT NULL,
    unchanged    BIGINT NOT NULL,
    rejected     BIGINT NOT NULL,
    file_key     VARCHAR,             -- sha256 of the file's bytes and the options that decide how it loads
    summary      VARCHAR              -- JSON: rows read, image statuses, ignored columns (reported again when
                                      -- the same file is ingested again unchanged, see ingest.py)
);
ALTER TABLE ingests ADD COLUMN IF NOT EXISTS file_key VARCHAR;  -- stores made before they existed
ALTER TABLE ingests ADD COLUMN IF NOT EXISTS summary VARCHAR;

-- ImageNet top-k classes per image. Precomputed rows (ingest-classes) are keyed by post_id;
-- classifier rows (featurize) by the image's sha256, so duplicate images run once.
CREATE TABLE IF NOT EXISTS image_classes (
    post_id     VARCHAR,
    sha256      VARCHAR,
    backbone    VARCHAR NOT NULL,     -- timm model name, or 'precomputed'
    weights_fp  VARCHAR NOT NULL,     -- weights fingerprint, or the source file's sha256
    random_init BOOLEAN NOT NULL,
    source      VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    wnid        VARCHAR NOT NULL,
    prob        DOUBLE NOT NULL
);

-- Weight-free image quality, keyed by content: duplicate images are computed once.
CREATE TABLE IF NOT EXISTS image_quality (
    sha256       VARCHAR PRIMARY KEY,
    brightness   DOUBLE,
    contrast     DOUBLE,
    saturation   DOUBLE,
    colorfulness DOUBLE,
    sharpness    DOUBLE,
    entropy      DOUBLE,
    aspect_ratio DOUBLE,
    face_count   INTEGER,          -- NULL when no face detector is installed
    computed_at  TIMESTAMP NOT NULL
);

-- Pooled backbone features (aesthetics branch), one row per image content, backbone and weights.
CREATE TABLE IF NOT EXISTS image_embeddings (
    sha256      VARCHAR NOT NULL,
    backbone    VARCHAR NOT NULL,
    weights_fp  VARCHAR NOT NULL,
    random_init BOOLEAN NOT NULL,
    embedding   FLOAT[] NOT NULL,
    nima_dist   FLOAT[],           -- 10-bin score distribution, with a NIMA checkpoint only
    nima_mean   DOUBLE,
    computed_at TIMESTAMP NOT NULL,
    PRIMARY KEY (sha256, backbone, weights_fp)
);

-- Images a backbone (or 'quality') could not use, with the reason; they are not retried.
CREATE TABLE IF NOT EXISTS image_feature_errors (
    sha256      VARCHAR NOT NULL,
    backbone    VARCHAR NOT NULL,
    weights_fp  VARCHAR NOT NULL,
    reason      VARCHAR NOT NULL,
    failed_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (sha256, backbone, weights_fp)
);

-- Hashtag popularity lists (one per distinct file content), so scoring can reuse the exact list.
CREATE TABLE IF NOT EXISTS hashtag_rankings (
    ranking_id  VARCHAR NOT NULL,      -- sha256 of the file
    tag         VARCHAR NOT NULL,      -- lower case, without '#'
    rank        INTEGER NOT NULL,      -- 1 = most popular
    PRIMARY KEY (ranking_id, tag)
);

-- Running state of the metadata features (sql/features.sql, igcli/features.py), so featurize and score
-- advance from new posts only. One row per user that has featurized posts; ln-likes in units of 2^-32.
CREATE TABLE IF NOT EXISTS user_state (
    username      VARCHAR NOT NULL,
    n_posts       BIGINT NOT NULL,     -- featurized posts, liked or not
    first_at      TIMESTAMP,           -- first and latest post time
    last_at       TIMESTAMP,
    n             BIGINT NOT NULL,     -- posts with likes > 0
    s1            HUGEINT NOT NULL,    -- sum of ln-likes (fixed point: exact, order-free)
    s2            HUGEINT NOT NULL,    -- sum of squares
    last10        BIGINT[] NOT NULL,   -- the last 10 ln-likes in time order
    sorted_y      BIGINT[] NOT NULL,   -- every ln-likes value, sorted (the median)
    dec_num       DOUBLE,              -- decayed sums at dec_at (the latest liked post)
    dec_den       DOUBLE,
    dec_at        TIMESTAMP,
    snap_first_at TIMESTAMP            -- earliest snapshot of the user
);
-- trend sums over liked posts (t = post time in whole seconds, exact), and the post times within 30 days
-- of the latest post (posts_last30d); added after the first release, so stores made before get them here
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS s_t HUGEINT;
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS s_tt HUGEINT;
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS s_ty HUGEINT;
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS recent_at TIMESTAMP[];
-- sorted_y's median (ln-likes), last and first value (2^-32 units), so that a batch whose users add no liked
-- posts (scoring) reads none of sorted_y; filled from sorted_y in stores made before (store._migrate)
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS med_y DOUBLE;
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS max_y BIGINT;
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS min_y BIGINT;

-- Uses of each hashtag among featurized posts, and the latest use (store-frequency hashtag weight).
-- last_n: how many of the uses are at last_at, so a new post at that very time counts the uses strictly
-- before it without a recount (NULL in stores made before it: such a tie is recounted).
CREATE TABLE IF NOT EXISTS tag_state (
    tag     VARCHAR NOT NULL,
    uses    BIGINT NOT NULL,
    last_at TIMESTAMP NOT NULL
);
ALTER TABLE tag_state ADD COLUMN IF NOT EXISTS last_n BIGINT;

-- Each user's use of each hashtag among its featurized posts (tag_perf, tag_novel_frac): all uses, uses in
-- liked posts and the exact sum of their ln-likes (2^-32 units; a BIGINT holds 2^28 liked uses of one tag,
-- and reads far faster than a HUGEINT: store._migrate narrows older stores'). A row exists once the user used
-- the tag.
-- Keys: k = hash(username, tag) and k2 = hash(tag || chr(0) || username), two independent 64-bit hashes. A
-- lookup scans k only and keeps the rows whose k2 agrees too, so it never compares the strings of every row
-- (10x slower at 10M posts); a wrong match would need two pairs to collide in both (about 2^-128 a pair).
CREATE TABLE IF NOT EXISTS user_tag_state (
    username VARCHAR NOT NULL,
    tag      VARCHAR NOT NULL,
    k        UBIGINT NOT NULL,
    k2       UBIGINT NOT NULL,
    uses     BIGINT NOT NULL,
    n_liked  BIGINT NOT NULL,
    sy       BIGINT NOT NULL
);
-- (a store made while the table had no keys gets them here; its feature_version makes featurize refill it)
ALTER TABLE user_tag_state ADD COLUMN IF NOT EXISTS k UBIGINT;
ALTER TABLE user_tag_state ADD COLUMN IF NOT EXISTS k2 UBIGINT;

-- What post_features and the state were computed with, and how far they reach.
CREATE TABLE IF NOT EXISTS feature_state (
    half_life_days  DOUBLE NOT NULL,
    hashtag_source  VARCHAR NOT NULL,
    leaky           BOOLEAN NOT NULL,
    posts_seen      TIMESTAMP,         -- max(posts.updated_at) featurized
    ingests_seen    TIMESTAMP          -- max(ingests.finished_at) then
);
-- the definitions the stored features follow (igcli.features.FEATURE_VERSION); NULL in stores made before it,
-- which the next featurize recomputes
ALTER TABLE feature_state ADD COLUMN IF NOT EXISTS feature_version INTEGER;
-- DuckDB's hash('igcli') when user_tag_state's keys were computed (another one: the next featurize rebuilds)
ALTER TABLE feature_state ADD COLUMN IF NOT EXISTS key_hash UBIGINT;

-- post_features rows by snapshot choice and history flag, kept up to date by featurize (no scan to report).
CREATE TABLE IF NOT EXISTS feature_counts (
    snapshot_choice VARCHAR NOT NULL,
    no_history      BOOLEAN NOT NULL,
    n               BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS featurize_runs (
    run_id       VARCHAR PRIMARY KEY,
    started_at   TIMESTAMP NOT NULL,
    finished_at  TIMESTAMP NOT NULL,
    params       JSON NOT NULL,
    posts        BIGINT NOT NULL,
    inserted     BIGINT NOT NULL,
    updated      BIGINT NOT NULL,
    unchanged    BIGINT NOT NULL,
    images       JSON NOT NULL
);

CREATE TABLE IF NOT EXISTS runs (
    model_id         VARCHAR PRIMARY KEY,
    created_at       TIMESTAMP NOT NULL,
    config           JSON NOT NULL,
    split            VARCHAR NOT NULL,
    seed             INTEGER NOT NULL,
    branches         VARCHAR NOT NULL,
    data_fingerprint VARCHAR NOT NULL,
    feature_names    JSON NOT NULL,
    backbones        JSON NOT NULL,
    metrics          JSON NOT NULL,
    baselines        JSON NOT NULL,
    test_mae         DOUBLE,
    timings          JSON NOT NULL,
    export_dir       VARCHAR
);
-- How train published the run's model (schema 4): 'validation' (branches chosen on the validation part),
-- 'forced' (--branches), 'ablation' (an --all-combinations member that lost on validation); NULL when nothing
-- was exported. igcli.commands.train.chosen_model reads it.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS chosen_by VARCHAR;

CREATE TABLE IF NOT EXISTS predictions (
    post_id             VARCHAR NOT NULL,
    model_id            VARCHAR NOT NULL,
    predicted_log_likes DOUBLE NOT NULL,
    predicted_likes     DOUBLE NOT NULL,
    p10_likes           DOUBLE NOT NULL,
    p90_likes           DOUBLE NOT NULL,
    scored_at           TIMESTAMP NOT NULL,
    PRIMARY KEY (post_id, model_id)
);

-- usual_likes: the model's prediction for this user's typical post at that time (content at the training mean);
-- vs_usual = predicted / usual. Stores made before they existed gain the columns (NULL for older rows).
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS usual_likes DOUBLE;
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS vs_usual DOUBLE;
