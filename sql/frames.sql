-- User features as of any time (igcli/commands/features.py, `igcli features --entities FILE`), Feast-style: each
-- entity row (username, as_of) is answered by the serving read (igcli.features.frames.serving_batch) of a post
-- the user would make at as_of. That post is inserted into posts inside a transaction the caller rolls back, so
-- the store never keeps it, and no feature is computed here: like any post, it sees the user's posts strictly
-- before as_of, never one at as_of or later.

-- name: entities
-- The entity rows of igc_entity_in (i: row number, username, as_of as text), as_of parsed like posted_at
-- (ingest's igc_ts: ISO 8601, a zone honoured, none = UTC). Each distinct (username, as_of) gets a post id with
-- $prefix and a round: one user's posts in one batch see each other, so each of its as_of values goes to a
-- round of its own.
CREATE OR REPLACE TEMP TABLE igc_entities AS
SELECT i, username, as_of_text, igc_ts(as_of_text) AS as_of FROM igc_entity_in;
CREATE OR REPLACE TEMP TABLE igc_entity_pairs AS
SELECT username, as_of, $prefix || row_number() OVER (ORDER BY username, as_of) AS post_id,
       row_number() OVER (PARTITION BY username ORDER BY as_of) AS round
FROM (SELECT DISTINCT username, as_of FROM igc_entities WHERE username IS NOT NULL AND as_of IS NOT NULL);

-- name: entity_posts
-- One round's posts, without caption, tags, likes or image, stamped as ingested and changed after everything
-- the store holds: the serving read takes them as new posts, as it takes a batch `score` ingests.
INSERT INTO posts (post_id, username, posted_at, source_file, source_line, ingested_at, updated_at, post_key)
SELECT e.post_id, e.username, e.as_of, '<entities>', 0, s.t, s.t, hash(e.post_id)
FROM igc_entity_pairs e,
     (SELECT coalesce(greatest(max(updated_at), max(ingested_at)), TIMESTAMP '1970-01-01') + INTERVAL 1 SECOND AS t
      FROM posts) s
WHERE e.round = $round;

-- name: entity_rows
-- The round's answers from the rows the serving read computed (pf_new): the user's history before as_of (level,
-- spread, recent and decayed means, last / max / min, trend), its timing and counts, and its audience values
-- only from a snapshot observed at or before as_of (a post at as_of falls back to the earliest later snapshot,
-- which was not known then: NULL here, snapshot_choice says which).
SELECT e.username, e.as_of,
       f.no_history, f.hist_n, f.hist_mean, f.hist_median, f.hist_std, f.hist_last5, f.hist_last10, f.hist_decayed,
       f.h_last1, f.h_max, f.h_min, f.h_slope,
       f.days_since_prev, f.days_since_first, f.days_since_last_liked, f.n_posts_before, f.posts_last30d,
       CASE WHEN f.snapshot_choice = 'at_or_before' THEN f.followers END AS followers,
       CASE WHEN f.snapshot_choice = 'at_or_before' THEN f.following END AS following,
       CASE WHEN f.snapshot_choice = 'at_or_before' THEN f.user_post_count END AS user_post_count,
       f.snapshot_choice
FROM igc_entity_pairs e JOIN pf_new f USING (post_id)
WHERE e.round = $round;

-- name: entity_answers
-- Every entity row, in its order, with its pair's answer (igc_entity_answers: the rounds' rows).
SELECT e.username, e.as_of, a.* EXCLUDE (username, as_of)
FROM igc_entities e JOIN igc_entity_answers a USING (username, as_of)
ORDER BY e.i;
