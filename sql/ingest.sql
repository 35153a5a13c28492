-- Ingest staging. `raw` is a temp table of VARCHAR columns with canonical names plus
-- `rownum` (file order) and `line` (physical line in the source file).

-- name: macros
CREATE OR REPLACE TEMP MACRO igc_blank(s) AS (s IS NULL OR trim(s) = '');
-- Scraped counts: 1234, 1,234, 1.2k, 3,4m (comma as decimal mark before a suffix), 12.0.
CREATE OR REPLACE TEMP MACRO igc_count(s) AS (
    CASE
        WHEN igc_blank(s) THEN NULL
        WHEN regexp_full_match(trim(s), '[0-9]{1,3}(,[0-9]{3})+|[0-9]+')
            THEN TRY_CAST(replace(trim(s), ',', '') AS DOUBLE)
        WHEN regexp_full_match(lower(trim(s)), '[0-9]+([.,][0-9]+)? ?[kmb]')
            THEN TRY_CAST(replace(regexp_extract(trim(s), '^[0-9]+([.,][0-9]+)?', 0), ',', '.') AS DOUBLE)
                 * CASE right(lower(trim(s)), 1) WHEN 'k' THEN 1e3 WHEN 'm' THEN 1e6 ELSE 1e9 END
        WHEN regexp_full_match(trim(s), '[0-9]+\.[0-9]+') THEN TRY_CAST(trim(s) AS DOUBLE)
        ELSE NULL
    END);
CREATE OR REPLACE TEMP MACRO igc_count_error(s) AS (
    CASE
        WHEN igc_blank(s) THEN NULL
        WHEN regexp_full_match(trim(s), '-\s*[0-9].*') THEN 'negative count'
        WHEN igc_count(s) IS NULL THEN 'not a count (expected e.g. 1234, 1,234, 1.2k or 3m)'
        WHEN igc_count(s) > 1e15 THEN 'count is implausibly large'
        ELSE NULL
    END);
CREATE OR REPLACE TEMP MACRO igc_ts(s) AS (TRY_CAST(trim(s) AS TIMESTAMPTZ) AT TIME ZONE 'UTC');

-- name: stage
CREATE OR REPLACE TEMP TABLE staged AS
SELECT
    rownum,
    line,
    trim(post_id) AS post_id,
    trim(username) AS username,
    igc_ts(posted_at) AS posted_at,
    caption,
    CASE WHEN $has_hashtags THEN coalesce(trim(hashtags), '')
         ELSE array_to_string(regexp_extract_all(coalesce(caption, ''), '#[\p{L}\p{N}_]+'), ' ') END AS hashtags,
    CASE WHEN $has_mentions THEN coalesce(trim(mentions), '')
         ELSE array_to_string(regexp_extract_all(coalesce(caption, ''), '@[\p{L}\p{N}_.]*[\p{L}\p{N}_]'), ' ') END AS mentions,
    round(igc_count(likes))::BIGINT AS likes,
    round(igc_count(followers))::BIGINT AS followers,
    round(igc_count(following))::BIGINT AS following,
    round(igc_count(user_post_count))::BIGINT AS user_post_count,
    nullif(trim(image), '') AS image_ref,
    coalesce(igc_ts(observed_at), $now::TIMESTAMP) AS observed_at
FROM raw;

CREATE OR REPLACE TEMP TABLE row_errors AS
WITH checks AS (
    SELECT rownum, line, 'post_id' AS column_name, post_id AS value,
           'missing required value' AS reason FROM raw WHERE igc_blank(post_id)
    UNION ALL
    SELECT rownum, line, 'username', username, 'missing required value' FROM raw WHERE igc_blank(username)
    UNION ALL
    SELECT rownum, line, 'posted_at', posted_at, 'missing required value' FROM raw WHERE igc_blank(posted_at)
    UNION ALL
    SELECT rownum, line, 'posted_at', posted_at,
           'unparseable date (expected ISO 8601, e.g. 2017-04-28 or 2017-04-28T14:05:00Z)'
    FROM raw WHERE NOT igc_blank(posted_at) AND igc_ts(posted_at) IS NULL
    UNION ALL
    SELECT rownum, line, 'posted_at', posted_at, 'date before 1970 is not a post date'
    FROM raw WHERE igc_ts(posted_at) < TIMESTAMP '1970-01-01'
    UNION ALL
    SELECT rownum, line, 'posted_at', posted_at, 'date more than a year in the future'
    FROM raw WHERE igc_ts(posted_at) > $now::TIMESTAMP + INTERVAL 366 DAY
    UNION ALL
    SELECT rownum, line, 'observed_at', observed_at, 'unparseable date (expected ISO 8601)'
    FROM raw WHERE NOT igc_blank(observed_at) AND igc_ts(observed_at) IS NULL
    UNION ALL
    SELECT rownum, line, 'likes', likes, igc_count_error(likes) FROM raw WHERE igc_count_error(likes) IS NOT NULL
    UNION ALL
    SELECT rownum, line, 'followers', followers, igc_count_error(followers)
    FROM raw WHERE igc_count_error(followers) IS NOT NULL
    UNION ALL
    SELECT rownum, line, 'following', following, igc_count_error(following)
    FROM raw WHERE igc_count_error(following) IS NOT NULL
    UNION ALL
    SELECT rownum, line, 'user_post_count', user_post_count, igc_count_error(user_post_count)
    FROM raw WHERE igc_count_error(user_post_count) IS NOT NULL
    UNION ALL
    SELECT rownum, line, NULL, NULL, 'value contains a NUL byte'
    FROM raw WHERE concat_ws('', post_id, username, posted_at, caption, hashtags, mentions, likes, followers,
                             following, user_post_count, image, observed_at) LIKE '%' || chr(0) || '%'
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
SELECT rownum, line, 'posted_at' AS column_name, posted_at AS value,
       'date before Instagram existed (2010-10-06), loaded as given: a missing-date placeholder?' AS message
FROM raw
WHERE igc_ts(posted_at) BETWEEN TIMESTAMP '1970-01-01' AND TIMESTAMP '2010-10-06'
  AND rownum NOT IN (SELECT rownum FROM row_errors);

CREATE OR REPLACE TEMP TABLE good AS
SELECT * FROM staged WHERE rownum NOT IN (SELECT rownum FROM row_errors);

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
