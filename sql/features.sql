-- Point-in-time metadata features, computed incrementally from per-user running state (igcli/features.py
-- drives these blocks; its docstring says how to add a feature). Every history value of a post comes only
-- from posts of the same user posted STRICTLY BEFORE it: posts at the same timestamp never see each other,
-- and a post never sees its own likes or any later post.
--
-- Determinism: ln(likes) is held in fixed point (units of 2^-32, BIGINT) and every count, sum and sum of
-- squares is an exact integer (HUGEINT), so no value depends on summation order, thread count or row
-- insertion order. The one floating recurrence (the decayed mean) runs in Python in a fixed order per user.
--
-- Inputs of the engine (temp tables made by features.py): the posts updated since $seen (all posts with
-- $all_posts), fz_slow(username) users computed from scratch (all their posts, no state), fz_fresh(post_id) posts
-- whose hashtags are not yet counted in tag_state, fz_dirty_tags(tag) tags recounted from every post.

-- name: macros
CREATE OR REPLACE TEMP MACRO igc_tags(h) AS
    list_sort(list_distinct(list_transform(list_filter(string_split(coalesce(h, ''), ' '), lambda t: t LIKE '#_%'),
                                 lambda t: lower(ltrim(t, '#')))));
-- tokens of a space-separated hashtags / mentions value that match `pattern` ('#_%', '@_%'), repeats counted
CREATE OR REPLACE TEMP MACRO igc_ntok(s, pattern) AS
    len(list_filter(string_split(coalesce(s, ''), ' '), lambda t: t LIKE pattern));
-- ln(likes) in units of 2^-32
CREATE OR REPLACE TEMP MACRO igc_q(likes) AS CASE WHEN likes > 0 THEN round(ln(likes) * 4294967296.0)::BIGINT END;
CREATE OR REPLACE TEMP MACRO igc_mean(n, s1) AS CASE WHEN n > 0 THEN s1::DOUBLE / n / 4294967296.0 END;
CREATE OR REPLACE TEMP MACRO igc_std(n, s1, s2) AS
    CASE WHEN n > 1 THEN sqrt((n * s2 - s1 * s1)::DOUBLE / (n * (n - 1))::DOUBLE) / 4294967296.0 END;
CREATE OR REPLACE TEMP MACRO igc_lastk(l, k) AS
    CASE WHEN len(l) > 0 THEN list_sum(l[-k:])::DOUBLE / len(l[-k:]) / 4294967296.0 END;
-- median of a sorted list of fixed-point values: exact (half-integers below 2^53), like median() over a window
CREATE OR REPLACE TEMP MACRO igc_median_sorted(l) AS
    CASE WHEN len(l) = 0 THEN NULL
         WHEN len(l) % 2 = 1 THEN l[(len(l) + 1) // 2]::DOUBLE
         ELSE (l[len(l) // 2] + l[len(l) // 2 + 1])::DOUBLE / 2 END / 4294967296.0;
CREATE OR REPLACE TEMP MACRO igc_days(a, b) AS epoch(a - b) / 86400.0;
-- post time in whole seconds since 1970 (an exact integer for the trend sums)
CREATE OR REPLACE TEMP MACRO igc_ts(t) AS (epoch_us(t) // 1000000)::HUGEINT;
-- trend of ln-likes per 30 days from exact sums (t in seconds, y in 2^-32): with Sxx, Sxy in days,
-- slope = 30 Sxy / (Sxx + 900); n Sxx = n St2 - St^2 and n Sxy = n Sty - St Sy are exact integers
CREATE OR REPLACE TEMP MACRO igc_slope(n, st, stt, sy, sty) AS
    CASE WHEN n >= 3 AND n * stt - st * st > 0
         THEN 30.0 * ((n * sty - st * sy)::DOUBLE / n / 86400.0 / 4294967296.0)
              / ((n * stt - st * st)::DOUBLE / n / 7464960000.0 + 900.0) END;
-- caption cues: pure functions of the caption text
-- characters of c matched by runs of pattern (removing runs is much faster than one character at a time)
CREATE OR REPLACE TEMP MACRO igc_nchar(c, pattern) AS length(c) - length(regexp_replace(c, pattern, '', 'g'));
CREATE OR REPLACE TEMP MACRO igc_cta(c) AS regexp_matches(c,
    '(?i)\b(?:tag|comment|link in bio|follow|giveaway|win|swipe|click|shop|discount|code|double tap|let me know|dm)\b');

-- name: inputs
-- Posts as the engine reads them (likes in fixed point, hashtags parsed, tokens counted): one definition for
-- the pending posts, every post and the posts of recomputed users. A view: each block's filter reaches posts.
CREATE OR REPLACE TEMP VIEW fz_parsed AS
SELECT post_id, username, posted_at, likes, igc_q(likes) AS yq, coalesce(caption, '') AS caption,
       igc_tags(hashtags) AS tags,
       igc_ntok(hashtags, '#_%') AS n_hashtags, igc_ntok(mentions, '@_%') AS n_mentions,
       updated_at, ingested_at
FROM posts;
CREATE OR REPLACE TEMP TABLE fz_slow (username VARCHAR);
CREATE OR REPLACE TEMP TABLE fz_fresh (post_id VARCHAR);
CREATE OR REPLACE TEMP TABLE fz_dirty_tags (tag VARCHAR);
CREATE OR REPLACE TEMP TABLE fz_pending (post_id VARCHAR, username VARCHAR, posted_at TIMESTAMP, likes BIGINT, yq BIGINT,
                                          caption VARCHAR, tags VARCHAR[], n_hashtags BIGINT, n_mentions BIGINT,
                                          is_new BOOLEAN);

-- name: pending
-- Posts inserted or changed since the last featurize (posts.updated_at is set by ingest on insert and on
-- change; the zone maps make this a scan of the newest row groups only), parsed once: the plan reads their
-- tags, and they are the engine's fz_posts (posts_pending). Snapshot rows written by the ingests since then
-- are found by their source file.
CREATE OR REPLACE TEMP TABLE fz_pending AS
SELECT * EXCLUDE (updated_at, ingested_at), ingested_at > $seen AS is_new
FROM fz_parsed WHERE updated_at > $seen;
CREATE OR REPLACE TEMP TABLE fz_snap_changes AS
SELECT username, min(observed_at) AS cutoff
FROM user_snapshots
WHERE source_file IN (SELECT source_file FROM ingests WHERE finished_at > $ingests_seen)
GROUP BY username;

-- name: plan
-- A user is advanced from its state when every pending post of it is new and later than everything
-- stored for it, and no snapshot row arrived at or before its latest post (or before its first snapshot).
-- Otherwise (a back-dated or edited post, an earlier snapshot) the user is recomputed from its history.
CREATE OR REPLACE TEMP TABLE fz_changed AS
SELECT p.post_id, f.username AS old_username, f.tags AS old_tags,
       f.posted_at IS DISTINCT FROM p.posted_at OR f.tags IS DISTINCT FROM p.tags AS tags_moved
FROM fz_pending p JOIN post_features f USING (post_id)
WHERE NOT p.is_new;
INSERT INTO fz_slow
SELECT username FROM fz_pending p JOIN user_state s USING (username)
WHERE NOT p.is_new OR p.posted_at <= s.last_at
UNION SELECT old_username FROM fz_changed
UNION SELECT c.username FROM fz_snap_changes c JOIN user_state s USING (username)
      WHERE c.cutoff <= s.last_at OR s.snap_first_at IS NULL OR c.cutoff <= s.snap_first_at;
-- posts whose tags tag_state does not count yet: new ones, and changed ones whose tags or time moved
INSERT INTO fz_fresh
SELECT post_id FROM fz_pending WHERE post_id NOT IN (SELECT post_id FROM fz_changed WHERE NOT tags_moved);
-- a moved post's old and new tags, and a fresh post's tags already used after its time (or at its time,
-- when the state does not know how many uses are at that time)
INSERT INTO fz_dirty_tags
SELECT unnest(old_tags) FROM fz_changed WHERE tags_moved
UNION SELECT unnest(p.tags) FROM fz_pending p WHERE p.post_id IN (SELECT post_id FROM fz_changed WHERE tags_moved)
UNION SELECT t.tag FROM (SELECT unnest(p.tags) AS tag, p.posted_at
                         FROM fz_pending p WHERE p.post_id IN (SELECT post_id FROM fz_fresh)) t
      JOIN tag_state s USING (tag) WHERE s.last_at > t.posted_at OR (s.last_at = t.posted_at AND s.last_n IS NULL);

-- name: posts_pending
-- Every post ($all_posts), else the posts updated since the last featurize as block pending parsed them
-- (fz_pending is empty when that block did not run: compute_metadata for some users).
CREATE OR REPLACE TEMP TABLE fz_posts AS
SELECT * EXCLUDE (updated_at, ingested_at) FROM fz_parsed WHERE $all_posts
UNION ALL
SELECT * EXCLUDE (is_new) FROM fz_pending WHERE NOT $all_posts;

-- name: posts_more
-- Every post of the users recomputed from scratch.
INSERT INTO fz_posts
SELECT * EXCLUDE (updated_at, ingested_at) FROM fz_parsed
WHERE username IN (SELECT username FROM fz_slow)
  AND post_id NOT IN (SELECT post_id FROM fz_posts);

-- name: posts_state
-- The batch users' state without the sorted values (most of its bytes): the median, max and min are kept
-- beside them; the values are read only where the batch adds liked posts (fz_median) or state advances.
-- The rows are found by one scan of username and fetched by rowid (fz_state_rids, also for the sorted values
-- below): a scan that filters on username would read the other columns of every user.
CREATE OR REPLACE TEMP TABLE fz_state_rids AS
SELECT rowid AS rid, username FROM user_state
WHERE $use_state AND username IN (SELECT DISTINCT username FROM fz_posts)
  AND username NOT IN (SELECT username FROM fz_slow);
CREATE OR REPLACE TEMP TABLE fz_state AS
SELECT * EXCLUDE (sorted_y) FROM user_state WHERE rowid IN (SELECT rid FROM fz_state_rids);

-- name: liked
-- Liked posts of the batch, numbered per user in time order (the state's posts come before all of them).
CREATE OR REPLACE TEMP TABLE fz_liked AS
SELECT username, post_id, posted_at, yq, igc_ts(posted_at) AS ts,
       row_number() OVER (PARTITION BY username ORDER BY posted_at, post_id) AS k
FROM fz_posts WHERE yq IS NOT NULL;
-- The sorted values of the state users the batch gives liked posts (fz_median, advance_state), read once.
CREATE OR REPLACE TEMP TABLE fz_sorted AS
SELECT username, sorted_y FROM user_state
WHERE rowid IN (SELECT rid FROM fz_state_rids WHERE username IN (SELECT username FROM fz_liked));

-- name: decay_input
-- For the decayed-mean recurrence (features.py): per liked post, the factor 2^(-(t - t_prev) / half_life)
-- from the previous liked post (or the state's); (u, k) = (user number, step) orders the recurrence and
-- finds the post again.
CREATE OR REPLACE TEMP TABLE fz_decay_in AS
SELECT l.post_id, (dense_rank() OVER (ORDER BY l.username) - 1)::BIGINT AS u, l.k,
       l.yq::DOUBLE / 4294967296.0 AS y,
       coalesce(pow(2.0, -igc_days(l.posted_at, coalesce(
           lag(l.posted_at) OVER (PARTITION BY l.username ORDER BY l.k), s.dec_at)) / $half_life_days), 0.0) AS f,
       coalesce(s.dec_num, 0.0) AS num0, coalesce(s.dec_den, 0.0) AS den0
FROM fz_liked l LEFT JOIN fz_state s USING (username);

-- name: tag_history
-- The hashtag history of each post, per tag of it: the user's earlier liked posts with the tag (count m,
-- exact sum sy of their ln-likes) and whether the user used the tag before at all. Users advanced from their
-- state start from user_tag_state (every stored post of theirs is earlier than the batch); the batch's own
-- posts count strictly before (a post never sees posts at its own time). Summed over the post's tags into
-- fz_taghist: a post sharing two tags with an earlier one counts it twice.
CREATE OR REPLACE TEMP TABLE fz_post_tags AS
SELECT post_id, username, posted_at, yq, tag, hash(username, tag) AS k, hash(tag || chr(0) || username) AS k2
FROM (SELECT post_id, username, posted_at, yq, unnest(tags) AS tag FROM fz_posts);
-- The stored rows of the pairs of users advanced from their state: candidates by k (one integer column, its
-- rowids first, then the rows fetched by rowid: a scan filtering on k would read every row's other columns),
-- kept when k2 agrees too (schema.sql says why); rid: for advance_user_tags, in the same transaction.
CREATE OR REPLACE TEMP TABLE fz_utag_wanted AS
SELECT DISTINCT k, k2 FROM fz_post_tags WHERE username IN (SELECT username FROM fz_state);
CREATE OR REPLACE TEMP TABLE fz_utag_rids AS
SELECT rowid AS rid FROM user_tag_state WHERE k IN (SELECT k FROM fz_utag_wanted);
CREATE OR REPLACE TEMP TABLE fz_utag_cand AS
SELECT rowid AS rid, k, k2, uses, n_liked, sy FROM user_tag_state WHERE rowid IN (SELECT rid FROM fz_utag_rids);
CREATE OR REPLACE TEMP TABLE fz_utag_old AS
SELECT c.* FROM fz_utag_cand c SEMI JOIN fz_utag_wanted w ON w.k = c.k AND w.k2 = c.k2;
CREATE OR REPLACE TEMP TABLE fz_taghist AS
WITH pt AS (
    SELECT t.post_id,
           coalesce(s.n_liked, 0) + count(t.yq) OVER w AS m,
           coalesce(s.sy, 0) + coalesce(sum(t.yq::HUGEINT) OVER w, 0) AS sy,
           s.uses IS NULL AND count(*) OVER w = 0 AS novel
    FROM fz_post_tags t LEFT JOIN fz_utag_old s ON s.k = t.k AND s.k2 = t.k2
    WINDOW w AS (PARTITION BY t.username, t.tag ORDER BY t.posted_at
                 RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE GROUP)
)
SELECT post_id, sum(m)::BIGINT AS m, sum(sy)::HUGEINT AS sy,
       count(*) FILTER (WHERE novel) / count(*) AS frac
FROM pt GROUP BY post_id;

-- name: cum
-- Running history after each timestamp group: state + the batch's liked posts up to it.
CREATE OR REPLACE TEMP TABLE fz_cum AS
SELECT l.username, l.posted_at, l.k,
       coalesce(s.n, 0) + l.k AS n,
       coalesce(s.s1, 0) + sum(l.yq::HUGEINT) OVER w AS s1,
       coalesce(s.s2, 0) + sum(l.yq::HUGEINT * l.yq) OVER w AS s2,
       (coalesce(s.last10, []::BIGINT[]) || list_filter(
           [lag(l.yq, 9) OVER o, lag(l.yq, 8) OVER o, lag(l.yq, 7) OVER o, lag(l.yq, 6) OVER o,
            lag(l.yq, 5) OVER o, lag(l.yq, 4) OVER o, lag(l.yq, 3) OVER o, lag(l.yq, 2) OVER o,
            lag(l.yq, 1) OVER o, l.yq], lambda x: x IS NOT NULL))[-10:] AS last10,
       d.num AS dec_num, d.den AS dec_den,
       coalesce(s.s_t, 0) + sum(l.ts) OVER w AS s_t,
       coalesce(s.s_tt, 0) + sum(l.ts * l.ts) OVER w AS s_tt,
       coalesce(s.s_ty, 0) + sum(l.ts * l.yq) OVER w AS s_ty,
       greatest(s.max_y, max(l.yq) OVER w) AS max_y,
       least(s.min_y, min(l.yq) OVER w) AS min_y,
       coalesce(s.n, 0) = 0 AS fresh_user
FROM fz_liked l
LEFT JOIN fz_state s USING (username)
JOIN fz_decay d USING (post_id)
WINDOW w AS (PARTITION BY l.username ORDER BY l.k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
       o AS (PARTITION BY l.username ORDER BY l.k)
QUALIFY l.k = max(l.k) OVER (PARTITION BY l.username, l.posted_at);

-- Median: a window median where the user starts from nothing, else the state's sorted values plus the
-- batch's (both exact, so the two give the same bits).
CREATE OR REPLACE TEMP TABLE fz_median AS
SELECT username, k, median(yq) OVER w / 4294967296.0 AS median
FROM fz_liked WHERE username NOT IN (SELECT username FROM fz_state WHERE n > 0)
WINDOW w AS (PARTITION BY username ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
UNION ALL
SELECT username, k, igc_median_sorted(list_sort(sorted_y || ys)) AS median
FROM (SELECT l.username, l.k, u.sorted_y, list(l.yq) OVER w AS ys
      FROM fz_liked l JOIN fz_state s USING (username) JOIN fz_sorted u USING (username) WHERE s.n > 0
      WINDOW w AS (PARTITION BY l.username ORDER BY l.k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW));

-- name: history
CREATE OR REPLACE TEMP TABLE fz_hist AS
SELECT p.post_id,
       CASE WHEN c.k IS NOT NULL THEN c.n ELSE coalesce(s.n, 0) END AS n,
       CASE WHEN c.k IS NOT NULL THEN igc_mean(c.n, c.s1) ELSE igc_mean(s.n, s.s1) END AS mean,
       CASE WHEN c.k IS NOT NULL THEN m.median ELSE s.med_y END AS median,
       CASE WHEN c.k IS NOT NULL THEN igc_std(c.n, c.s1, c.s2) ELSE igc_std(s.n, s.s1, s.s2) END AS std,
       igc_lastk(CASE WHEN c.k IS NOT NULL THEN c.last10 ELSE s.last10 END, 5) AS last5,
       igc_lastk(CASE WHEN c.k IS NOT NULL THEN c.last10 ELSE s.last10 END, 10) AS last10,
       CASE WHEN c.k IS NOT NULL THEN c.dec_num / c.dec_den
            WHEN s.n > 0 THEN s.dec_num / s.dec_den END AS decayed
FROM fz_posts p
LEFT JOIN fz_state s USING (username)
ASOF LEFT JOIN fz_cum c ON p.username = c.username AND p.posted_at > c.posted_at
LEFT JOIN fz_median m ON m.username = c.username AND m.k = c.k;

-- History dynamics (point in time in every mode): last / max / min ln-likes, trend, days since the latest
-- liked post, and counts of all earlier posts (the state's, plus the batch's strictly before).
CREATE OR REPLACE TEMP TABLE fz_dyn AS
SELECT p.post_id,
       (CASE WHEN c.k IS NOT NULL THEN c.last10[-1] ELSE s.last10[-1] END) / 4294967296.0 AS h_last1,
       (CASE WHEN c.k IS NOT NULL THEN c.max_y ELSE s.max_y END) / 4294967296.0 AS h_max,
       (CASE WHEN c.k IS NOT NULL THEN c.min_y ELSE s.min_y END) / 4294967296.0 AS h_min,
       CASE WHEN c.k IS NOT NULL THEN igc_slope(c.n, c.s_t, c.s_tt, c.s1, c.s_ty)
            ELSE igc_slope(s.n, s.s_t, s.s_tt, s.s1, s.s_ty) END AS h_slope,
       igc_days(p.posted_at, CASE WHEN c.k IS NOT NULL THEN c.posted_at WHEN s.n > 0 THEN s.dec_at END)
           AS days_since_last_liked,
       coalesce(s.n_posts, 0) + w.before AS n_posts_before,
       len(list_filter(coalesce(s.recent_at, []::TIMESTAMP[]),
                       lambda x: x >= p.posted_at - INTERVAL 30 DAY AND x < p.posted_at)) + w.last30 AS posts_last30d
FROM fz_posts p
LEFT JOIN fz_state s USING (username)
ASOF LEFT JOIN fz_cum c ON p.username = c.username AND p.posted_at > c.posted_at
JOIN (SELECT post_id,
             count(*) OVER (PARTITION BY username ORDER BY posted_at
                            RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE GROUP) AS before,
             count(*) OVER (PARTITION BY username ORDER BY posted_at
                            RANGE BETWEEN INTERVAL 30 DAY PRECEDING AND CURRENT ROW EXCLUDE GROUP) AS last30
      FROM fz_posts) w USING (post_id);

-- Hashtag history (block tag_history): tag_perf = (mean ln-likes of the m earlier liked (post, tag) matches
-- - hist_mean) * m / (m + 2); tag_novel_frac = the share of the post's tags the user never used before it.
CREATE OR REPLACE TEMP TABLE fz_tagdyn AS
SELECT p.post_id,
       CASE WHEN g.m > 0 THEN (g.sy::DOUBLE / g.m / 4294967296.0 - h.mean) * g.m / (g.m + 2) END AS tag_perf,
       coalesce(g.m, 0)::INTEGER AS tag_perf_n,
       g.frac AS tag_novel_frac
FROM fz_posts p
JOIN fz_hist h USING (post_id)
LEFT JOIN fz_taghist g USING (post_id);

-- The paper's leaky variant (benchmark only; always a full computation): every liked post of the user,
-- the post itself included.
CREATE OR REPLACE TEMP TABLE fz_hist_leaky AS
SELECT p.post_id, coalesce(a.n, 0) AS n, igc_mean(a.n, a.s1) AS mean, a.median, igc_std(a.n, a.s1, a.s2) AS std,
       igc_mean(a.n, a.s1) AS last5, igc_mean(a.n, a.s1) AS last10, igc_mean(a.n, a.s1) AS decayed
FROM fz_posts p
LEFT JOIN (SELECT username, count(*) AS n, sum(yq::HUGEINT) AS s1, sum(yq::HUGEINT * yq) AS s2,
                  median(yq) / 4294967296.0 AS median
           FROM fz_liked GROUP BY username) a ON a.username = p.username
WHERE $leaky;

CREATE OR REPLACE TEMP TABLE fz_times AS
SELECT p.post_id,
       igc_days(p.posted_at, coalesce(prev.posted_at, s.last_at)) AS days_since_prev,
       CASE WHEN coalesce(s.first_at, f.first_at) < p.posted_at
            THEN igc_days(p.posted_at, coalesce(s.first_at, f.first_at)) END AS days_since_first
FROM fz_posts p
LEFT JOIN fz_state s USING (username)
ASOF LEFT JOIN (SELECT DISTINCT username, posted_at FROM fz_posts) prev
    ON p.username = prev.username AND p.posted_at > prev.posted_at
LEFT JOIN (SELECT username, min(posted_at) AS first_at FROM fz_posts GROUP BY username) f
    ON f.username = p.username;

-- name: snapshots
-- The latest snapshot observed at or before the post, else the user's earliest (the choice is kept).
CREATE OR REPLACE TEMP TABLE fz_user_snaps AS
SELECT * FROM user_snapshots WHERE username IN (SELECT DISTINCT username FROM fz_posts);
CREATE OR REPLACE TEMP TABLE fz_snap AS
SELECT p.post_id,
       coalesce(b.followers, e.followers) AS followers,
       coalesce(b.following, e.following) AS following,
       coalesce(b.user_post_count, e.user_post_count) AS user_post_count,
       CASE WHEN b.username IS NOT NULL THEN 'at_or_before'
            WHEN e.username IS NOT NULL THEN 'earliest_after' ELSE 'none' END AS snapshot_choice
FROM fz_posts p
ASOF LEFT JOIN fz_user_snaps b ON p.username = b.username AND p.posted_at >= b.observed_at
LEFT JOIN (SELECT * FROM fz_user_snaps
           QUALIFY observed_at = min(observed_at) OVER (PARTITION BY username)) e
    ON e.username = p.username;

-- name: hashtags_ranked
-- Weight of a tag = 1 - (rank - 1) / N from the ranking list (top tag 1, unlisted 0), summed per post
-- (in fixed point, so the sum does not depend on the order of the tags).
CREATE OR REPLACE TEMP TABLE fz_tagw AS
WITH n AS (SELECT count(*) AS n FROM hashtag_rankings WHERE ranking_id = $ranking_id),
     t AS (SELECT post_id, unnest(tags) AS tag FROM fz_posts)
SELECT t.post_id, sum(round((1.0 - (r.rank - 1.0) / n.n) * 4294967296.0)::BIGINT) / 4294967296.0 AS hashtag_weight
FROM t JOIN hashtag_rankings r ON r.tag = t.tag AND r.ranking_id = $ranking_id, n
GROUP BY t.post_id;

-- name: tag_uses
-- Store frequency: uses of a tag = the store's posts (any user) that used it strictly before the post.
-- Fresh posts whose tags are all clean count from tag_state (less its uses at the post's own time, when the
-- post is at the state's latest use) plus the fresh posts before them; posts with a dirty tag (a back-dated
-- or edited use) are recounted from every post of the store that has their tags.
CREATE OR REPLACE TEMP TABLE fz_fresh_tags AS
SELECT p.post_id, p.posted_at, unnest(p.tags) AS tag
FROM fz_posts p
WHERE p.post_id IN (SELECT post_id FROM fz_fresh);
CREATE OR REPLACE TEMP TABLE fz_tag_uses AS
SELECT t.post_id, t.tag, t.posted_at,
       coalesce(s.uses, 0) - (CASE WHEN t.posted_at = s.last_at THEN s.last_n ELSE 0 END)
       + count(*) OVER (PARTITION BY t.tag ORDER BY t.posted_at
                        RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE GROUP) AS uses
FROM fz_fresh_tags t LEFT JOIN tag_state s ON s.tag = t.tag AND $use_state
WHERE t.tag NOT IN (SELECT tag FROM fz_dirty_tags);

-- name: tag_uses_none
CREATE OR REPLACE TEMP TABLE fz_full_posts (post_id VARCHAR, tags VARCHAR[]);
CREATE OR REPLACE TEMP TABLE fz_tag_uses_full (post_id VARCHAR, tag VARCHAR, posted_at TIMESTAMP, uses BIGINT);

-- name: tag_uses_full
-- Posts touched by a dirty tag, and every post of the store with one of their tags, counted from scratch.
-- Only the (post, tag) pairs of those tags are held, never every pair of the store.
CREATE OR REPLACE TEMP TABLE fz_full_posts AS
SELECT p.post_id, any_value(p.tags) AS tags
FROM (SELECT post_id, igc_tags(hashtags) AS tags FROM posts WHERE hashtags LIKE '%#%') p, unnest(p.tags) AS u(tag)
WHERE u.tag IN (SELECT tag FROM fz_dirty_tags)
GROUP BY p.post_id;
CREATE OR REPLACE TEMP TABLE fz_wanted_tags AS
SELECT DISTINCT unnest(tags) AS tag FROM fz_full_posts;
CREATE OR REPLACE TEMP TABLE fz_tag_uses_full AS
SELECT post_id, tag, posted_at,
       count(*) OVER (PARTITION BY tag ORDER BY posted_at
                      RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE GROUP) AS uses
FROM (SELECT p.post_id, p.posted_at, u.tag FROM posts p, unnest(igc_tags(p.hashtags)) AS u(tag)
      WHERE p.hashtags LIKE '%#%' AND u.tag IN (SELECT tag FROM fz_wanted_tags));

-- name: hashtags_store
-- A post's weight = sum over its tags of ln(1 + uses), in fixed point. Posts neither fresh nor touched by
-- a dirty tag keep their stored weight (their tags' earlier uses cannot have changed).
CREATE OR REPLACE TEMP TABLE fz_tagw AS
WITH q AS (
    SELECT post_id, round(ln(1 + uses) * 4294967296.0)::BIGINT AS w FROM fz_tag_uses
    WHERE post_id NOT IN (SELECT post_id FROM fz_full_posts)
    UNION ALL
    SELECT u.post_id, round(ln(1 + u.uses) * 4294967296.0)::BIGINT FROM fz_tag_uses_full u
    WHERE u.post_id IN (SELECT post_id FROM fz_full_posts)
)
SELECT post_id, sum(w) / 4294967296.0 AS hashtag_weight FROM q GROUP BY post_id;

-- name: hashtags_carry
INSERT INTO fz_tagw
SELECT f.post_id, f.hashtag_weight FROM post_features f
WHERE f.post_id IN (SELECT post_id FROM fz_posts)
  AND f.post_id NOT IN (SELECT post_id FROM fz_fresh) AND f.post_id NOT IN (SELECT post_id FROM fz_full_posts);

-- name: cues
-- Caption cues, pure functions of the text, from fz_caption_src(post_id, caption): fz_posts, or for a batch
-- smaller than two of DuckDB's row groups the same rows as an Arrow table in parts, on a connection of their own
-- beside the other blocks (metadata.py, _cues_start), since DuckDB scans one row group on one thread and these
-- regular expressions are most of a small batch's time.
CREATE OR REPLACE TEMP TABLE fz_cues AS
SELECT post_id,
    CASE WHEN ascii THEN 0 ELSE igc_nchar(caption, '[\x{1F300}-\x{1FAFF}\x{2600}-\x{27BF}]+') END::INTEGER AS n_emoji,
    (length(caption) - length(replace(caption, '?', '')))::INTEGER AS n_question,
    (length(caption) - length(replace(caption, '!', '')))::INTEGER AS n_exclaim,
    -- runs of non-space (RE2's \s is [\t\n\f\r ]): splitting on spaces is cheaper than a regex
    len(list_filter(string_split(translate(caption, chr(9) || chr(10) || chr(12) || chr(13), '    '), ' '),
                    lambda w: w <> ''))::INTEGER AS n_words,
    CASE WHEN caption = '' THEN 0 ELSE length(caption) - length(replace(caption, chr(10), '')) + 1
    END::INTEGER AS n_lines,
    CASE WHEN n_letters > 0 THEN CASE WHEN ascii THEN igc_nchar(caption, '[A-Z]+')
                                      ELSE len(regexp_extract_all(caption, '\p{Lu}')) END / n_letters
    END AS frac_upper,
    CASE WHEN caption <> '' THEN CASE WHEN ascii THEN length(caption) ELSE igc_nchar(caption, '[\x00-\x7F]+') END
                                 / length(caption) END AS frac_ascii,
    igc_cta(caption) AS cta,
    regexp_matches(caption, '(?i)https?://|www\.') AS has_url
-- letters counted once; a caption of ASCII only (as many bytes as characters) skips the Unicode classes
FROM (SELECT *, CASE WHEN ascii THEN igc_nchar(caption, '[A-Za-z]+') ELSE length(regexp_replace(caption, '[^\pL]+', '', 'g'))
                END AS n_letters
      FROM (SELECT post_id, caption, strlen(caption) = length(caption) AS ascii FROM fz_caption_src));

-- name: assemble
-- One row per computed post; with tag_uses_full, also the stored rows of other posts whose weight moved.
CREATE OR REPLACE TEMP TABLE pf_new AS
SELECT
    p.post_id, p.username, p.posted_at, p.likes, p.yq / 4294967296.0 AS ln_likes,
    h.n::INTEGER AS hist_n,
    h.n = 0 AS no_history,
    h.mean AS hist_mean, h.median AS hist_median, h.std AS hist_std,
    h.last5 AS hist_last5, h.last10 AS hist_last10, h.decayed AS hist_decayed,
    t.days_since_prev, t.days_since_first,
    s.followers, s.following, s.user_post_count, s.snapshot_choice,
    length(p.caption)::INTEGER AS caption_len,
    p.n_hashtags::INTEGER AS n_hashtags, p.n_mentions::INTEGER AS n_mentions,
    coalesce(w.hashtag_weight, 0.0) AS hashtag_weight,
    y.h_last1, y.h_max, y.h_min, y.h_slope, y.days_since_last_liked,
    y.n_posts_before::INTEGER AS n_posts_before, y.posts_last30d::INTEGER AS posts_last30d,
    g.tag_perf, g.tag_perf_n, g.tag_novel_frac,
    q.n_emoji, q.n_question, q.n_exclaim, q.n_words, q.n_lines, q.frac_upper, q.frac_ascii, q.cta, q.has_url,
    month(p.posted_at)::INTEGER AS month,
    (isodow(p.posted_at) - 1)::INTEGER AS weekday,
    hour(p.posted_at)::INTEGER AS hour,
    CASE WHEN hour(p.posted_at) < 8 THEN 0 WHEN hour(p.posted_at) < 12 THEN 1
         WHEN hour(p.posted_at) < 14 THEN 2 WHEN hour(p.posted_at) < 17 THEN 3
         WHEN hour(p.posted_at) < 20 THEN 4 ELSE 5 END::INTEGER AS hour_group,
    $hashtag_source AS hashtag_source,
    $half_life_days::DOUBLE AS half_life_days,
    $leaky AS leaky_user_stats,
    p.tags
FROM fz_posts p
JOIN fz_cues q USING (post_id)
JOIN (SELECT * FROM fz_hist WHERE NOT $leaky UNION ALL BY NAME SELECT * FROM fz_hist_leaky WHERE $leaky) h
    USING (post_id)
JOIN fz_times t USING (post_id)
JOIN fz_dyn y USING (post_id)
JOIN fz_tagdyn g USING (post_id)
JOIN fz_snap s USING (post_id)
LEFT JOIN fz_tagw w USING (post_id);

-- name: reweighted
-- Stored rows outside the batch whose store-frequency weight was recounted (a dirty tag).
INSERT INTO pf_new
SELECT f.* EXCLUDE (computed_at) REPLACE (w.hashtag_weight AS hashtag_weight)
FROM post_features f JOIN fz_tagw w USING (post_id)
WHERE f.post_id NOT IN (SELECT post_id FROM fz_posts) AND f.hashtag_weight IS DISTINCT FROM w.hashtag_weight;

-- name: batch_rows
-- score: posts of the batch already featurized, unchanged and not recomputed keep their stored rows.
INSERT INTO pf_new
SELECT * EXCLUDE (computed_at) FROM post_features
WHERE post_id IN (SELECT post_id FROM fz_ids) AND post_id NOT IN (SELECT post_id FROM pf_new);

-- name: counts_add
-- feature_counts += the rows about to be written ($sign = 1), or -= the stored rows they replace (-1).
INSERT INTO feature_counts
SELECT snapshot_choice, no_history, $sign * count(*) FROM pf_counted GROUP BY ALL;
CREATE OR REPLACE TEMP TABLE fz_counts AS
SELECT snapshot_choice, no_history, sum(n)::BIGINT AS n FROM feature_counts GROUP BY ALL HAVING sum(n) <> 0;
DELETE FROM feature_counts;
INSERT INTO feature_counts SELECT * FROM fz_counts;

-- name: counts_full
DELETE FROM feature_counts;
INSERT INTO feature_counts SELECT snapshot_choice, no_history, count(*) FROM post_features GROUP BY ALL;

-- name: merge_new
-- Posts first ingested after the last featurize have no stored row yet.
INSERT INTO post_features SELECT *, $now FROM pf_new WHERE post_id IN (SELECT post_id FROM fz_pending WHERE is_new);
DELETE FROM pf_new WHERE post_id IN (SELECT post_id FROM fz_pending WHERE is_new);

-- name: merge
-- Rows that differ from the stored ones replace them.
CREATE OR REPLACE TEMP TABLE pf_changed AS
SELECT * FROM pf_new
EXCEPT SELECT * EXCLUDE (computed_at) FROM post_features WHERE post_id IN (SELECT post_id FROM pf_new);

-- name: merge_apply
DELETE FROM post_features WHERE post_id IN (SELECT post_id FROM pf_changed);
INSERT INTO post_features SELECT *, $now FROM pf_changed;

-- name: advance_state
-- New state of every user of the batch: its old state (none when recomputed) plus the batch's posts.
CREATE OR REPLACE TEMP TABLE fz_state_new AS
WITH b AS (
    SELECT username, count(*) AS n_posts, min(posted_at) AS first_at, max(posted_at) AS last_at,
           count(yq) AS n, sum(yq::HUGEINT) AS s1, sum(yq::HUGEINT * yq) AS s2,
           list(yq ORDER BY posted_at, post_id) FILTER (WHERE yq IS NOT NULL) AS ys,
           sum(igc_ts(posted_at)) FILTER (WHERE yq IS NOT NULL) AS s_t,
           sum(igc_ts(posted_at) * igc_ts(posted_at)) FILTER (WHERE yq IS NOT NULL) AS s_tt,
           sum(igc_ts(posted_at) * yq) FILTER (WHERE yq IS NOT NULL) AS s_ty,
           list(posted_at) AS times
    FROM fz_posts GROUP BY username
), d AS (
    SELECT l.username, l.posted_at, d.num, d.den FROM fz_liked l JOIN fz_decay d USING (post_id)
    QUALIFY l.k = max(l.k) OVER (PARTITION BY l.username)
), so AS (  -- the sorted values fz_state leaves out: fz_sorted's, and those of the other state users (the
            -- one set to join on, so that an empty one reads nothing of user_state)
    SELECT username, sorted_y FROM fz_sorted
    UNION ALL
    SELECT username, sorted_y FROM user_state
    WHERE rowid IN (SELECT rid FROM fz_state_rids WHERE username NOT IN (SELECT username FROM fz_sorted))
)
SELECT b.username,
       coalesce(s.n_posts, 0) + b.n_posts AS n_posts,
       coalesce(s.first_at, b.first_at) AS first_at,
       greatest(s.last_at, b.last_at) AS last_at,
       coalesce(s.n, 0) + b.n AS n,
       coalesce(s.s1, 0) + coalesce(b.s1, 0) AS s1,
       coalesce(s.s2, 0) + coalesce(b.s2, 0) AS s2,
       (coalesce(s.last10, []::BIGINT[]) || coalesce(b.ys, []::BIGINT[]))[-10:] AS last10,
       list_sort(coalesce(so.sorted_y, []::BIGINT[]) || coalesce(b.ys, []::BIGINT[])) AS sorted_y,
       coalesce(d.num, s.dec_num) AS dec_num, coalesce(d.den, s.dec_den) AS dec_den,
       coalesce(d.posted_at, s.dec_at) AS dec_at,
       coalesce(s.s_t, 0) + coalesce(b.s_t, 0) AS s_t,
       coalesce(s.s_tt, 0) + coalesce(b.s_tt, 0) AS s_tt,
       coalesce(s.s_ty, 0) + coalesce(b.s_ty, 0) AS s_ty,
       list_sort(list_filter(coalesce(s.recent_at, []::TIMESTAMP[]) || b.times,
                             lambda x: x >= greatest(s.last_at, b.last_at) - INTERVAL 30 DAY)) AS recent_at,
       (SELECT min(observed_at) FROM fz_user_snaps u WHERE u.username = b.username) AS snap_first_at
FROM b LEFT JOIN fz_state s USING (username) LEFT JOIN d USING (username) LEFT JOIN so USING (username);
DELETE FROM user_state WHERE username IN (SELECT username FROM fz_state_new);
INSERT INTO user_state BY NAME
SELECT *, igc_median_sorted(sorted_y) AS med_y, sorted_y[-1] AS max_y, sorted_y[1] AS min_y FROM fz_state_new;

-- name: advance_user_tags
-- user_tag_state of every user of the batch: its old rows (fz_utag_old) plus the batch's uses; a user
-- recomputed from its history (or new) gets rows from its posts in the batch, which are all of them.
CREATE OR REPLACE TEMP TABLE fz_utag_new AS
SELECT b.username, b.tag, b.k, b.k2, coalesce(s.uses, 0) + b.uses AS uses,
       coalesce(s.n_liked, 0) + b.n_liked AS n_liked, coalesce(s.sy, 0) + b.sy AS sy
FROM (SELECT username, tag, any_value(k) AS k, any_value(k2) AS k2, count(*) AS uses, count(yq) AS n_liked,
             coalesce(sum(yq::HUGEINT), 0) AS sy
      FROM fz_post_tags GROUP BY username, tag) b
LEFT JOIN fz_utag_old s ON s.k = b.k AND s.k2 = b.k2;
DELETE FROM user_tag_state WHERE rowid IN (SELECT rid FROM fz_utag_old);
INSERT INTO user_tag_state BY NAME SELECT * FROM fz_utag_new;

-- name: drop_user_tags
-- The rows of users recomputed from their history (advance_user_tags writes them anew).
DELETE FROM user_tag_state WHERE username IN (SELECT username FROM fz_slow);

-- name: advance_tags
-- tag_state counts the uses of each tag among featurized posts, the latest one, and the uses at that time.
CREATE OR REPLACE TEMP TABLE fz_tag_new AS
WITH full_tags AS (
    SELECT tag, count(*) AS uses, max(posted_at) AS last_at FROM fz_tag_uses_full GROUP BY tag
), fresh AS (
    SELECT tag, posted_at FROM fz_fresh_tags
    WHERE tag NOT IN (SELECT tag FROM fz_tag_uses_full) AND tag NOT IN (SELECT tag FROM fz_dirty_tags)
), g AS (
    SELECT tag, count(*) AS n, max(posted_at) AS last_at FROM fresh GROUP BY tag
), g_last AS (
    SELECT f.tag, count(*) AS n FROM fresh f JOIN g ON f.tag = g.tag AND f.posted_at = g.last_at GROUP BY f.tag
)
SELECT f.tag, f.uses, f.last_at, count(*) AS last_n
FROM full_tags f JOIN fz_tag_uses_full u ON u.tag = f.tag AND u.posted_at = f.last_at
GROUP BY f.tag, f.uses, f.last_at
UNION ALL
-- a clean tag's fresh uses are at or after its stored latest use (else it would be dirty)
SELECT g.tag, coalesce(s.uses, 0) + g.n, g.last_at,
       CASE WHEN s.last_at = g.last_at THEN s.last_n + l.n ELSE l.n END
FROM g JOIN g_last l USING (tag) LEFT JOIN tag_state s USING (tag);
DELETE FROM tag_state WHERE tag IN (SELECT tag FROM fz_tag_new);
INSERT INTO tag_state (tag, uses, last_at, last_n) SELECT tag, uses, last_at, last_n FROM fz_tag_new;
