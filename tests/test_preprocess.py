"""igcli.model.preprocess: relative-history inputs, computed the same way for train and score (from the card)."""

from __future__ import annotations

import numpy as np
import pytest

from igcli.model.preprocess import Preprocessor, is_history_input, relative_columns


def test_relative_columns_hand_computed():
    cols = {"hist_mean": np.array([5.0, np.nan, 4.0]), "hist_last5": np.array([6.0, 7.0, 3.5]),
            "h_slope": np.array([0.3, np.nan, -0.6]), "days_since_first": np.array([100.0, 3.0, 40.0]),
            "days_since_last_liked": np.array([20.0, np.nan, 10.0])}
    out = relative_columns(cols, ["hist_last5", "rel_slope_at_now"])
    np.testing.assert_allclose(out["rel_hist_last5"], [1.0, np.nan, -0.5])
    # the trend per 30 days times the days from the middle of the liked history (halfway first..last liked)
    np.testing.assert_allclose(out["rel_slope_at_now"], [0.3 / 30 * 60, np.nan, -0.6 / 30 * 25])


def test_history_inputs_are_told_apart_from_content_and_user_inputs():
    for name in ("hist_mean", "rel_hist_last5", "rel_slope_at_now", "h_last1", "days_since_last_liked",
                 "n_posts_before", "posts_last30d", "tag_perf", "tag_perf_n", "tag_novel_frac", "no_history"):
        assert is_history_input(name), name
    for name in ("followers", "caption_len", "n_hashtags", "hashtag_weight", "n_emoji", "brightness",
                 "month=3", "has_image_quality"):
        assert not is_history_input(name), name


def test_relative_inputs_are_in_the_card_and_rebuilt_identically(trained_store):
    from igcli import store
    from igcli.features.frames import load_frame

    con = store.connect(trained_store["db"], read_only=True)
    frame = load_frame(con)
    con.close()
    pre = Preprocessor.fit(frame, ("metadata",))
    names = pre.meta_names()
    assert {"rel_hist_last5", "rel_h_max", "rel_slope_at_now"} <= set(names)
    meta = pre.transform(frame)["meta"]
    i, j = names.index("rel_hist_decayed"), names.index("hist_mean")
    want = frame.cols["hist_decayed"] - frame.cols["hist_mean"]
    np.testing.assert_allclose(meta[:, i], want.astype(np.float32), rtol=1e-6, equal_nan=True)
    assert np.isnan(meta[np.isnan(meta[:, j]), i]).all()                   # no history: missing, not 0
    again = Preprocessor.from_card({"preprocess": pre.to_card()})           # what score builds
    assert again.meta_names() == names
    np.testing.assert_array_equal(again.transform(frame)["meta"], meta)
    off = Preprocessor.fit(frame, ("metadata",), relative=False)
    assert not any(n.startswith("rel_") for n in off.meta_names())
    old_card = off.to_card()
    del old_card["relative"]                                               # a card from before rel_* inputs
    assert Preprocessor.from_card({"preprocess": old_card}).meta_names() == off.meta_names()


def test_cold_start_prior_uses_no_history_input(trained_store):
    import json

    card = json.loads((trained_store["exports"] / trained_store["run"].model_id / "model_card.json").read_text())
    w = np.asarray(card["scaling"]["prior"]["w"])
    names = card["feature_names"]
    hist = np.array([is_history_input(n) for n in names])
    assert hist.any() and (~hist).any()
    assert np.all(w[hist] == 0) and np.abs(w[~hist]).sum() > 0
    assert card["scaling"]["ensemble"] == 2


@pytest.mark.parametrize("bad", ["hist_mean"])
def test_transform_names_a_missing_stored_column(trained_store, bad):
    from igcli import store
    from igcli.errors import FeatureMismatch
    from igcli.features.frames import load_frame

    con = store.connect(trained_store["db"], read_only=True)
    frame = load_frame(con)
    con.close()
    pre = Preprocessor.fit(frame, ("metadata",))
    del frame.cols[bad]
    with pytest.raises(FeatureMismatch, match=bad):
        pre.transform(frame)


def test_a_batch_frame_finds_its_posts_by_key_and_without_keys_all_the_same(trained_store, tmp_path):
    """load_frame of some posts joins only those posts (found by post_key, fetched by rowid); with the keys
    missing (a store not ingested since they existed) it falls back to joining every post: the same frame."""
    from igcli import store
    from igcli.features.frames import _posts_of, _register_ids, load_frame

    db = trained_store["db_copy"](tmp_path)
    con = store.connect(db)
    try:
        ids = [r[0] for r in con.execute("SELECT post_id FROM posts ORDER BY post_id DESC LIMIT 40").fetchall()]
        assert _posts_of(con, ids, _register_ids(con, ids, "post_features")) == "igc_frame_posts"
        keyed = load_frame(con, ids)
        con.execute("UPDATE posts SET post_key = NULL WHERE post_id = ?", [ids[0]])
        assert _posts_of(con, ids, _register_ids(con, ids, "post_features")) == "posts"
        fallback = load_frame(con, ids)
    finally:
        con.close()
    assert len(keyed) == len(fallback) == 40 and list(keyed.post_id) == list(fallback.post_id)
    for name, values in keyed.cols.items():
        np.testing.assert_array_equal(values, fallback.cols[name], err_msg=name)
