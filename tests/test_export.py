"""igcli.export: ONNX parity, the model card, refusal of altered artefacts, failed exports leave nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from igcli.errors import ModelError
from igcli.export import CARD, ONNX, check_parity, load_card, random_inputs, resolve_model_dir
from igcli.model import build_model
from igcli.preprocess import Preprocessor


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
    return build_model(branches, inputs, rng.normal(8, 1, size=n), anchor_index=1).eval()


@pytest.mark.parametrize("branches", [("metadata",), ("objects",), ("aesthetics",),
                                      ("metadata", "objects", "aesthetics")])
def test_onnx_matches_torch_at_several_batch_sizes(tmp_path: Path, branches):
    from igcli.export import onnx_export

    model = _model(branches)
    onnx_export(model, tmp_path / ONNX)
    worst = check_parity(model, tmp_path / ONNX)
    assert set(worst) == {"1", "7", "1024"} and max(worst.values()) < 1e-4


def test_parity_check_catches_a_different_graph(tmp_path: Path):
    from igcli.export import onnx_export

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
    import igcli.export as export
    from igcli.train import TrainOptions, train

    def broken(model, path, seed=1234):
        raise ModelError("ONNX parity check failed at batch 7: injected")

    monkeypatch.setattr(export, "check_parity", broken)
    exports = tmp_path / "exports"
    with pytest.raises(ModelError, match="parity"):
        train(trained_store["db_copy"](tmp_path), TrainOptions(epochs=2, exports_dir=exports))
    assert list(exports.iterdir()) == []
