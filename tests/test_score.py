"""igcli.score: end to end on generated data, point in time at scoring, idempotence, outputs, refusals."""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import numpy as np
import pytest

from igcli.errors import FeatureMismatch, ModelError
from igcli.score import ScoreOptions, score

HEADER = "post_id,username,posted_at,caption,hashtags,mentions,likes,followers,following,user_post_count,image\n"


def _opts(trained_store, **kw) -> ScoreOptions:
    return ScoreOptions(exports_dir=trained_store["exports"], **kw)


def _predictions(db: Path) -> dict[str, tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT post_id, model_id, predicted_log_likes, predicted_likes, p10_likes, p90_likes FROM predictions"
        ).fetchall()}
    finally:
        con.close()


def test_end_to_end_scores_new_posts(trained_store, tmp_path: Path):
    db = trained_store["db_copy"](tmp_path)
    sample = trained_store["sample"]
    r = score(sample / "new_posts.csv", db, _opts(trained_store))
    with open(sample / "new_posts_truth.csv", newline="") as fh:
        truth = {row["post_id"]: float(row["likes"]) for row in csv.DictReader(fh)}
    preds = _predictions(db)
    assert r.posts == len(truth) == len(preds) and r.provider == "CPUExecutionProvider"
    assert r.cold_start_users >= 3          # the sample plants 3-5 users the store has never seen
    assert all(p10 <= likes <= p90 for _, _, likes, p10, p90 in preds.values())
    err = np.array([abs(preds[k][1] - np.log(v)) for k, v in truth.items()])
    ln_truth = np.log(list(truth.values()))
    oracle_constant = np.abs(ln_truth - ln_truth.mean())   # even the best constant, knowing the answers
    assert err.mean() < 0.6 * oracle_constant.mean(), (err.mean(), oracle_constant.mean())


def test_rescoring_replaces_rows(trained_store, tmp_path: Path):
    db = trained_store["db_copy"](tmp_path)
    new = trained_store["sample"] / "new_posts.csv"
    score(new, db, _opts(trained_store))
    first = _predictions(db)
    score(new, db, _opts(trained_store))
    assert _predictions(db).keys() == first.keys()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT post_id) FROM predictions").fetchall()[0] == (
        len(first), len(first))
    con.close()


def test_scored_post_never_sees_its_own_or_later_likes(trained_store, tmp_path: Path):
    db = trained_store["db_copy"](tmp_path)
    con = duckdb.connect(str(db), read_only=True)
    user, last = con.execute("SELECT username, max(posted_at) FROM posts GROUP BY 1 ORDER BY 1 LIMIT 1").fetchall()[0]
    con.close()
    t = last.replace(year=last.year + 1)

    def batch(name: str, rows: list[str]) -> Path:
        p = tmp_path / name
        p.write_text(HEADER + "\n".join(rows) + "\n")
        return p

    target = f"x1,{user},{t.isoformat()},hello,,,{{likes}},1000,10,10,"
    score(batch("a.csv", [target.format(likes="")]), db, _opts(trained_store))
    base = _predictions(db)["x1"][1]
    score(batch("b.csv", [target.format(likes="9999999")]), db, _opts(trained_store))   # its own likes
    assert _predictions(db)["x1"][1] == pytest.approx(base, abs=1e-6)
    later = f"x2,{user},{t.replace(day=min(t.day + 1, 28)).isoformat()},later,,,50000000,1000,10,10,"
    score(batch("c.csv", [target.format(likes=""), later]), db, _opts(trained_store))  # a later post
    assert _predictions(db)["x1"][1] == pytest.approx(base, abs=1e-6)


def test_unseen_user_is_cold_start(trained_store, tmp_path: Path):
    db = trained_store["db_copy"](tmp_path)
    p = tmp_path / "cold.csv"
    p.write_text(HEADER + "c1,never_seen_before,2025-02-01 20:00,hi #travel,#travel,,,5000,100,3,\n")
    r = score(p, db, _opts(trained_store))
    assert (r.posts, r.cold_start_users, r.cold_start_posts, r.without_image) == (1, 1, 1, 1)
    assert _predictions(db)["c1"][2] > 0


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_output_file(trained_store, tmp_path: Path, suffix: str):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    db = trained_store["db_copy"](tmp_path)
    out = tmp_path / f"preds{suffix}"
    r = score(trained_store["sample"] / "new_posts.csv", db, _opts(trained_store, out=out))
    table = pcsv.read_csv(out) if suffix == ".csv" else pq.read_table(out)
    assert table.column_names == ["post_id", "model_id", "predicted_log_likes", "predicted_likes", "p10_likes",
                                  "p90_likes", "scored_at"]
    assert table.num_rows == r.posts and r.out == str(out)


def test_model_without_matching_ranking_is_refused(trained_store, tmp_path: Path):
    from igcli import store

    db = tmp_path / "fresh.duckdb"
    store.connect(db).close()
    with pytest.raises(FeatureMismatch, match="--hashtag-ranking"):
        score(trained_store["sample"] / "new_posts.csv", db, _opts(trained_store))


def test_altered_model_is_refused_before_anything_is_written(trained_store, tmp_path: Path):
    import shutil

    from igcli.export import resolve_model_dir

    src = resolve_model_dir("latest", trained_store["exports"])
    d = tmp_path / "m"
    shutil.copytree(src, d)
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-10])
    db = trained_store["db_copy"](tmp_path)
    with pytest.raises(ModelError, match="altered"):
        score(trained_store["sample"] / "new_posts.csv", db, ScoreOptions(model=str(d)))
    assert _predictions(db) == {}


def test_cpu_provider_reported(trained_store, tmp_path: Path):
    from igcli.score import _gpu_present, choose_providers

    if _gpu_present():
        pytest.skip("a GPU is present: this test checks the CPU-only report")
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    r = score(trained_store["sample"] / "new_posts.csv", trained_store["db_copy"](tmp_path),
              _opts(trained_store, device="auto"))
    assert r.providers == ["CPUExecutionProvider"]
