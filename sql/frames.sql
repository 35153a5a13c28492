-- The photo history of a frame's users (igcli.features.frames.image_history_columns): every stored post of the
-- users in igc_photo_users, with its likes and whether it has an embedding of the source. One named block each.

-- name: photo_history_posts
SELECT p.post_id, p.username, p.posted_at, p.likes, e.sha256 IS NOT NULL AS has_embedding
FROM posts p
LEFT JOIN images i ON i.path = p.image_path AND i.status = 'ok'
LEFT JOIN image_embeddings e ON e.sha256 = i.sha256 AND e.backbone = $backbone AND e.weights_fp = $weights_fp
WHERE p.username IN (SELECT username FROM igc_photo_users)
ORDER BY p.username, p.posted_at, p.post_id;

-- The embeddings of the posts in igc_photo_ids (history posts the frame does not hold).
-- name: photo_history_embeddings
SELECT p.post_id, e.embedding
FROM posts p
JOIN images i ON i.path = p.image_path AND i.status = 'ok'
JOIN image_embeddings e ON e.sha256 = i.sha256 AND e.backbone = $backbone AND e.weights_fp = $weights_fp
WHERE p.post_id IN (SELECT post_id FROM igc_photo_ids);
