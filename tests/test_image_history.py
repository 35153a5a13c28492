"""The photo against the user's earlier photos (img_perf, img_top1, img_sim_max): hand-computed on a tiny store,
point in time, and the same through both reads (training_frame and serving_batch)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igcli import store
from igcli.commands.featurize import featurize
from igcli.commands.ingest import ingest_posts
from igcli.features.frames import IMAGE_KERNEL_TEMPERATURE, serving_batch, training_frame
from igcli.features.images import ImageFeatureOptions
from igcli.features.metadata import FeaturizeOptions
from igcli.model.preprocess import Preprocessor, is_history_input

SOURCE = {"backbone": "fake", "weights_fp": "fp"}
# post: (user, day, likes, embedding or None for no photo)
POSTS = {
    "a1": ("ann", 1, 100, (1.0, 0.0, 0.0)),
    "a2": ("ann", 2, 1000, (0.0, 1.0, 0.0)),
    "a3": ("ann", 3, 10, (2.0, 0.0, 0.0)),           # the direction of a1
    "a4": ("ann", 4, 50, (1.0, 1.0, 0.0)),           # equally like a1, a2, a3
    "a5": ("ann", 4, 70, (1.0, 0.0, 0.0)),           # same time as a4: neither sees the other
    "a6": ("ann", 5, 80, None),                      # no photo
    "b1": ("bob", 1, 30, (0.0, 0.0, 1.0)),
    "b2": ("bob", 2, 40, (0.0, 0.0, 1.0)),
}


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("photos")
    (base / "img").mkdir()
    lines = ["post_id,username,posted_at,caption,likes,followers,following,user_post_count,image"]
    for i, (pid, (user, day, likes, emb)) in enumerate(POSTS.items()):
        image = ""
        if emb is not None:
            Image.new("RGB", (8, 8), (30 * i, 255 - 30 * i, 7 * i)).save(base / "img" / f"{pid}.png")
            image = f"img/{pid}.png"
        lines.append(f"{pid},{user},2024-01-{day:02d},hi,{likes},100,10,5,{image}")
    (base / "posts.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    db = base / "s.duckdb"
    ingest_posts(base / "posts.csv", db=db)
    featurize(db, FeaturizeOptions(images=ImageFeatureOptions(skip_backbones=True)))
    con = store.connect(db)
    for pid, (*_, emb) in POSTS.items():
        if emb is not None:
            con.execute("""INSERT INTO image_embeddings SELECT i.sha256, 'fake', 'fp', false, ?::FLOAT[], NULL, NULL,
                                  now() FROM posts p JOIN images i ON i.path = p.image_path WHERE p.post_id = ?""",
                        [list(emb), pid])
    con.close()
    return db


def _cols(frame) -> dict[str, dict[str, float]]:
    return {pid: {k: frame.cols[k][i] for k in ("img_perf", "img_top1", "img_sim_max")}
            for i, pid in enumerate(frame.post_id)}


def test_hand_computed_and_point_in_time(photo_store):
    con = store.connect(photo_store, read_only=True)
    got = _cols(training_frame(con, None, None, SOURCE))
    con.close()
    y = {pid: math.log(v[2]) for pid, v in POSTS.items()}
    for pid in ("a1", "b1", "a6"):                       # no earlier liked photo, or no photo of its own
        assert all(np.isnan(v) for v in got[pid].values()), pid
    # a3: earlier a1 (cosine 1) and a2 (cosine 0); the kernel all but ignores a2
    mean = (y["a1"] + y["a2"]) / 2
    w2 = math.exp(-1 / IMAGE_KERNEL_TEMPERATURE)
    kernel = (y["a1"] + w2 * y["a2"]) / (1 + w2)
    assert got["a3"]["img_perf"] == pytest.approx((kernel - mean) * 2 / 4, rel=1e-6)
    assert got["a3"]["img_top1"] == pytest.approx(y["a1"] - mean)
    assert got["a3"]["img_sim_max"] == pytest.approx(1.0, abs=1e-6)
    # a4: a1, a2, a3 equally alike: the kernel is their mean, img_perf 0; a5 (same day) is not among them
    mean3 = (y["a1"] + y["a2"] + y["a3"]) / 3
    assert got["a4"]["img_perf"] == pytest.approx(0.0, abs=1e-6)
    assert got["a4"]["img_sim_max"] == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert any(got["a4"]["img_top1"] == pytest.approx(y[p] - mean3, abs=1e-6) for p in ("a1", "a2", "a3"))
    assert got["a5"]["img_sim_max"] == pytest.approx(1.0, abs=1e-6)           # a1 and a3, not a4
    assert got["b2"]["img_top1"] == pytest.approx(0.0, abs=1e-6)               # other users' photos never count


def test_serving_sees_no_hidden_likes_and_otherwise_matches_training(photo_store, tmp_path):
    import shutil

    db = tmp_path / "s.duckdb"
    shutil.copy(photo_store, db)
    con = store.connect(db)
    card = {"feature_params": training_frame(con, None, None, SOURCE).feature_params, "model_id": "t",
            "backbones": {"aesthetics": SOURCE}}
    stored = _cols(training_frame(con, None, None, SOURCE))
    with store.transaction(con):
        served = _cols(serving_batch(con, card, ["a4", "a5", "b2"]))
    for pid in ("a4", "a5", "b2"):                                              # parity: the same function
        np.testing.assert_allclose(list(served[pid].values()), list(stored[pid].values()), rtol=1e-6)
    con.execute("UPDATE posts SET likes = NULL WHERE post_id = 'a3'")          # a3's likes unknown (a batch post)
    with store.transaction(con):
        hidden = _cols(serving_batch(con, card, ["a4"]))
    con.close()
    y1, y2 = math.log(100), math.log(1000)
    assert hidden["a4"]["img_perf"] == pytest.approx(0.0, abs=1e-6)
    assert any(hidden["a4"]["img_top1"] == pytest.approx(v - (y1 + y2) / 2, abs=1e-6) for v in (y1, y2))
    assert hidden["a4"]["img_top1"] != pytest.approx(stored["a4"]["img_top1"])


def test_inputs_of_models_with_the_aesthetics_branch_only(photo_store):
    con = store.connect(photo_store, read_only=True)
    frame = training_frame(con, None, None, SOURCE)
    con.close()
    with_images = Preprocessor.fit(frame, ("metadata", "aesthetics")).meta_names()
    assert {"img_perf", "img_top1", "img_sim_max"} <= set(with_images)
    assert not {"img_perf"} & set(Preprocessor.fit(frame, ("metadata",)).meta_names())
    assert not {"img_perf"} & set(Preprocessor.fit(frame, ("metadata", "aesthetics"), image_history=()).meta_names())
    assert is_history_input("img_perf")                                          # left out of the cold prior
