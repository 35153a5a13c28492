"""igcli.commands.train: splits in the right unit, scaling fitted on training rows only, metrics, learning."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import need_module

from igcli.commands.train import TrainOptions, split_indices, train, train_on_frame
from igcli.model.metrics import metrics, spearman, within_10pct


def _toy(n_users=20, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    users = np.array([f"u{i}" for i in range(n_users) for _ in range(per_user)], dtype=object)
    times = np.array([t for _ in range(n_users) for t in rng.permutation(per_user)])
    return users, times


def test_random_split_is_by_post_and_covers_everything():
    users, times = _toy()
    keep, held = split_indices(users, times, "random", seed=3)
    assert set(keep) & set(held) == set() and len(keep) + len(held) == len(users)
    assert abs(len(held) / len(users) - 1 / 3) < 0.01
    again = split_indices(users, times, "random", seed=3)
    assert np.array_equal(again[1], held)                       # seeded: repeatable
    assert not np.array_equal(split_indices(users, times, "random", seed=4)[1], held)


def test_user_split_keeps_users_apart():
    users, times = _toy()
    keep, held = split_indices(users, times, "user", seed=1)
    assert set(users[keep]) & set(users[held]) == set()
    assert len(set(users[held])) == round(20 / 3)


def test_time_split_tests_each_users_latest_third():
    users, times = _toy()
    keep, held = split_indices(users, times, "time", seed=0)
    for u in set(users):
        k, h = times[keep][users[keep] == u], times[held][users[held] == u]
        assert len(h) == 4 and h.min() > k.max()


def test_within_10pct_hand_computed():
    true = np.log(np.array([100.0, 100.0, 100.0, 1000.0]))
    pred = np.log(np.array([109.0, 111.0, 91.0, 899.0]))        # in, out, in, out
    assert within_10pct(pred, true) == 0.5
    m = metrics(pred, true)
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - true)))
    assert spearman(np.array([1.0, 2, 3]), np.array([10.0, 20, 30])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)


def test_scaling_constants_never_see_test_rows(trained_store):
    from igcli import store
    from igcli.features.frames import load_frame

    con = store.connect(trained_store["db"], read_only=True)
    frame = load_frame(con)
    con.close()
    opts = TrainOptions(epochs=2, ensemble=1, export=False)
    model, pre, _, (sub, train_idx, _val, test, _pred) = train_on_frame(frame, opts)
    meta = pre.transform(sub)["meta"]
    norm = model.branches["metadata"].norm
    with np.errstate(invalid="ignore"):
        want = np.nan_to_num(np.nanmean(meta[train_idx], axis=0))
        everything = np.nan_to_num(np.nanmean(meta, axis=0))
    np.testing.assert_allclose(norm.mean.numpy(), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(norm.mean.numpy(), everything, rtol=1e-6, atol=1e-7)
    assert float(model.y_mean) == pytest.approx(float(np.mean(sub.ln_likes[train_idx])), rel=1e-6)
    assert set(sub.post_id[train_idx]).isdisjoint(sub.post_id[test])


def test_learns_the_planted_signal(trained_store):
    run = trained_store["run"]
    const = run.baselines["constant_train_mean"]["mae"]
    assert run.metrics["mae"] < 0.6 * const, (run.metrics, run.baselines)
    assert run.metrics["spearman"] > 0.8
    # coverage: test_exported_interval_covers_80_percent_of_the_validation_posts_and_the_test_coverage_is_the_graphs


def test_run_is_recorded(trained_store):
    run = trained_store["run"]
    con = duckdb.connect(str(trained_store["db"]), read_only=True)
    rows = con.execute("SELECT split, seed, branches, test_mae, feature_names, data_fingerprint FROM runs "
                       "WHERE model_id = ?", [run.model_id]).fetchall()
    con.close()
    assert len(rows) == 1
    split, seed, branches, mae, names, fp = rows[0]
    assert (split, seed, branches) == ("random", 0, "metadata") and mae == pytest.approx(run.metrics["mae"])
    assert "hist_mean" in json.loads(names) and len(fp) == 64


def test_unknown_branch_and_missing_image_features_are_clear(trained_store, tmp_path):
    from igcli.errors import FeatureMismatch, InputError

    with pytest.raises(InputError, match="--branches"):
        train(trained_store["db_copy"](tmp_path), TrainOptions(branches=("metadata", "faces")))
    with pytest.raises(FeatureMismatch, match="igcli ingest-classes"):
        train(trained_store["db_copy"](tmp_path), TrainOptions(branches=("objects",), export=False))


def test_user_split_trains(trained_store, tmp_path):
    run = train(trained_store["db_copy"](tmp_path),
                replace(TrainOptions(), split="user", epochs=30, ensemble=1, export=False))
    assert run.n_test > 0 and run.metrics["mae"] < run.baselines["constant_train_mean"]["mae"]


def test_warm_holdout_split_holds_users_by_stable_hash():
    from igcli.commands.train import held_out_user

    users, times = _toy(n_users=60)
    keep, held = split_indices(users, times, "warm-holdout", seed=0)
    out = {u for u in set(users) if held_out_user(u, 0)}
    assert 0 < len(out) < 60
    assert set(users[keep]) == set(users) - out                   # training only from other users
    assert set(users[held]) == out
    for u in out:                                                # the latest third is test, the rest history
        h = times[held][users[held] == u]
        assert len(h) == 4 and sorted(h) == list(range(8, 12))
    import hashlib

    assert held_out_user("alice", 3) == (int(hashlib.sha256(b"3|alice").hexdigest(), 16) % 1000 < 200)
    assert not np.array_equal(split_indices(users, times, "warm-holdout", seed=1)[1], held)


def test_pairwise_accuracy_hand_computed():
    from igcli.model.metrics import pairwise_accuracy

    users = np.array(["a", "a", "a", "b", "b", "c"], dtype=object)
    y = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 9.0])
    # a: pairs (1,2) right, (1,3) right, (2,3) tied -> 2.5 of 3; b: equal likes, no pair; c: alone
    pred = np.array([0.1, 0.5, 0.5, 7.0, 1.0, 0.0])
    assert pairwise_accuracy(pred, y, users) == pytest.approx(2.5 / 3)
    assert pairwise_accuracy(np.zeros(6), y, users) == pytest.approx(0.5)
    assert pairwise_accuracy(-y, y, users) == 0.0
    assert np.isnan(pairwise_accuracy(pred[3:5], y[3:5], users[3:5]))


def test_warm_holdout_never_trains_on_a_held_out_user_and_scores_like_score(trained_store, tmp_path):
    from igcli import store
    from igcli.commands.train import held_out_user, warm_holdout_features
    from igcli.features.frames import load_frame

    db = trained_store["db_copy"](tmp_path)
    con = store.connect(db)
    before = store.table_counts(con)
    likes_before = con.execute("SELECT sum(likes), count(likes) FROM posts").fetchall()
    frame = load_frame(con)
    opts = TrainOptions(split="warm-holdout", epochs=5, ensemble=1, export=False)
    model, pre, res, (sub, train_idx, val_idx, test, _pred) = train_on_frame(
        frame, opts, score_features=warm_holdout_features(con, frame.feature_params, {}))
    assert res["test_features"] == "score"
    out = {u for u in set(sub.username) if held_out_user(u, 0)}
    assert out and not out & set(sub.username[np.r_[train_idx, val_idx]])
    assert set(sub.username[test]) <= out
    assert set(sub.username[train_idx]).isdisjoint(sub.username[val_idx])    # validation by user
    assert "pairwise" in res["metrics"] and 0 <= res["metrics"]["pairwise"] <= 1
    assert res["baselines"]["user_mean_earlier_posts"]["pairwise"] == pytest.approx(0.5)  # fixed history
    # Held-out test posts see their history but no test post's likes: every test post of a user has the
    # same history count, the number of its liked history posts.
    stored = {pid: i for i, pid in enumerate(frame.post_id)}
    for u in out:
        rows = test[sub.username[test] == u]
        if len(rows):
            n_hist = set(sub.cols["hist_n"][rows].tolist())
            assert len(n_hist) == 1
            stored_n = frame.cols["hist_n"][[stored[p] for p in sub.post_id[rows]]]
            assert stored_n.max() > next(iter(n_hist)) or len(rows) == 1
    assert store.table_counts(con) == before                             # rolled back
    assert con.execute("SELECT sum(likes), count(likes) FROM posts").fetchall() == likes_before
    con.close()


def test_warm_holdout_train_records_it(trained_store, tmp_path):
    run = train(trained_store["db_copy"](tmp_path), TrainOptions(split="warm-holdout", epochs=20, ensemble=1,
                                                                        export=False))
    assert run.split == "warm-holdout" and run.test_features == "score" and run.n_test > 0
    assert "pairwise" in run.metrics
    # every held-out test post has its user's history: no (empty) cold-start subset is reported
    assert list(run.subsets) == ["with_history"] and run.subsets["with_history"]["n"] == run.n_test


def _with_embedding(frame, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    frame.embedding = rng.normal(size=(len(frame), dim)).astype(np.float32)
    frame.embedding[:, 0] += frame.ln_likes.clip(0, 20) if frame.ln_likes is not None else 0  # some signal
    frame.embedding = np.nan_to_num(frame.embedding).astype(np.float32)
    frame.nima_mean = np.full(len(frame), np.nan)
    return frame


@pytest.mark.parametrize("split", ["random", "warm-holdout"])
def test_image_projections_are_fitted_on_training_rows_only(trained_store, split):
    """A value planted only in test posts' embeddings changes no constant; planted in training rows it does."""
    from dataclasses import replace as dc_replace

    from igcli import store
    from igcli.features.frames import load_frame

    con = store.connect(trained_store["db"], read_only=True)
    frame = _with_embedding(load_frame(con))
    con.close()
    opts = TrainOptions(branches=("metadata", "aesthetics"), split=split, epochs=1, ensemble=1, export=False)

    def constants(emb):
        model, _, _, (sub, train_idx, _v, test, _p) = train_on_frame(dc_replace(frame, embedding=emb), opts)
        br = model.branches["aesthetics"]
        return [br.norm.mean.numpy(), br.norm.std.numpy(), br.proj.numpy(), br.ridge_w.numpy(),
                np.array([float(br.ridge_b)]), model.ridge_oof], sub, train_idx, test

    base, sub, train_idx, test = constants(frame.embedding)
    assert base[2].shape == (12, 12) and np.abs(base[3]).sum() > 0       # PCA (k = D here) and ridge fitted
    pos = {p: i for i, p in enumerate(frame.post_id)}
    planted = frame.embedding.copy()
    planted[[pos[p] for p in sub.post_id[test]], 3] = 1e4
    for a, b in zip(base, constants(planted)[0], strict=True):
        np.testing.assert_array_equal(a, b)
    planted_train = frame.embedding.copy()
    planted_train[[pos[p] for p in sub.post_id[train_idx[:5]]], 3] = 1e4
    assert not np.array_equal(base[0], constants(planted_train)[0][0])


def test_interval_scale_reaches_the_target_coverage_on_the_rows_it_saw():
    from igcli.commands.train import interval_scale

    rng = np.random.default_rng(0)
    y = rng.normal(size=2000)
    mid = np.zeros_like(y)
    pred = np.stack([mid - 0.5, mid, mid + 0.5], axis=1)                 # far too narrow for N(0, 1)
    c = interval_scale(pred, y)
    assert c > 2.0
    inside = np.mean((y >= mid - c * 0.5) & (y <= mid + c * 0.5))
    assert inside == pytest.approx(0.8, abs=0.01)
    assert interval_scale(pred[:5], y[:5]) == 1.0


def test_segment_scales_calibrate_warm_and_cold_rows_apart():
    from igcli.commands.train import MIN_SEGMENT_ROWS, interval_scale, segment_scales

    rng = np.random.default_rng(1)
    n = 4000
    cold = np.arange(n) < MIN_SEGMENT_ROWS + 100
    y = rng.normal(size=n) * np.where(cold, 3.0, 1.0)                   # cold posts: 3x the spread
    pred = np.stack([-np.ones(n), np.zeros(n), np.ones(n)], axis=1)
    warm_c, cold_c = segment_scales(pred, y, cold)
    for rows, c in ((~cold, warm_c), (cold, cold_c)):
        assert np.mean(np.abs(y[rows]) <= c) == pytest.approx(0.8, abs=0.02)
    assert cold_c > 2 * warm_c
    few = np.arange(n) < MIN_SEGMENT_ROWS - 1                             # too few cold rows: the overall one
    assert segment_scales(pred, y, few)[1] == pytest.approx(interval_scale(pred, y))
    assert segment_scales(pred, y, few)[1] != pytest.approx(interval_scale(pred[few], y[few]))


def test_stored_optional_feature_columns_are_used_when_present(trained_store, tmp_path, monkeypatch):
    from igcli import store
    from igcli.errors import FeatureMismatch
    from igcli.features import metadata as features
    from igcli.features.frames import load_frame
    from igcli.model.preprocess import Preprocessor

    db = trained_store["db_copy"](tmp_path)
    con = store.connect(db)
    monkeypatch.setattr(features, "CAPTION_FEATURES", ("n_words",), raising=False)
    con.execute("ALTER TABLE post_features DROP COLUMN IF EXISTS n_words")  # a store featurized before it existed
    pre_without = Preprocessor.fit(load_frame(con), ("metadata",))
    assert "n_words" not in pre_without.meta_names()                   # not in the store yet: left out
    con.execute("ALTER TABLE post_features ADD COLUMN n_words BIGINT")
    con.execute("UPDATE post_features SET n_words = len(post_id)")
    frame = load_frame(con)
    con.close()
    pre = Preprocessor.fit(frame, ("metadata",))
    j = pre.meta_names().index("n_words")
    np.testing.assert_allclose(pre.transform(frame)["meta"][:, j], np.log1p([len(p) for p in frame.post_id]),
                               rtol=1e-6)
    del frame.cols["n_words"]
    with pytest.raises(FeatureMismatch, match="featurize --rebuild"):
        pre.transform(frame)


@pytest.mark.parametrize("first", ["old", "new"])
def test_sources_covering_as_many_posts_prefer_this_igclis_image_geometry(tmp_path, first):
    """A store featurized again after the crop changed holds both geometries for the same posts: training
    takes the ":crop1" rows, whichever were stored first."""
    from igcli import store
    from igcli.features.frames import available_sources

    con = store.connect(tmp_path / "s.duckdb")
    fps = ["a" * 64, "b" * 64 + ":crop1"]
    for fp in fps if first == "old" else fps[::-1]:
        con.execute("INSERT INTO image_classes SELECT NULL, 'sha' || i, 'efficientnet_lite0', ?, false, "
                    "'featurize', 1, 'n02084071', 0.5 FROM range(3) t(i)", [fp])
    con.execute("INSERT INTO image_classes SELECT NULL, 'sha' || i, 'other', 'c', false, 'featurize', 1, "
                "'n02084071', 0.5 FROM range(4) t(i)")
    got = [(s["backbone"], s["weights_fp"], s["posts"]) for s in available_sources(con)["objects"]]
    assert got == [("other", "c", 4), ("efficientnet_lite0", "b" * 64 + ":crop1", 3),
                   ("efficientnet_lite0", "a" * 64, 3)]


# ------------------------------------------------------------------------ checks against independent computations

def test_metrics_against_independent_computations():
    """Spearman (ties take their average rank) against a hand-computed value and scipy, MSE, ±10%, coverage and
    within-user pairwise accuracy against plain-Python loops, on data full of ties."""
    stats = need_module("scipy.stats", "pip install 'igcli[dev]'")
    # hand-computed: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): covariance 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 4])) == pytest.approx(3 / 10 ** 0.5, rel=1e-12)
    rng = np.random.default_rng(4)
    n = 300
    y = rng.integers(0, 6, n).astype(float)                        # 6 distinct values: ties everywhere
    pred = y + rng.integers(-2, 3, n)
    low, high = pred - rng.uniform(0, 2, n), pred + rng.uniform(0, 2, n)
    users = np.array([f"u{i % 7}" for i in range(n)], dtype=object)
    m = metrics(pred, y, low, high, users=users)
    assert m["spearman"] == pytest.approx(float(stats.spearmanr(pred, y).statistic), rel=1e-12)
    p, t, lo, hi = pred.tolist(), y.tolist(), low.tolist(), high.tolist()
    assert m["mse"] == pytest.approx(sum((a - b) ** 2 for a, b in zip(p, t, strict=True)) / n, rel=1e-12)
    assert m["mae"] == pytest.approx(sum(abs(a - b) for a, b in zip(p, t, strict=True)) / n, rel=1e-12)
    assert m["coverage_p10_p90"] == sum(a <= b <= c for a, b, c in zip(lo, t, hi, strict=True)) / n
    assert m["within_10pct"] == sum(abs(math.exp(a) - math.exp(b)) <= 0.1 * math.exp(b)
                                    for a, b in zip(p, t, strict=True)) / n
    right = total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            if users[i] == users[j] and t[i] != t[j]:
                total += 1
                right += 1.0 if (p[i] - p[j]) * (t[i] - t[j]) > 0 else 0.5 if p[i] == p[j] else 0.0
    assert m["pairwise"] == pytest.approx(right / total, rel=1e-12)


def _onnx_run(export_dir: str, inputs: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The exported graph run in plain onnxruntime (not igcli.ort) on ``rows`` of ``inputs``."""
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(Path(export_dir) / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: inputs[i.name][rows] for i in sess.get_inputs()})[0]


def _initializers(export_dir: str) -> dict[str, np.ndarray]:
    """The graph's constant tensors: initializers by name, and Constant nodes' values by their output name."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(Path(export_dir) / "model.onnx")).graph
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def test_exported_interval_covers_80_percent_of_the_validation_posts_and_the_test_coverage_is_the_graphs(
        trained_store):
    """The exported graph (run in onnxruntime, inputs rebuilt from the card) puts 80% of the validation posts
    inside p10..p90, up to one post (the factor is their 0.8-quantile); its constant is the card's; and the
    run's test coverage is what that graph gives on the test posts, near 80% as a sample of that size allows."""
    from igcli.model.preprocess import Preprocessor

    run = trained_store["run"]
    sub, _train_idx, val_idx, test = run.split_rows
    card = json.loads((Path(run.export_dir) / "model_card.json").read_text())
    inputs = Preprocessor.from_card(card).transform(sub)
    y = sub.ln_likes
    val = _onnx_run(run.export_dir, inputs, val_idx)
    inside = (y[val_idx] >= val[:, 0]) & (y[val_idx] <= val[:, 2])
    n_val = len(val_idx)
    assert abs(inside.mean() - 0.8) <= 1.5 / n_val, (inside.mean(), n_val)
    assert run.val_mae == pytest.approx(float(np.mean(np.abs(val[:, 1] - y[val_idx]))), rel=1e-5)
    scale = card["scaling"]["interval_scale"]
    scalars = [float(v) for v in _initializers(run.export_dir).values() if v.size == 1 and v.dtype.kind == "f"]
    for c in (scale["with_history"], scale["cold_start"]):             # constants of the graph (folded by export)
        assert c != 1.0 and any(math.isclose(c, v, rel_tol=1e-6) for v in scalars), (c, scalars)
    got = _onnx_run(run.export_dir, inputs, test)
    coverage = float(np.mean((y[test] >= got[:, 0]) & (y[test] <= got[:, 2])))
    assert coverage == pytest.approx(run.metrics["coverage_p10_p90"], abs=1 / len(test))
    # a factor fitted on n_val posts, tested on n_test: 3 binomial standard deviations of each
    band = 3 * (0.16 / n_val) ** 0.5 + 3 * (0.16 / len(test)) ** 0.5
    assert abs(coverage - 0.8) <= band, (coverage, band, n_val, len(test))


def test_exported_graph_holds_the_image_pca_and_ridge_of_the_training_rows(trained_store, tmp_path):
    """The aesthetics branch's constants, read from the exported ONNX graph, equal an independent fit on the
    training rows' embeddings: standardisation, the top 32 principal directions (an SVD, up to sign) and the
    ridge (alpha 3000, igcli/README.md) of the standardised target, solved as least squares."""
    from dataclasses import replace as dc_replace

    from igcli import store
    from igcli.features.frames import load_frame
    from igcli.model.export import onnx_export

    con = store.connect(trained_store["db"], read_only=True)
    frame = _with_embedding(load_frame(con), dim=40)
    con.close()
    frame = dc_replace(frame, embedding=frame.embedding.copy())
    frame.embedding[::17] = np.nan                                          # posts without an image
    opts = TrainOptions(branches=("aesthetics",), split="random", epochs=1, ensemble=2, export=False)
    model, _, _, (sub, train_idx, _v, _t, _p) = train_on_frame(frame, opts)
    onnx_export(model, tmp_path / "model.onnx")
    got = _initializers(str(tmp_path))
    prefix = "members.0.branches.aesthetics."
    x = sub.embedding[train_idx].astype(np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    assert 0 < len(x) < len(train_idx)
    mean, std = x.mean(axis=0), x.std(axis=0)
    np.testing.assert_allclose(got[prefix + "norm.mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[prefix + "norm.std"], std, rtol=1e-5)
    z = (x - mean) / std
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    proj = got[prefix + "proj"].astype(np.float64)
    assert proj.shape == (40, 32)
    np.testing.assert_allclose(np.abs(np.sum(proj * vt[:32].T, axis=0)), 1.0, atol=1e-4)   # same directions
    y = sub.ln_likes[train_idx][np.isfinite(sub.embedding[train_idx]).all(axis=1)]
    yall = sub.ln_likes[train_idx]
    target = (y - yall.mean()) / yall.std()
    zc, tc = z - z.mean(axis=0), target - target.mean()
    w = np.linalg.lstsq(np.vstack([zc, 3000 ** 0.5 * np.eye(40)]), np.r_[tc, np.zeros(40)], rcond=None)[0]
    np.testing.assert_allclose(got[prefix + "ridge_w"][:, 0], w, rtol=1e-3, atol=1e-6)
    assert float(got[prefix + "ridge_b"]) == pytest.approx(target.mean() - z.mean(axis=0) @ w, abs=1e-5)
    assert abs(w[0]) > 5 * np.abs(w[1:]).max()                        # the planted signal is what it found


def test_out_of_fold_ridge_never_sees_a_rows_own_user():
    """Changing every target of one user leaves that user's out-of-fold scores unchanged (no fit that scored
    them saw any of its rows) and moves other users' scores; the folds are whole users."""
    from igcli.model.net import ridge_out_of_fold

    rng = np.random.default_rng(2)
    users = np.array([f"u{i % 23}" for i in range(460)], dtype=object)
    z = rng.normal(size=(460, 6))
    r = z @ rng.normal(size=6) + rng.normal(size=460)
    base = ridge_out_of_fold(z, r, users, alpha=1.0)
    moved_other = 0
    for u in ("u0", "u5", "u17"):
        mine = users == u
        r2 = r.copy()
        r2[mine] += rng.normal(size=mine.sum()) * 100
        again = ridge_out_of_fold(z, r2, users, alpha=1.0)
        np.testing.assert_array_equal(again[mine], base[mine])
        moved_other += int(np.sum(np.abs(again[~mine] - base[~mine]) > 1e-3))
    assert moved_other > 100


def test_training_passes_the_users_as_the_out_of_fold_groups(trained_store, monkeypatch):
    from igcli import store
    from igcli.features.frames import load_frame
    from igcli.model import net

    seen = []
    real = net.ridge_out_of_fold

    def spy(z, r, groups, *a, **k):
        seen.append(np.asarray(groups).copy())
        return real(z, r, groups, *a, **k)

    monkeypatch.setattr(net, "ridge_out_of_fold", spy)
    con = store.connect(trained_store["db"], read_only=True)
    frame = _with_embedding(load_frame(con))
    con.close()
    opts = TrainOptions(branches=("metadata", "aesthetics"), epochs=1, ensemble=1, export=False)
    _, _, _, (sub, train_idx, _v, _t, _p) = train_on_frame(frame, opts)
    assert len(seen) == 1 and list(seen[0]) == list(sub.username[train_idx])


def test_warm_holdout_test_posts_get_the_brute_force_features_with_test_likes_hidden(trained_store, tmp_path):
    """Every feature of every held-out test post, as train evaluated it, equals the plain-Python brute force
    (tests/pit_reference.py) on the store with the likes of all held-out test posts removed: each sees its
    user's earlier posts, never its own or another test post's likes."""
    import pit_reference as ref

    from igcli import store
    from igcli.commands.train import warm_holdout_features
    from igcli.features.frames import load_frame

    db = trained_store["db_copy"](tmp_path)
    posts, snaps = ref.read_store(db)
    con = store.connect(db)
    frame = load_frame(con)
    opts = TrainOptions(split="warm-holdout", epochs=1, ensemble=1, export=False)
    _, _, res, (sub, _tr, _va, test, _p) = train_on_frame(
        frame, opts, score_features=warm_holdout_features(con, frame.feature_params, {}))
    con.close()
    hidden = set(sub.post_id[test])
    assert len(hidden) > 10
    for p in posts:
        if p.post_id in hidden:
            p.likes = None
    want = ref.features(posts, snaps, ranking=ref.read_ranking(trained_store["sample"] / "hashtag_ranking.txt"),
                        ranking_source="-", half_life_days=float(frame.feature_params["half_life_days"]))
    compared = [k for k in ref.FEATURES if k in sub.cols]
    assert {"hist_n", "hist_mean", "hist_last5", "tag_perf", "n_posts_before", "hashtag_weight"} <= set(compared)
    bad = []
    for i in test:
        w = want[sub.post_id[i]]
        for k in compared:
            v = w[k]
            v = math.nan if v is None else float(v)
            g = float(sub.cols[k][i])
            if not (math.isnan(g) and math.isnan(v)) and not math.isclose(g, v, rel_tol=1e-9, abs_tol=1e-9):
                bad.append((sub.post_id[i], k, g, v))
    assert not bad, bad[:10]
    # and it is not what the store holds for them: their stored features saw the other test posts' likes
    stored_n = {pid: n for pid, n in zip(frame.post_id, frame.cols["hist_n"], strict=True)}
    assert any(stored_n[sub.post_id[i]] > sub.cols["hist_n"][i] for i in test)
    assert res["test_features"] == "score"


def test_held_out_coverage_is_near_80_percent(tmp_path):
    """On 3,000 generated posts (a few hundred validation posts calibrate the interval), the test part's
    p10..p90 coverage is 80% within three binomial standard deviations of the validation and test sizes."""
    from igcli import store
    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_posts
    from igcli.commands.sample import generate_sample
    from igcli.features.frames import load_frame
    from igcli.features.metadata import FeaturizeOptions

    generate_sample(tmp_path / "s", posts=3000, users=120, seed=3, images=False, new_posts=0)
    db = tmp_path / "s.duckdb"
    ingest_posts(tmp_path / "s" / "posts.csv", db=db)
    featurize(db, FeaturizeOptions(skip_images=True))
    con = store.connect(db, read_only=True)
    frame = load_frame(con)
    con.close()
    _, _, res, (_sub, _tr, val_idx, test, _p) = train_on_frame(frame, TrainOptions(split="random", epochs=8,
                                                                                      ensemble=1, export=False))
    band = 3 * (0.16 / len(val_idx)) ** 0.5 + 3 * (0.16 / len(test)) ** 0.5
    assert len(val_idx) > 250 and band < 0.12
    assert abs(res["metrics"]["coverage_p10_p90"] - 0.8) <= band, (res["metrics"]["coverage_p10_p90"], band)
