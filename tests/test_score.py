"""igcli.commands.score: end to end on generated data, point in time at scoring, idempotence, outputs, refusals."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import csv_rows, missing, write_csv_rows

from igcli.commands.score import ScoreOptions, score
from igcli.errors import FeatureMismatch, ModelError

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
    truth = {row["post_id"]: float(row["likes"]) for row in csv_rows(sample / "new_posts_truth.csv")}
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
    _, log_likes, likes, p10, p90 = _predictions(db)["c1"]
    assert math.isfinite(log_likes) and likes == pytest.approx(math.exp(log_likes), rel=1e-6)
    assert p10 <= likes <= p90
    # with no history the prediction stays among the ln-likes the store has seen, not off the scale
    con = duckdb.connect(str(db), read_only=True)
    lo, hi = con.execute("SELECT min(ln(likes)), max(ln(likes)) FROM posts WHERE likes > 0").fetchall()[0]
    con.close()
    assert lo <= log_likes <= hi


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_output_file(trained_store, tmp_path: Path, suffix: str):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    db = trained_store["db_copy"](tmp_path)
    out = tmp_path / f"preds{suffix}"
    r = score(trained_store["sample"] / "new_posts.csv", db, _opts(trained_store, out=out))
    table = pcsv.read_csv(out) if suffix == ".csv" else pq.read_table(out)
    assert table.column_names == ["post_id", "username", "posted_at", "predicted_likes", "p10_likes", "p90_likes",
                                  "usual_likes", "vs_usual", "cold_start", "image_used", "model_id",
                                  "predicted_log_likes", "scored_at", "batch_id", "reference_likes",
                                  "effect_user_level", "effect_trend", "effect_audience", "effect_timing",
                                  "effect_caption", "effect_image"]
    assert table.num_rows == r.posts and r.out == str(out)
    product = table["reference_likes"].to_numpy() * np.prod(
        [table[c].to_numpy() for c in table.column_names if c.startswith("effect_")], axis=0)
    stored = {pid: likes for pid, (_, _, likes, _, _) in _predictions(db).items()}   # --out rounds the likes
    np.testing.assert_allclose(product, [stored[p] for p in table["post_id"].to_pylist()], rtol=1e-5)


def test_drivers_and_drift_are_stored_with_the_batch(trained_store, tmp_path: Path):
    """Each row's drivers multiply to its prediction; the batch and each input's PSI are stored; a batch whose
    captions are in another script and whose followers grew a hundredfold has both named."""
    from igcli.model.explain import GROUPS

    db = trained_store["db_copy"](tmp_path)
    rows = csv_rows(trained_store["sample"] / "new_posts.csv")
    # three copies: a batch large enough to judge drift (igcli.model.explain.MIN_DRIFT_POSTS)
    batch = [{**r, "post_id": f"{r['post_id']}-{k}"} for k in range(3) for r in rows]
    plain, shifted = tmp_path / "plain.csv", tmp_path / "shifted.csv"
    write_csv_rows(plain, batch)
    write_csv_rows(shifted, [{**r, "post_id": f"s-{r['post_id']}", "caption": "今日はとても良い天気です 東京",
                              "followers": str(int(float(r["followers"] or 1000) * 100)),
                              "observed_at": "2024-12-31 00:00:00"} for r in batch])
    r = score(plain, db, _opts(trained_store, images_dir=trained_store["sample"]))
    assert len(batch) >= 100 and r.posts == len(batch) and r.drift is not None
    # the sample's new posts come from a few of its users: their audience differs from the training mix already
    plain_drift = {d["input"]: d for d in r.drift}
    assert plain_drift["frac_ascii"]["level"] == "ok", r.drift_summary
    s = score(shifted, db, _opts(trained_store, images_dir=trained_store["sample"]))
    drift = {d["input"]: d for d in s.drift}
    assert drift["followers"]["level"] == drift["frac_ascii"]["level"] == "drift", s.drift_summary
    assert drift["followers"]["psi"] > plain_drift["followers"]["psi"] + 1.0
    assert s.drift_summary.startswith("drift: ") and "followers" in s.drift_summary
    con = duckdb.connect(str(db), read_only=True)
    try:
        batches = con.execute("SELECT model_id, scored_at, posts FROM score_batches ORDER BY scored_at").fetchall()
        assert [b[2] for b in batches] == [len(batch), len(batch)] and batches[0][0] == r.model_id
        stored = con.execute("SELECT input, psi, level FROM batch_drift WHERE scored_at = ? ORDER BY input",
                             [batches[1][1]]).fetchall()
        assert {i: (p, lvl) for i, p, lvl in stored} == {k: (d["psi"], d["level"]) for k, d in drift.items()}
        effects = ", ".join(f"effect_{g}" for g in GROUPS)
        got = con.execute(f"SELECT predicted_likes, reference_likes, {effects} FROM predictions").fetchall()
    finally:
        con.close()
    got = np.array(got)
    np.testing.assert_allclose(got[:, 1] * np.prod(got[:, 2:], axis=1), got[:, 0], rtol=1e-5)
    assert len(np.unique(got[:, 1])) == 1                                  # one reference post per model
    assert all(e["drivers"] for e in r.above_usual + r.below_usual)


def test_prediction_and_usual_pass_side_by_side_store_what_one_session_stores(trained_store, tmp_path: Path,
                                                                            monkeypatch):
    """On the CPU the prediction runs on one of the local engine's two sessions while usual_likes' pass runs on the
    other; every stored value (the quantiles, usual_likes, the drivers) is the one a single session gives."""
    import igcli.engines.local as local
    from igcli.model.explain import GROUPS

    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)              # two streams whatever this machine has
    calls: list[tuple[int, int]] = []
    run = local._SessionPredictor.__call__

    def spy(self, inputs, post_ids, con):
        calls.append((id(self), len(inputs["meta"])))
        return run(self, inputs, post_ids, con)

    monkeypatch.setattr(local._SessionPredictor, "__call__", spy)
    columns = ("post_id, predicted_log_likes, p10_likes, p90_likes, usual_likes, vs_usual, reference_likes, "
               + ", ".join(f"effect_{g}" for g in GROUPS))
    got = {}
    for name, streams in (("two", None), ("one", lambda self: [self])):
        if streams:
            monkeypatch.setattr(local._SessionPredictor, "streams", streams)
        (tmp_path / name).mkdir()
        db = trained_store["db_copy"](tmp_path / name)
        calls.clear()
        r = score(trained_store["sample"] / "new_posts.csv", db, _opts(trained_store))
        con = duckdb.connect(str(db), read_only=True)
        try:
            got[name] = con.execute(f"SELECT {columns} FROM predictions ORDER BY post_id").fetchall()
        finally:
            con.close()
        # the batch's passes (the reference row aside): on two sessions, or all on one
        full = {who for who, rows in calls if rows == r.posts}
        assert len(full) == (2 if name == "two" else 1), calls
    assert len(got["two"]) == r.posts and got["two"] == got["one"]


def test_model_without_matching_ranking_is_refused(trained_store, tmp_path: Path):
    from igcli import store
    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_posts
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions

    db = tmp_path / "fresh.duckdb"
    store.connect(db).close()
    ingest_posts(trained_store["sample"] / "posts.csv", db=db)      # featurized without the model's ranking
    featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    with pytest.raises(FeatureMismatch, match="--hashtag-ranking"):
        score(trained_store["sample"] / "new_posts.csv", db, _opts(trained_store))


def test_altered_model_is_refused_before_anything_is_written(trained_store, tmp_path: Path):
    import shutil

    from igcli.model.export import resolve_model_dir

    src = resolve_model_dir("latest", trained_store["exports"])
    d = tmp_path / "m"
    shutil.copytree(src, d)
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-10])
    db = trained_store["db_copy"](tmp_path)
    with pytest.raises(ModelError, match="altered"):
        score(trained_store["sample"] / "new_posts.csv", db, ScoreOptions(model=str(d)))
    assert _predictions(db) == {}


def test_cpu_provider_reported(trained_store, tmp_path: Path):
    from igcli.ort import choose_providers, gpu_present

    assert choose_providers("cpu") == ["CPUExecutionProvider"]  # forcing the CPU holds on a GPU machine too
    if gpu_present():
        pytest.skip("a GPU is present: the rest checks the CPU-only report of --device auto")
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    r = score(trained_store["sample"] / "new_posts.csv", trained_store["db_copy"](tmp_path),
              _opts(trained_store, device="auto"))
    assert r.providers == ["CPUExecutionProvider"]


def _rewrite_content(src: Path, dst: Path) -> None:
    """The same posts with other captions, hashtags and mentions: content only."""
    rows = csv_rows(src)
    for i, row in enumerate(rows):
        row["caption"] = ("a much longer caption about something else entirely " * (1 + i % 4)).strip()
        row["hashtags"] = " ".join(f"#tag{j}" for j in range(i % 7))
        row["mentions"] = "@someone" if i % 2 else ""
    write_csv_rows(dst, rows)


def _usual(db: Path) -> dict[str, tuple[float, float, float]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT post_id, predicted_likes, usual_likes, vs_usual FROM predictions").fetchall()}
    finally:
        con.close()


def test_usual_likes_do_not_move_with_content_but_vs_usual_does(trained_store, tmp_path: Path):
    new = trained_store["sample"] / "new_posts.csv"
    other = tmp_path / "other_content.csv"
    _rewrite_content(new, other)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r = score(new, trained_store["db_copy"](tmp_path / "a"), _opts(trained_store))
    score(other, trained_store["db_copy"](tmp_path / "b"), _opts(trained_store, images_dir=new.parent))
    a, b = _usual(tmp_path / "a" / "copy.duckdb"), _usual(tmp_path / "b" / "copy.duckdb")
    assert a.keys() == b.keys()
    for pid in a:
        pred, usual, vs = a[pid]
        assert vs == pytest.approx(pred / usual, rel=1e-9)
        assert b[pid][1] == pytest.approx(usual, rel=1e-5)              # usual: content-free
    # the sample's planted caption / hashtag effects are small (a few hundredths of ln-likes): vs_usual moves by
    # 1e-4..0.5 in ln, far beyond the 1e-5 to which usual_likes stays put
    moved = [pid for pid in a if abs(np.log(a[pid][2]) - np.log(b[pid][2])) > 1e-4]
    assert len(moved) > 0.8 * len(a)                                    # vs_usual follows the content
    assert r.above_usual and r.below_usual
    assert r.above_usual[0]["vs_usual"] >= r.below_usual[0]["vs_usual"]
    assert r.above_usual[0]["vs_usual"] == pytest.approx(max(v[2] for v in a.values()), rel=1e-2)


def test_usual_ignores_the_image_and_is_the_prior_at_cold_start():
    import torch

    from igcli.commands.score import usual_log_likes
    from igcli.model.export import _scaling
    from igcli.model.net import Ensemble, build_model
    from igcli.model.preprocess import Preprocessor

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 64
    names = ["hist_n", "hist_mean", "followers", "caption_len", "n_hashtags", "n_mentions", "hashtag_weight",
             "brightness", "days_since_prev"]
    pre = Preprocessor(numeric=[(c, "none") for c in names], categories={})
    inputs = {"meta": rng.normal(size=(n, 12)).astype(np.float32),
              "aesthetics": rng.normal(size=(n, 20)).astype(np.float32),
              "aesthetics_mask": np.ones((n, 1), np.float32)}
    inputs["meta"][:8, 1] = np.nan                                         # 8 cold-start posts
    y = rng.normal(8, 1, size=n) + inputs["aesthetics"][:, 0]
    inputs["meta"][0, 2] = 50.0                      # far outside the training scale: clipped in the graph
    model = Ensemble([build_model(("metadata", "aesthetics"), inputs, y, anchor_index=1)]).eval()
    with torch.no_grad():                                                 # an untrained head outputs zeros
        for p in model.members[0].head.parameters():
            p.add_(torch.randn_like(p) * 0.3)

    def predict(x):
        with torch.inference_mode():
            return model(*[torch.from_numpy(x[k]) for k in model.input_names]).numpy()

    card = {"scaling": _scaling(model)}
    other = dict(inputs, aesthetics=rng.normal(size=(n, 20)).astype(np.float32))
    other["meta"] = inputs["meta"].copy()
    other["meta"][:, 3:8] += 5.0                                          # caption, tags, brightness
    u1, u2 = usual_log_likes(card, pre, inputs, predict), usual_log_likes(card, pre, other, predict)
    np.testing.assert_allclose(u1, u2, rtol=1e-6)
    assert np.abs(predict(inputs)[:, 1] - predict(other)[:, 1]).min() > 1e-4
    with torch.no_grad():                                                 # cold start: the prior itself
        neutral = torch.from_numpy(pre.usual_inputs(inputs)["meta"][:8])
        z = model.branches["metadata"].norm(neutral)
        want = (z @ model.prior_w + model.prior_b).numpy()
        graph = model.anchor(neutral)[:, 0].numpy()               # the graph's own anchor (what p50 corrects)
    np.testing.assert_allclose(u1[:8], want, rtol=1e-5, atol=1e-5)
    assert float(z[0, 2]) == pytest.approx(6.0)                          # the clip is in both
    np.testing.assert_allclose(u1[:8], graph, rtol=1e-5, atol=1e-5)
    changed = inputs["meta"].copy()
    changed[:, 2] += 3.0                                                  # followers: not content
    assert np.abs(usual_log_likes(card, pre, dict(inputs, meta=changed), predict) - u1).max() > 1e-4


def test_score_path_rebuilds_the_training_inputs_and_predictions(trained_store):
    """The card's preprocessing (with the rel_* inputs) + the ONNX ensemble give, for the run's test posts,
    the p50 / p10 / p90 that training computed with torch (test_part.parquet)."""
    import pyarrow.parquet as pq

    from igcli import ort, store
    from igcli.features.frames import load_frame
    from igcli.model.export import load_card
    from igcli.model.preprocess import Preprocessor

    model_dir = trained_store["exports"] / trained_store["run"].model_id
    card = load_card(model_dir)
    part = pq.read_table(model_dir / "test_part.parquet").to_pydict()
    pre = Preprocessor.from_card(card)
    assert any(n.startswith("rel_") for n in pre.meta_names()) and card["scaling"]["ensemble"] == 2
    con = store.connect(trained_store["db"], read_only=True)
    frame = load_frame(con, part["post_id"])
    con.close()
    got = ort.run_batched(ort.session(model_dir / "model.onnx", "cpu"), pre.transform(frame))
    pos = {p: i for i, p in enumerate(frame.post_id)}
    rows = [pos[p] for p in part["post_id"]]
    for j, key in enumerate(("p10", "p50", "p90")):
        np.testing.assert_allclose(got[rows, j], np.asarray(part[key]), rtol=1e-5, atol=1e-4)


def test_ingest_score_and_featurize_do_not_import_pandas(trained_store, tmp_path: Path):
    """pyarrow's pa.array / pa.table / to_numpy import pandas on their first call where it is installed:
    ingest, score and an incremental featurize keep it out. Run in a fresh
    interpreter, on posts without images (the image backbones are heavier work of their own)."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("pandas") is None:
        missing("pandas is not installed, so this test could not fail: pip install 'igcli[dev,ray]' (ray brings it)")
    db = trained_store["db_copy"](tmp_path)
    batch = tmp_path / "new.csv"
    rows = csv_rows(trained_store["sample"] / "new_posts.csv")
    write_csv_rows(batch, [{**r, "image": ""} for r in rows])
    later = tmp_path / "later.csv"
    write_csv_rows(later, [{**r, "post_id": f"later-{r['post_id']}", "posted_at": "2030-01-01 12:00:00",
                            "likes": "10", "image": ""} for r in rows[:20]])
    code = f"""
import json, sys
from pathlib import Path
from igcli.features.metadata import FeaturizeOptions
from igcli.commands.featurize import featurize
from igcli.features.images import ImageFeatureOptions
from igcli.commands.ingest import ingest_posts
from igcli.commands.score import ScoreOptions, score
seen = {{}}
r = score({str(batch)!r}, {str(db)!r}, ScoreOptions(exports_dir=Path({str(trained_store["exports"])!r})))
seen["score"] = "pandas" in sys.modules
ingest_posts({str(later)!r}, db={str(db)!r})
seen["ingest"] = "pandas" in sys.modules
f = featurize({str(db)!r}, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
seen["featurize"] = "pandas" in sys.modules
print(json.dumps({{"seen": seen, "scored": r.posts, "inserted": f.inserted}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["scored"] == len(rows) and got["inserted"] >= 20, got
    assert got["seen"] == {"score": False, "ingest": False, "featurize": False}, got
