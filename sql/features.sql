-- Point-in-time metadata features. Every history value of a post is computed only from posts of the
-- same user posted STRICTLY BEFORE it: posts at the same timestamp never see each other, and a post
-- never sees its own likes or any later post. Parameters: $half_life_days, $leaky, $ranking_id, $now.

-- name: base
-- `pf_users`: the users to compute (empty with $all_users: every user). A user's features only depend on
-- that user's posts, except the store-frequency hashtag weight, which counts every post (below).
CREATE OR REPLACE TEMP MACRO igc_tags(h) AS
    list_distinct(list_transform(list_filter(string_split(coalesce(h, ''), ' '), lambda t: t LIKE '#_%'),
                                 lambda t: lower(ltrim(t, '#'))));
CREATE OR REPLACE TEMP TABLE pf_posts AS
SELECT post_id, username, posted_at, likes,
       CASE WHEN likes > 0 THEN ln(likes) END AS ln_likes,
       coalesce(caption, '') AS caption,
       igc_tags(hashtags) AS tags,
       len(list_filter(string_split(coalesce(hashtags, ''), ' '), lambda t: t LIKE '#_%')) AS n_hashtags,
       len(list_filter(string_split(coalesce(mentions, ''), ' '), lambda t: t LIKE '@_%')) AS n_mentions
FROM posts
WHERE $all_users OR username IN (SELECT username FROM pf_users);

-- name: history
-- Posts with likes, numbered per user in time order; cumulative stats are taken at the last post of
-- each timestamp group and joined to later posts with a strict ASOF join.
CREATE OR REPLACE TEMP TABLE pf_liked AS
SELECT username, posted_at, post_id, ln_likes,
       row_number() OVER (PARTITION BY username ORDER BY posted_at, post_id) AS idx,
       max(posted_at) OVER (PARTITION BY username) AS t_ref
FROM pf_posts WHERE ln_likes IS NOT NULL;

CREATE OR REPLACE TEMP TABLE pf_cum AS
SELECT username, posted_at,
       count(*) OVER w AS n,
       avg(ln_likes) OVER w AS mean,
       median(ln_likes) OVER w AS median,
       stddev_samp(ln_likes) OVER w AS std,
       avg(ln_likes) OVER (PARTITION BY username ORDER BY idx ROWS BETWEEN 4 PRECEDING AND CURRENT ROW) AS last5,
       avg(ln_likes) OVER (PARTITION BY username ORDER BY idx ROWS BETWEEN 9 PRECEDING AND CURRENT ROW) AS last10,
       -- weights 2^((t_j - t_ref) / half_life): the t_ref factor cancels in the ratio, it only avoids overflow
       sum(ln_likes * pow(2, (epoch(posted_at) - epoch(t_ref)) / 86400.0 / $half_life_days)) OVER w
         / sum(pow(2, (epoch(posted_at) - epoch(t_ref)) / 86400.0 / $half_life_days)) OVER w AS decayed,
       idx
FROM pf_liked
WINDOW w AS (PARTITION BY username ORDER BY idx ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
QUALIFY idx = max(idx) OVER (PARTITION BY username, posted_at);

CREATE OR REPLACE TEMP TABLE pf_hist AS
SELECT p.post_id, c.n, c.mean, c.median, c.std, c.last5, c.last10, c.decayed
FROM pf_posts p
ASOF LEFT JOIN pf_cum c ON p.username = c.username AND p.posted_at > c.posted_at;

-- The paper's leaky variant (benchmark only): every liked post of the user, the post itself included.
CREATE OR REPLACE TEMP TABLE pf_hist_leaky AS
SELECT p.post_id, a.n, a.mean, a.median, a.std, a.mean AS last5, a.mean AS last10, a.mean AS decayed
FROM pf_posts p
LEFT JOIN (SELECT username, count(*) AS n, avg(ln_likes) AS mean, median(ln_likes) AS median,
                  stddev_samp(ln_likes) AS std
           FROM pf_liked GROUP BY username) a ON a.username = p.username;

CREATE OR REPLACE TEMP TABLE pf_times AS
SELECT p.post_id,
       epoch(p.posted_at - prev.posted_at) / 86400.0 AS days_since_prev,
       CASE WHEN f.first_at < p.posted_at THEN epoch(p.posted_at - f.first_at) / 86400.0 END AS days_since_first
FROM pf_posts p
ASOF LEFT JOIN (SELECT DISTINCT username, posted_at FROM pf_posts) prev
    ON p.username = prev.username AND p.posted_at > prev.posted_at
LEFT JOIN (SELECT username, min(posted_at) AS first_at FROM pf_posts GROUP BY username) f
    ON f.username = p.username;

-- name: snapshots
-- The latest snapshot observed at or before the post, else the user's earliest (the choice is kept).
CREATE OR REPLACE TEMP TABLE pf_snap AS
SELECT p.post_id,
       coalesce(b.followers, e.followers) AS followers,
       coalesce(b.following, e.following) AS following,
       coalesce(b.user_post_count, e.user_post_count) AS user_post_count,
       CASE WHEN b.username IS NOT NULL THEN 'at_or_before'
            WHEN e.username IS NOT NULL THEN 'earliest_after' ELSE 'none' END AS snapshot_choice
FROM pf_posts p
ASOF LEFT JOIN user_snapshots b ON p.username = b.username AND p.posted_at >= b.observed_at
LEFT JOIN (SELECT * FROM user_snapshots
           QUALIFY observed_at = min(observed_at) OVER (PARTITION BY username)) e
    ON e.username = p.username;

-- name: hashtags_ranked
-- Weight of a tag = 1 - (rank - 1) / N from the ranking list (top tag 1, unlisted 0), summed per post.
CREATE OR REPLACE TEMP TABLE pf_tagw AS
WITH n AS (SELECT count(*) AS n FROM hashtag_rankings WHERE ranking_id = $ranking_id),
     t AS (SELECT post_id, unnest(tags) AS tag FROM pf_posts)
SELECT t.post_id, sum(1.0 - (r.rank - 1.0) / n.n) AS hashtag_weight
FROM t JOIN hashtag_rankings r ON r.tag = t.tag AND r.ranking_id = $ranking_id, n
GROUP BY t.post_id;

-- name: hashtags_store
-- Weight of a tag = ln(1 + number of the store's posts, any user, that used it strictly before this post).
CREATE OR REPLACE TEMP TABLE pf_tagw AS
WITH wanted AS (SELECT DISTINCT unnest(tags) AS tag FROM pf_posts),
     t AS (SELECT p.post_id, p.posted_at, u.tag
           FROM posts p, unnest(igc_tags(p.hashtags)) AS u(tag)
           WHERE u.tag IN (SELECT tag FROM wanted)),
     c AS (SELECT post_id, count(*) OVER (PARTITION BY tag ORDER BY posted_at
                                         RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE GROUP) AS uses
           FROM t)
SELECT post_id, sum(ln(1 + uses)) AS hashtag_weight
FROM c WHERE post_id IN (SELECT post_id FROM pf_posts) GROUP BY post_id;

-- name: assemble
CREATE OR REPLACE TEMP TABLE pf_new AS
SELECT
    p.post_id, p.username, p.posted_at, p.likes, p.ln_likes,
    coalesce(h.n, 0)::INTEGER AS hist_n,
    coalesce(h.n, 0) = 0 AS no_history,
    h.mean AS hist_mean, h.median AS hist_median, h.std AS hist_std,
    h.last5 AS hist_last5, h.last10 AS hist_last10, h.decayed AS hist_decayed,
    t.days_since_prev, t.days_since_first,
    s.followers, s.following, s.user_post_count, s.snapshot_choice,
    length(p.caption)::INTEGER AS caption_len,
    p.n_hashtags::INTEGER AS n_hashtags, p.n_mentions::INTEGER AS n_mentions,
    coalesce(w.hashtag_weight, 0.0) AS hashtag_weight,
    month(p.posted_at)::INTEGER AS month,
    (isodow(p.posted_at) - 1)::INTEGER AS weekday,
    hour(p.posted_at)::INTEGER AS hour,
    CASE WHEN hour(p.posted_at) < 8 THEN 0 WHEN hour(p.posted_at) < 12 THEN 1
         WHEN hour(p.posted_at) < 14 THEN 2 WHEN hour(p.posted_at) < 17 THEN 3
         WHEN hour(p.posted_at) < 20 THEN 4 ELSE 5 END::INTEGER AS hour_group,
    $hashtag_source AS hashtag_source,
    $half_life_days::DOUBLE AS half_life_days,
    $leaky AS leaky_user_stats
FROM pf_posts p
JOIN (SELECT * FROM pf_hist WHERE NOT $leaky UNION ALL BY NAME SELECT * FROM pf_hist_leaky WHERE $leaky) h
    USING (post_id)
JOIN pf_times t USING (post_id)
JOIN pf_snap s USING (post_id)
LEFT JOIN pf_tagw w USING (post_id);
