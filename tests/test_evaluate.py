"""igcli.commands.evaluate: the loop on generated data (score new posts, ingest their likes, evaluate), what counts
as a prediction made before the likes were known, no-op reruns, two models apart, the CLI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import csv_rows, execute, query, run_cli

from igcli.commands.evaluate import MAX_PERIODS, evaluate, summarize
from igcli.commands.ingest import ingest_posts
from igcli.commands.score import ScoreOptions, score
from igcli.errors import InputError


def _opts(trained_store, **kw) -> ScoreOptions:
    return ScoreOptions(exports_dir=trained_store["exports"], device="cpu", **kw)


@pytest.fixture(scope="module")
def looped(trained_store, tmp_path_factory) -> dict:
    """A copy of the trained store: the sample's new posts scored (likes unknown), evaluated once (nothing to do),
    their likes ingested, evaluated again."""
    base = tmp_path_factory.mktemp("loop")
    db = trained_store["db_copy"](base)
    sample = trained_store["sample"]
    scored = score(sample / "new_posts.csv", db, _opts(trained_store))
    before = evaluate(db)
    ingest_posts(sample / "new_posts_with_likes.csv", db=db)
    after = evaluate(db)
    return {**trained_store, "db": db, "scored": scored, "before": before, "after": after, "base": base}


def test_nothing_to_evaluate_before_the_likes_arrive(looped):
    before = looped["before"]
    assert (before.new, before.updated, before.unchanged) == (0, 0, 0)
    (m,) = before.models
    assert m.blind["n"] == 0 and m.waiting == looped["scored"].posts and m.informed is None


def test_realized_metrics_are_those_of_the_truth_file(looped):
    """Every new post's outcome, with MAE / coverage recomputed here from the truth file and predictions."""
    truth = {r["post_id"]: float(r["likes"]) for r in csv_rows(looped["sample"] / "new_posts_truth.csv")}
    after = looped["after"]
    assert after.new == len(truth) and after.updated == 0
    (m,) = after.models
    assert m.waiting == 0 and m.informed is None and m.blind["n"] == len(truth)
    rows = query(looped["db"], "SELECT p.post_id, predicted_log_likes, p10_likes, p90_likes, user_mean_log_likes, "
                               "usual_likes, likes_known FROM predictions p")
    assert len(rows) == len(truth) and not any(r[6] for r in rows)       # scored before the likes were known
    y = np.log([truth[r[0]] for r in rows])
    pred = np.array([r[1] for r in rows])
    assert m.blind["mae"] == pytest.approx(np.mean(np.abs(pred - y)), rel=1e-9)
    cover = np.mean([(r[2] <= truth[r[0]] <= r[3]) for r in rows])
    assert m.blind["coverage_p10_p90"] == pytest.approx(cover, rel=1e-9)
    hist = [i for i, r in enumerate(rows) if r[4] is not None]
    cold = len(rows) - len(hist)
    assert cold >= 3 and m.with_history["user_mean"]["n"] == len(hist)   # the sample's cold-start posts
    base = np.array([rows[i][4] for i in hist])
    assert m.with_history["user_mean"]["mae"] == pytest.approx(np.mean(np.abs(base - y[hist])), rel=1e-9)
    assert m.with_history["model"]["mae"] == pytest.approx(np.mean(np.abs(pred[hist] - y[hist])), rel=1e-9)
    assert m.usual["mae"] == pytest.approx(np.mean(np.abs(np.log([r[5] for r in rows]) - y)), rel=1e-9)
    assert 0.0 <= m.blind["pairwise"] <= 1.0
    assert m.with_history["user_mean"]["pairwise"] == pytest.approx(0.5)   # one value per user in a batch
    assert m.period == "batch" and len(m.periods) == 1 and m.periods[0]["n"] == len(truth)


def test_the_users_mean_is_the_one_known_when_scored(looped):
    """user_mean_log_likes is the mean ln-likes of the user's posts before the batch (the store's history)."""
    got = dict(query(looped["db"], "SELECT post_id, user_mean_log_likes FROM predictions"))
    want = dict(query(looped["db"], """SELECT n.post_id, avg(ln(p.likes)) FROM predictions n
                                       JOIN posts q USING (post_id) JOIN posts p ON p.username = q.username
                                       AND p.posted_at < q.posted_at AND p.likes > 0
                                       AND p.post_id NOT IN (SELECT post_id FROM predictions) GROUP BY 1"""))
    assert {k for k, v in got.items() if v is not None} == set(want)
    for pid, v in want.items():
        assert got[pid] == pytest.approx(v, abs=1e-6)


def test_a_rerun_with_nothing_new_writes_nothing(looped, tmp_path: Path):
    import shutil

    db = tmp_path / "again.duckdb"
    shutil.copy(looped["db"], db)
    first = query(db, "SELECT * FROM evaluations ORDER BY post_id")
    again = evaluate(db)
    assert (again.new, again.updated, again.unchanged) == (0, 0, len(first))
    assert query(db, "SELECT * FROM evaluations ORDER BY post_id") == first     # evaluated_at too
    assert again.models[0].blind == looped["after"].models[0].blind


def test_a_later_scoring_by_the_same_model_keeps_the_blind_prediction(looped, tmp_path: Path):
    import shutil

    db = tmp_path / "rescored.duckdb"
    shutil.copy(looped["db"], db)
    rows = "SELECT post_id, scored_at, predicted_log_likes, likes_known FROM predictions ORDER BY 1"
    before = query(db, rows)
    r = score(looped["sample"] / "new_posts_with_likes.csv", db, _opts(looped))
    assert r.kept_earlier == r.posts == len(before)
    assert query(db, rows) == before
    again = evaluate(db)
    assert (again.new, again.updated) == (0, 0) and again.models[0].informed is None


def test_another_model_after_the_likes_is_reported_apart(looped, tmp_path: Path):
    import shutil

    from igcli.commands.train import TrainOptions, train

    db = tmp_path / "two.duckdb"
    shutil.copy(looped["db"], db)
    exports = tmp_path / "ex"
    other = train(db, TrainOptions(epochs=5, ensemble=1, seed=3, exports_dir=exports, plots=False))
    r = score(looped["sample"] / "new_posts_with_likes.csv", db, ScoreOptions(exports_dir=exports, device="cpu"))
    assert r.model_id == other.model_id and r.kept_earlier == 0
    res = evaluate(db)
    assert res.new == r.posts and res.updated == 0
    first, second = (next(m for m in res.models if m.model_id == mid)
                     for mid in (looped["run"].model_id, other.model_id))
    assert first.blind == looped["after"].models[0].blind and first.informed is None
    assert second.blind["n"] == 0 and second.informed["n"] == r.posts
    assert query(db, "SELECT count(*), count(DISTINCT post_id) FROM evaluations") == [(2 * r.posts, r.posts)]
    only = evaluate(db, model=other.model_id)
    assert [m.model_id for m in only.models] == [other.model_id]


def test_rows_scored_before_likes_known_existed_are_judged_by_their_posts_update(looped, tmp_path: Path):
    """An older igcli stored no likes_known: a prediction counts when its post changed after it was scored."""
    import shutil

    db = tmp_path / "old.duckdb"
    shutil.copy(looped["db"], db)
    pids = [r[0] for r in query(db, "SELECT post_id FROM predictions ORDER BY post_id")]
    late = pids[:5]
    execute(db, "DELETE FROM evaluations", "UPDATE predictions SET likes_known = NULL",
            # five posts scored after their last change: their likes were there already
            f"UPDATE predictions SET scored_at = now()::TIMESTAMP + INTERVAL 1 DAY "
            f"WHERE post_id IN ({', '.join(repr(p) for p in late)})")
    res = evaluate(db)
    (m,) = res.models
    assert m.informed["n"] == 5 and m.blind["n"] == len(pids) - 5
    assert dict(query(db, "SELECT post_id, blind FROM evaluations WHERE NOT blind")) == dict.fromkeys(late, False)


def test_since_and_unknown_model(looped):
    later = datetime.now() + timedelta(days=1)
    res = evaluate(looped["db"], since=later.strftime("%Y-%m-%d"))
    assert res.models == [] and res.unchanged == looped["after"].new
    with pytest.raises(InputError, match="no predictions in this store"):
        evaluate(looped["db"], model="no-such-model")
    with pytest.raises(InputError, match="--since"):
        evaluate(looped["db"], since="last tuesday")


def test_many_batches_are_grouped_by_week():
    rng = np.random.default_rng(0)
    n = 400
    start = np.datetime64("2025-01-06T00:00:00", "us")           # a Monday
    scored = start + (rng.integers(0, MAX_PERIODS + 8, n) * np.timedelta64(36, "h"))
    week = start + ((scored - start) // np.timedelta64(7, "D")) * np.timedelta64(7, "D")
    y = rng.normal(6, 1, n)
    rows = {"model_id": np.array(["m"] * n, dtype=object), "post_id": np.array([str(i) for i in range(n)], object),
            "username": np.array([f"u{i % 20}" for i in range(n)], dtype=object), "scored_at": scored, "week": week,
            "blind": np.ones(n, bool), "predicted_log_likes": y + 0.1, "p10_log_likes": y - 1,
            "p90_log_likes": y + 1, "usual_log_likes": y, "user_mean_log_likes": np.ma.masked_array(y, y > 7),
            "actual_likes": np.round(np.exp(y)).astype(np.int64)}
    (m,) = summarize(rows)
    assert m.period == "week" and len(m.periods) == len(np.unique(week))
    assert sum(p["n"] for p in m.periods) == n and sum(p["batches"] for p in m.periods) == len(np.unique(scored))
    assert m.with_history["user_mean"]["n"] == int(np.sum(y <= 7))
    assert m.blind["coverage_p10_p90"] == 1.0


def test_cli_evaluate_json_table_and_bad_since(looped, tmp_path: Path):
    r = run_cli("evaluate", "--db", str(looped["db"]), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["new"] == 0 and got["models"][0]["blind"]["n"] == looped["after"].models[0].blind["n"]
    r = run_cli("evaluate", "--db", str(looped["db"]))
    assert r.returncode == 0 and "predictions made before the likes were known" in r.stdout
    assert "baseline: user's mean" in r.stdout and "by batch of scoring" in r.stdout
    r = run_cli("evaluate", "--db", str(looped["db"]), "--since", "yesterday")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "--since" in r.stderr
    r = run_cli("evaluate", "--db", str(tmp_path / "none.duckdb"))
    assert r.returncode == 1 and "no store at" in r.stderr and not (tmp_path / "none.duckdb").exists()


def test_a_store_of_schema_3_gains_the_loop_and_keeps_its_rows(looped, tmp_path: Path):
    import shutil

    from igcli import store

    db = tmp_path / "v3.duckdb"
    shutil.copy(looped["db"], db)
    execute(db, "DROP TABLE evaluations", "DROP TABLE batch_drift", "DROP TABLE score_batches",
            *[f"ALTER TABLE predictions DROP COLUMN {c}" for c in (
                "likes_known", "user_mean_log_likes", "reference_likes", "effect_user_level", "effect_trend",
                "effect_audience", "effect_timing", "effect_caption", "effect_image")],
            "DELETE FROM schema_version WHERE version > 3")
    rows = query(db, "SELECT post_id, predicted_log_likes FROM predictions ORDER BY 1")
    store.connect(db).close()
    assert query(db, "SELECT max(version) FROM schema_version") == [(store.SCHEMA_VERSION,)]
    assert query(db, "SELECT post_id, predicted_log_likes FROM predictions ORDER BY 1") == rows
    res = evaluate(db)       # no likes_known: the posts changed after scoring (their likes arrived): all count
    assert res.new == len(rows) and res.models[0].blind["n"] == len(rows)
