"""igcli.model.export: ONNX parity, the model card, refusal of altered artefacts, failed exports leave nothing."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from igcli.errors import ModelError
from igcli.model.export import CARD, ONNX, check_parity, load_card, random_inputs, resolve_model_dir
from igcli.model.net import Ensemble, build_model
from igcli.model.preprocess import Preprocessor


def _model(branches=("metadata", "objects", "aesthetics"), seed=0):
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = 64
    inputs = {
        "meta": rng.normal(size=(n, 12)).astype(np.float32),
        "objects": rng.dirichlet(np.ones(9), size=n).astype(np.float32),
        "objects_mask": np.ones((n, 1), np.float32),
        "aesthetics": rng.normal(size=(n, 20)).astype(np.float32),
        "aesthetics_mask": np.ones((n, 1), np.float32),
    }
    first = build_model(branches, inputs, rng.normal(8, 1, size=n), anchor_index=1)
    second = copy.deepcopy(first)
    second.init_weights()
    model = Ensemble([first, second]).eval()
    with torch.no_grad():                               # untrained heads output their starting point
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.interval_scale.copy_(torch.tensor([1.2, 1.7]))
    return model


@pytest.mark.parametrize("branches", [("metadata",), ("objects",), ("aesthetics",),
                                      ("metadata", "objects", "aesthetics")])
def test_onnx_matches_torch_at_several_batch_sizes(tmp_path: Path, branches):
    from igcli.model.export import onnx_export

    model = _model(branches)
    onnx_export(model, tmp_path / ONNX)
    worst = check_parity(model, tmp_path / ONNX)
    assert set(worst) == {"1", "7", "1024"} and max(worst.values()) < 1e-4


def test_ensemble_averages_its_members_and_widens_each_segment_by_its_scale():
    import torch

    model = _model(("metadata", "aesthetics"))
    x = random_inputs(model, 256, np.random.default_rng(3))
    x["meta"][:40, 1] = np.nan                                   # cold start: no history mean
    args = [torch.from_numpy(x[k]) for k in model.input_names]
    with torch.inference_mode():
        members = [m(*args).numpy() for m in model.members]
        got = model(*args).numpy()
    assert np.abs(members[0] - members[1]).max() > 1e-3           # two different members
    mean = (members[0] + members[1]) / 2
    np.testing.assert_allclose(got[:, 1], mean[:, 1], rtol=1e-5, atol=1e-5)
    cold = np.isnan(x["meta"][:, 1])
    for rows, c in ((~cold, 1.2), (cold, 1.7)):
        np.testing.assert_allclose(got[rows, 1] - got[rows, 0], c * (mean[rows, 1] - mean[rows, 0]), rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(got[rows, 2] - got[rows, 1], c * (mean[rows, 2] - mean[rows, 1]), rtol=1e-4,
                                   atol=1e-5)


def test_parity_check_catches_a_different_graph(tmp_path: Path):
    from igcli.model.export import onnx_export

    onnx_export(_model(seed=1), tmp_path / ONNX)
    with pytest.raises(ModelError, match="parity check failed"):
        check_parity(_model(seed=2), tmp_path / ONNX)


def test_random_inputs_have_missing_values_and_masks():
    x = random_inputs(_model(), 1024, np.random.default_rng(0))
    assert np.isnan(x["meta"]).any() and set(np.unique(x["objects_mask"])) == {0.0, 1.0}


def test_exported_model_and_card_round_trip(trained_store):
    run = trained_store["run"]
    model_dir = resolve_model_dir("latest", trained_store["exports"])
    assert model_dir.name == run.model_id and (model_dir / ONNX).is_file()
    card = load_card(model_dir)
    assert card["model_id"] == run.model_id and card["branches"] == ["metadata"]
    assert card["split"] == "random" and card["metrics"]["mae"] == pytest.approx(run.metrics["mae"])
    assert card["random_init_inputs"] is False and card["leaky_user_stats"] is False
    assert card["feature_params"]["hashtag_source"].startswith("ranking:")
    pre = Preprocessor.from_card(card)
    assert pre.to_card() == card["preprocess"] and pre.meta_names() == card["feature_names"]
    assert len(card["scaling"]["metadata"]["mean"]) == len(card["feature_names"])
    assert card["inputs"] == [{"name": "meta", "dtype": "float32"}]
    for png in ("likes_histograms.png", "predicted_vs_actual.png"):
        assert (model_dir / png).stat().st_size > 1000


def _copy_model(trained_store, tmp_path: Path) -> Path:
    src = resolve_model_dir("latest", trained_store["exports"])
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_altered_onnx_is_refused(trained_store, tmp_path: Path):
    d = _copy_model(trained_store, tmp_path)
    with open(d / ONNX, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="altered after export"):
        load_card(d)


def test_altered_card_is_refused(trained_store, tmp_path: Path):
    d = _copy_model(trained_store, tmp_path)
    card = json.loads((d / CARD).read_text())
    card["scaling"]["y_mean"] += 1.0
    (d / CARD).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="altered after export"):
        load_card(d)


def test_no_model_yet_names_the_fix(tmp_path: Path):
    with pytest.raises(ModelError, match="igcli train"):
        resolve_model_dir("latest", tmp_path)


def test_failed_export_leaves_no_directory(trained_store, tmp_path: Path, monkeypatch):
    import igcli.model.export as export
    from igcli.commands.train import TrainOptions, train

    def broken(model, path, seed=1234):
        raise ModelError("ONNX parity check failed at batch 7: injected")

    monkeypatch.setattr(export, "check_parity", broken)
    exports = tmp_path / "exports"
    with pytest.raises(ModelError, match="parity"):
        train(trained_store["db_copy"](tmp_path), TrainOptions(epochs=2, ensemble=1, exports_dir=exports))
    assert list(exports.iterdir()) == []
