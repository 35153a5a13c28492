"""One self-contained HTML page of the store, a model and its last scores.

    from igcli.commands.report import build_report
    result = build_report("igcli.duckdb", model="latest", out="report.html")

Order of work: the store (posts, users, likes, rejects, images, backbones) -> the model (its ``runs`` row,
its card, ``test_part.parquet`` exported beside it) -> the latest scoring batch of that model (with its inputs'
drift and the drivers of the posts furthest from their usual) -> how that model's past predictions turned out
(``evaluations``, as ``igcli evaluate`` recorded them) -> one Jinja2 template (``igcli/templates/report.html.j2``).
Each section is left out when its data is absent.

The page needs no network and no other file: figures are PNG data URIs drawn with matplotlib, thumbnails
are small embedded JPEGs, there is no script, and a Content-Security-Policy forbids loading anything
else. Numbers are read, not recomputed: metrics and baselines come from the ``runs`` table, subsets and
family effects from the model card, and the per-bucket numbers use ``igcli.model.metrics.metrics`` on the exact
per-post arrays the run was evaluated on.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from igcli import store
from igcli.commands.evaluate import summarize
from igcli.errors import InputError, ModelError
from igcli.features.frames import available_sources
from igcli.files import atomic_write, check_output
from igcli.model.explain import GROUPS, InputDrift, describe, drift_summary
from igcli.model.export import CARD, ONNX, TEST_PART, load_card, resolve_model_dir
from igcli.model.metrics import metrics as compute
from igcli.vision.decode import decode_image

TEMPLATE = "report.html.j2"
THUMB_PX = 72
EXTREMES = 8
# Known metric keys in display order, with label and kind; any other key a run stores is shown after them.
METRICS = {
    "n": ("test posts", "count"),
    "mae": ("MAE", "num"),
    "mse": ("MSE", "num"),
    "within_10pct": ("±10%", "pct"),
    "spearman": ("Spearman", "num"),
    "coverage_p10_p90": ("p10–p90 coverage", "pct"),
    "pairwise": ("within-user pairwise", "pct"),
}
BASELINE_LABELS = {"constant_train_mean": "baseline: training mean",
                   "user_mean_earlier_posts": "baseline: user's mean of earlier posts"}
SUBSET_LABELS = {"with_history": "model, posts with history", "cold_start": "model, cold start"}
HISTORY_BUCKETS = ((0, 0), (1, 4), (5, 9), (10, 24), (25, 49), (50, None))


@dataclass
class ReportResult:
    path: str
    bytes: int
    sections: list[str]
    model_id: str | None
    summary: str
    notes: list[str] = field(default_factory=list)


def build_report(
    db: Path | str = store.DEFAULT_DB,
    model: str | None = "latest",
    exports_dir: Path | str = Path("exports"),
    out: Path | str = Path("report.html"),
) -> ReportResult:
    """Write the report to ``out``. ``model``: 'latest' (left out quietly when nothing was trained), a model
    id (under ``exports_dir``, else where the ``runs`` table says it was exported), a directory, or None."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--out {out}: use a file name ending in .html")
    check_output(out, "--out")
    notes: list[str] = []
    con = store.connect(db, read_only=True)
    try:
        store_sec = _store_section(con)
        model_dir = _find_model(con, model, Path(exports_dir), notes)
        model_sec = _model_section(con, model_dir, notes) if model_dir else None
        scores_sec = _scores_section(con, model_sec["model_id"]) if model_sec else None
        outcomes_sec = _outcomes_section(con, model_sec["model_id"]) if model_sec else None
    finally:
        con.close()
    if model_sec and not scores_sec:
        notes.append(f"model {model_sec['model_id']} has scored nothing in this store yet: run `igcli score`")
    summary = _summary(store_sec, model_sec, scores_sec) + _outcomes_summary(outcomes_sec)
    html = render({"db": str(db), "store": store_sec, "model": model_sec, "scores": scores_sec,
                   "outcomes": outcomes_sec, "notes": notes, "summary": summary,
                   "generated_at": f"{store.utcnow():%Y-%m-%d %H:%M:%S}"})
    with atomic_write(out, "--out") as fh:
        fh.write(html.encode("utf-8"))
    sections = [name for name, sec in (("store", store_sec), ("model", model_sec), ("scores", scores_sec),
                                       ("outcomes", outcomes_sec)) if sec]
    return ReportResult(str(out), len(html.encode("utf-8")), sections,
                        model_sec["model_id"] if model_sec else None, summary, notes)


def render(context: dict) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["metric"] = format_metric
    env.filters["metric_label"] = lambda k: METRICS.get(k, (k.replace("_", " "),))[0]
    env.filters["num"] = lambda v: "–" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.0f}"
    env.filters["exact"] = lambda v: "" if v is None else repr(v)
    return env.get_template(TEMPLATE).render(**context)


def format_metric(value, key: str) -> str:
    """How a metric appears on the page (the exact value travels in the cell's data-value attribute)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    kind = METRICS.get(key, (key, "pct" if key.endswith(("accuracy", "pct", "share", "coverage")) else "num"))[1]
    if kind == "count":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def _rows(con: duckdb.DuckDBPyConnection, block: str, **params) -> list[tuple]:
    return store.run_block(con, "report", block, params).fetchall()


# ------------------------------------------------------------------------------------------ store

def _store_section(con: duckdb.DuckDBPyConnection) -> dict | None:
    posts, users, first, last, with_likes, zero, placeholders = _rows(con, "store_overview")[0]
    if not posts:
        return None
    likes = np.array([r[0] for r in _rows(con, "store_likes")], dtype=np.float64)
    per_user = np.array([r[0] for r in _rows(con, "posts_per_user")], dtype=np.float64)
    sources = available_sources(con)
    backbones = [{"role": role, **s} for role in ("objects", "aesthetics") for s in sources[role]]
    quality = _rows(con, "image_quality_rows")[0][0]
    if quality:
        backbones.append({"role": "image quality", "backbone": "weight-free", "weights_fp": "-",
                          "random_init": False, "posts": quality})
    return {
        "posts": posts, "users": users, "first_post": first, "last_post": last, "with_likes": with_likes,
        "placeholder_dates": placeholders,
        "zero_likes": zero, "likes_median": float(np.median(likes)) if len(likes) else None,
        "posts_per_user_median": float(np.median(per_user)),
        "likes_figure": _likes_figure(likes) if len(likes) else None,
        "per_user_figure": _hist_figure(per_user, "posts per user", "users", log_x=per_user.max() > 50),
        "rejects": _rows(con, "rejects_by_reason"),
        "images": _rows(con, "images_by_status"),
        "backbones": backbones,
        "feature_errors": _rows(con, "feature_errors"),
    }


# ------------------------------------------------------------------------------------------ model

def _find_model(con: duckdb.DuckDBPyConnection, model: str | None, exports_dir: Path, notes: list[str]) -> Path | None:
    """The model directory, the way `igcli score` finds it, else where the runs table says it went."""

    if model is None:
        return None
    try:
        return resolve_model_dir(model, exports_dir)
    except ModelError as err:
        runs = _rows(con, "latest_exported_runs")
        for model_id, export_dir in runs:
            if model in ("latest", model_id) and _is_model_dir(export_dir):
                return Path(export_dir)
        if model == "latest":
            notes.append(f"no trained model found ({err}); the report shows the store only")
            return None
        raise


def _is_model_dir(path: str | None) -> bool:
    return bool(path) and (Path(path) / CARD).is_file() and (Path(path) / ONNX).is_file()


def _model_section(con: duckdb.DuckDBPyConnection, model_dir: Path, notes: list[str]) -> dict:
    card = load_card(model_dir)
    model_id = card["model_id"]
    run = _rows(con, "run_by_id", model_id=model_id)
    if run:
        _, created, split, seed, branches, fingerprint, metrics, baselines, _, _ = run[0]
        metrics, baselines, source = json.loads(metrics), json.loads(baselines), "runs table"
    else:   # a model trained on another store: its card holds the same numbers
        created, split, seed, fingerprint = card.get("created_at"), card["split"], card["seed"], None
        metrics, baselines, source = card.get("metrics", {}), card.get("baselines", {}), "model card"
        notes.append(f"model {model_id} is not in this store's runs table: its metrics come from its card")
    keys = _metric_keys([metrics, *baselines.values(), *(card.get("subsets") or {}).values()])
    rows = [{"id": "model", "label": "model (" + "+".join(card["branches"]) + ")", "metrics": metrics,
             "strong": True}]
    rows += [{"id": f"subset:{k}", "label": SUBSET_LABELS.get(k, k), "metrics": m, "strong": False}
             for k, m in (card.get("subsets") or {}).items()]
    rows += [{"id": f"baseline:{k}", "label": BASELINE_LABELS.get(k, k), "metrics": m, "strong": False}
             for k, m in baselines.items()]
    sec = {
        "model_id": model_id, "dir": str(model_dir), "created_at": str(created).replace("T", " ")[:16],
        "split": split, "seed": seed,
        "branches": card["branches"], "counts": card.get("counts", {}), "source": source,
        "backbones": [{"role": r, **s} for r, s in (card.get("backbones") or {}).items() if s],
        "random_init": bool(card.get("random_init_inputs")), "leaky": bool(card.get("leaky_user_stats")),
        "metric_keys": keys, "metric_rows": rows, "metrics": metrics, "baselines": baselines,
        "ablation": _ablation(con, model_id, split, seed, fingerprint) if fingerprint else None,
        "families": [{"family": f, "effect": e, "ratio": math.exp(e), "posts": (card.get("family_posts") or {}).get(f)}
                     for f, e in card.get("family_effects") or []],
    }
    sec["ablation_keys"] = _metric_keys([r["metrics"] for r in sec["ablation"]]) if sec["ablation"] else []
    sec["families_figure"] = _families_figure(sec["families"]) if sec["families"] else None
    sec.update(_test_part_views(model_dir, metrics, notes))
    return sec


def _metric_keys(dicts: list[dict]) -> list[str]:
    keys = [k for k in METRICS if any(k in d for d in dicts)]
    for d in dicts:
        keys += [k for k, v in d.items() if k not in keys and isinstance(v, int | float)]
    return keys


def _ablation(con, model_id: str, split: str, seed: int, fingerprint: str) -> list[dict] | None:
    """The latest run of each branch combination on this model's split, seed and training rows."""
    latest: dict[str, dict] = {}
    for mid, created, branches, metrics in _rows(con, "sibling_runs", split=split, seed=seed, fingerprint=fingerprint):
        if latest.get(branches, {}).get("current"):
            continue   # the model itself stays in its row even when its combination was trained again later
        latest[branches] = {"model_id": mid, "created_at": created, "branches": branches.replace(",", "+"),
                            "metrics": json.loads(metrics), "current": mid == model_id}
    if len(latest) < 2:
        return None
    order = ("metadata", "objects", "aesthetics")

    def rank(r: dict) -> tuple:
        parts = r["branches"].split("+")
        return len(parts), [order.index(b) if b in order else len(order) for b in parts]

    return sorted(latest.values(), key=rank)


def _test_part_views(model_dir: Path, metrics: dict, notes: list[str]) -> dict:
    """Predicted vs actual, calibration and error by history from the exported per-post test arrays, used
    only when they reproduce the run's own MAE (else the export's PNG, as it was drawn at training)."""

    views: dict = {"pva_figure": None, "calibration": None, "history": None}
    path = model_dir / TEST_PART
    if path.is_file():
        t = pq.read_table(path)
        y = t.column("actual_log_likes").to_numpy()
        p10, p50, p90 = (t.column(c).to_numpy() for c in ("p10", "p50", "p90"))
        whole = compute(p50, y, p10, p90)
        if whole["n"] == metrics.get("n") and math.isclose(whole["mae"], metrics.get("mae", math.nan), rel_tol=1e-9):
            views["pva_figure"] = _pva_figure(y, p50)
            views["calibration"] = _calibration(y, p10, p50, p90, compute)
            views["history"] = _by_history(y, p10, p50, p90, t.column("hist_n").to_numpy(),
                                           t.column("baseline_user_mean").to_numpy(), compute)
            return views
        notes.append(f"{path} does not reproduce the run's test MAE; its plots are left out")
    png = model_dir / "predicted_vs_actual.png"
    if png.is_file():
        views["pva_figure"] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        notes.append("calibration and error by history need a model exported by this igcli version "
                     "(test_part.parquet): retrain to see them")
    return views


def _calibration(y, p10, p50, p90, compute) -> dict:
    """Coverage of the p10–p90 band and MAE in each decile of the predicted ln-likes."""
    edges = np.quantile(p50, np.linspace(0, 1, 11))
    decile = np.clip(np.searchsorted(edges[1:-1], p50, side="right"), 0, 9)
    rows = []
    for d in range(10):
        m = decile == d
        if m.any():
            r = compute(p50[m], y[m], p10[m], p90[m])
            rows.append({"decile": d + 1, "low": float(np.exp(p50[m].min())), "high": float(np.exp(p50[m].max())),
                         "n": r["n"], "coverage": r["coverage_p10_p90"], "mae": r["mae"]})
    return {"rows": rows, "figure": _calibration_figure(rows)}


def _by_history(y, p10, p50, p90, hist_n, baseline, compute) -> dict:
    rows = []
    for lo, hi in HISTORY_BUCKETS:
        m = (hist_n >= lo) & ((hist_n <= hi) if hi is not None else True)
        if m.any():
            model = compute(p50[m], y[m], p10[m], p90[m])
            base = compute(baseline[m], y[m])
            label = str(lo) if lo == hi else f"{lo}+" if hi is None else f"{lo}–{hi}"
            rows.append({"label": label, "n": model["n"], "mae": model["mae"], "baseline_mae": base["mae"],
                         "coverage": model["coverage_p10_p90"], "within_10pct": model["within_10pct"]})
    return {"rows": rows, "figure": _history_figure(rows)}


# ----------------------------------------------------------------------------------------- scores

def _scores_section(con: duckdb.DuckDBPyConnection, model_id: str) -> dict | None:
    scored_at = _rows(con, "latest_batch", model_id=model_id)[0][0]
    if scored_at is None:
        return None
    columns = {r[0] for r in _rows(con, "predictions_columns")}
    # a batch can hold millions of rows: numpy over the columns, Python dicts only for the posts shown
    batch = con.sql(store.sql_blocks("report")["batch_rows"], params={"model_id": model_id, "scored_at": scored_at}
                    ).to_arrow_table()   # ordered by post_id, so ties below stay in that order
    pred = _floats(batch, "predicted_likes")
    sec = {"scored_at": scored_at, "posts": batch.num_rows, "median": float(np.median(pred)),
           "p10": float(np.quantile(pred, 0.1)), "p90": float(np.quantile(pred, 0.9)),
           "pred_figure": _hist_figure(pred, "predicted likes", "posts", log_x=True),
           "vs_usual_figure": None, "has_usual": "usual_likes" in columns}
    actual = _floats(batch, "actual_likes")
    usual = _floats(batch, "vs_usual") if "vs_usual" in columns else np.array([])
    if np.any(np.isfinite(usual) & (usual > 0)):     # rows scored before igcli wrote vs_usual hold NULL
        key, sec["extremes_kind"] = usual, "usual"
        shown = key[np.isfinite(key) & (key > 0)]
        sec["vs_usual_figure"] = _hist_figure(shown, "predicted / usual likes", "posts", log_x=True, mark=1.0)
    elif np.any(actual > 0):
        key, sec["extremes_kind"] = np.where(actual > 0, actual / pred, np.nan), "actual"
    else:
        key, sec["extremes_kind"] = pred, "predicted"
    idx = np.flatnonzero(np.isfinite(key))
    ranked = idx[np.argsort(key[idx], kind="stable")]
    n = min(EXTREMES, len(ranked) // 2) if len(ranked) > 1 else len(ranked)
    sec["above"] = _post_views(batch, ranked[::-1][:n], key)
    sec["below"] = _post_views(batch, ranked[:n], key) if len(ranked) > 1 else []
    sec["has_drivers"] = "effect_image" in columns and any(p["drivers"] for p in sec["above"] + sec["below"])
    sec["drift"] = _drift_part(con, model_id, scored_at, batch.num_rows)
    return sec


def _floats(table, column: str) -> np.ndarray:
    return pc.fill_null(table.column(column).cast(pa.float64()), math.nan).to_numpy()


def _post_views(batch, rows: np.ndarray, key: np.ndarray) -> list[dict]:
    return [_post_view(r, float(key[i])) for i, r in zip(rows, batch.take(rows).to_pylist(), strict=True)]


def _post_view(r: dict, value: float) -> dict:
    return {"post_id": r["post_id"], "username": r["username"], "posted_at": r["posted_at"],
            "predicted": r["predicted_likes"], "p10": r["p10_likes"], "p90": r["p90_likes"],
            "actual": r["actual_likes"], "usual": r.get("usual_likes"), "value": value,
            "drivers": describe({g: r.get(f"effect_{g}") for g in GROUPS}),
            "thumb": _thumbnail(r["image_file"], r.get("image_sha256"))}


def _thumbnail(path: str | None, sha256: str | None = None) -> str | None:
    """A small JPEG data URI of the post's image; None when it cannot be read now. The file is read under the
    image-open policy (no FIFO, link, bomb or outsized file) and, as featurize does, must still be the
    ingested image (its sha256): a file swapped in since is left out, never decoded."""
    if not path:
        return None
    im, _ = decode_image(path, sha256, lambda img: img, THUMB_PX)
    if im is None:
        return None
    try:
        im.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=75)
    except Exception:  # an image Pillow decodes but cannot write as a JPEG is left out too
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _summary(store_sec: dict | None, model_sec: dict | None, scores_sec: dict | None) -> str:
    parts = [f"store: {store_sec['posts']:,} posts by {store_sec['users']:,} users" if store_sec else "store: empty"]
    if model_sec:
        m = model_sec["metrics"]
        base = model_sec["baselines"].get("user_mean_earlier_posts")
        parts.append(f"model {model_sec['model_id']}: test MAE {format_metric(m.get('mae'), 'mae')}"
                     + (f" (user's mean {format_metric(base.get('mae'), 'mae')})" if base else ""))
    if scores_sec:
        parts.append(f"last scores: {scores_sec['posts']:,} posts at {scores_sec['scored_at']:%Y-%m-%d %H:%M} UTC, "
                     f"median {scores_sec['median']:,.0f} likes")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------- the loop

DRIFT_ROWS = 15
# outcome metric -> (column label, the METRICS key whose format it takes)
OUTCOME_COLUMNS = {"n": ("posts", "n"), "mae": ("MAE", "mae"), "within_10pct": ("±10%", "within_10pct"),
                   "coverage_p10_p90": ("p10–p90 coverage", "coverage_p10_p90"),
                   "pairwise": ("within-user pairwise", "within_10pct")}


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in _rows(con, "tables")}


def _drift_part(con: duckdb.DuckDBPyConnection, model_id: str, scored_at, posts: int) -> dict | None:
    """The latest batch's inputs by PSI against the card's training distribution (``score`` stored them)."""
    if "batch_drift" not in _tables(con):
        return None      # a store no igcli with drift has written to
    rows = store.run_block(con, "evaluate", "batch_drift_rows", {"model_id": model_id, "scored_at": scored_at}
                           ).fetchall()
    if not rows:
        return None
    drift = [InputDrift(name, psi, level, noise) for name, psi, level, noise in rows]
    # the largest PSIs of the inputs a batch of new posts does not move by construction, then of the history ones
    shown = [d for d in drift if not d.history][:DRIFT_ROWS] + [d for d in drift if d.history][:DRIFT_ROWS // 2]
    return {"summary": drift_summary(drift, posts), "inputs": len(drift),
            "rows": [{"input": d.name, "psi": d.psi, "level": d.level, "history": d.history} for d in shown]}


def _outcomes_section(con: duckdb.DuckDBPyConnection, model_id: str) -> dict | None:
    """How the model's stored predictions turned out (``igcli evaluate`` wrote ``evaluations``)."""
    if "evaluations" not in _tables(con):
        return None
    rows = store.run_block(con, "evaluate", "outcome_rows", {"model_id": model_id, "since": None}).fetchnumpy()
    if not len(rows["model_id"]):
        return None
    m = summarize(rows)[0]
    metric_rows = [("model", "model (made before the likes were known)", m.blind, True),
                   ("with_history", "model, posts whose user had history", m.with_history["model"], False),
                   ("user_mean", "baseline: user's mean of earlier posts (same posts)", m.with_history["user_mean"],
                    False)]
    if m.usual:
        metric_rows.append(("usual", "usual_likes as the prediction", m.usual, False))
    if m.informed:
        metric_rows.append(("informed", "scored after the likes were known (apart)", m.informed, False))
    keys = [k for k in OUTCOME_COLUMNS if any(k in r[2] for r in metric_rows)]
    rows_out = [{"id": i, "label": label, "strong": strong,
                 "cells": [{"key": k, "value": mt.get(k), "text": format_metric(mt.get(k), OUTCOME_COLUMNS[k][1])}
                           for k in keys]} for i, label, mt, strong in metric_rows]
    sec = {"model_id": model_id, "blind": m.blind, "informed": m.informed, "zero_likes": m.zero_likes,
           "user_mean": m.with_history["user_mean"], "with_history": m.with_history["model"],
           "period": m.period, "periods": m.periods, "metric_rows": rows_out,
           "metric_labels": [OUTCOME_COLUMNS[k][0] for k in keys],
           "figure": _outcomes_figure(m.periods, m.period) if m.periods else None}
    return sec if m.blind["n"] or m.informed else None


def _outcomes_summary(sec: dict | None) -> str:
    if not sec or not sec["blind"]["n"]:
        return ""
    return (f"; realized: MAE {format_metric(sec['blind']['mae'], 'mae')} on {sec['blind']['n']:,} posts scored before "
            f"their likes (user's mean {format_metric(sec['user_mean']['mae'], 'mae')} on "
            f"{sec['user_mean']['n']:,} of them)")


def _outcomes_figure(periods: list[dict], period: str) -> str:
    fig, ax = _figure(6.4, 3.2)
    x = np.arange(len(periods))             # one slot per batch or week, labelled by its start
    ax.plot(x, [p["mae"] for p in periods], marker="o", color="#4c72b0", label="model, all posts")
    ax.plot(x, [p["model_mae_with_history"] for p in periods], marker="o", ls="--", color="#4c72b0",
            label="model, posts with history")
    ax.plot(x, [p["user_mean_mae"] for p in periods], marker="s", color="#8c8c8c", label="user's mean, same posts")
    if any(p["usual_mae"] is not None for p in periods):
        ax.plot(x, [math.nan if p["usual_mae"] is None else p["usual_mae"] for p in periods], marker="^",
                color="#dd8452", label="usual_likes")
    ax.set(xlabel=f"{period} of scoring", ylabel="MAE of ln(likes)")
    top = np.nanmax([v for p in periods for v in (p["mae"], p["user_mean_mae"], p["usual_mae"]) if v is not None])
    ax.set_ylim(0, 1.25 * top if np.isfinite(top) and top > 0 else 1.0)
    cover = ax.twinx()
    cover.plot(x, [100 * p["coverage_p10_p90"] for p in periods], marker=".", ls=":", color="#55a868")
    cover.axhline(80, color="#55a868", lw=0.8, alpha=0.5)
    cover.set_ylim(0, 100)
    cover.set_ylabel("% inside p10–p90 (dotted; target 80)", color="#55a868", fontsize=8)
    ax.legend(frameon=False, fontsize=7, loc="lower left")
    fmt = "%m-%d %H:%M" if period == "batch" else "%Y-%m-%d"
    step = max(1, len(periods) // 12)
    ax.set_xticks(x[::step], [p["start"].strftime(fmt) for p in periods][::step], rotation=30, fontsize=7)
    ax.set_xlim(-0.5, len(periods) - 0.5)
    return _data_uri(fig)


# ---------------------------------------------------------------------------------------- figures

def _figure(width: float = 5.6, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _hist_figure(x: np.ndarray, xlabel: str, ylabel: str, log_x: bool = False, mark: float | None = None) -> str:
    fig, ax = _figure()
    if log_x and x.min() > 0 and x.max() > x.min():
        bins = np.geomspace(x.min(), x.max(), 40)
        ax.set_xscale("log")
    else:
        bins = min(40, max(5, len(np.unique(x))))
    ax.hist(x, bins=bins, color="#4c72b0")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))   # counts: no tick at 0.5
    if mark is not None:
        ax.axvline(mark, color="black", lw=1)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    return _data_uri(fig)


def _likes_figure(likes: np.ndarray) -> str:
    fig, ax = _figure()
    bins = np.geomspace(likes.min(), likes.max(), 50) if likes.max() > likes.min() else 10
    ax.hist(likes, bins=bins, color="#dd8452")
    ax.set_xscale("log")
    ax.set(xlabel="likes (log scale)", ylabel="posts")
    return _data_uri(fig)


def _pva_figure(y: np.ndarray, p50: np.ndarray) -> str:
    fig, ax = _figure(4.4, 4.0)
    ax.scatter(y, p50, s=5, alpha=0.35, color="#4c72b0", linewidths=0)
    lo, hi = float(min(y.min(), p50.min())), float(max(y.max(), p50.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1)
    ax.set(xlabel="actual ln(likes)", ylabel="predicted ln(likes), p50")
    return _data_uri(fig)


def _calibration_figure(rows: list[dict]) -> str:
    fig, ax = _figure()
    ax.bar([r["decile"] for r in rows], [100 * r["coverage"] for r in rows], color="#55a868")
    ax.axhline(80, color="black", lw=1, ls="--")
    ax.set(xlabel="decile of predicted likes (1 = lowest)", ylabel="% actual inside p10–p90", ylim=(0, 100),
           xticks=[r["decile"] for r in rows])
    return _data_uri(fig)


def _history_figure(rows: list[dict]) -> str:
    fig, ax = _figure()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["mae"] for r in rows], 0.4, label="model", color="#4c72b0")
    ax.bar(x + 0.2, [r["baseline_mae"] for r in rows], 0.4, label="user's mean of earlier posts", color="#c4c4c4")
    ax.set_xticks(x, [r["label"] for r in rows])
    ax.set(xlabel="earlier posts of the user", ylabel="MAE of ln(likes)")
    ax.legend(frameon=False, fontsize=8)
    return _data_uri(fig)


def _families_figure(rows: list[dict]) -> str:
    fig, ax = _figure(5.6, 0.6 + 0.28 * len(rows))
    effects = [r["effect"] for r in rows][::-1]
    ax.barh([r["family"] for r in rows][::-1], effects, color=["#55a868" if e >= 0 else "#c44e52" for e in effects])
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel="Δ predicted ln(likes) when all objects are of this family")
    ax.tick_params(axis="y", labelsize=8)
    return _data_uri(fig)
