"""igcli.commands.train: splits in the right unit, scaling fitted on training rows only, metrics, learning."""

from __future__ import annotations

import json
from dataclasses import replace

import duckdb
import numpy as np
import pytest

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
    assert 0.5 < run.metrics["coverage_p10_p90"] <= 1.0


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


def test_interval_scale_is_in_the_model_and_the_card(trained_store):
    card = json.loads((trained_store["exports"] / trained_store["run"].model_id / "model_card.json").read_text())
    c = card["scaling"]["interval_scale"]
    timings = trained_store["run"].timings
    assert c["with_history"] > 0 and c["with_history"] == pytest.approx(timings["interval_scale"])
    assert c["cold_start"] > 0 and c["cold_start"] == pytest.approx(timings["interval_scale_cold"])


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
