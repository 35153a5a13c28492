-- Ingest staging. `raw` is a temp table of VARCHAR columns with canonical names plus
-- `rownum` (file order) and `line` (physical line in the source file).

-- name: macros
CREATE OR REPLACE TEMP MACRO igc_blank(s) AS (s IS NULL OR trim(s) = '');
-- Scraped counts: 1234, 1,234, 1.2k, 3,4m (comma as decimal mark before a suffix), 12.0.
CREATE OR REPLACE TEMP MACRO igc_count(s) AS (
    CASE
        WHEN TRY_CAST(s AS UBIGINT) IS NOT NULL THEN TRY_CAST(s AS UBIGINT)::DOUBLE  -- the common case, fast
        WHEN igc_blank(s) THEN NULL
        WHEN regexp_full_match(trim(s), '[0-9]{1,3}(,[0-9]{3})+|[0-9]+')
            THEN TRY_CAST(replace(trim(s), ',', '') AS DOUBLE)
        WHEN regexp_full_match(lower(trim(s)), '[0-9]+([.,][0-9]+)? ?[kmb]')
            THEN TRY_CAST(replace(regexp_extract(trim(s), '^[0-9]+([.,][0-9]+)?', 0), ',', '.') AS DOUBLE)
                 * CASE right(lower(trim(s)), 1) WHEN 'k' THEN 1e3 WHEN 'm' THEN 1e6 ELSE 1e9 END
        WHEN regexp_full_match(trim(s), '[0-9]+\.[0-9]+') THEN TRY_CAST(trim(s) AS DOUBLE)
        ELSE NULL
    END);
-- Why a non-blank raw value `s` gave the parsed value `d` (NULL) or an implausible one.
CREATE OR REPLACE TEMP MACRO igc_count_error(s, d) AS (
    CASE
        WHEN d > 1e15 THEN 'count is implausibly large'
        WHEN regexp_full_match(trim(s), '-\s*[0-9].*') THEN 'negative count'
        ELSE 'not a count (expected e.g. 1234, 1,234, 1.2k or 3m)'
    END);
-- ISO dates and timestamps; a zone suffix (Z, +02:00, -05) is honoured, no zone means UTC. The plain
-- TIMESTAMP cast is several times faster but ignores a zone, so it only takes zone-less text.
CREATE OR REPLACE TEMP MACRO igc_ts(s) AS (
    CASE WHEN regexp_matches(trim(s), '(Z|[+-][0-9]{2}(:?[0-9]{2})?)$')
         THEN TRY_CAST(trim(s) AS TIMESTAMPTZ) AT TIME ZONE 'UTC'
         ELSE TRY_CAST(trim(s) AS TIMESTAMP) END);

-- name: stage
-- Parse every value once; checks below compare the parsed value with the raw text.
CREATE OR REPLACE TEMP TABLE staged AS
SELECT
    rownum,
    line,
    nullif(trim(post_id), '') AS post_id,
    nullif(trim(username), '') AS username,
    igc_ts(posted_at) AS posted_at,
    caption,
    CASE WHEN $has_hashtags THEN coalesce(trim(hashtags), '')
         ELSE array_to_string(regexp_extract_all(coalesce(caption, ''), '#[\p{L}\p{N}_]+'), ' ') END AS hashtags,
    CASE WHEN $has_mentions THEN coalesce(trim(mentions), '')
         ELSE array_to_string(regexp_extract_all(coalesce(caption, ''), '@[\p{L}\p{N}_.]*[\p{L}\p{N}_]'), ' ') END AS mentions,
    igc_count(likes) AS likes_d,
    igc_count(followers) AS followers_d,
    igc_count(following) AS following_d,
    igc_count(user_post_count) AS user_post_count_d,
    nullif(trim(image), '') AS image_ref,
    igc_ts(observed_at) AS observed_at_ts,
    posted_at AS raw_posted_at, likes AS raw_likes, followers AS raw_followers, following AS raw_following,
    user_post_count AS raw_user_post_count, observed_at AS raw_observed_at,
    strpos(concat_ws('', post_id, username, posted_at, caption, hashtags, mentions, likes, followers, following,
                     user_post_count, image, observed_at), chr(0)) > 0 AS has_nul
FROM raw;

CREATE OR REPLACE TEMP TABLE row_errors AS
WITH checks AS (
    SELECT rownum, line, 'post_id' AS column_name, NULL AS value, 'missing required value' AS reason
    FROM staged WHERE post_id IS NULL
    UNION ALL
    SELECT rownum, line, 'username', NULL, 'missing required value' FROM staged WHERE username IS NULL
    UNION ALL
    SELECT rownum, line, 'posted_at', raw_posted_at,
           CASE WHEN igc_blank(raw_posted_at) THEN 'missing required value'
                ELSE 'unparseable date (expected ISO 8601, e.g. 2017-04-28 or 2017-04-28T14:05:00Z)' END
    FROM staged WHERE posted_at IS NULL
    UNION ALL
    SELECT rownum, line, 'posted_at', raw_posted_at, 'date before 1970 is not a post date'
    FROM staged WHERE posted_at < TIMESTAMP '1970-01-01'
    UNION ALL
    SELECT rownum, line, 'posted_at', raw_posted_at, 'date more than a year in the future'
    FROM staged WHERE posted_at > $now::TIMESTAMP + INTERVAL 366 DAY
    UNION ALL
    SELECT rownum, line, 'observed_at', raw_observed_at, 'unparseable date (expected ISO 8601)'
    FROM staged WHERE observed_at_ts IS NULL AND NOT igc_blank(raw_observed_at)
    UNION ALL
    SELECT rownum, line, 'likes', raw_likes, igc_count_error(raw_likes, likes_d)
    FROM staged WHERE (likes_d IS NULL AND NOT igc_blank(raw_likes)) OR likes_d > 1e15
    UNION ALL
    SELECT rownum, line, 'followers', raw_followers, igc_count_error(raw_followers, followers_d)
    FROM staged WHERE (followers_d IS NULL AND NOT igc_blank(raw_followers)) OR followers_d > 1e15
    UNION ALL
    SELECT rownum, line, 'following', raw_following, igc_count_error(raw_following, following_d)
    FROM staged WHERE (following_d IS NULL AND NOT igc_blank(raw_following)) OR following_d > 1e15
    UNION ALL
    SELECT rownum, line, 'user_post_count', raw_user_post_count,
           igc_count_error(raw_user_post_count, user_post_count_d)
    FROM staged WHERE (user_post_count_d IS NULL AND NOT igc_blank(raw_user_post_count)) OR user_post_count_d > 1e15
    UNION ALL
    SELECT rownum, line, NULL, NULL, 'value contains a NUL byte' FROM staged WHERE has_nul
)
SELECT * FROM checks;

-- A post_id seen twice in one file: the first usable row wins.
INSERT INTO row_errors
SELECT s.rownum, s.line, 'post_id', s.post_id,
       'duplicate post_id in this file (first at line ' || f.first_line || ')'
FROM staged s
JOIN (SELECT post_id, min(rownum) AS first_row, arg_min(line, rownum) AS first_line
      FROM staged WHERE rownum NOT IN (SELECT rownum FROM row_errors) GROUP BY post_id) f
  ON s.post_id = f.post_id AND s.rownum > f.first_row
WHERE s.rownum NOT IN (SELECT rownum FROM row_errors);

-- A post_id the store already holds for another user is a conflict, not an update.
INSERT INTO row_errors
SELECT s.rownum, s.line, 'username', s.username,
       'post_id already belongs to user ' || p.username || ' (from ' || p.source_file || ')'
FROM staged s JOIN posts p ON p.post_id = s.post_id
WHERE s.username <> p.username AND s.rownum NOT IN (SELECT rownum FROM row_errors);

CREATE OR REPLACE TEMP TABLE row_warnings AS
SELECT rownum, line, 'posted_at' AS column_name, raw_posted_at AS value,
       'date before Instagram existed (2010-10-06), loaded as given: a missing-date placeholder?' AS message
FROM staged
WHERE posted_at BETWEEN TIMESTAMP '1970-01-01' AND TIMESTAMP '2010-10-06'
  AND rownum NOT IN (SELECT rownum FROM row_errors);

CREATE OR REPLACE TEMP TABLE good AS
SELECT rownum, line, post_id, username, posted_at, caption, hashtags, mentions,
       round(likes_d)::BIGINT AS likes, round(followers_d)::BIGINT AS followers,
       round(following_d)::BIGINT AS following, round(user_post_count_d)::BIGINT AS user_post_count,
       image_ref, coalesce(observed_at_ts, $now::TIMESTAMP) AS observed_at
FROM staged WHERE rownum NOT IN (SELECT rownum FROM row_errors);

-- name: plan
-- `image_keys(image_ref, image_path)` maps each reference to its images-table key.
CREATE OR REPLACE TEMP TABLE plan AS
SELECT
    g.post_id, g.username, g.posted_at, g.line,
    CASE WHEN $has_caption THEN g.caption ELSE p.caption END AS caption,
    CASE WHEN $has_caption OR $has_hashtags THEN g.hashtags ELSE p.hashtags END AS hashtags,
    CASE WHEN $has_caption OR $has_mentions THEN g.mentions ELSE p.mentions END AS mentions,
    coalesce(g.likes, p.likes) AS likes,
    CASE WHEN $has_image THEN g.image_ref ELSE p.image_ref END AS image_ref,
    CASE WHEN $has_image THEN k.image_path ELSE p.image_path END AS image_path,
    p.post_id IS NULL AS is_new,
    p.post_id IS NOT NULL AND (
        p.posted_at IS DISTINCT FROM g.posted_at
        OR ($has_caption AND p.caption IS DISTINCT FROM g.caption)
        OR (($has_caption OR $has_hashtags) AND p.hashtags IS DISTINCT FROM g.hashtags)
        OR (($has_caption OR $has_mentions) AND p.mentions IS DISTINCT FROM g.mentions)
        OR (g.likes IS NOT NULL AND p.likes IS DISTINCT FROM g.likes)
        OR ($has_image AND p.image_ref IS DISTINCT FROM g.image_ref)
        OR ($has_image AND p.image_path IS DISTINCT FROM k.image_path)
    ) AS is_changed
FROM good g
LEFT JOIN posts p USING (post_id)
LEFT JOIN image_keys k ON k.image_ref = g.image_ref;

-- name: apply
INSERT INTO posts
SELECT post_id, username, posted_at, caption, hashtags, mentions, likes, image_ref, image_path,
       $source, line, $now::TIMESTAMP, $now::TIMESTAMP
FROM plan WHERE is_new;

UPDATE posts SET
    posted_at = plan.posted_at, caption = plan.caption, hashtags = plan.hashtags,
    mentions = plan.mentions, likes = plan.likes, image_ref = plan.image_ref,
    image_path = plan.image_path, source_file = $source, source_line = plan.line,
    updated_at = $now::TIMESTAMP
FROM plan WHERE posts.post_id = plan.post_id AND plan.is_changed;

-- User values: the newest row of the file per user stands for what was observed; a snapshot is
-- added only when it differs from what the store knew at that time.
CREATE OR REPLACE TEMP TABLE snap_in AS
SELECT username, observed_at,
       arg_max(followers, posted_at) AS followers,
       arg_max(following, posted_at) AS following,
       arg_max(user_post_count, posted_at) AS user_post_count
FROM good
WHERE followers IS NOT NULL OR following IS NOT NULL OR user_post_count IS NOT NULL
GROUP BY username, observed_at;

INSERT OR REPLACE INTO user_snapshots
SELECT s.username, s.observed_at, s.followers, s.following, s.user_post_count, $source
FROM snap_in s
ASOF LEFT JOIN user_snapshots u ON s.username = u.username AND s.observed_at >= u.observed_at
WHERE u.username IS NULL
   OR u.followers IS DISTINCT FROM s.followers
   OR u.following IS DISTINCT FROM s.following
   OR u.user_post_count IS DISTINCT FROM s.user_post_count;

-- name: counts
SELECT count(*) FILTER (WHERE is_new), count(*) FILTER (WHERE is_changed),
       count(*) FILTER (WHERE NOT is_new AND NOT is_changed)
FROM plan;
