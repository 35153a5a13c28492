"""bench/bench_quality.py helpers: subsets without posts are left out of the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_quality", BENCH / "bench_quality.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_quality"] = mod               # its dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_empty_subsets_make_no_row():
    bq = _bench()
    runs = [SimpleNamespace(subsets={"with_history": {"n": 200, "mae": 0.3}}),
            SimpleNamespace(subsets={"with_history": {"n": 210, "mae": 0.31}, "cold_start": {"n": 0, "mae": 2.0}}),
            SimpleNamespace(subsets={"with_history": {"n": 190, "mae": 0.29}, "cold_start": {"n": 2, "mae": 0.7}})]
    assert bq.subset_values(runs, "cold_start") == [{"n": 2, "mae": 0.7}]
    assert len(bq.subset_values(runs, "with_history")) == 3
    assert bq.subset_values(runs[:2], "cold_start") == []


def test_lightgbm_rows_skip_an_empty_cold_start_subset():
    bq = _bench()
    from igcli.features.frames import Frame

    rng = np.random.default_rng(0)
    n = 300
    users = np.array([f"u{i % 15}" for i in range(n)], dtype=object)
    cols = {c: rng.normal(size=n) for c in ("hist_n", "hist_mean", "hist_median", "hist_std", "hist_last5",
                                              "hist_last10", "hist_decayed", "days_since_prev", "days_since_first",
                                              "followers", "following", "user_post_count", "caption_len",
                                              "n_hashtags", "n_mentions", "hashtag_weight", "no_history")}
    from igcli.model.preprocess import QUALITY

    cols.update({q: rng.normal(size=n) for q, _ in QUALITY})
    cols.update({"month": rng.integers(1, 13, n).astype(float), "weekday": rng.integers(0, 7, n).astype(float),
                 "hour_group": rng.integers(0, 4, n).astype(float)})
    y = cols["hist_mean"] + 0.1 * rng.normal(size=n)
    frame = Frame(np.array([str(i) for i in range(n)], dtype=object), users, np.arange(n), y, np.exp(y), cols, {})
    idx = np.arange(n)
    out = bq.lightgbm_run(frame, idx[:200], idx[200:250], idx[250:], with_objects=False, seed=0)
    assert out["with_history"]["n"] == 50 and "cold_start" not in out          # every test post has history
    frame.cols["hist_mean"][250:260] = np.nan
    out = bq.lightgbm_run(frame, idx[:200], idx[200:250], idx[250:], with_objects=False, seed=0)
    assert out["cold_start"]["n"] == 10


def test_models_are_ordered_and_the_best_chosen_by_validation_not_test():
    """A model with the lower test MAE but the higher validation MAE ranks second; the cells show the mean
    over seeds with the MAE's standard deviation over seeds, and the validation MAE."""
    bq = _bench()
    a = bq.Row("random", "a", [{"mae": 0.30, "n": 10}, {"mae": 0.32, "n": 10}, {"mae": 0.34, "n": 10}],
               val_mae=[0.5, 0.5, 0.5])
    b = bq.Row("random", "b", [{"mae": 0.40, "n": 10}] * 3, val_mae=[0.2, 0.3, 0.4])
    unvalidated = bq.Row("random", "c", [{"mae": 0.01, "n": 10}])
    assert [r.model for r in bq.by_validation([a, unvalidated, b])] == ["b", "a", "c"]
    cells = dict(zip(bq.HEADER, a.cells(), strict=True))
    assert cells["MAE"] == f"0.320 ±{np.std([0.30, 0.32, 0.34]):.3f}" and cells["val MAE"] == "0.500"
    assert dict(zip(bq.HEADER, b.cells(), strict=True))["val MAE"] == "0.300"

