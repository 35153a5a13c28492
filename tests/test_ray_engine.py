"""The Ray engine (igcli.engines.ray) against the local engine on the session's one local Ray: the same rows
for featurize and the same predictions for score, a missing image failing only its row, a worker killed
mid-job leaving the store as it was and the rerun resuming from the kept shards."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import query, run_cli

from igcli.engines.ray import RAY_MISSING, RayOptions, plan_actors, require_ray
from igcli.errors import EngineError, InputError

CLASSES = "SELECT sha256, backbone, weights_fp, rank, wnid, prob FROM image_classes ORDER BY sha256, rank"
EMBEDDINGS = "SELECT sha256, backbone, weights_fp, embedding FROM image_embeddings ORDER BY sha256"
ERRORS = ("SELECT sha256, backbone, weights_fp, reason FROM image_feature_errors WHERE backbone <> 'quality' "
          "ORDER BY sha256, backbone")
BACKBONE_TABLES = ("image_classes", "image_embeddings", "image_feature_errors")


@pytest.fixture(scope="module")
def ray_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small store (tiny images) with one image file deleted after ingest, and its local-engine result."""
    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_posts
    from igcli.commands.sample import generate_sample
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions

    base = tmp_path_factory.mktemp("ray-store")
    sample = base / "sample"
    generate_sample(sample, posts=60, users=6, seed=3, image_size=32)
    db = base / "ingested.duckdb"
    ingest_posts(sample / "posts.csv", db=db)
    path, sha = query(db, "SELECT path, sha256 FROM images WHERE status = 'ok' ORDER BY path LIMIT 1")[0]
    Path(path).unlink()  # gone after ingest: that image's rows must fail, the others not
    local = base / "local.duckdb"
    shutil.copy(db, local)
    featurize(local, FeaturizeOptions(images=ImageFeatureOptions(threads=1, workers=1)))
    return {"db": db, "local": local, "sample": sample, "missing_sha": sha}


def assert_same_rows(got: Path, want: Path, missing_sha: str) -> None:
    want_classes, got_classes = query(want, CLASSES), query(got, CLASSES)
    assert len(want_classes) > 100 and len(got_classes) == len(want_classes)
    for g, w in zip(got_classes, want_classes, strict=True):
        assert g[:5] == w[:5]                              # same image, model, rank and class
        assert g[5] == pytest.approx(w[5], abs=1e-5)
    want_emb, got_emb = query(want, EMBEDDINGS), query(got, EMBEDDINGS)
    assert [r[:3] for r in got_emb] == [r[:3] for r in want_emb] and want_emb
    np.testing.assert_allclose(np.array([r[3] for r in got_emb]), np.array([r[3] for r in want_emb]), atol=1e-5)
    errors = query(got, ERRORS)
    assert errors == query(want, ERRORS)
    assert {e[0] for e in errors} == {missing_sha} and "FileNotFoundError" in errors[0][3]


def counts(db: Path) -> dict[str, int]:
    """Rows the backbones wrote (the weight-free quality features run on the driver first, not on Ray)."""
    return {t: query(db, f"SELECT count(*) FROM {t}" + (" WHERE backbone <> 'quality'" if "errors" in t else ""))[0][0]
            for t in BACKBONE_TABLES}


def test_featurize_cli_on_ray_gives_the_local_rows(ray_cluster: dict, ray_store: dict, tmp_path: Path):
    db = tmp_path / "ray.duckdb"
    shutil.copy(ray_store["db"], db)
    staging = tmp_path / "staging"
    r = run_cli("featurize", "--db", str(db), "--engine", "ray", "--ray-address", ray_cluster["address"],
                "--staging", str(staging), "--batch-size", "8", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ray:CPUExecutionProvider" in r.stdout, r.stdout
    assert_same_rows(db, ray_store["local"], ray_store["missing_sha"])
    assert list(staging.iterdir()) == []  # loaded, then the run's staging folder is removed
    again = run_cli("featurize", "--db", str(db), "--engine", "ray", "--ray-address", ray_cluster["address"],
                    "--staging", str(staging))
    assert again.returncode == 0 and "nothing pending" in again.stdout, again.stdout + again.stderr[-2000:]


def test_killed_worker_leaves_the_store_unchanged_and_the_rerun_resumes(
    ray_cluster: dict, ray_store: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from igcli import store
    from igcli.commands.featurize import featurize_images
    from igcli.features.images import ImageFeatureOptions

    db = tmp_path / "killed.duckdb"
    shutil.copy(ray_store["db"], db)
    staging = tmp_path / "staging"
    ray_opts = RayOptions(staging=staging, batch_size=8, rows_per_shard=8)  # one batch per shard
    opts = ImageFeatureOptions(engine="ray", ray=ray_opts)
    before = counts(db)
    monkeypatch.setenv("IGCLI_FAULT", "ray.actor_exit")
    con = store.connect(db)
    try:
        with pytest.raises(EngineError, match="the store is unchanged: run the same command again to resume"):
            featurize_images(con, opts)
    finally:
        con.close()
    assert counts(db) == before == {t: 0 for t in BACKBONE_TABLES}
    kept = list(staging.glob("featurize-*/results/*.parquet"))
    assert kept, "no completed shard was kept for the rerun"
    monkeypatch.delenv("IGCLI_FAULT")
    con = store.connect(db)
    try:
        result = featurize_images(con, opts)
    finally:
        con.close()
    run = result.backbones[0]
    total = run.images_run + run.images_failed
    assert 0 < run.resumed < total  # part came from the killed job's shards, the rest ran now
    assert_same_rows(db, ray_store["local"], ray_store["missing_sha"])


def test_score_on_ray_gives_the_local_predictions(ray_cluster: dict, trained_store: dict, tmp_path: Path):
    from igcli.commands.score import ScoreOptions, score

    preds = ("SELECT post_id, model_id, predicted_log_likes, p10_likes, p90_likes, reference_likes, "
             "effect_user_level, effect_trend, effect_audience, effect_timing, effect_caption, effect_image "
             "FROM predictions ORDER BY post_id")
    new_posts = trained_store["sample"] / "new_posts.csv"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    local_db, ray_db = trained_store["db_copy"](tmp_path / "a"), trained_store["db_copy"](tmp_path / "b")
    score(new_posts, local_db, ScoreOptions(exports_dir=trained_store["exports"]))
    r = score(new_posts, ray_db, ScoreOptions(exports_dir=trained_store["exports"], engine="ray",
                                              ray=RayOptions(rows_per_shard=16)))
    want, got = query(local_db, preds), query(ray_db, preds)
    assert r.posts == len(want) > 16 and [g[:2] for g in got] == [w[:2] for w in want]
    np.testing.assert_allclose(np.array([g[2:] for g in got]), np.array([w[2:] for w in want]), rtol=1e-5)
    assert not list((tmp_path / "b").glob("igcli-staging/score-*"))


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, db: Path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(EngineError) as err:
        require_ray()
    assert str(err.value) == RAY_MISSING and "pip install 'igcli[ray]'" in RAY_MISSING
    import subprocess

    code = ("import sys; sys.modules['ray'] = None; from igcli.cli import main; "
            f"sys.argv = ['igcli', 'featurize', '--engine', 'ray', '--db', {str(db)!r}]; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "pip install 'igcli[ray]'" in r.stderr and "Traceback" not in r.stderr
    assert not db.exists()  # refused before the store was opened


def test_ray_options_need_the_ray_engine(db: Path):
    r = run_cli("featurize", "--db", str(db), "--ray-address", "auto")
    assert r.returncode == 1 and "need --engine ray" in r.stderr


def test_actor_plan_gpu_cpu_and_refusals():
    gpu = plan_actors({"CPU": 16, "GPU": 2}, RayOptions(), "auto", 32)
    assert (gpu.actors, gpu.num_gpus, gpu.device, gpu.batch_size) == (2, 1, "cuda", 128)
    forced_cpu = plan_actors({"CPU": 16, "GPU": 2}, RayOptions(), "cpu", 32)
    assert (forced_cpu.actors, forced_cpu.num_gpus, forced_cpu.device) == (15, 0, "cpu")
    cpu = plan_actors({"CPU": 8}, RayOptions(actor_cpus=2), "auto", 32)
    assert (cpu.actors, cpu.num_cpus, cpu.threads, cpu.batch_size) == (3, 2, 2, 32)  # one CPU left for reads
    assert plan_actors({"CPU": 2}, RayOptions(), "auto", 32).actors == 1
    with pytest.raises(EngineError, match="leave no CPU"):
        plan_actors({"CPU": 2}, RayOptions(actors=2), "auto", 32)
    with pytest.raises(EngineError, match="no GPU"):
        plan_actors({"CPU": 2}, RayOptions(), "cuda", 32)
    with pytest.raises(InputError, match="at least 1"):
        plan_actors({"CPU": 4}, RayOptions(actors=0), "auto", 32)
