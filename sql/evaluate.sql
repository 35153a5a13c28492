-- What `igcli score` records for the loop, and `igcli evaluate` (igcli.commands.evaluate). One named block per step.

-- A scoring batch and its drift rows (igc_drift: input, psi, level, noise, from igcli.model.explain.batch_drift).
-- name: record_batch
INSERT OR REPLACE INTO score_batches (model_id, scored_at, source_file, posts)
VALUES ($model_id, $scored_at, $source_file, $posts);
INSERT OR REPLACE INTO batch_drift (model_id, scored_at, input, psi, level, noise)
SELECT $model_id, $scored_at, input, psi, level, noise FROM igc_drift;

-- Every stored prediction whose post's likes are known now, as an outcome. A prediction is blind (it counts) when
-- it was made before the likes were known: score records likes_known; a row scored before it did is blind when
-- its post changed after it was scored (that is when its likes arrived).
-- name: outcomes
CREATE OR REPLACE TEMP TABLE igc_outcomes AS
SELECT pr.model_id, pr.post_id, p.username, pr.scored_at,
       coalesce(NOT pr.likes_known, p.updated_at > pr.scored_at) AS blind,
       pr.predicted_log_likes, ln(pr.p10_likes) AS p10_log_likes, ln(pr.p90_likes) AS p90_log_likes,
       ln(pr.usual_likes) AS usual_log_likes, pr.user_mean_log_likes, p.likes AS actual_likes
FROM predictions pr JOIN posts p USING (post_id)
WHERE p.likes IS NOT NULL;

-- The outcomes the evaluations table lacks or holds otherwise (a post scored again, its likes updated).
-- name: changed_outcomes
CREATE OR REPLACE TEMP TABLE igc_changed AS
SELECT o.*, e.post_id IS NULL AS is_new
FROM igc_outcomes o LEFT JOIN evaluations e USING (model_id, post_id)
WHERE e.post_id IS NULL OR e.scored_at <> o.scored_at OR e.blind <> o.blind OR e.actual_likes <> o.actual_likes
   OR e.predicted_log_likes <> o.predicted_log_likes;
SELECT count(*) FILTER (WHERE is_new), count(*) FILTER (WHERE NOT is_new), (SELECT count(*) FROM igc_outcomes)
FROM igc_changed;

-- name: write_outcomes
INSERT OR REPLACE INTO evaluations (model_id, post_id, username, scored_at, blind, predicted_log_likes, p10_log_likes,
                                    p90_log_likes, usual_log_likes, user_mean_log_likes, actual_likes, evaluated_at)
SELECT model_id, post_id, username, scored_at, blind, predicted_log_likes, p10_log_likes, p90_log_likes,
       usual_log_likes, user_mean_log_likes, actual_likes, $now::TIMESTAMP
FROM igc_changed;

-- The stored outcomes of one model (or all: NULL), scored at or after $since (or all: NULL).
-- name: outcome_rows
SELECT model_id, post_id, username, scored_at, date_trunc('week', scored_at) AS week, blind, predicted_log_likes,
       p10_log_likes, p90_log_likes, usual_log_likes, user_mean_log_likes, actual_likes
FROM evaluations
WHERE ($model_id::VARCHAR IS NULL OR model_id = $model_id::VARCHAR)
  AND ($since::TIMESTAMP IS NULL OR scored_at >= $since::TIMESTAMP)
ORDER BY model_id, scored_at, post_id;

-- Predictions whose posts have no likes yet, per model.
-- name: waiting
SELECT pr.model_id, count(*) FROM predictions pr JOIN posts p USING (post_id)
WHERE p.likes IS NULL
  AND ($model_id::VARCHAR IS NULL OR pr.model_id = $model_id::VARCHAR)
  AND ($since::TIMESTAMP IS NULL OR pr.scored_at >= $since::TIMESTAMP)
GROUP BY 1;

-- name: known_models
SELECT DISTINCT model_id FROM predictions WHERE model_id = $model_id::VARCHAR;

-- The inputs of one batch by PSI, largest first.
-- name: batch_drift_rows
SELECT input, psi, level, noise FROM batch_drift
WHERE model_id = $model_id AND scored_at = $scored_at
ORDER BY psi DESC, input;
