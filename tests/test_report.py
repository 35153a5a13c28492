"""`igcli.commands.report`: which sections a page has, that its numbers are the runs table's, that it needs nothing
else.

The page is parsed with the standard library's HTML parser; every section must be there when its data is
and absent when it is not.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import query

from igcli import store
from igcli.commands.report import build_report
from igcli.errors import InputError, ModelError


class Page(HTMLParser):
    """What a test needs from a report: sections, parts, figures, metric cells, every URL-bearing attribute."""

    def __init__(self, html: str):
        super().__init__()
        self.sections: list[str] = []
        self.parts: dict[str, dict] = {}
        self.figures: list[str] = []
        self.cells: list[dict] = []          # {"table", "row", "metric", "value", "text"}
        self.urls: list[tuple[str, str, str]] = []   # (tag, attribute, value)
        self.images: list[str] = []
        self.meta: list[dict] = []
        self._table = self._row = self._cell = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-section" in a:
            self.sections.append(a["data-section"])
        if "data-part" in a:
            self.parts[a["data-part"]] = a
        if "data-figure" in a:
            self.figures.append(a["data-figure"])
        if tag == "table":
            self._table = a.get("data-table")
        if tag == "tr":
            self._row = a.get("data-row")
        if tag == "td" and "data-metric" in a:
            self._cell = {"table": self._table, "row": self._row, "metric": a["data-metric"],
                          "value": a["data-value"], "text": ""}
            self.cells.append(self._cell)
        for k in ("src", "href", "action", "data", "poster", "srcset", "background"):
            if k in a:
                self.urls.append((tag, k, a[k]))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "meta":
            self.meta.append(a)

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def metric(self, table: str, row: str) -> dict[str, str]:
        return {c["metric"]: c["value"] for c in self.cells if c["table"] == table and c["row"] == row}


def page(result) -> Page:
    return Page(Path(result.path).read_text(encoding="utf-8"))


def assert_self_contained(html: str, p: Page) -> None:
    assert not re.search(r"(?i)https?://", html), "an absolute URL in the page"
    assert not re.search(r"(?i)url\(", html), "a CSS url() in the page"
    for tag, attr, value in p.urls:
        assert value.startswith(("data:", "#")), f"<{tag} {attr}={value[:60]!r}> points outside the page"
    assert "<script" not in html.lower()
    csp = [m["content"] for m in p.meta if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "img-src data:" in csp[0]


def run_row(db: Path, model_id: str) -> tuple[dict, dict]:
    metrics, baselines = query(db, "SELECT metrics, baselines FROM runs WHERE model_id = ?", [model_id])[0]
    return json.loads(metrics), json.loads(baselines)


def same(shown: str, stored) -> bool:
    if stored is None or (isinstance(stored, float) and math.isnan(stored)):
        return shown in ("", "nan")
    return float(shown) == stored


# ---------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def scored(trained_store, tmp_path_factory) -> dict:
    """The shared trained store, copied, with one batch of new posts scored by its model."""
    from igcli.commands.score import ScoreOptions, score

    base = tmp_path_factory.mktemp("report")
    db = trained_store["db_copy"](base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(base / "hf"))
        res = score(trained_store["sample"] / "new_posts.csv", db,
                    ScoreOptions(model="latest", exports_dir=trained_store["exports"], device="cpu"))
    return {**trained_store, "db": db, "base": base, "score": res}


@pytest.fixture(scope="module")
def full(scored, tmp_path_factory) -> dict:
    """The report of the scored store, written once for the tests that only read it."""
    r = report(scored["db"], tmp_path_factory.mktemp("full"), scored["exports"])
    html = Path(r.path).read_text(encoding="utf-8")
    return {"result": r, "html": html, "page": Page(html)}


def copy_db(scored: dict, tmp_path: Path) -> Path:
    dst = tmp_path / "s.duckdb"
    shutil.copy(scored["db"], dst)
    return dst


def report(db: Path, tmp_path: Path, exports: Path | None = None, model: str | None = "latest", name="r.html"):
    return build_report(db, model=model, exports_dir=exports or tmp_path / "no-exports", out=tmp_path / name)


# ------------------------------------------------------------------------------------------- tests

def test_full_report_has_every_section_with_data(scored, full):
    r, html, p = full["result"], full["html"], full["page"]
    assert p.sections == ["store", "model", "scores"] == r.sections
    assert r.model_id == scored["run"].model_id
    assert {"likes", "posts-per-user", "predicted-vs-actual", "calibration", "history", "predicted-likes"} <= set(
        p.figures)
    assert {"images", "calibration", "history", "extremes-above", "extremes-below"} <= set(p.parts)
    # one metadata-only run: no branch combinations, no object families; score writes vs_usual
    assert "ablation" not in p.parts and "families" not in p.parts and "vs-usual" in p.figures
    assert p.parts["extremes-above"]["data-kind"] == "usual"
    assert "rejects" not in p.parts                                    # the sample file has no bad rows
    assert all(src.startswith("data:image/") for src in p.images) and len(p.images) > 8
    assert any(src.startswith("data:image/jpeg") for src in p.images), "no post thumbnail embedded"
    assert_self_contained(html, p)
    assert f"{scored['score'].posts:,} posts at" in r.summary and scored["run"].model_id in r.summary


def test_metrics_shown_equal_the_runs_table(scored, full):
    r, p = full["result"], full["page"]
    metrics, baselines = run_row(scored["db"], r.model_id)
    shown = p.metric("metrics", "model")
    assert set(shown) >= set(metrics)
    for k, v in metrics.items():
        assert same(shown[k], v), (k, shown[k], v)
    for name, m in baselines.items():
        shown = p.metric("metrics", f"baseline:{name}")
        assert shown and all(same(shown[k], v) for k, v in m.items()), name
    # the displayed MAE is the stored one, rounded
    cell = next(c for c in p.cells if c["row"] == "model" and c["metric"] == "mae")
    assert cell["text"] == f"{metrics['mae']:.3f}"
    card = json.loads((Path(scored["run"].export_dir) / "model_card.json").read_text())
    for name, m in card["subsets"].items():
        assert float(p.metric("metrics", f"subset:{name}")["mae"]) == m["mae"]


def test_a_new_metric_in_the_run_appears_by_itself(scored, tmp_path: Path):
    db = copy_db(scored, tmp_path)
    metrics, _ = run_row(db, scored["run"].model_id)
    con = duckdb.connect(str(db))
    con.execute("UPDATE runs SET metrics = ? WHERE model_id = ?",
                [json.dumps({**metrics, "pairwise_accuracy": 0.6131}), scored["run"].model_id])
    con.close()
    p = page(report(db, tmp_path, scored["exports"]))
    assert p.metric("metrics", "model")["pairwise_accuracy"] == "0.6131"
    assert "61.3%" in [c["text"] for c in p.cells if c["metric"] == "pairwise_accuracy"]


def test_exported_test_part_reproduces_the_run_metrics(scored):
    """The per-post arrays behind calibration and error-by-history are exactly what the metrics saw."""
    import pyarrow.parquet as pq

    from igcli.model.export import TEST_PART
    from igcli.model.metrics import metrics as compute

    t = pq.read_table(Path(scored["run"].export_dir) / TEST_PART)
    got = compute(*(t.column(c).to_numpy() for c in ("p50", "actual_log_likes", "p10", "p90")))
    metrics, baselines = run_row(scored["db"], scored["run"].model_id)
    assert got["n"] == metrics["n"] and math.isclose(got["mae"], metrics["mae"], rel_tol=1e-12)
    assert math.isclose(got["coverage_p10_p90"], metrics["coverage_p10_p90"], rel_tol=1e-12)
    base = compute(t.column("baseline_user_mean").to_numpy(), t.column("actual_log_likes").to_numpy())
    assert math.isclose(base["mae"], baselines["user_mean_earlier_posts"]["mae"], rel_tol=1e-12)


def test_calibration_table_matches_an_independent_computation(scored, full):
    """The per-decile calibration table, recomputed in plain Python from the exported test arrays: deciles cut
    at the 10%..90% quantiles of the predicted median (linear interpolation; a post on a cut goes up), and in
    each the posts, the share inside p10..p90 and the MAE."""
    import pyarrow.parquet as pq

    from igcli.model.export import TEST_PART

    rows = pq.read_table(Path(scored["run"].export_dir) / TEST_PART).to_pylist()
    mids = sorted(r["p50"] for r in rows)

    def quantile(q: float) -> float:
        h = (len(mids) - 1) * q
        lo = math.floor(h)
        return mids[lo] if lo + 1 == len(mids) else mids[lo] + (h - lo) * (mids[lo + 1] - mids[lo])

    cuts = [quantile(k / 10) for k in range(1, 10)]
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(sum(r["p50"] >= c for c in cuts), []).append(r)
    want = []
    for d in sorted(groups):
        g = groups[d]
        inside = sum(r["p10"] <= r["actual_log_likes"] <= r["p90"] for r in g) / len(g)
        mae = sum(abs(r["p50"] - r["actual_log_likes"]) for r in g) / len(g)
        want.append((str(d + 1), f"{len(g):,}", f"{100 * inside:.1f}%", f"{mae:.3f}"))
    part = full["html"].split('data-part="calibration"')[1].split("</table>")[0]
    got = re.findall(r"<tr><td>(\d+)</td><td>[^<]*</td><td>([\d,]+)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", part)
    assert got == want and len(want) == 10
    assert sum(len(g) for g in groups.values()) == run_row(scored["db"], scored["run"].model_id)[0]["n"]


def test_history_buckets_cover_every_test_post(scored, full):
    html = full["html"]
    metrics, _ = run_row(scored["db"], scored["run"].model_id)
    part = html.split('data-part="history"')[1].split("</table>")[0]
    counts = [int(n.replace(",", "")) for n in re.findall(r"<tr><td>[^<]+</td><td>([\d,]+)</td>", part)]
    assert counts and sum(counts) == metrics["n"]


def test_store_only_without_a_trained_model(sample_dir, tmp_path: Path):
    from igcli.commands.ingest import ingest_posts

    db = tmp_path / "s.duckdb"
    ingest_posts(sample_dir / "posts.csv", db=db)
    r = report(db, tmp_path)
    p = page(r)
    assert r.sections == p.sections == ["store"] and r.model_id is None
    assert not p.cells and "calibration" not in p.parts
    assert any("no trained model" in n for n in r.notes)
    posts, users = query(db, "SELECT count(*), count(DISTINCT username) FROM posts")[0]
    assert f"{posts:,} posts by {users:,} users" in r.summary


def test_empty_store_has_no_section(tmp_path: Path):
    db = tmp_path / "empty.duckdb"
    store.connect(db).close()
    r = report(db, tmp_path)
    assert r.sections == [] and page(r).sections == []


def test_rejects_appear_when_there_are_some(sample_dir, tmp_path: Path):
    from igcli.commands.ingest import ingest_posts

    bad = tmp_path / "bad.csv"
    bad.write_text("post_id,username,posted_at,likes\na1,u1,2024-01-01,10\na2,u1,not a date,5\n", encoding="utf-8")
    db = tmp_path / "s.duckdb"
    ingest_posts(bad, db=db)
    p = page(report(db, tmp_path))
    assert "rejects" in p.parts and "images" not in p.parts      # no post has an image


def test_model_id_found_through_the_runs_table(scored, tmp_path: Path):
    """From another folder, `--model ID` finds the model where the runs table says it was exported."""
    r = report(scored["db"], tmp_path, exports=tmp_path / "elsewhere", model=scored["run"].model_id)
    assert r.model_id == scored["run"].model_id
    with pytest.raises(ModelError):
        report(scored["db"], tmp_path, exports=tmp_path / "elsewhere", model="no-such-model")


def test_bad_out_paths_are_refused(scored, tmp_path: Path):
    with pytest.raises(InputError, match=r"\.html"):
        build_report(scored["db"], out=tmp_path / "r.txt")
    with pytest.raises(InputError, match="does not exist"):
        build_report(scored["db"], out=tmp_path / "missing" / "r.html")


def test_vs_usual_columns_drive_the_scores_section(scored, tmp_path: Path):
    """Once predictions carry usual_likes and vs_usual, the page shows their distribution and the posts
    furthest above and below their usual; without them it does not."""
    db = copy_db(scored, tmp_path)
    con = duckdb.connect(str(db))
    con.execute("UPDATE predictions SET usual_likes = predicted_likes / (0.5 + (hash(post_id) % 100) / 100.0)")
    con.execute("UPDATE predictions SET vs_usual = predicted_likes / usual_likes")
    top = con.execute("SELECT post_id FROM predictions ORDER BY vs_usual DESC, post_id DESC LIMIT 1").fetchall()[0][0]
    low = con.execute("SELECT post_id FROM predictions ORDER BY vs_usual, post_id LIMIT 1").fetchall()[0][0]
    con.close()
    r = report(db, tmp_path, scored["exports"])
    html = Path(r.path).read_text(encoding="utf-8")
    p = Page(html)
    assert "vs-usual" in p.figures
    assert p.parts["extremes-above"]["data-kind"] == "usual"
    above = html.split('data-part="extremes-above"')[1].split("</table>")[0]
    below = html.split('data-part="extremes-below"')[1].split("</table>")[0]
    assert "Furthest above their usual" in above and top in above.split("</tr>")[1]
    assert "Furthest below their usual" in below and low in below.split("</tr>")[1]
    assert_self_contained(html, p)


def test_known_likes_rank_posts_against_their_prediction(scored, tmp_path: Path):
    db = copy_db(scored, tmp_path)
    con = duckdb.connect(str(db))
    con.execute("""UPDATE posts SET likes = 1 + (hash(post_id) % 5000)
                   WHERE post_id IN (SELECT post_id FROM predictions)""")
    con.execute("UPDATE predictions SET usual_likes = NULL, vs_usual = NULL")   # as scored by an older igcli
    top = con.execute("""SELECT pr.post_id FROM predictions pr JOIN posts p USING (post_id)
                         ORDER BY p.likes / pr.predicted_likes DESC LIMIT 1""").fetchall()[0][0]
    con.close()
    html = Path(report(db, tmp_path, scored["exports"]).path).read_text(encoding="utf-8")
    assert Page(html).parts["extremes-above"]["data-kind"] == "actual"
    above = html.split('data-part="extremes-above"')[1].split("</table>")[0]
    assert "Furthest above their prediction" in above and top in above.split("</tr>")[1]


# ----------------------------------------------------------------- branch combinations and families

@pytest.fixture(scope="module")
def ablation(sample_dir, tmp_path_factory) -> dict:
    """Precomputed classes for every post, then all branch combinations the store can train (aesthetics
    has no embeddings, so three of seven), as `igcli train --all-combinations` does."""
    import random

    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_classes, ingest_posts
    from igcli.commands.train import TrainOptions, train_all_combinations
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions
    from igcli.vision.families import imagenet_classes

    base = tmp_path_factory.mktemp("ablation")
    db = base / "s.duckdb"
    ingest_posts(sample_dir / "posts.csv", db=db)
    ids = [r[0] for r in query(db, "SELECT post_id FROM posts ORDER BY post_id")]
    rng = random.Random(0)
    wnids = [c.wnid for c in imagenet_classes()][:60]
    lines = ["post_id,rank,wnid,label,prob"]
    for pid in ids:
        lines += [f"{pid},{k},{w},x,{0.5 / k:.3f}" for k, w in enumerate(rng.sample(wnids, 5), start=1)]
    (base / "classes.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ingest_classes(base / "classes.csv", db=db)
    featurize(db, FeaturizeOptions(hashtag_ranking=sample_dir / "hashtag_ranking.txt",
                                   images=ImageFeatureOptions(skip_backbones=True)))
    ab = train_all_combinations(db, TrainOptions(split="random", seed=0, epochs=30, ensemble=1,
                                                  exports_dir=base / "exports"))
    return {"db": db, "exports": base / "exports", "runs": ab.runs}


def test_branch_combinations_and_object_families(ablation, tmp_path: Path):
    runs = ablation["runs"]
    assert len(runs) == 3
    last = runs[-1]                                    # metadata+objects, exports/latest
    r = report(ablation["db"], tmp_path, ablation["exports"])
    assert r.model_id == last.model_id
    html = Path(r.path).read_text(encoding="utf-8")
    p = Page(html)
    assert {"ablation", "families"} <= set(p.parts) and "families" in p.figures
    for run in runs:
        shown = p.metric("ablation", run.model_id)
        stored, _ = run_row(ablation["db"], run.model_id)
        assert shown and all(same(shown[k], v) for k, v in stored.items()), run.branches
    card = json.loads((Path(last.export_dir) / "model_card.json").read_text())
    part = html.split('data-part="families"')[1]
    for fam, eff in card["family_effects"]:
        assert fam in part and f"{eff:+.3f}" in part
    assert_self_contained(html, p)


def test_a_model_without_objects_shows_no_families(ablation, tmp_path: Path):
    meta = next(r for r in ablation["runs"] if r.branches == ("metadata",))
    p = page(report(ablation["db"], tmp_path, ablation["exports"], model=meta.model_id))
    assert "families" not in p.parts and "ablation" in p.parts
    current = [c["row"] for c in p.cells if c["table"] == "ablation"]
    assert meta.model_id in current


def test_ablation_runs_on_another_split_are_not_mixed_in(ablation, tmp_path: Path):
    db = tmp_path / "s.duckdb"
    shutil.copy(ablation["db"], db)
    con = duckdb.connect(str(db))
    con.execute("DELETE FROM runs WHERE model_id <> ?", [ablation["runs"][-1].model_id])
    con.close()
    assert "ablation" not in page(report(db, tmp_path, ablation["exports"])).parts


def test_thumbnails_are_small(full):
    import base64
    import io

    from PIL import Image

    p = full["page"]
    thumbs = [s for s in p.images if s.startswith("data:image/jpeg")]
    assert thumbs
    for s in thumbs:
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert max(im.size) <= 72


def test_figures_are_valid_pngs(full):
    import base64
    import io

    from PIL import Image

    p = full["page"]
    pngs = [s for s in p.images if s.startswith("data:image/png")]
    assert len(pngs) >= 6
    for s in pngs:
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert np.asarray(im.convert("L")).std() > 5      # not a blank canvas


def test_random_init_features_are_marked_in_red(scored, full, tmp_path: Path):
    html = full["html"]
    assert "data-random-init" not in html and "random init" not in html
    db = copy_db(scored, tmp_path)
    con = duckdb.connect(str(db))
    sha = con.execute("SELECT sha256 FROM images WHERE status = 'ok' LIMIT 1").fetchall()[0][0]
    con.execute("INSERT INTO image_embeddings VALUES (?, 'test_vit', 'fp-random-1234', TRUE, [0.1, 0.2], NULL, NULL,"
                " now()::TIMESTAMP)", [sha])
    con.close()
    html = Path(report(db, tmp_path, scored["exports"], name="r2.html").path).read_text(encoding="utf-8")
    row = next(r for r in html.split('data-part="backbones"')[1].split("</tr>") if "test_vit" in r)
    assert "fp-random-1234" in row and '<span class="bad" data-random-init>random init</span>' in row
