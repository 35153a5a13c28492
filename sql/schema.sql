-- igcli store schema, at the version igcli.store.SCHEMA_VERSION. Applied by igcli.store.connect(); every statement
-- is idempotent.
-- Timestamps are UTC, stored as naive TIMESTAMP.

-- The schema versions this store went through; an igcli refuses a store newer than itself.
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER NOT NULL,   -- schema version (igcli.store.SCHEMA_VERSION)
    applied_at TIMESTAMP NOT NULL  -- when an igcli first opened the store at it
);

-- One row per post, as last ingested (by `ingest`, or by `score` for a batch).
-- post_id is unique by construction (ingest dedupes each file and upserts by post_id); no PRIMARY KEY
-- index, which would make bulk loads several times slower.
CREATE TABLE IF NOT EXISTS posts (
    post_id      VARCHAR NOT NULL, -- the post's id, unique in the store
    username     VARCHAR NOT NULL, -- its author
    posted_at    TIMESTAMP NOT NULL, -- when it was posted
    caption      VARCHAR,          -- caption text
    hashtags     VARCHAR,          -- space separated '#tag' tokens
    mentions     VARCHAR,          -- space separated '@user' tokens
    likes        BIGINT,           -- NULL: not known yet (a post to be scored)
    image_ref    VARCHAR,          -- the image value as written in the source file
    image_path   VARCHAR,          -- resolved absolute path, key into images; NULL when no image
    source_file  VARCHAR NOT NULL, -- the file it was last loaded from (absolute path)
    source_line  BIGINT NOT NULL,  -- its record's physical line in that file
    ingested_at  TIMESTAMP NOT NULL, -- when it was first loaded
    updated_at   TIMESTAMP NOT NULL, -- when it was loaded new or changed (featurize starts from there)
    content_hash UBIGINT,          -- hash of posted_at, caption, hashtags, mentions, image_ref: what a re-ingest
                                   -- compares, without reading the text back (ingest fills it)
    post_key     UBIGINT           -- hash(post_id): ingest finds a file's posts by this integer, then compares
                                   -- the post_id text of those rows only (no scan of every post_id string)
);
ALTER TABLE posts ADD COLUMN IF NOT EXISTS content_hash UBIGINT;  -- stores made before it existed
ALTER TABLE posts ADD COLUMN IF NOT EXISTS post_key UBIGINT;
-- DuckDB's hash('igcli') when the stored post_key values were computed: a DuckDB whose hash() differs (an
-- upgrade) recomputes every post_key before comparing a file with the store, so no post is taken for new.
CREATE TABLE IF NOT EXISTS key_hash (
    hash_of_igcli UBIGINT NOT NULL  -- DuckDB's hash('igcli') then
);

-- User-level values are dated snapshots: a new row only when the values change.
CREATE TABLE IF NOT EXISTS user_snapshots (
    username        VARCHAR NOT NULL,    -- the user
    observed_at     TIMESTAMP NOT NULL,  -- when observed: the file's observed_at, else ingest time
    followers       BIGINT,              -- follower count
    following       BIGINT,              -- accounts the user follows
    user_post_count BIGINT,              -- the user's post count as its profile showed it
    source_file     VARCHAR NOT NULL,    -- the file they came from
    PRIMARY KEY (username, observed_at)
);

-- Every image a post refers to, checked at ingest: found, hashed and decodable, or why not.
CREATE TABLE IF NOT EXISTS images (
    path        VARCHAR PRIMARY KEY,  -- absolute path (or 'unsafe_path:' and the raw reference when refused)
    status      VARCHAR NOT NULL,     -- ok | missing | corrupt | unsafe_path | not_a_file
    error       VARCHAR,              -- a reason a person understands, when status <> 'ok'
    sha256      VARCHAR,              -- sha256 of the bytes: the key of the image feature tables
    byte_size   BIGINT,               -- file size in bytes
    mtime_ns    BIGINT,               -- modification time (ns): a changed file is noticed
    width       INTEGER,              -- pixels
    height      INTEGER,              -- pixels
    checked_at  TIMESTAMP NOT NULL    -- when the file was last checked
);

-- Records an ingest could not load, with the reason (a file's next ingest replaces its rows).
CREATE TABLE IF NOT EXISTS rejects (
    ingest_id    VARCHAR NOT NULL,   -- the ingest that refused it (ingests.ingest_id)
    source_file  VARCHAR NOT NULL,   -- the file (absolute path)
    line_number  BIGINT,             -- the record's physical line in the file
    column_name  VARCHAR,            -- the column at fault; NULL for a malformed record
    value        VARCHAR,            -- the raw value, its first 200 characters
    reason       VARCHAR NOT NULL,   -- why it was refused
    rejected_at  TIMESTAMP NOT NULL  -- when
);

-- Rows that loaded but deserve a look (e.g. a 1970-01-01 placeholder date).
CREATE TABLE IF NOT EXISTS ingest_warnings (
    ingest_id    VARCHAR NOT NULL,   -- the ingest (ingests.ingest_id)
    source_file  VARCHAR NOT NULL,   -- the file (absolute path)
    line_number  BIGINT,             -- the record's physical line in the file
    column_name  VARCHAR,            -- the column concerned
    value        VARCHAR,            -- the raw value, its first 200 characters
    message      VARCHAR NOT NULL,   -- what to look at
    warned_at    TIMESTAMP NOT NULL  -- when
);

-- One row per ingest of a posts file.
CREATE TABLE IF NOT EXISTS ingests (
    ingest_id    VARCHAR PRIMARY KEY, -- the ingest's id
    kind         VARCHAR NOT NULL,    -- posts | classes
    source_file  VARCHAR NOT NULL,    -- the file loaded (absolute path)
    file_sha256  VARCHAR NOT NULL,    -- sha256 of its bytes
    started_at   TIMESTAMP NOT NULL,  -- when it started
    finished_at  TIMESTAMP NOT NULL,  -- when it committed
    loaded       BIGINT NOT NULL,     -- posts new to the store
    updated      BIGINT NOT NULL,     -- stored posts it changed
    unchanged    BIGINT NOT NULL,     -- posts already stored as they are
    rejected     BIGINT NOT NULL,     -- records refused (see rejects)
    file_key     VARCHAR,             -- sha256 of the file's bytes and the options that decide how it loads
    summary      VARCHAR              -- JSON: rows read, image statuses, ignored columns (reported again when
                                      -- the same file is ingested again unchanged, see ingest.py)
);
ALTER TABLE ingests ADD COLUMN IF NOT EXISTS file_key VARCHAR;  -- stores made before they existed
ALTER TABLE ingests ADD COLUMN IF NOT EXISTS summary VARCHAR;

-- ImageNet top-k classes per image. Precomputed rows (ingest-classes) are keyed by post_id;
-- classifier rows (featurize) by the image's sha256, so duplicate images run once.
CREATE TABLE IF NOT EXISTS image_classes (
    post_id     VARCHAR,              -- precomputed rows: the post; NULL for classifier rows
    sha256      VARCHAR,              -- the image (images.sha256); precomputed rows: the post's, if known
    backbone    VARCHAR NOT NULL,     -- timm model name, or 'precomputed'
    weights_fp  VARCHAR NOT NULL,     -- weights fingerprint, or the source file's sha256
    random_init BOOLEAN NOT NULL,     -- random weights (tests and benchmarks only)
    source      VARCHAR NOT NULL,     -- 'featurize', or the precomputed file's name
    rank        INTEGER NOT NULL,     -- 1 = the top class
    wnid        VARCHAR NOT NULL,     -- the ImageNet class as a WordNet id (n01440764)
    prob        DOUBLE NOT NULL       -- its probability
);

-- Weight-free image quality, keyed by content: duplicate images are computed once.
CREATE TABLE IF NOT EXISTS image_quality (
    sha256       VARCHAR PRIMARY KEY, -- the image (images.sha256)
    brightness   DOUBLE,           -- mean luma, 0 (black) to 1 (white)
    contrast     DOUBLE,           -- standard deviation of the luma, 0-0.5
    saturation   DOUBLE,           -- mean HSV saturation, 0-1
    colorfulness DOUBLE,           -- Hasler & Suesstrunk (0 grey; 82 'highly colourful')
    sharpness    DOUBLE,           -- variance of the luma's Laplacian at 256 px
    entropy      DOUBLE,           -- entropy of the luma histogram, 0-8 bits
    aspect_ratio DOUBLE,           -- width / height as displayed (EXIF orientation)
    face_count   INTEGER,          -- NULL when no face detector is installed
    computed_at  TIMESTAMP NOT NULL -- when
);

-- Pooled backbone features (aesthetics branch), one row per image content, backbone and weights.
CREATE TABLE IF NOT EXISTS image_embeddings (
    sha256      VARCHAR NOT NULL,  -- the image (images.sha256)
    backbone    VARCHAR NOT NULL,  -- timm model name
    weights_fp  VARCHAR NOT NULL,  -- weights fingerprint and image geometry (<sha256>:crop1)
    random_init BOOLEAN NOT NULL,  -- random weights (tests and benchmarks only)
    embedding   FLOAT[] NOT NULL,  -- pooled features (1280 for EfficientNet-Lite0)
    nima_dist   FLOAT[],           -- 10-bin score distribution, with a NIMA checkpoint only
    nima_mean   DOUBLE,            -- mean score of nima_dist (1-10)
    computed_at TIMESTAMP NOT NULL, -- when
    PRIMARY KEY (sha256, backbone, weights_fp)
);

-- Images a backbone (or 'quality') could not use, with the reason; they are not retried.
CREATE TABLE IF NOT EXISTS image_feature_errors (
    sha256      VARCHAR NOT NULL,               -- the image (images.sha256)
    backbone    VARCHAR NOT NULL,               -- the backbone, or 'quality'
    weights_fp  VARCHAR NOT NULL,               -- its weights fingerprint
    reason      VARCHAR NOT NULL,               -- why the image could not be used
    failed_at   TIMESTAMP NOT NULL,             -- when
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
    username      VARCHAR NOT NULL,    -- the user
    n_posts       BIGINT NOT NULL,     -- featurized posts, liked or not
    first_at      TIMESTAMP,           -- first post time
    last_at       TIMESTAMP,           -- latest post time
    n             BIGINT NOT NULL,     -- posts with likes > 0
    s1            HUGEINT NOT NULL,    -- sum of ln-likes (fixed point: exact, order-free)
    s2            HUGEINT NOT NULL,    -- sum of squares
    last10        BIGINT[] NOT NULL,   -- the last 10 ln-likes in time order
    sorted_y      BIGINT[] NOT NULL,   -- every ln-likes value, sorted (the median)
    dec_num       DOUBLE,              -- decayed sum of ln-likes at dec_at
    dec_den       DOUBLE,              -- decayed count at dec_at
    dec_at        TIMESTAMP,           -- the latest liked post's time
    snap_first_at TIMESTAMP            -- earliest snapshot of the user
);
-- trend sums over liked posts (t = post time in whole seconds, exact), and the post times within 30 days
-- of the latest post (posts_last30d); added after the first release, so stores made before get them here
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS s_t HUGEINT;  -- sum of t, liked posts (t: time in seconds)
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS s_tt HUGEINT;  -- sum of t^2
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS s_ty HUGEINT;  -- sum of t * ln-likes (2^-32 units)
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS recent_at TIMESTAMP[];  -- post times of the last 30 days
-- sorted_y's median (ln-likes), last and first value (2^-32 units), so that a batch whose users add no liked
-- posts (scoring) reads none of sorted_y; filled from sorted_y in stores made before (store._migrate)
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS med_y DOUBLE;  -- median ln-likes
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS max_y BIGINT;  -- largest ln-likes (2^-32 units)
ALTER TABLE user_state ADD COLUMN IF NOT EXISTS min_y BIGINT;  -- smallest ln-likes (2^-32 units)

-- Uses of each hashtag among featurized posts, and the latest use (store-frequency hashtag weight).
-- last_n: how many of the uses are at last_at, so a new post at that very time counts the uses strictly
-- before it without a recount (NULL in stores made before it: such a tie is recounted).
CREATE TABLE IF NOT EXISTS tag_state (
    tag     VARCHAR NOT NULL,   -- hashtag, lower case, without '#'
    uses    BIGINT NOT NULL,    -- featurized posts that use it
    last_at TIMESTAMP NOT NULL  -- its latest use
);
ALTER TABLE tag_state ADD COLUMN IF NOT EXISTS last_n BIGINT;  -- uses at last_at

-- Each user's use of each hashtag among its featurized posts (tag_perf, tag_novel_frac): all uses, uses in
-- liked posts and the exact sum of their ln-likes (2^-32 units; a BIGINT holds 2^28 liked uses of one tag,
-- and reads far faster than a HUGEINT: store._migrate narrows older stores'). A row exists once the user used
-- the tag.
-- Keys: k = hash(username, tag) and k2 = hash(tag || chr(0) || username), two independent 64-bit hashes. A
-- lookup scans k only and keeps the rows whose k2 agrees too, so it never compares the strings of every row
-- (what made such lookups slow at 10M posts); a wrong match would need two pairs to collide in both (about
-- 2^-128 a pair).
CREATE TABLE IF NOT EXISTS user_tag_state (
    username VARCHAR NOT NULL,  -- the user
    tag      VARCHAR NOT NULL,  -- hashtag, lower case, without '#'
    k        UBIGINT NOT NULL,  -- hash(username, tag): the lookup key
    k2       UBIGINT NOT NULL,  -- hash(tag || chr(0) || username): the check
    uses     BIGINT NOT NULL,   -- the user's featurized posts with the tag
    n_liked  BIGINT NOT NULL,   -- of them, posts with likes > 0
    sy       BIGINT NOT NULL    -- sum of their ln-likes (2^-32 units)
);
-- (a store made while the table had no keys gets them here; its feature_version makes featurize refill it)
ALTER TABLE user_tag_state ADD COLUMN IF NOT EXISTS k UBIGINT;
ALTER TABLE user_tag_state ADD COLUMN IF NOT EXISTS k2 UBIGINT;

-- What post_features and the state were computed with, and how far they reach.
CREATE TABLE IF NOT EXISTS feature_state (
    half_life_days  DOUBLE NOT NULL,   -- half-life of the decayed mean
    hashtag_source  VARCHAR NOT NULL,  -- 'ranking:<sha256 of the file>' or 'store-frequency'
    leaky           BOOLEAN NOT NULL,  -- the paper's leaky user averages (benchmark only)
    posts_seen      TIMESTAMP,         -- max(posts.updated_at) featurized
    ingests_seen    TIMESTAMP          -- max(ingests.finished_at) then
);
-- the definitions the stored features follow (igcli.features.FEATURE_VERSION); NULL in stores made before it,
-- which the next featurize recomputes
ALTER TABLE feature_state ADD COLUMN IF NOT EXISTS feature_version INTEGER;  -- FEATURE_VERSION of the features
-- DuckDB's hash('igcli') when user_tag_state's keys were computed (another one: the next featurize rebuilds)
ALTER TABLE feature_state ADD COLUMN IF NOT EXISTS key_hash UBIGINT;  -- hash('igcli') of user_tag_state's keys

-- post_features rows by snapshot choice and history flag, kept up to date by featurize (no scan to report).
CREATE TABLE IF NOT EXISTS feature_counts (
    snapshot_choice VARCHAR NOT NULL,  -- post_features.snapshot_choice
    no_history      BOOLEAN NOT NULL,  -- post_features.no_history
    n               BIGINT NOT NULL    -- rows
);

-- One row per `featurize`.
CREATE TABLE IF NOT EXISTS featurize_runs (
    run_id       VARCHAR PRIMARY KEY,  -- the run's id
    started_at   TIMESTAMP NOT NULL,   -- when it started
    finished_at  TIMESTAMP NOT NULL,   -- when it finished
    params       JSON NOT NULL,        -- its options (JSON)
    posts        BIGINT NOT NULL,      -- featurized posts after it
    inserted     BIGINT NOT NULL,      -- feature rows it added
    updated      BIGINT NOT NULL,      -- feature rows it changed
    unchanged    BIGINT NOT NULL,      -- feature rows it left as they were
    images       JSON NOT NULL         -- its image features (JSON)
);

-- One row per trained model (`train`).
CREATE TABLE IF NOT EXISTS runs (
    model_id         VARCHAR PRIMARY KEY,  -- the model (exports/<model_id>/)
    created_at       TIMESTAMP NOT NULL,   -- when it was trained
    config           JSON NOT NULL,        -- its training options (JSON)
    split            VARCHAR NOT NULL,     -- random | user | time | warm-holdout
    seed             INTEGER NOT NULL,     -- seed of the split and the training
    branches         VARCHAR NOT NULL,     -- comma-separated: metadata, objects, aesthetics
    data_fingerprint VARCHAR NOT NULL,     -- sha256 of the training rows' ids, targets and features
    feature_names    JSON NOT NULL,        -- the metadata inputs, in order (JSON)
    backbones        JSON NOT NULL,        -- image sources used (JSON)
    metrics          JSON NOT NULL,        -- test-part metrics (JSON)
    baselines        JSON NOT NULL,        -- the baselines' metrics, same posts (JSON)
    test_mae         DOUBLE,               -- test MAE of ln-likes
    timings          JSON NOT NULL,        -- seconds per stage (JSON)
    export_dir       VARCHAR               -- where it was exported; NULL when not
);
-- How train published the run's model (schema 4): 'validation' (branches chosen on the validation part),
-- 'forced' (--branches), 'ablation' (an --all-combinations member that lost on validation); NULL when nothing
-- was exported. igcli.commands.train.chosen_model reads it.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS chosen_by VARCHAR;  -- how the run's model was published: validation | forced | ablation; NULL when not exported

-- The latest score of each post by each model (`score`).
CREATE TABLE IF NOT EXISTS predictions (
    post_id             VARCHAR NOT NULL,    -- the scored post
    model_id            VARCHAR NOT NULL,    -- the model (runs.model_id)
    predicted_log_likes DOUBLE NOT NULL,     -- predicted median of ln(likes)
    predicted_likes     DOUBLE NOT NULL,     -- exp of it
    p10_likes           DOUBLE NOT NULL,     -- 10th percentile of likes
    p90_likes           DOUBLE NOT NULL,     -- 90th percentile of likes
    scored_at           TIMESTAMP NOT NULL,  -- when
    PRIMARY KEY (post_id, model_id)
);

-- usual_likes: the model's prediction for this user's typical post at that time (content at the training mean);
-- vs_usual = predicted / usual. Stores made before they existed gain the columns (NULL for older rows).
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS usual_likes DOUBLE;  -- the median for a typical post of theirs
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS vs_usual DOUBLE;  -- predicted / usual likes
-- batch_id: the scoring batch (the ingest_id of score's ingest); `igcli forget --batch` removes its posts.
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS batch_id VARCHAR;  -- the scoring batch (igcli forget --batch)

-- Closing the loop (igcli.commands.evaluate, igcli.model.explain), schema 4.
-- likes_known: the post's likes were in the store when it was scored (then the prediction is reported apart from
-- those made before the likes were known; NULL in rows scored before igcli recorded it: judged by whether the post
-- changed after it was scored). user_mean_log_likes: the user's mean ln-likes over earlier posts when scored, the
-- baseline `evaluate` compares with (NULL at cold start). reference_likes and effect_<group>: the drivers, x likes
-- of each input group against the model's reference post (predicted = reference x the six effects).
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS likes_known BOOLEAN;  -- the post's likes were in the store when it was scored
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS user_mean_log_likes DOUBLE;  -- the user's mean ln-likes of earlier posts when scored
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS reference_likes DOUBLE;  -- the model's reference post: the drivers multiply from it
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS effect_user_level DOUBLE;  -- x likes from the user's level
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS effect_trend DOUBLE;  -- x likes from the recent trend
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS effect_audience DOUBLE;  -- x likes from followers, following, posts
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS effect_timing DOUBLE;  -- x likes from the timing
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS effect_caption DOUBLE;  -- x likes from the caption and hashtags
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS effect_image DOUBLE;  -- x likes from the image

-- One row per scoring batch (a model and its scored_at, as in predictions).
CREATE TABLE IF NOT EXISTS score_batches (
    model_id    VARCHAR NOT NULL,  -- the model that scored
    scored_at   TIMESTAMP NOT NULL,  -- when (as in predictions)
    source_file VARCHAR NOT NULL,  -- the scored file
    posts       BIGINT NOT NULL,  -- posts scored
    PRIMARY KEY (model_id, scored_at)
);

-- Each batch's population stability index per model input against the card's training distribution.
-- level: drift (PSI >= 0.25) | note (>= 0.1) | ok | calendar (month, weekday: never named); drift and note only
-- where PSI is also beyond what sampling alone gives a batch of that size (noise).
CREATE TABLE IF NOT EXISTS batch_drift (
    model_id  VARCHAR NOT NULL,  -- the model
    scored_at TIMESTAMP NOT NULL,  -- the batch (score_batches)
    input     VARCHAR NOT NULL,  -- the model input
    psi       DOUBLE NOT NULL,  -- population stability index against training
    level     VARCHAR NOT NULL,  -- drift | note | ok | calendar
    noise     DOUBLE NOT NULL,  -- PSI sampling alone gives a batch this size
    PRIMARY KEY (model_id, scored_at, input)
);

-- How each stored prediction turned out, once its post's likes are known: one row per model and post, like
-- predictions (a post scored by two models has two). blind: made before the likes were known (it counts); the
-- others are reported apart. igcli evaluate writes new and changed rows only.
CREATE TABLE IF NOT EXISTS evaluations (
    model_id            VARCHAR NOT NULL,  -- the model
    post_id             VARCHAR NOT NULL,  -- the post
    username            VARCHAR NOT NULL,  -- its user
    scored_at           TIMESTAMP NOT NULL,  -- when it was scored
    blind               BOOLEAN NOT NULL,  -- predicted before the likes were known (it counts)
    predicted_log_likes DOUBLE NOT NULL,  -- the prediction, ln(likes)
    p10_log_likes       DOUBLE NOT NULL,  -- its p10
    p90_log_likes       DOUBLE NOT NULL,  -- its p90
    usual_log_likes     DOUBLE,  -- usual likes, ln
    user_mean_log_likes DOUBLE,  -- the user's history mean, ln
    actual_likes        BIGINT NOT NULL,  -- the likes that came
    evaluated_at        TIMESTAMP NOT NULL,  -- when evaluate wrote the row
    PRIMARY KEY (model_id, post_id)
);
