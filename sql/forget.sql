-- igcli forget: the posts of igc_forget_ids leave the store (igcli.commands.forget).

-- name: plan
SELECT count(*), count(DISTINCT username) FROM posts WHERE post_id IN (SELECT post_id FROM igc_forget_ids);

-- name: delete_batch
-- A scoring batch's own records: its row and its drift rows (by model and scored_at, as score wrote them).
DELETE FROM batch_drift WHERE (model_id, scored_at) IN
    (SELECT DISTINCT model_id, scored_at FROM predictions WHERE batch_id = $batch);
DELETE FROM score_batches WHERE (model_id, scored_at) IN
    (SELECT DISTINCT model_id, scored_at FROM predictions WHERE batch_id = $batch);

-- name: delete
-- (post_features rows go in Python: the table exists only once featurize has run)
DELETE FROM predictions WHERE post_id IN (SELECT post_id FROM igc_forget_ids);
DELETE FROM evaluations WHERE post_id IN (SELECT post_id FROM igc_forget_ids);
DELETE FROM posts WHERE post_id IN (SELECT post_id FROM igc_forget_ids);

-- name: empty
DELETE FROM user_state;
DELETE FROM user_tag_state;
DELETE FROM tag_state;
DELETE FROM feature_counts;
DELETE FROM feature_state;
