"""SIGKILL in the middle of featurize, train and score (ingest: test_cli_ingest.py): the store opens
afterwards, holds only committed work, and rerunning the command reaches the same end state as a run that
was never interrupted. Processes are stopped at exact points with IGCLI_FAULT (igcli.store.fault_point)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import query, run_cli


def kill_at(fault: str, *args: str, timeout: float = 240) -> None:
    env = {**os.environ, "IGCLI_FAULT": fault}
    p = subprocess.Popen([sys.executable, "-m", "igcli", *args], stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True, env=env)
    deadline, seen = time.time() + timeout, ""
    while time.time() < deadline:
        line = p.stderr.readline()
        if f"IGCLI_FAULT reached {fault}" in line:
            seen = line
            break
        if not line and p.poll() is not None:
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert seen, f"the process never reached {fault}"


q = query


def ok(*args: str) -> None:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr


def featurize_args(db: Path, sample_dir: Path) -> tuple[str, ...]:
    return ("featurize", "--db", str(db), "--no-backbones", "--hashtag-ranking",
            str(sample_dir / "hashtag_ranking.txt"))


FEATURES = "SELECT * EXCLUDE (computed_at) FROM post_features ORDER BY post_id"
QUALITY = "SELECT * EXCLUDE (computed_at) FROM image_quality ORDER BY sha256"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    db = tmp_path_factory.mktemp("ingested") / "s.duckdb"
    ok("ingest", str(sample_dir / "posts.csv"), "--db", str(db))
    return db


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, ingested: Path, sample_dir: Path) -> Path:
    """The uninterrupted featurize, for comparing end states."""
    db = tmp_path_factory.mktemp("reference") / "s.duckdb"
    shutil.copy(ingested, db)
    ok(*featurize_args(db, sample_dir))
    return db


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "s.duckdb"
    shutil.copy(src, dst)
    return dst


def test_featurize_killed_before_commit(ingested, reference, sample_dir, tmp_path):
    db = _copy(ingested, tmp_path)
    args = featurize_args(db, sample_dir)
    kill_at("featurize.before_commit", *args)
    tables = {r[0] for r in q(db, "SELECT table_name FROM information_schema.tables")}
    assert "post_features" not in tables or q(db, "SELECT count(*) FROM post_features") == [(0,)]
    assert q(db, "SELECT count(*) FROM posts") == q(reference, "SELECT count(*) FROM posts")
    ok(*args)
    assert q(db, FEATURES) == q(reference, FEATURES) and q(db, QUALITY) == q(reference, QUALITY)


def test_featurize_killed_between_image_batches_resumes(ingested, reference, sample_dir, tmp_path):
    db = _copy(ingested, tmp_path)
    args = featurize_args(db, sample_dir)
    kill_at("quality.after_batch", *args)
    done = q(db, "SELECT count(*) FROM image_quality")[0][0]
    total = q(reference, "SELECT count(*) FROM image_quality")[0][0]
    assert 0 < done < total                     # the first batch was committed, the rest was not
    ok(*args)
    assert q(db, QUALITY) == q(reference, QUALITY) and q(db, FEATURES) == q(reference, FEATURES)


@pytest.mark.parametrize("fault", ["train.before_export", "export.before_publish"])
def test_train_killed_leaves_no_model_and_reruns(reference, tmp_path, fault):
    db = _copy(reference, tmp_path)
    exports = tmp_path / "exports"
    args = ("train", "--db", str(db), "--exports", str(exports), "--epochs", "3", "--ensemble", "1")
    kill_at(fault, *args)
    assert q(db, "SELECT count(*) FROM runs") == [(0,)]
    published = [p for p in exports.glob("*") if not p.name.startswith(".")] if exports.exists() else []
    assert published == []                      # no half-written model under a real name, no `latest`
    ok(*args)
    assert q(db, "SELECT count(*) FROM runs") == [(1,)]
    assert sorted(p.name for p in exports.iterdir()) == sorted([q(db, "SELECT model_id FROM runs")[0][0], "latest"])


def test_score_killed_before_commit(reference, sample_dir, tmp_path):
    db = _copy(reference, tmp_path)
    exports = tmp_path / "exports"
    ok("train", "--db", str(db), "--exports", str(exports), "--epochs", "5", "--ensemble", "1")
    ref_db = tmp_path / "ref.duckdb"
    shutil.copy(db, ref_db)
    args = ("score", str(sample_dir / "new_posts.csv"), "--exports", str(exports))
    ok(*args, "--db", str(ref_db))
    kill_at("score.before_commit", *args, "--db", str(db))
    assert q(db, "SELECT count(*) FROM predictions") == [(0,)]
    ok(*args, "--db", str(db))
    preds = "SELECT post_id, model_id, predicted_log_likes, p10_likes, p90_likes FROM predictions ORDER BY post_id"
    assert q(db, preds) == q(ref_db, preds) and len(q(db, preds)) > 0


def test_read_only_store_path_is_a_clear_error(tmp_path):
    (tmp_path / "p.csv").write_text("post_id,username,posted_at\np1,a,2020-01-01\n")
    # a store in a folder that does not exist, then one that cannot be created: one line naming --db each
    for store_path, says in (("/proc/igcli-test/s.duckdb", "/proc/igcli-test does not exist"),
                             ("/proc/igcli.duckdb", "cannot")):
        r = run_cli("ingest", str(tmp_path / "p.csv"), "--db", store_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, store_path
        assert says in r.stderr and "--db" in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


def test_unwritable_exports_is_a_clear_error(reference, tmp_path):
    db = _copy(reference, tmp_path)
    r = run_cli("train", "--db", str(db), "--exports", "/proc/igcli-exports", "--epochs", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "exports directory" in r.stderr and "--exports" in r.stderr
    assert q(db, "SELECT count(*) FROM runs") == [(0,)]
