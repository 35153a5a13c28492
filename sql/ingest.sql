-- Ingest. Into a store with posts the file is read twice as a stream, never held whole: `stage` keeps a
-- narrow row per record (keys, parsed user values, errors, a hash of the compared values) and `matched` how it
-- compares with the store; `write_new` / `write_changed` read the file again and write only the rows
-- `igc_plan` marks new or changed. A no-op re-ingest writes nothing and skips the second read. Into an empty
-- store (`$wide`) every usable row is new: `stage` keeps the stored text too and `write_wide` writes from it,
-- so the file is read once (staged rows beyond the memory limit spill to disk).
--
-- ingest.py defines two table macros over the source, with canonical VARCHAR columns (absent ones NULL):
--   igc_recs(p, c, e, m): nl (newlines inside the record's values) and the columns, in file order; no
--                         window over it, so `stage` parses and checks the file on every core;
--   igc_src(p, c, e, m):  rn and the columns.
-- `p`, `c`, `e`, `m` are the path, the column types, the encoding and the longest line allowed.
--
-- `staged` is a view over the table `stage` fills (`staged_w`): rn is its rowid's rank, since a table keeps
-- the order its rows were inserted in and the CTAS keeps the file's (DuckDB's order preservation; ingest.py
-- checks that the rowids are consecutive). A record's physical line is in `igc_lines` (rn, line), made by one
-- narrow pass in file order; the few statements that report or store lines join it. `write_new` pairs the
-- second read's records with it by position (POSITIONAL JOIN: the n-th parsed record with the n-th row; both
-- list the parsed records in file order, and ingest.py refuses a file that changed in between).

-- name: macros
CREATE OR REPLACE TEMP MACRO igc_blank(s) AS (s IS NULL OR trim(s) = '');
-- An identifier (post_id, username) as stored: without zero-width, invisible or bidi control characters (two
-- ids that print alike are one id; a name cannot display reversed), NFC-normalised (a decomposed é is the
-- precomposed one), trimmed; NULL when nothing is left. ASCII text (strlen, in bytes, equals length) skips it.
CREATE OR REPLACE TEMP MACRO igc_ident(s) AS (nullif(trim(
    CASE WHEN strlen(s) = length(s) THEN s
         ELSE nfc_normalize(regexp_replace(s,
             '[\x{00AD}\x{034F}\x{061C}\x{180E}\x{200B}-\x{200F}\x{202A}-\x{202E}\x{2060}-\x{2064}\x{2066}-\x{206F}\x{FEFF}]',
             '', 'g')) END), ''));
-- Newlines inside one value; counted only where there is one (most values have none).
CREATE OR REPLACE TEMP MACRO igc_nl(s) AS (
    CASE WHEN contains(s, chr(10)) THEN strlen(s) - strlen(replace(s, chr(10), '')) ELSE 0 END);
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
-- Never NULL: a blank count (d NULL) is fine, and a NULL here would make a whole row's checks unknown.
CREATE OR REPLACE TEMP MACRO igc_count_bad(s, d) AS ((d IS NULL AND NOT igc_blank(s)) OR coalesce(d > 1e15, false));
-- The reject for a count column whose raw value `s` gave the parsed value `d`, or NULL when it is fine.
CREATE OR REPLACE TEMP MACRO igc_count_error(name, s, d) AS (
    CASE WHEN igc_count_bad(s, d) THEN {'column_name': name, 'value': s, 'reason':
        CASE
            WHEN d > 1e15 THEN 'count is implausibly large'
            WHEN regexp_full_match(trim(s), '-\s*[0-9].*') THEN 'negative count'
            ELSE 'not a count (expected e.g. 1234, 1,234, 1.2k or 3m)'
        END} END);
CREATE OR REPLACE TEMP MACRO igc_bigint(d) AS (CASE WHEN d <= 1e15 THEN round(d)::BIGINT END);
-- ISO dates and timestamps; a zone suffix (Z, +02:00, -05) is honoured, no zone means UTC. The plain
-- TIMESTAMP cast is several times faster but ignores a zone, so it only takes zone-less text.
CREATE OR REPLACE TEMP MACRO igc_ts(s) AS (
    CASE WHEN regexp_matches(trim(s), '(Z|[+-][0-9]{2}(:?[0-9]{2})?)$')
         THEN TRY_CAST(trim(s) AS TIMESTAMPTZ) AT TIME ZONE 'UTC'
         ELSE TRY_CAST(trim(s) AS TIMESTAMP) END);
-- Tags and mentions: the file's columns when it has them, else taken from the caption.
CREATE OR REPLACE TEMP MACRO igc_hashtags(has, tags, caption) AS (
    CASE WHEN has THEN coalesce(trim(tags), '')
         ELSE array_to_string(regexp_extract_all(coalesce(caption, ''), '#[\p{L}\p{N}_]+'), ' ') END);
CREATE OR REPLACE TEMP MACRO igc_mentions(has, mentions, caption) AS (
    CASE WHEN has THEN coalesce(trim(mentions), '')
         ELSE array_to_string(regexp_extract_all(coalesce(caption, ''), '@[\p{L}\p{N}_.]*[\p{L}\p{N}_]'), ' ') END);

-- What an update compares, as one 64-bit hash, so the join with the store carries 8 bytes per post
-- instead of its text: the columns the file has (a file without captions leaves the stored ones alone).
CREATE OR REPLACE TEMP MACRO igc_content(has_caption, has_hashtags, has_mentions, has_image,
                                         posted_at, caption, hashtags, mentions, image_ref) AS (
    hash(posted_at, CASE WHEN has_caption THEN caption END,
         CASE WHEN has_caption OR has_hashtags THEN hashtags END,
         CASE WHEN has_caption OR has_mentions THEN mentions END,
         CASE WHEN has_image THEN image_ref END));

-- name: backfill
-- Posts stored before `content_hash` / `post_key` existed get them once (the IS NULL filters skip every row
-- group that has none, so this costs nothing in a current store).
UPDATE posts SET content_hash = igc_content(true, true, true, true, posted_at, caption, hashtags, mentions, image_ref)
WHERE content_hash IS NULL;
UPDATE posts SET post_key = hash(post_id) WHERE post_key IS NULL;

-- name: rekey
-- Every post_key again, when DuckDB's hash() is not the one that computed them (schema.sql, key_hash); also
-- the first ingest into a store.
UPDATE posts SET post_key = hash(post_id);
DELETE FROM key_hash;
INSERT INTO key_hash VALUES (hash('igcli'));

-- name: stage
-- One narrow row per parsed record; `errs` lists its problems (NULL for a clean row).
CREATE OR REPLACE TEMP TABLE staged_w AS
WITH s AS (
    SELECT
        nl,
        igc_ident(post_id) AS post_id,
        igc_ident(username) AS username,
        post_id AS raw_post_id, username AS raw_username,
        igc_ts(posted_at) AS posted_at_ts,
        caption, hashtags AS raw_hashtags, mentions AS raw_mentions,
        igc_count(likes) AS likes_d,
        igc_count(followers) AS followers_d,
        igc_count(following) AS following_d,
        igc_count(user_post_count) AS user_post_count_d,
        nullif(trim(image), '') AS image_ref,
        igc_ts(observed_at) AS observed_at_ts,
        posted_at AS raw_posted_at, likes AS raw_likes, followers AS raw_followers, following AS raw_following,
        user_post_count AS raw_user_post_count, observed_at AS raw_observed_at,
        coalesce(contains(post_id, chr(0)) OR contains(username, chr(0)) OR contains(posted_at, chr(0))
                 OR contains(caption, chr(0)) OR contains(hashtags, chr(0)) OR contains(mentions, chr(0))
                 OR contains(likes, chr(0)) OR contains(followers, chr(0)) OR contains(following, chr(0))
                 OR contains(user_post_count, chr(0)) OR contains(image, chr(0))
                 OR contains(observed_at, chr(0)), false) AS has_nul
    FROM igc_recs($path, $columns, $encoding, $max_line)
), c AS (
    SELECT *,
        post_id IS NULL OR username IS NULL OR posted_at_ts IS NULL
            OR posted_at_ts < TIMESTAMP '1970-01-01' OR posted_at_ts > $now::TIMESTAMP + INTERVAL 366 DAY
            OR (observed_at_ts IS NULL AND NOT igc_blank(raw_observed_at))
            OR igc_count_bad(raw_likes, likes_d) OR igc_count_bad(raw_followers, followers_d)
            OR igc_count_bad(raw_following, following_d) OR igc_count_bad(raw_user_post_count, user_post_count_d)
            OR has_nul AS is_bad
    FROM s
)
SELECT
    c.nl, c.post_id, c.username, c.posted_at_ts AS posted_at,
    igc_bigint(followers_d) AS followers, igc_bigint(following_d) AS following,
    igc_bigint(user_post_count_d) AS user_post_count,
    c.image_ref, coalesce(observed_at_ts, $now::TIMESTAMP) AS observed_at,
    CASE WHEN is_bad THEN list_filter([
        CASE WHEN c.post_id IS NULL
             THEN {'column_name': 'post_id', 'value': NULL::VARCHAR, 'reason': 'missing required value'} END,
        CASE WHEN c.username IS NULL
             THEN {'column_name': 'username', 'value': NULL::VARCHAR, 'reason': 'missing required value'} END,
        CASE WHEN posted_at_ts IS NULL
             THEN {'column_name': 'posted_at', 'value': raw_posted_at, 'reason':
                   CASE WHEN igc_blank(raw_posted_at) THEN 'missing required value'
                        ELSE 'unparseable date (expected ISO 8601, e.g. 2017-04-28 or 2017-04-28T14:05:00Z)' END}
             WHEN posted_at_ts < TIMESTAMP '1970-01-01'
             THEN {'column_name': 'posted_at', 'value': raw_posted_at, 'reason': 'date before 1970 is not a post date'}
             -- the one reason that depends on the day the file is read (ingest.py: FUTURE_DATE, same text)
             WHEN posted_at_ts > $now::TIMESTAMP + INTERVAL 366 DAY
             THEN {'column_name': 'posted_at', 'value': raw_posted_at, 'reason': 'date more than a year in the future'}
        END,
        CASE WHEN observed_at_ts IS NULL AND NOT igc_blank(raw_observed_at)
             THEN {'column_name': 'observed_at', 'value': raw_observed_at,
                   'reason': 'unparseable date (expected ISO 8601)'} END,
        igc_count_error('likes', raw_likes, likes_d),
        igc_count_error('followers', raw_followers, followers_d),
        igc_count_error('following', raw_following, following_d),
        igc_count_error('user_post_count', raw_user_post_count, user_post_count_d),
        CASE WHEN has_nul
             THEN {'column_name': NULL::VARCHAR, 'value': NULL::VARCHAR, 'reason': 'value contains a NUL byte'} END
    ], lambda x: x IS NOT NULL) END AS errs,
    CASE WHEN posted_at_ts BETWEEN TIMESTAMP '1970-01-01' AND TIMESTAMP '2010-10-06' THEN raw_posted_at END AS warn_value,
    -- the file's text of an identifier igc_ident changed (beyond trimming), for its warning
    CASE WHEN c.post_id IS DISTINCT FROM nullif(trim(raw_post_id), '') THEN raw_post_id END AS raw_post_id,
    CASE WHEN c.username IS DISTINCT FROM nullif(trim(raw_username), '') THEN raw_username END AS raw_username,
    igc_bigint(likes_d) AS likes,
    -- `$wide` (the store holds no posts, so every usable row is new): the stored text too, so the rows are
    -- written from here and the file is read once
    CASE WHEN $wide THEN c.caption END AS caption,
    CASE WHEN $wide THEN igc_hashtags($has_hashtags, raw_hashtags, c.caption) END AS hashtags,
    CASE WHEN $wide THEN igc_mentions($has_mentions, raw_mentions, c.caption) END AS mentions,
    CASE WHEN NOT is_bad AND NOT $wide THEN igc_content($has_caption, $has_hashtags, $has_mentions, $has_image, c.posted_at_ts,
        c.caption, igc_hashtags($has_hashtags, raw_hashtags, c.caption),
        igc_mentions($has_mentions, raw_mentions, c.caption), c.image_ref) END AS content
FROM c;

-- name: lines
-- Each record's physical line: the header's lines, its record number and the newlines inside earlier records.
CREATE OR REPLACE TEMP TABLE igc_lines AS
SELECT row_number() OVER () AS rn,
       ($header_lines + row_number() OVER () + sum(nl) OVER (ROWS UNBOUNDED PRECEDING) - nl)::BIGINT AS line
FROM staged_w;

-- name: match
-- `matched`: how each usable row compares with the post the store holds under its post_id (none: a new post).
-- The stored rows are found by post_key (one integer column) and fetched by rowid; their post_id text decides.
CREATE OR REPLACE TEMP TABLE stored_rows AS
SELECT rowid AS rid FROM posts WHERE post_key IN (SELECT hash(post_id) FROM staged WHERE errs IS NULL);
CREATE OR REPLACE TEMP TABLE matched AS
SELECT s.rn, p.username_hash <> hash(s.username) AS other_user,
       p.content <> s.content OR (s.likes IS NOT NULL AND p.likes IS DISTINCT FROM s.likes) AS changed,
       p.image_path AS store_image_path, p.image_path_hash AS store_image_path_hash
FROM staged s
JOIN (
    SELECT post_id, hash(username) AS username_hash, likes,
           CASE WHEN NOT $has_image THEN image_path END AS image_path,  -- kept as it is
           CASE WHEN $has_image THEN hash(image_path) END AS image_path_hash,  -- compared with the new one
           -- a file with captions and images compares everything: the stored hash, no text read back
           CASE WHEN $full THEN content_hash
                ELSE igc_content($has_caption, $has_hashtags, $has_mentions, $has_image, posted_at, caption, hashtags,
                                 mentions, image_ref) END AS content
    FROM posts WHERE rowid IN (SELECT rid FROM stored_rows)
) p ON p.post_id = s.post_id
WHERE s.errs IS NULL;

-- name: row_errors
CREATE OR REPLACE TEMP TABLE row_errors AS
SELECT rn, l.line, e.column_name AS column_name, e.value AS value, e.reason AS reason
FROM (SELECT rn, unnest(errs) AS e FROM staged WHERE errs IS NOT NULL) JOIN igc_lines l USING (rn);

-- A post_id seen twice in one file: the first usable row wins.
INSERT INTO row_errors
SELECT s.rn, l.line, 'post_id', s.post_id, 'duplicate post_id in this file (first at line ' || fl.line || ')'
FROM staged s
JOIN (SELECT post_id, min(rn) AS first_row
      FROM staged
      WHERE errs IS NULL AND hash(post_id) IN (  -- grouping 8-byte hashes first is much cheaper than text
          SELECT hash(post_id) FROM staged WHERE errs IS NULL GROUP BY ALL HAVING count(*) > 1)
      GROUP BY post_id HAVING count(*) > 1) f
  ON s.post_id = f.post_id AND s.rn > f.first_row
JOIN igc_lines l ON l.rn = s.rn
JOIN igc_lines fl ON fl.rn = f.first_row
WHERE s.errs IS NULL;

-- A post_id the store already holds for another user is a conflict, not an update.
INSERT INTO row_errors
SELECT s.rn, l.line, 'username', s.username,
       'post_id already belongs to user ' || p.username || ' (from ' || p.source_file || ')'
FROM (SELECT * FROM staged JOIN matched USING (rn) WHERE other_user AND rn NOT IN (SELECT rn FROM row_errors)) s
JOIN posts p ON p.post_id = s.post_id
JOIN igc_lines l ON l.rn = s.rn;

CREATE OR REPLACE TEMP TABLE row_warnings AS
SELECT rn, l.line, w.column_name, w.value, w.message
FROM (SELECT rn, unnest([
          CASE WHEN warn_value IS NOT NULL THEN {'column_name': 'posted_at', 'value': warn_value, 'message':
              'date before Instagram existed (2010-10-06), loaded as given: a missing-date placeholder?'} END,
          CASE WHEN raw_post_id IS NOT NULL THEN {'column_name': 'post_id', 'value': raw_post_id, 'message':
              'identifier normalised: Unicode NFC, zero-width / bidi control characters removed'} END,
          CASE WHEN raw_username IS NOT NULL THEN {'column_name': 'username', 'value': raw_username, 'message':
              'identifier normalised: Unicode NFC, zero-width / bidi control characters removed'} END]) AS w
      FROM staged
      WHERE (warn_value IS NOT NULL OR raw_post_id IS NOT NULL OR raw_username IS NOT NULL) AND errs IS NULL
        AND rn NOT IN (SELECT rn FROM row_errors)) JOIN igc_lines l USING (rn)
WHERE w IS NOT NULL;

CREATE OR REPLACE TEMP VIEW good AS
SELECT * FROM staged WHERE errs IS NULL AND rn NOT IN (SELECT rn FROM row_errors);

-- name: plan
-- `image_keys(image_ref, image_path)` maps each reference to its images-table key. `igc_plan` is not
-- stored: a no-op re-ingest only counts it; `pick` and `changed` say which rows to write.
CREATE OR REPLACE TEMP MACRO igc_plan(has_image) AS TABLE
SELECT g.rn, g.post_id, g.posted_at, g.likes, m.rn IS NULL AS is_new,
       coalesce(m.changed OR (has_image AND m.store_image_path_hash <> hash(k.image_path)), false) AS is_changed,
       CASE WHEN has_image THEN k.image_path ELSE m.store_image_path END AS image_path
FROM good g
LEFT JOIN matched m USING (rn)
LEFT JOIN image_keys k ON k.image_ref = g.image_ref;

-- name: pick
-- Which rows the write reads: `pick` holds the smaller of the new rows and the other parsed rows, so a
-- first load (all new) or a re-ingest (nearly all known) joins a small set, never one as large as the file.
CREATE OR REPLACE TEMP TABLE pick AS
SELECT rn FROM igc_plan($has_image) WHERE $pick_new AND is_new
UNION ALL
SELECT rn FROM (SELECT rn FROM row_errors UNION SELECT rn FROM matched) WHERE NOT $pick_new;

CREATE OR REPLACE TEMP TABLE changed AS
SELECT rn, l.line, posted_at, likes, image_path FROM igc_plan($has_image) JOIN igc_lines l USING (rn) WHERE is_changed;

-- name: write_new
-- The file read again, each record paired with its `igc_lines` row by position: its rn, and its line, already
-- shifted past records DuckDB's parser refused. A positional scan runs on one core, as the window that
-- numbered the records here before did, but without its running sums (same CPU time at 3M rows).
INSERT INTO posts
SELECT *, igc_content(true, true, true, true, posted_at, caption, hashtags, mentions, image_ref), hash(post_id)
FROM (
    SELECT igc_ident(s.post_id) AS post_id, igc_ident(s.username), igc_ts(s.posted_at) AS posted_at, s.caption AS caption,
           igc_hashtags($has_hashtags, s.hashtags, s.caption) AS hashtags,
           igc_mentions($has_mentions, s.mentions, s.caption) AS mentions,
           igc_bigint(igc_count(s.likes)), nullif(trim(s.image), '') AS image_ref, k.image_path,
           $source, l.line, $now::TIMESTAMP, $now::TIMESTAMP
    FROM igc_recs($path, $columns, $encoding, $max_line) s
    POSITIONAL JOIN igc_lines l
    LEFT JOIN image_keys k ON k.image_ref = nullif(trim(s.image), '')
    -- both sides present: a file that changed between the reads pads one side with NULLs; it is refused
    -- (ingest.py, check_unchanged) once this statement has written nothing for those rows
    WHERE (l.rn IN (SELECT rn FROM pick)) = $pick_new AND l.rn IS NOT NULL AND s.nl IS NOT NULL
);

-- name: write_wide
-- The first load of an empty store: every usable row is new and `staged` holds its values. Written in
-- slices of rn in [$lo, $hi), so the join with the lines builds a hash table of one slice (memory stays flat
-- in the file's size); the bounds are on `staged_w.rowid` too, which lets the scan skip other row groups.
-- It reads `staged_w` with the `staged` / `good` conditions spelled out because a bound on the view's rn is
-- applied row by row: EXPLAIN ANALYZE of a 600k-row file scanned 5 of 5 row groups that way, 1 of 5 this way.
-- ingest.py runs it with the join-order optimizers off (WRITE_AS_WRITTEN): each join builds on its right side,
-- the slice's lines, the image keys and the rejected rows, all small; the staged text streams through them.
INSERT INTO posts
SELECT g.post_id, g.username, g.posted_at, g.caption, g.hashtags, g.mentions, g.likes, g.image_ref, k.image_path,
       $source, l.line, $now::TIMESTAMP, $now::TIMESTAMP,
       igc_content(true, true, true, true, g.posted_at, g.caption, g.hashtags, g.mentions, g.image_ref),
       hash(g.post_id)
FROM (SELECT (w.rowid - $rowid_base + 1)::BIGINT AS rn, w.*
      FROM staged_w w WHERE w.rowid >= $rowid_base + $lo - 1 AND w.rowid < $rowid_base + $hi - 1
        AND w.errs IS NULL) g
JOIN (SELECT * FROM igc_lines WHERE rn >= $lo AND rn < $hi) l USING (rn)
LEFT JOIN image_keys k ON k.image_ref = g.image_ref
WHERE g.rn NOT IN (SELECT rn FROM row_errors);

-- name: write_changed
UPDATE posts SET
    posted_at = u.posted_at,
    caption = CASE WHEN $has_caption THEN u.caption ELSE posts.caption END,
    hashtags = CASE WHEN $has_caption OR $has_hashtags THEN u.hashtags ELSE posts.hashtags END,
    mentions = CASE WHEN $has_caption OR $has_mentions THEN u.mentions ELSE posts.mentions END,
    likes = coalesce(u.likes, posts.likes),
    image_ref = CASE WHEN $has_image THEN u.image_ref ELSE posts.image_ref END,
    image_path = CASE WHEN $has_image THEN u.image_path ELSE posts.image_path END,
    source_file = $source, source_line = u.line, updated_at = $now::TIMESTAMP,
    content_hash = igc_content(true, true, true, true, u.posted_at,
        CASE WHEN $has_caption THEN u.caption ELSE posts.caption END,
        CASE WHEN $has_caption OR $has_hashtags THEN u.hashtags ELSE posts.hashtags END,
        CASE WHEN $has_caption OR $has_mentions THEN u.mentions ELSE posts.mentions END,
        CASE WHEN $has_image THEN u.image_ref ELSE posts.image_ref END)
FROM (
    SELECT igc_ident(s.post_id) AS post_id, c.posted_at, s.caption,
           igc_hashtags($has_hashtags, s.hashtags, s.caption) AS hashtags,
           igc_mentions($has_mentions, s.mentions, s.caption) AS mentions,
           c.likes, nullif(trim(s.image), '') AS image_ref, c.image_path, c.line
    FROM igc_src($path, $columns, $encoding, $max_line) s
    JOIN changed c USING (rn)
) u
WHERE posts.post_id = u.post_id;

-- name: snapshots
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
-- Per image status (this file's probes are stored by now): new, changed and unchanged posts.
SELECT coalesce(i.status, 'no image'), count(*) FILTER (WHERE is_new), count(*) FILTER (WHERE is_changed),
       count(*) FILTER (WHERE NOT is_new AND NOT is_changed)
FROM igc_plan($has_image) p LEFT JOIN images i ON i.path = p.image_path
GROUP BY ALL;
