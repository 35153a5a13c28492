"""How past predictions turned out: stored predictions against the likes that arrived later.

    from igcli.commands.evaluate import evaluate
    result = evaluate("igcli.duckdb", model=None, since=None)

Order of work: every stored prediction whose post now has likes becomes an outcome row of ``evaluations`` (new and
changed rows only: a rerun with nothing new writes nothing) -> the outcomes of the asked models are read back ->
per model, the realized metrics (``igcli.model.metrics``) of the predictions made before the likes were known
("blind"), on the same posts the user's-history-mean baseline (posts whose user had history when scored) and
``usual_likes``, then the same per scoring batch, or per week when there are more than ``MAX_PERIODS`` batches.
Predictions made after the likes were known are reported apart, never mixed in. Posts with 0 likes are counted
and left out, as in training (ln 0 is undefined).

``record_batch`` is what ``score`` stores for the loop: the batch and its per-input drift.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np

from igcli import store
from igcli.errors import InputError, StoreError
from igcli.model.explain import InputDrift
from igcli.model.metrics import metrics

MAX_PERIODS = 12            # more scoring batches than this are grouped by week


def record_batch(con: duckdb.DuckDBPyConnection, model_id: str, scored_at: datetime, source_file: str, posts: int,
                 drift: list[InputDrift] | None) -> None:
    """The batch row and its drift rows, in the caller's transaction (``score``'s predictions write)."""
    rows = drift or []
    store.temp_table(con, "igc_drift", {
        "input": ("VARCHAR", [d.name for d in rows]), "psi": ("DOUBLE", [d.psi for d in rows]),
        "level": ("VARCHAR", [d.level for d in rows]), "noise": ("DOUBLE", [d.noise for d in rows])})
    try:
        store.run_block(con, "evaluate", "record_batch", {"model_id": model_id, "scored_at": scored_at,
                                                          "source_file": source_file, "posts": posts})
    finally:
        con.execute("DROP TABLE IF EXISTS igc_drift")


@dataclass
class ModelOutcome:
    model_id: str
    blind: dict                       # the model's realized metrics, predictions made before the likes were known
    with_history: dict                # {"model": ..., "user_mean": ...} on the blind posts whose user had history
    usual: dict | None                # usual_likes as a prediction, on the blind posts that have it
    informed: dict | None             # predictions made after the likes were known: reported apart
    zero_likes: int                   # outcomes with 0 likes, left out
    waiting: int                      # predictions whose posts have no likes yet
    period: str                       # "batch" or "week"
    periods: list[dict] = field(default_factory=list)


@dataclass
class EvaluateResult:
    new: int
    updated: int
    unchanged: int
    models: list[ModelOutcome]
    seconds: float

    def as_json(self) -> dict:
        return asdict(self)


def parse_since(since: str | datetime | None) -> datetime | None:
    if since is None or isinstance(since, datetime):
        return since
    try:
        return datetime.fromisoformat(since.strip().replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        raise InputError(f"--since {since!r}: use a date such as 2025-01-31 (or 2025-01-31T12:00)") from None


def evaluate(db: Path | str = store.DEFAULT_DB, model: str | None = None, since: str | datetime | None = None,
             con: duckdb.DuckDBPyConnection | None = None) -> EvaluateResult:
    """Record the outcomes of every stored prediction whose likes are known, then summarise those of ``model``
    (all models when None) scored at or after ``since``."""
    t0 = time.perf_counter()
    since = parse_since(since)
    if con is None and not Path(db).exists():
        raise StoreError(f"no store at {db}: score posts into it first (`igcli score POSTS --db {db}`)")
    with store.opened(db, con) as con:
        if model is not None and not store.run_block(con, "evaluate", "known_models", {"model_id": model}).fetchall():
            raise InputError(f"model {model} has no predictions in this store: score posts with it first "
                             f"(`igcli score POSTS --model {model}`), or leave --model out")
        with store.transaction(con):
            store.run_block(con, "evaluate", "outcomes")
            new, updated, total = store.run_block(con, "evaluate", "changed_outcomes").fetchall()[0]
            if new or updated:
                store.run_block(con, "evaluate", "write_outcomes", {"now": store.utcnow()})
            con.execute("DROP TABLE IF EXISTS igc_outcomes; DROP TABLE IF EXISTS igc_changed")
        params = {"model_id": model, "since": since}
        rows = store.run_block(con, "evaluate", "outcome_rows", params).fetchnumpy()
        waiting = dict(store.run_block(con, "evaluate", "waiting", params).fetchall())
    models = summarize(rows, waiting)
    return EvaluateResult(int(new), int(updated), int(total - new - updated), models, time.perf_counter() - t0)


def summarize(rows: dict[str, np.ndarray], waiting: dict[str, int] | None = None) -> list[ModelOutcome]:
    """Per model, the metrics of the outcome rows (``outcome_rows``' columns, as ``fetchnumpy`` gives them)."""
    waiting = dict(waiting or {})
    out = []
    model_ids = np.asarray(rows["model_id"], dtype=object)
    for model_id in sorted(set(model_ids.tolist()) | set(waiting)):
        mine = {k: np.ma.asarray(v)[model_ids == model_id] for k, v in rows.items()}   # NULLs stay masked
        out.append(_model_outcome(model_id, mine, waiting.get(model_id, 0)))
    return out


def _floats(values) -> np.ndarray:
    return store.float_column(values)


def _model_outcome(model_id: str, r: dict[str, np.ndarray], waiting: int) -> ModelOutcome:
    likes = _floats(r["actual_likes"])
    zero = likes <= 0
    keep = ~zero
    blind = np.ma.filled(r["blind"], False).astype(bool) & keep
    informed = ~np.ma.filled(r["blind"], True).astype(bool) & keep
    y = np.log(np.where(keep, likes, 1.0))
    pred, p10, p90 = (_floats(r[k]) for k in ("predicted_log_likes", "p10_log_likes", "p90_log_likes"))
    usual, user_mean = _floats(r["usual_log_likes"]), _floats(r["user_mean_log_likes"])
    users = np.ma.filled(r["username"], "").astype(object)

    def parts(mask: np.ndarray) -> dict:
        hist = mask & np.isfinite(user_mean)
        has_usual = mask & np.isfinite(usual)
        return {
            "model": metrics(pred[mask], y[mask], p10[mask], p90[mask], users=users[mask]),
            "with_history": {"model": metrics(pred[hist], y[hist], p10[hist], p90[hist], users=users[hist]),
                             "user_mean": metrics(user_mean[hist], y[hist], users=users[hist])},
            "usual": metrics(usual[has_usual], y[has_usual], users=users[has_usual]) if has_usual.any() else None,
        }

    whole = parts(blind)
    scored_at = np.ma.filled(r["scored_at"])
    week = np.ma.filled(r["week"])
    batches = np.unique(scored_at[blind])
    period, key = ("batch", scored_at) if len(batches) <= MAX_PERIODS else ("week", week)
    periods = []
    for start in np.unique(key[blind]):
        m = blind & (key == start)
        p = parts(m)
        periods.append({"start": _timestamp(start), "batches": int(len(np.unique(scored_at[m]))),
                        "n": p["model"]["n"], "mae": p["model"]["mae"], "within_10pct": p["model"]["within_10pct"],
                        "coverage_p10_p90": p["model"]["coverage_p10_p90"],
                        "with_history": p["with_history"]["model"]["n"],
                        "model_mae_with_history": p["with_history"]["model"]["mae"],
                        "user_mean_mae": p["with_history"]["user_mean"]["mae"],
                        "usual_mae": p["usual"]["mae"] if p["usual"] else None})
    return ModelOutcome(
        model_id, whole["model"], whole["with_history"], whole["usual"],
        metrics(pred[informed], y[informed], p10[informed], p90[informed], users=users[informed])
        if informed.any() else None,
        int(zero.sum()), int(waiting), period, periods)


def _timestamp(value) -> datetime:
    """A numpy datetime64 (``fetchnumpy``'s TIMESTAMP) as a naive UTC datetime."""
    return np.datetime64(value, "us").astype(datetime)
