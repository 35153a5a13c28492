-- Reads about posts' images (igcli.commands.ingest.image_problems, for ingest and score).

-- name: image_problems
-- Posts of igc_problem_ids that name an image the model could not use: refused or missing at ingest
-- (images.status), or undecodable when its features were computed (image_feature_errors); the first $shown,
-- each with the total.
SELECT post_id, image_ref, reason, count(*) OVER () AS total
FROM (
    SELECT p.post_id, p.image_ref,
           coalesce(CASE WHEN i.status <> 'ok' THEN i.error END, e.reason, 'not found') AS reason
    FROM posts p JOIN igc_problem_ids USING (post_id)
    LEFT JOIN images i ON i.path = p.image_path
    LEFT JOIN (SELECT sha256, min(reason) AS reason FROM image_feature_errors GROUP BY sha256) e
           ON e.sha256 = i.sha256 AND i.status = 'ok'
    WHERE p.image_ref IS NOT NULL AND (i.path IS NULL OR i.status <> 'ok' OR e.reason IS NOT NULL)
)
ORDER BY post_id
LIMIT $shown;
