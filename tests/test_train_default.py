"""`igcli train` with no options: branches chosen on the validation part, warm holdout, refit on every labelled
post, a verdict against the users' history mean, and the store's chosen model (igcli.commands.train)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import csv_rows, run_cli, write_csv_rows

from igcli import store
from igcli.commands.featurize import featurize
from igcli.commands.ingest import ingest_posts
from igcli.commands.train import (
    TrainOptions,
    _sources_for,
    chosen_model,
    held_out_user,
    train,
    train_on_frame,
    verdict,
)
from igcli.errors import InputError
from igcli.features.frames import data_fingerprint, load_frame
from igcli.features.images import ImageFeatureOptions
from igcli.features.metadata import FeaturizeOptions
from igcli.model.net import RANK_TEMPERATURE, within_user_pair_loss
from igcli.model.preprocess import Preprocessor


def _frame(db):
    con = store.connect(db, read_only=True)
    try:
        return load_frame(con)
    finally:
        con.close()


def _with_embedding(frame, dim=8, seed=0):
    """A synthetic image embedding whose first column carries part of the target."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(frame), dim)).astype(np.float32)
    emb[:, 0] += np.nan_to_num(frame.ln_likes)
    return replace(frame, embedding=emb, nima_mean=np.full(len(frame), np.nan))


def test_default_options_are_the_issue_defaults():
    opts = TrainOptions()
    assert opts.branches is None and opts.split == "warm-holdout" and opts.refit


def test_branches_are_chosen_on_validation_and_the_test_part_plays_no_part(trained_store):
    frame = _with_embedding(_frame(trained_store["db"]))
    opts = TrainOptions(split="random", epochs=15, ensemble=1, export=False)
    _, _, res, (sub, _tr, _va, test, _p) = train_on_frame(frame, opts)
    tried = [c for c in res["candidates"] if "val_mae" in c]
    assert res["chosen_by"] == "validation"
    assert sorted(c["branches"] for c in tried) == [["metadata"], ["metadata", "aesthetics"]]
    best = min(tried, key=lambda c: c["val_mae"])
    assert list(res["branches"]) == best["branches"] == res["candidates"][0]["branches"]
    skipped = [c for c in res["candidates"] if "skipped" in c]
    assert len(skipped) == 2 and all("igcli ingest-classes" in c["skipped"] for c in skipped)
    # Any targets on the test posts: the same validation errors, the same choice.
    pos = {p: i for i, p in enumerate(frame.post_id)}
    flipped = frame.ln_likes.copy()
    rows = [pos[p] for p in sub.post_id[test]]
    flipped[rows] = 20.0 - flipped[rows]
    _, _, res2, _ = train_on_frame(replace(frame, ln_likes=flipped), opts)
    assert [(c["branches"], c["val_mae"]) for c in res2["candidates"] if "val_mae" in c] == \
        [(c["branches"], c["val_mae"]) for c in tried]
    assert res2["branches"] == res["branches"] and res2["metrics"]["mae"] != res["metrics"]["mae"]


def test_forced_branches_train_that_set_alone(trained_store):
    frame = _with_embedding(_frame(trained_store["db"]))
    opts = TrainOptions(branches=("metadata",), split="random", epochs=5, ensemble=1, export=False)
    _, _, res, _ = train_on_frame(frame, opts)
    assert res["chosen_by"] == "forced" and [c["branches"] for c in res["candidates"]] == [["metadata"]]


def test_refit_exports_a_model_fitted_on_every_labelled_post(trained_store, tmp_path):
    db = trained_store["db_copy"](tmp_path)
    ex = tmp_path / "ex"
    run = train(db, TrainOptions(epochs=20, ensemble=1, exports_dir=ex))      # the defaults: warm holdout
    frame = _frame(db)
    labelled = frame.take(np.flatnonzero(frame.likes > 0))
    assert run.split == "warm-holdout" and run.chosen_by == "validation"
    # the held-out users' history is in no part of the evaluation, and in the refit
    assert run.refit["rows"] == len(labelled) > run.n_train + run.n_val + run.n_test
    assert run.refit["epochs"] and all(e >= 1 for e in run.refit["epochs"])
    card = json.loads((ex / run.model_id / "model_card.json").read_text())
    assert card["exported"] == "refit" and card["refit"]["rows"] == len(labelled)
    assert card["evaluation"]["rows"] == {"train": run.n_train, "val": run.n_val, "test": run.n_test}
    assert card["evaluation"]["verdict"] == run.verdict and card["chosen_by"] == "validation"
    assert card["metrics"]["mae"] == pytest.approx(run.metrics["mae"])                 # the evaluated model's
    # the exported graph's scaling constants are those of every labelled post
    meta = Preprocessor.from_card(card).transform(labelled)["meta"]
    with np.errstate(invalid="ignore"):
        want = np.nan_to_num(np.nanmean(meta, axis=0))
    np.testing.assert_allclose(card["scaling"]["metadata"]["mean"], want, rtol=1e-4, atol=1e-5)
    con = store.connect(db)
    fp = con.execute("SELECT data_fingerprint FROM runs WHERE model_id = ?", [run.model_id]).fetchall()[0][0]
    assert fp == data_fingerprint(con, labelled.post_id.tolist())
    con.close()


def test_no_refit_exports_the_evaluated_model(trained_store, tmp_path):
    ex = tmp_path / "ex"
    run = train(trained_store["db_copy"](tmp_path), TrainOptions(branches=("metadata",), split="random",
                                                                 epochs=20, ensemble=1, exports_dir=ex, refit=False))
    card = json.loads((ex / run.model_id / "model_card.json").read_text())
    assert run.refit is None and card["refit"] is None and card["exported"] == "evaluated"
    sub, train_idx = run.split_rows[0], run.split_rows[1]
    meta = Preprocessor.from_card(card).transform(sub.take(train_idx))["meta"]
    with np.errstate(invalid="ignore"):
        want = np.nan_to_num(np.nanmean(meta, axis=0))
    np.testing.assert_allclose(card["scaling"]["metadata"]["mean"], want, rtol=1e-4, atol=1e-5)


def test_verdict_line_against_the_history_mean():
    line, beats = verdict("warm-holdout", {"mae": 0.300, "pairwise": 0.614}, {"mae": 0.318})
    assert beats and line == ("on held-out users: MAE 5.7% below their history mean (0.300 against 0.318), "
                              "right order for 61% of same-user pairs")
    line, beats = verdict("user", {"mae": 0.33, "pairwise": float("nan")}, {"mae": 0.30})
    assert not beats and line == "on unseen users: MAE 10.0% above their history mean (0.330 against 0.300)"
    assert not verdict("random", {"mae": 0.3}, {"mae": 0.3})[1]                 # a tie does not beat it


def test_warm_holdout_without_held_out_users_names_the_fix(trained_store):
    frame = _frame(trained_store["db"])
    kept = [u for u in sorted(set(frame.username)) if not held_out_user(u, 0)][:4]
    small = frame.take(np.flatnonzero(np.isin(frame.username, kept)))
    with pytest.raises(InputError, match="--split random"):
        train_on_frame(small, TrainOptions(epochs=1, ensemble=1))


def test_chosen_model_is_the_latest_published_choice(trained_store, tmp_path):
    db = trained_store["db_copy"](tmp_path)
    con = store.connect(db)
    assert chosen_model(con) == trained_store["run"].model_id                 # forced --branches, exported
    run = train(db, TrainOptions(epochs=5, ensemble=1, export=False), con=con)
    assert chosen_model(con) == trained_store["run"].model_id                 # nothing exported: not chosen
    assert run.refit is None                                                  # and nothing to refit
    assert con.execute("SELECT chosen_by FROM runs WHERE model_id = ?", [run.model_id]).fetchall() == [(None,)]
    published = train(db, TrainOptions(epochs=5, ensemble=1, exports_dir=tmp_path / "ex"), con=con)
    assert chosen_model(con) == published.model_id
    con.execute("ALTER TABLE runs DROP COLUMN chosen_by")                     # a store from before the record
    con.execute("UPDATE schema_version SET version = 3")
    assert chosen_model(con) is None
    con.close()
    con = store.connect(db)                                                   # migrated: the column is back
    assert con.execute("SELECT max(version) FROM schema_version").fetchall() == [(store.SCHEMA_VERSION,)]
    assert chosen_model(con) is None                                          # no run says how it was chosen
    con.close()


def test_cli_defaults_end_with_the_verdict_and_warn_when_history_wins(trained_store, tmp_path):
    """Every post of a user has the same likes: the user's history mean is exact, so no model beats it."""
    rows = csv_rows(trained_store["sample"] / "posts.csv")
    level = {}
    for row in rows:
        row["likes"] = str(level.setdefault(row["username"], 50 + 37 * len(level)))
    write_csv_rows(tmp_path / "flat.csv", rows)
    db = tmp_path / "flat.duckdb"
    ingest_posts(tmp_path / "flat.csv", db=db)
    featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    r = run_cli("train", "--db", str(db), "--exports", str(tmp_path / "ex"), "--epochs", "10", "--ensemble", "1")
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("on held-out users: MAE ") and "above their history mean (" in last
    assert "does not beat the users' own history mean" in " ".join(r.stderr.split())
    assert "not tried metadata+objects" in r.stdout and "Traceback" not in r.stderr


def test_within_user_pair_loss_hand_computed():
    import torch

    pred = torch.tensor([1.0, 2.0, 0.5, 9.0])
    y = torch.tensor([1.0, 3.0, 2.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1])
    # pairs of user 0: (0,1) right by 1.0, (0,2) wrong by 0.5, (1,2) right by 1.5; user 1 has one post
    want = np.mean([np.log1p(np.exp(-d / RANK_TEMPERATURE)) for d in (1.0, -0.5, 1.5)])
    assert float(within_user_pair_loss(pred, y, groups, "logistic")) == pytest.approx(want, rel=1e-5)
    want_diff = np.mean([abs(-1.0 - -2.0), abs(0.5 - -1.0), abs(1.5 - 1.0)])
    assert float(within_user_pair_loss(pred, y, groups, "diff")) == pytest.approx(want_diff, rel=1e-6)
    assert float(within_user_pair_loss(pred, y, torch.arange(4), "logistic")) == 0.0     # no same-user pair
    with pytest.raises(InputError, match="rank_loss"):
        train("unused.duckdb", TrainOptions(rank_loss="listwise"))


def test_the_choice_reads_a_backbones_classes_before_precomputed_ones(tmp_path):
    con = store.connect(tmp_path / "s.duckdb")
    con.execute("INSERT INTO image_classes SELECT 'p' || i, NULL, 'precomputed', 'precomputed', false, 'file', 1, "
                "'n02084071', 0.5 FROM range(5) t(i)")
    con.execute("INSERT INTO image_classes SELECT NULL, 'sha' || i, 'efficientnet_lite0', 'fp:crop1', false, "
                "'featurize', 1, 'n02084071', 0.5 FROM range(3) t(i)")
    chosen = _sources_for(con, TrainOptions(), None)
    assert chosen["objects"]["backbone"] == "efficientnet_lite0" and chosen["aesthetics"] is None
    named = _sources_for(con, TrainOptions(objects_source="precomputed"), None)
    assert named["objects"]["backbone"] == "precomputed"
    forced = _sources_for(con, TrainOptions(), ("metadata", "objects"))          # --branches: most posts, as before
    assert forced["objects"]["backbone"] == "precomputed"
    con.close()
