"""The measures every run, report and benchmark quotes: MAE and MSE of ln-likes, the share within ±10% of the
likes (the paper's accuracy), Spearman (ties averaged), within-user pairwise accuracy and p10-p90 coverage."""

from __future__ import annotations

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    xs = x[order]
    i = 0
    while i < len(x):                   # average the ranks of ties
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def within_10pct(pred_ln: np.ndarray, true_ln: np.ndarray) -> float:
    """Share of posts whose predicted likes are within ±10% of the true likes (the paper's accuracy)."""
    pred, true = np.exp(pred_ln), np.exp(true_ln)
    return float(np.mean(np.abs(pred - true) <= 0.1 * true)) if len(true) else float("nan")


def pairwise_accuracy(pred: np.ndarray, y: np.ndarray, users: np.ndarray) -> float:
    """Within-user pairwise accuracy: over all pairs of posts by the same user with different ``y``, the share
    that ``pred`` orders the same way (tied predictions count half). NaN when there is no such pair. A
    prediction constant per user (its history mean, with the history fixed) scores exactly 0.5."""
    right, total = 0.0, 0
    order = np.argsort(users, kind="mergesort")
    us = users[order]
    bounds = np.flatnonzero(np.r_[True, us[1:] != us[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b - a < 2:
            continue
        idx = order[a:b]
        dy = np.sign(y[idx][:, None] - y[idx][None, :])          # (n, n)
        dp = np.sign(pred[idx][:, None] - pred[idx][None, :])
        upper = np.triu(np.ones_like(dy, dtype=bool), k=1) & (dy != 0)
        total += int(upper.sum())
        right += float(np.sum((dp == dy)[upper])) + 0.5 * float(np.sum((dp == 0)[upper]))
    return right / total if total else float("nan")


def metrics(pred: np.ndarray, y: np.ndarray, low: np.ndarray | None = None,
            high: np.ndarray | None = None, users: np.ndarray | None = None) -> dict[str, float]:
    err = pred - y
    m = {"n": int(len(y)), "mae": float(np.mean(np.abs(err))) if len(y) else float("nan"),
         "mse": float(np.mean(err ** 2)) if len(y) else float("nan"),
         "within_10pct": within_10pct(pred, y), "spearman": spearman(pred, y)}
    if users is not None:
        m["pairwise"] = pairwise_accuracy(pred, y, users)
    if low is not None and high is not None:
        m["coverage_p10_p90"] = float(np.mean((y >= low) & (y <= high))) if len(y) else float("nan")
    return m
