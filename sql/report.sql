-- Read-only queries behind `igcli report` (igcli.report). One named block per question.

-- name: store_overview
-- Dates before Instagram existed (2010-10-06) are missing-date placeholders (ingest warns about them): the first
-- post is the first real date, and the placeholders are counted apart.
SELECT count(*) AS posts, count(DISTINCT username) AS users,
       min(posted_at) FILTER (WHERE posted_at >= TIMESTAMP '2010-10-06') AS first_post,
       max(posted_at) AS last_post, count(likes) AS with_likes, count(*) FILTER (WHERE likes = 0) AS zero_likes,
       count(*) FILTER (WHERE posted_at < TIMESTAMP '2010-10-06') AS placeholder_dates
FROM posts;

-- name: store_likes
SELECT likes FROM posts WHERE likes > 0;

-- name: posts_per_user
SELECT count(*) AS n FROM posts GROUP BY username;

-- name: rejects_by_reason
SELECT reason, count(*) AS n FROM rejects GROUP BY reason ORDER BY n DESC, reason;

-- name: images_by_status
SELECT status, count(*) AS n FROM images GROUP BY status ORDER BY n DESC, status;

-- name: image_quality_rows
SELECT count(*) FROM image_quality;

-- name: feature_errors
SELECT backbone, weights_fp, count(*) AS n FROM image_feature_errors GROUP BY 1, 2 ORDER BY n DESC;

-- name: run_by_id
SELECT model_id, created_at, split, seed, branches, data_fingerprint, metrics, baselines, backbones, export_dir
FROM runs WHERE model_id = $model_id;

-- name: latest_exported_runs
SELECT model_id, export_dir FROM runs WHERE export_dir IS NOT NULL ORDER BY created_at DESC;

-- Runs trained on the same split, seed and training rows: the branch combinations of one ablation.
-- name: sibling_runs
SELECT model_id, created_at, branches, metrics FROM runs
WHERE split = $split AND seed = $seed AND data_fingerprint = $fingerprint
ORDER BY created_at;

-- name: predictions_columns
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'main' AND table_name = 'predictions' ORDER BY ordinal_position;

-- name: latest_batch
SELECT max(scored_at) FROM predictions WHERE model_id = $model_id;

-- name: batch_rows
SELECT pr.*, p.username, p.posted_at, p.likes AS actual_likes, i.path AS image_file, i.sha256 AS image_sha256
FROM predictions pr JOIN posts p USING (post_id)
LEFT JOIN images i ON i.path = p.image_path AND i.status = 'ok'
WHERE pr.model_id = $model_id AND pr.scored_at = $scored_at
ORDER BY pr.post_id;
