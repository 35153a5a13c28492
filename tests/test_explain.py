"""igcli.model.explain: the drivers add up and are the Shapley values where groups interact at most in pairs; PSI
names a planted shift and nothing in a batch drawn from the training distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from igcli.features.schema import CATEGORICAL, FLAGS, NUMERIC, QUALITY, extra_numeric
from igcli.model import explain
from igcli.model.explain import GROUPS, batch_drift, drift_summary, drivers, fit_distribution, psi, shapley
from igcli.model.preprocess import RELATIVE, SLOPE_AT_NOW, Preprocessor, relative_columns_names

# ------------------------------------------------------------------------------------------ groups


def test_every_input_this_igcli_builds_has_a_group_of_its_own():
    """No input falls through to the fallback: each is listed in exactly one group's set."""
    names = ([n for n, _ in NUMERIC] + [q for q, _ in QUALITY] + [n for n, _ in extra_numeric()]
             + relative_columns_names(list(RELATIVE) + [SLOPE_AT_NOW]) + list(FLAGS))
    sets = {"user_level": explain._LEVEL, "trend": explain._TREND, "audience": explain._AUDIENCE,
            "timing": explain._TIMING, "caption": explain._CAPTION, "image": explain._IMAGE}
    for name in names:
        owners = [g for g, s in sets.items() if name in s]
        assert len(owners) == 1, (name, owners)
        assert explain.group_of(name) == owners[0]
    for c in CATEGORICAL:
        assert explain.group_of(f"{c}=3") == "timing"
    assert {explain.group_of(n) for n in names} | {"timing"} == set(GROUPS)


# ------------------------------------------------------------------------------- drivers, by hand

# A metadata model in numpy: one meta column per group, so a group's value is that column.
NAMES = ["hist_mean", "hist_last5", "followers", "days_since_prev", "caption_len", "brightness"]
ORDER = ["user_level", "trend", "audience", "timing", "caption", "image"]


def _toy(rng: np.random.Generator, n: int = 40):
    pre = Preprocessor(numeric=[(c, "none") for c in NAMES], categories={})
    names = pre.meta_names()
    mean = rng.normal(size=len(names)).astype(np.float32)
    card = {"inputs": [{"name": "meta"}], "scaling": {"metadata": {"mean": mean.tolist()}},
            "preprocess": pre.to_card()}
    meta = rng.normal(size=(n, len(names))).astype(np.float32)
    col = {g: names.index(NAMES[ORDER.index(g)]) for g in ORDER}
    return pre, card, {"meta": meta}, col


def _model(col: dict, a: np.ndarray, pairs: np.ndarray, triple: float = 0.0):
    """p50 = sum a_g x_g + sum b_gh x_g x_h (+ triple * x_level x_trend x_audience), as a (N, 3) predictor."""
    def predict(x):
        m = x["meta"].astype(np.float64)
        v = [m[:, col[g]] for g in ORDER]
        p50 = sum(a[i] * v[i] for i in range(6)) + sum(pairs[i, j] * v[i] * v[j] for i in range(6)
                                                       for j in range(i + 1, 6))
        p50 = p50 + triple * v[0] * v[1] * v[2]
        return np.stack([p50 - 1, p50, p50 + 1], axis=1).astype(np.float32)
    return predict


def test_drivers_add_up_and_equal_shapley_when_groups_interact_in_pairs():
    rng = np.random.default_rng(0)
    pre, card, inputs, col = _toy(rng)
    predict = _model(col, rng.normal(size=6), rng.normal(size=(6, 6)) * 0.5)
    p50 = predict(inputs)[:, 1].astype(np.float64)
    two = drivers(card, pre, inputs, predict, p50)
    exact = shapley(card, pre, inputs, predict)
    total = sum(two.effects.values())
    np.testing.assert_allclose(total, p50 - two.reference_log_likes, atol=1e-5)   # float32 model outputs
    assert two.reference_log_likes == pytest.approx(exact.reference_log_likes, abs=1e-6)
    for g in GROUPS:
        np.testing.assert_allclose(two.effects[g], exact.effects[g], atol=1e-5)
    # a group at its reference already adds nothing
    at_ref = {"meta": inputs["meta"].copy()}
    at_ref["meta"][:, col["audience"]] = np.asarray(card["scaling"]["metadata"]["mean"])[col["audience"]]
    moved = drivers(card, pre, at_ref, predict, predict(at_ref)[:, 1].astype(np.float64))
    np.testing.assert_allclose(moved.effects["audience"], 0.0, atol=1e-5)


def test_all_passes_in_one_call_give_the_same_drivers():
    """The Ray engine's way (a job per call): every pass stacked into one call, rows told apart by their ids."""
    rng = np.random.default_rng(2)
    pre, card, inputs, col = _toy(rng)
    predict = _model(col, rng.normal(size=6), rng.normal(size=(6, 6)))
    p50 = predict(inputs)[:, 1].astype(np.float64)
    ids = [f"p{i}" for i in range(len(p50))]
    calls = []

    def predict_ids(x, got_ids):
        calls.append(got_ids)
        assert len(set(got_ids)) == len(got_ids) == len(x["meta"])
        return predict(x)

    one = drivers(card, pre, inputs, predict, p50, predict_all=explain.one_call(predict_ids, ids))
    each = drivers(card, pre, inputs, predict, p50)
    assert len(calls) == 1 and len(calls[0]) == 2 * (len(GROUPS) - 1) * len(ids) + 1     # and the reference row
    for g in GROUPS:
        np.testing.assert_array_equal(one.effects[g], each.effects[g])


def test_a_three_way_interaction_still_adds_up_but_is_no_longer_shapley():
    rng = np.random.default_rng(1)
    pre, card, inputs, col = _toy(rng)
    predict = _model(col, rng.normal(size=6), np.zeros((6, 6)), triple=1.5)
    p50 = predict(inputs)[:, 1].astype(np.float64)
    two, exact = drivers(card, pre, inputs, predict, p50), shapley(card, pre, inputs, predict)
    np.testing.assert_allclose(sum(two.effects.values()), p50 - two.reference_log_likes, atol=1e-5)
    np.testing.assert_allclose(sum(exact.effects.values()), p50 - exact.reference_log_likes, atol=1e-5)
    gap = max(np.abs(two.effects[g] - exact.effects[g]).max() for g in GROUPS)
    assert gap > 1e-2          # the check above can fail: the two paths are not exact beyond pairs


def test_describe_and_factors():
    assert explain.format_factor(1.18) == "+18%" and explain.format_factor(0.91) == "−9%"
    assert explain.format_factor(4.1) == "×4.1" and explain.format_factor(0.31) == "×0.31"
    assert explain.describe({"image": 1.18, "timing": 0.91, "caption": 1.001, "audience": 4.1}) == (
        "×4.1 audience, +18% image, −9% timing")


# -------------------------------------------------------------------------- drivers of a real model

@pytest.fixture(scope="module")
def model_inputs(trained_store):
    """The trained sample model, its card and preprocessing, and the model inputs of every stored post."""
    from igcli import ort, store
    from igcli.features.frames import training_frame
    from igcli.model.export import load_card

    model_dir = trained_store["exports"] / trained_store["run"].model_id
    card = load_card(model_dir)
    pre = Preprocessor.from_card(card)
    con = store.connect(trained_store["db"], read_only=True)
    try:
        frame = training_frame(con)
    finally:
        con.close()
    frame = frame.take(np.flatnonzero(frame.likes > 0))
    session = ort.session(model_dir / "model.onnx", "cpu")
    return {"card": card, "pre": pre, "inputs": pre.transform(frame), "frame": frame,
            "predict": lambda x: ort.run_batched(session, x)}


def test_drivers_of_the_trained_model_add_up_and_stay_near_shapley(model_inputs):
    card, pre, predict = model_inputs["card"], model_inputs["pre"], model_inputs["predict"]
    inputs = {k: v[:200] for k, v in model_inputs["inputs"].items()}
    p50 = predict(inputs)[:, 1].astype(np.float64)
    two = drivers(card, pre, inputs, predict, p50)
    np.testing.assert_allclose(sum(two.effects.values()), p50 - two.reference_log_likes, atol=1e-5)
    cols = two.columns()
    product = cols["reference_likes"] * np.prod([cols[f"effect_{g}"] for g in GROUPS], axis=0)
    np.testing.assert_allclose(product, np.exp(p50), rtol=1e-5)
    exact = shapley(card, pre, inputs, predict)
    gap = np.max(np.abs(np.stack([two.effects[g] - exact.effects[g] for g in GROUPS])))
    spread = np.max(np.abs(np.stack([exact.effects[g] for g in GROUPS])))
    assert gap < 0.05 * spread, (gap, spread)   # measured on this model: see igcli/README.md's drivers section
    # the user's level carries most of a prediction of this sample (its planted user baselines)
    share = np.mean(np.abs(two.effects["user_level"])) / np.mean(sum(np.abs(e) for e in two.effects.values()))
    assert share > 0.3


def test_the_usual_pass_is_the_content_groups_at_their_reference(model_inputs):
    """score hands usual_likes' pass to the drivers (CONTENT at the reference): the model sees the same inputs."""
    card, pre, predict = model_inputs["card"], model_inputs["pre"], model_inputs["predict"]
    inputs = {k: v[:300] for k, v in model_inputs["inputs"].items()}
    usual = predict(pre.usual_inputs(inputs))
    np.testing.assert_array_equal(predict(explain.Reference(card, pre).apply(inputs, explain.CONTENT)), usual)
    p50 = predict(inputs)[:, 1].astype(np.float64)
    calls = []
    counted = explain.Recorder(lambda x: calls.append(1) or predict(x))
    reused = drivers(card, pre, inputs, counted, p50, known={explain.CONTENT: usual[:, 1]})
    assert len(calls) == 2 * (len(GROUPS) - 1) - 1 + 1          # 9 passes of the batch and the reference row
    fresh = drivers(card, pre, inputs, predict, p50)
    for g in GROUPS:
        np.testing.assert_array_equal(reused.effects[g], fresh.effects[g])


# -------------------------------------------------------------------------------------------- drift

def test_psi_by_hand():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.25, 0.75], [0.75, 0.25]) == pytest.approx(math.log(3))
    edges = np.array([1.0, 2.0])
    np.testing.assert_allclose(explain.shares(np.array([0.5, 1.0, 1.5, 3.0, np.nan]), edges), [0.4, 0.2, 0.2, 0.2])


def _halves(model_inputs, n: int = 300):
    inputs = model_inputs["inputs"]
    rows = len(inputs["meta"])
    perm = np.random.default_rng(0).permutation(rows)
    fit, batch = perm[: rows // 2], perm[rows // 2:][:n]
    card = dict(model_inputs["card"])
    card["input_distribution"] = fit_distribution(card, {k: v[fit] for k, v in inputs.items()})
    return card, {k: v[batch].copy() for k, v in inputs.items()}


def test_a_batch_from_the_training_distribution_names_nothing(model_inputs):
    card, batch = _halves(model_inputs)
    drift = batch_drift(card, batch)
    assert [d for d in drift if d.level in ("drift", "note")] == []
    assert {d.name for d in drift} >= {"followers", "frac_ascii", "month", "no_history"}
    assert drift_summary(drift, 300).startswith("none")


def test_planted_shifts_are_named(model_inputs):
    card, batch = _halves(model_inputs)
    names = model_inputs["pre"].meta_names()
    batch["meta"][:, names.index("followers")] += np.log(100.0)       # followers x100 (the input is log1p)
    batch["meta"][:, names.index("frac_ascii")] = 0.05                  # captions in another script
    drift = {d.name: d for d in batch_drift(card, batch)}
    assert drift["followers"].level == "drift" and drift["frac_ascii"].level == "drift"
    named = {n for n, d in drift.items() if d.level in ("drift", "note")}
    assert named == {"followers", "frac_ascii"}
    summary = drift_summary(list(drift.values()), 300)
    assert summary.startswith("drift: ") and "followers" in summary and "frac_ascii" in summary


def test_a_small_batch_is_stored_but_not_judged(model_inputs):
    card, batch = _halves(model_inputs, n=40)
    batch["meta"][:, model_inputs["pre"].meta_names().index("followers")] += np.log(100.0)
    drift = batch_drift(card, batch)
    assert all(d.level in ("ok", "calendar") for d in drift)
    assert max(d.psi for d in drift if d.name == "followers") > 1.0      # the PSI itself is there
    assert drift_summary(drift, 40).startswith("not judged")


def test_the_exported_card_holds_every_inputs_training_distribution(model_inputs):
    card = model_inputs["card"]
    dist = card["input_distribution"]
    names = {e["name"] for e in dist["inputs"]}
    meta = model_inputs["pre"].meta_names()
    assert names == {n for n in meta if "=" not in n} | {n.split("=")[0] for n in meta if "=" in n}
    assert dist["rows"] == card["counts"]["train"]
    for e in dist["inputs"]:
        assert len(e["shares"]) == len(e["edges"]) + 2 and sum(e["shares"]) == pytest.approx(1.0)
    assert batch_drift({k: v for k, v in card.items() if k != "input_distribution"},
                       model_inputs["inputs"]) is None


def test_two_paths_side_by_side_give_the_same_drivers():
    """With two predictors (the local engine's two CPU sessions) each path runs on its own one, side by side."""
    rng = np.random.default_rng(3)
    pre, card, inputs, col = _toy(rng)
    predict = _model(col, rng.normal(size=6), rng.normal(size=(6, 6)))
    p50 = predict(inputs)[:, 1].astype(np.float64)
    calls = {0: 0, 1: 0}

    def on(i):
        def run(x):
            calls[i] += 1
            return predict(x)
        return run

    two = drivers(card, pre, inputs, [on(0), on(1)], p50)
    one = drivers(card, pre, inputs, predict, p50)
    assert calls == {0: 1 + len(GROUPS) - 1, 1: len(GROUPS) - 1}   # the reference row, then a path each
    for g in GROUPS:
        np.testing.assert_array_equal(two.effects[g], one.effects[g])


def test_a_group_at_its_reference_everywhere_is_left_out_and_changes_nothing_else():
    rng = np.random.default_rng(4)
    pre, card, inputs, col = _toy(rng)
    mean = np.asarray(card["scaling"]["metadata"]["mean"], np.float32)
    ref = explain.Reference(card, pre)
    inputs["meta"][:, ref.columns["image"]] = np.nan              # no image: the graph imputes the mean
    predict = _model(col, rng.normal(size=6), rng.normal(size=(6, 6)) * 0.5)
    # the toy model reads NaN as is; the real graph imputes it: give the toy the imputed inputs
    imputed = {"meta": np.where(np.isnan(inputs["meta"]), mean, inputs["meta"])}
    model = lambda x: predict({"meta": np.where(np.isnan(x["meta"]), mean, x["meta"])})   # noqa: E731
    p50 = model(inputs)[:, 1].astype(np.float64)
    calls = []
    two = drivers(card, pre, inputs, lambda x: calls.append(1) or model(x), p50)
    assert len(calls) == 2 * (len(GROUPS) - 2) + 1                 # five groups: 8 passes and the reference row
    exact = shapley(card, pre, imputed, predict)
    np.testing.assert_allclose(two.effects["image"], 0.0)
    for g in GROUPS:
        np.testing.assert_allclose(two.effects[g], exact.effects[g], atol=1e-5)
    assert ref.at_reference(inputs, "image") and not ref.at_reference(inputs, "audience")
    inputs["meta"][:, ref.columns["user_level"]] = np.nan                 # NaN in the anchor column is a cold start
    assert ref.at_reference(inputs, "user_level")
    anchored = dict(card, scaling={**card["scaling"], "prior": {"anchor_index": int(col["user_level"])}})
    assert not explain.Reference(anchored, pre).at_reference(inputs, "user_level")
