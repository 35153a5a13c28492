-- The `runs` table as `igcli train` writes and reads it (igcli.commands.train). One named block per statement.

-- name: insert_run
INSERT INTO runs (model_id, created_at, config, split, seed, branches, data_fingerprint, feature_names, backbones,
                  metrics, baselines, test_mae, timings, export_dir, chosen_by)
VALUES ($model_id, $created_at, $config, $split, $seed, $branches, $fingerprint, $feature_names, $backbones,
        $metrics, $baselines, $test_mae, $timings, $export_dir, $chosen_by);

-- The store's model: the latest exported run that train chose (on validation) or was told to train (--branches).
-- name: chosen_model
SELECT model_id FROM runs
WHERE chosen_by IN ('validation', 'forced') AND export_dir IS NOT NULL
ORDER BY created_at DESC, model_id DESC
LIMIT 1;

-- An --all-combinations ablation: its run with the lowest validation MAE is the chosen one, the others are not.
-- name: mark_chosen
UPDATE runs SET chosen_by = CASE WHEN model_id = $chosen THEN 'validation' ELSE 'ablation' END
WHERE list_contains($ids::VARCHAR[], model_id);
