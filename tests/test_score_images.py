"""Training and scoring with the image branches: objects from a classifier run by featurize, aesthetics
embeddings from a (tiny, random-init) MobileNet stand-in; card marking; masking of posts without images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import csv_rows, write_csv_rows

from igcli.commands.featurize import featurize
from igcli.commands.ingest import ingest_posts
from igcli.commands.score import ScoreOptions, score
from igcli.commands.train import TrainOptions, train
from igcli.errors import FeatureMismatch
from igcli.features.images import ImageFeatureOptions
from igcli.features.metadata import FeaturizeOptions
from igcli.model.export import load_card

CLASSIFIER = "test_efficientnet"   # tiny timm models, random weights: the tests need no download
EMBEDDER = "test_vit"


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict:
    base = tmp_path_factory.mktemp("images")
    db = base / "s.duckdb"
    ingest_posts(sample_dir / "posts.csv", db=db)
    img = ImageFeatureOptions(objects=CLASSIFIER, aesthetics=EMBEDDER, objects_explicit=True,
                              aesthetics_explicit=True, random_init=True, batch_size=16, workers=0, device="cpu")
    featurize(db, FeaturizeOptions(images=img))
    run = train(db, TrainOptions(branches=("metadata", "objects", "aesthetics"), epochs=40, ensemble=1,
                                 exports_dir=base / "exports"))
    return {"db": db, "run": run, "exports": base / "exports", "sample": sample_dir, "base": base}


def test_card_names_backbones_and_random_init(image_model):
    card = load_card(Path(image_model["run"].export_dir))
    assert card["random_init_inputs"] is True and image_model["run"].random_init_inputs
    assert card["backbones"]["objects"]["backbone"] == CLASSIFIER
    assert card["backbones"]["aesthetics"]["backbone"] == EMBEDDER
    assert card["backbones"]["objects"]["weights_fp"] == f"random-init:{CLASSIFIER}:0:crop1"
    assert [i["name"] for i in card["inputs"]] == ["meta", "objects", "objects_mask", "aesthetics",
                                                   "aesthetics_mask"]
    assert card["preprocess"]["families"][-1] == "other" and card["preprocess"]["embedding_dim"] > 0
    img = card["image_inputs"]                  # the fixed PCA + ridge layers of the graph
    assert img["embedding_dim"] == card["preprocess"]["embedding_dim"] and 0 < img["pca_components"] <= 32
    assert len(card["preprocess"]["objects_mean"]) == len(card["preprocess"]["families"])   # for usual_likes


def test_scoring_runs_missing_backbones_and_masks_posts_without_image(image_model, tmp_path: Path):
    db = tmp_path / "s.duckdb"
    shutil.copy(image_model["db"], db)
    # the sample leaves only a few posts without an image, and a batch may have none: blank two image cells
    new_posts = image_model["sample"] / "new_posts.csv"
    rows = csv_rows(new_posts)
    blanked = [row for row in rows if row["image"]][:2]
    for row in blanked:
        row["image"] = ""
    batch = tmp_path / "new_posts.csv"
    write_csv_rows(batch, rows)
    expected_without = sum(not row["image"] for row in rows)
    r = score(batch, db, ScoreOptions(exports_dir=image_model["exports"], images_dir=new_posts.parent))
    assert r.posts == len(rows) and len(blanked) == 2
    assert r.without_image == expected_without >= 2
    # every post without an image is scored with both image branches masked, and counted
    assert r.masked["objects"] == r.masked["aesthetics"] == r.without_image
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    n = con.execute("SELECT count(*) FROM predictions").fetchall()[0][0]
    con.close()
    assert n == r.posts


def test_scoring_with_other_weights_is_a_mismatch(image_model, tmp_path: Path):
    import timm
    import torch

    db = tmp_path / "s.duckdb"
    shutil.copy(image_model["db"], db)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model(CLASSIFIER, pretrained=False).state_dict(), other)
    with pytest.raises(FeatureMismatch, match="--objects-weights"):
        score(image_model["sample"] / "new_posts.csv", db,
              ScoreOptions(exports_dir=image_model["exports"], objects_weights=other))


def test_a_model_trained_on_the_earlier_image_geometry_asks_to_be_retrained(image_model, tmp_path: Path):
    """A card whose image features lack ":crop1" came from timm's centre crop: scoring names the fix."""
    import json

    from igcli.model.export import CARD, card_digest

    db = tmp_path / "s.duckdb"
    shutil.copy(image_model["db"], db)
    exports = tmp_path / "exports"
    shutil.copytree(image_model["exports"], exports)
    (model_dir,) = [d for d in exports.iterdir() if (d / CARD).is_file()]
    card = json.loads((model_dir / CARD).read_text())
    for role in ("objects", "aesthetics"):
        card["backbones"][role]["weights_fp"] = card["backbones"][role]["weights_fp"].removesuffix(":crop1")
    card["card_sha256"] = card_digest(card)
    (model_dir / CARD).write_text(json.dumps(card))
    with pytest.raises(FeatureMismatch, match="retrain"):
        score(image_model["sample"] / "new_posts.csv", db, ScoreOptions(exports_dir=exports))
