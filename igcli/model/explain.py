"""Why a prediction is what it is (drivers), and whether a batch looks like the training data (drift): model-side
arithmetic on the inputs ``igcli.model.preprocess`` builds, run on the same onnxruntime session as the prediction.

    from igcli.model.explain import batch_drift, drivers, fit_distribution
    why = drivers(card, pre, inputs, predict, p50)      # why.effects[group]: (N,) ln-likes against the reference
    card["input_distribution"] = fit_distribution(card, training_inputs)       # at export, training rows only
    drift = batch_drift(card, inputs)                   # one InputDrift per model input, largest PSI first

**Drivers.** The model's inputs fall into six groups (``GROUPS``): the user's level, the recent trend, the
audience, the timing, the caption and hashtags, the image. A group's *reference* is its training mean, the value
the graph imputes for a missing input (the image: the mean embedding and object mix, with an image present). The
*reference post* has every group at its reference; the model's median for it is ``reference_log_likes``, one
number per model. A post's drivers split ln(predicted) - ln(reference) between the groups: move the groups to
their reference one after another along ``PATH`` and credit each group with the change its move causes, then do
the same along the reverse path and average the two. Both paths end at the reference post, so the drivers add up
exactly: ``predicted_likes = reference_likes * prod(exp(effect))``. These are the Shapley values of the groups
when the groups interact at most in pairs (the two orders split each pairwise interaction half and half); with
higher-order interactions they are an approximation of them (``shapley`` computes the exact values over all 2^6
subsets, 64 passes against 10, for comparison). Cost: 2 * (groups - 1) passes of the batch plus one of a single row,
less the passes the caller already ran: ``usual_likes`` is the model with the caption and the image at their
reference (``CONTENT``), the second step of the first path, so ``score`` hands it over (``Recorder``) and runs 9.
On the CPU the two paths run at once, each on its own one-thread session (``igcli.engines.local``; ``score`` runs the
prediction and the usual pass on the same two, side by side). A group already at its reference in every row (the
image, in a batch without images scored by a model trained without any) adds nothing and is left out of the paths,
two passes fewer; the other groups' effects are the same without it.

**Drift.** ``fit_distribution`` records, for each model input, the training rows' decile edges (deduplicated;
one-hot inputs such as ``month`` collapse to one categorical input) and the share of training rows in each bin and
missing. ``batch_drift`` bins a batch the same way and gives each input's population stability index,
PSI = sum((a - e) * ln(a / e)) over the bins' batch (a) and training (e) shares, each at least ``SHARE_FLOOR``.
An input is named as drift from ``DRIFT_PSI`` and as a note from ``NOTE_PSI``, in a batch of at least
``MIN_DRIFT_POSTS`` posts, and only when its PSI is also at least ``NOISE_FACTOR`` times what sampling alone gives a
batch drawn from the training distribution, about (bins - 1) * (1 / posts + 1 / training rows) (0.07 for 150 posts
and 1,000 training rows with 10 bins: both shares are estimates). Calendar
inputs (``CALENDAR``) are never named: a batch of one week or month differs from a year of training posts by
construction. History inputs (the user's earlier posts, ``is_history_input``) are named apart: the training rows
spread over each user's whole timeline, a batch of new posts sits at its end (longer histories, more days since
the first post), so they move by construction too, and a real change hides among them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from igcli.features.schema import QUALITY, content_columns
from igcli.model.preprocess import Preprocessor, is_history_input

# ------------------------------------------------------------------------------------------- groups

GROUPS = ("user_level", "trend", "audience", "timing", "caption", "image")
GROUP_LABELS = {"user_level": "user's level", "trend": "recent trend", "audience": "audience", "timing": "timing",
                "caption": "caption and hashtags", "image": "image"}
# The first path moves the groups to their reference in this order, the second in the reverse one.
PATH = ("image", "caption", "timing", "audience", "trend", "user_level")
# What usual_likes sets to the training mean (Preprocessor.usual_inputs): the first two steps of PATH.
CONTENT = ("image", "caption")

_LEVEL = frozenset({"hist_n", "hist_mean", "hist_median", "hist_std", "hist_std_missing", "no_history", "h_max",
                    "h_min", "rel_hist_median", "rel_h_max", "rel_h_min", "days_since_first", "n_posts_before"})
_TREND = frozenset({"hist_last5", "hist_last10", "hist_decayed", "h_last1", "h_slope", "rel_hist_last5",
                    "rel_hist_last10", "rel_hist_decayed", "rel_h_last1", "rel_slope_at_now", "days_since_last_liked",
                    "posts_last30d"})
_AUDIENCE = frozenset({"followers", "following", "user_post_count"})
_TIMING = frozenset({"days_since_prev"})
_TIMING_CATEGORIES = ("month", "weekday", "hour_group")
_IMAGE = frozenset({q for q, _ in QUALITY} | {"has_image_quality"})
_CAPTION = content_columns() - _IMAGE


def group_of(name: str) -> str:
    """The group of one ``meta`` input. Every input this igcli builds is listed; one it does not know (a card from
    a newer igcli) goes by kind: content to the caption, history to the user's level, the rest to the audience."""
    if name in _TIMING or ("=" in name and name.split("=", 1)[0] in _TIMING_CATEGORIES):
        return "timing"
    for group, names in (("user_level", _LEVEL), ("trend", _TREND), ("audience", _AUDIENCE), ("image", _IMAGE),
                         ("caption", _CAPTION)):
        if name in names:
            return group
    if name in content_columns():
        return "caption"
    return "user_level" if is_history_input(name) else "audience"


def _model_inputs(card: dict) -> set[str]:
    return {i["name"] for i in card["inputs"]}


class Reference:
    """Each group at its training reference: the ``meta`` columns at the mean the graph imputes (the card's
    scaling), the objects at the training mix, the embedding NaN (the graph's mean) with an image present."""

    def __init__(self, card: dict, pre: Preprocessor):
        names = pre.meta_names()
        takes = _model_inputs(card)
        scaling = (card.get("scaling") or {}).get("metadata")
        self.meta = np.asarray(scaling["mean"], np.float32) if scaling and "meta" in takes else None
        self.columns: dict[str, np.ndarray] = {g: np.zeros(0, np.int64) for g in GROUPS}
        if self.meta is not None:
            of = np.array([GROUPS.index(group_of(n)) for n in names], dtype=np.int64)
            self.columns = {g: np.flatnonzero(of == i) for i, g in enumerate(GROUPS)}
        self.objects = np.asarray(pre.objects_mean, np.float32) if "objects" in takes else None
        self.aesthetics = "aesthetics" in takes
        prior = (card.get("scaling") or {}).get("prior")
        self.anchor = prior["anchor_index"] if prior else None     # NaN there is a cold start, not the mean
        self._nan: dict[tuple, np.ndarray] = {}

    def groups(self, inputs: dict[str, np.ndarray] | None = None) -> list[str]:
        """The groups that reach the model, in ``PATH`` order; with ``inputs``, less those already at their
        reference in every row (they add nothing, and leaving them out changes no other group's effect)."""
        image = self.objects is not None or self.aesthetics
        groups = [g for g in PATH if len(self.columns[g]) or (g == "image" and image)]
        return [g for g in groups if inputs is None or not self.at_reference(inputs, g)]

    def at_reference(self, inputs: dict[str, np.ndarray], group: str) -> bool:
        """Every row already has ``group`` at its reference: the same value, or NaN (which the graph imputes with
        that value) outside the anchor column."""
        if group == "image" and (self.objects is not None or self.aesthetics):
            return False          # an image branch: (nearly) never at the mean embedding or object mix
        cols = self.columns[group]
        if not len(cols):
            return True
        x = inputs["meta"][:, cols]
        same = x == self.meta[cols]
        nan_ok = np.isnan(x) & (cols != self.anchor)
        return bool(np.all(same | nan_ok))

    def apply(self, inputs: dict[str, np.ndarray], groups) -> dict[str, np.ndarray]:
        """``inputs`` with ``groups`` at their reference, as new arrays where something changes."""
        out = dict(inputs)
        if any(len(self.columns[g]) for g in groups):
            out["meta"] = inputs["meta"].copy()
        return self.move(out, groups)

    def move(self, x: dict[str, np.ndarray], groups) -> dict[str, np.ndarray]:
        """``x`` with ``groups`` at their reference, in place (its ``meta`` is written: it must be the caller's
        own copy); the image arrays are replaced, not written."""
        cols = [self.columns[g] for g in groups if len(self.columns[g])]
        if cols:
            idx = np.concatenate(cols)
            x["meta"][:, idx] = self.meta[idx]
        if "image" in groups:
            if self.objects is not None:
                x["objects"] = np.broadcast_to(self.objects, x["objects"].shape).copy()
                x["objects_mask"] = np.ones_like(x["objects_mask"])
            if self.aesthetics:
                shape = x["aesthetics"].shape
                if shape not in self._nan:                       # one NaN array per batch shape, shared by passes
                    self._nan[shape] = np.full(shape, np.nan, np.float32)
                x["aesthetics"] = self._nan[shape]
                x["aesthetics_mask"] = np.ones_like(x["aesthetics_mask"])
        return x


# ------------------------------------------------------------------------------------------ drivers

@dataclass
class Drivers:
    effects: dict[str, np.ndarray]       # group -> (N,) ln-likes the group adds against its reference (0: absent)
    reference_log_likes: float           # the model's median for the reference post

    def columns(self) -> dict[str, np.ndarray]:
        """``reference_likes`` and ``effect_<group>`` (x likes) per post, as ``predictions`` stores them."""
        n = len(next(iter(self.effects.values())))
        cols = {"reference_likes": np.full(n, math.exp(self.reference_log_likes))}
        cols.update({f"effect_{g}": np.exp(self.effects[g]) for g in GROUPS})
        return cols

    def describe(self, i: int, top: int = 3) -> str:
        """The strongest drivers of post ``i``, e.g. "x4.1 user's level, +18% image, -9% timing"."""
        return describe({g: float(np.exp(e[i])) for g, e in self.effects.items()}, top)


def describe(factors: dict[str, float], top: int = 3) -> str:
    """The ``top`` factors furthest from 1 (x likes per group), as a short phrase; "" when none moves."""
    shown = sorted(((g, f) for g, f in factors.items() if f is not None and math.isfinite(f) and f > 0
                    and abs(math.log(f)) >= 0.005), key=lambda t: -abs(math.log(t[1])))[:top]
    return ", ".join(f"{format_factor(f)} {GROUP_LABELS.get(g, g)}" for g, f in shown)


def format_factor(f: float) -> str:
    """+18% / -9% near 1, x4.1 / x0.31 beyond a doubling or halving."""
    if f >= 2 or f <= 0.5:
        return f"×{f:.2g}" if f < 10 else f"×{f:.0f}"
    return f"{100 * (f - 1):+.0f}%".replace("-", "−")


Predict = Callable[[dict[str, np.ndarray]], np.ndarray]


class Recorder:
    """``predict`` that keeps its last output: the pass of ``usual_likes`` (``CONTENT`` at the reference) handed to
    ``drivers`` instead of being run again."""

    def __init__(self, predict: Predict):
        self.predict = predict
        self.last: np.ndarray | None = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.last = self.predict(inputs)
        return self.last


def one_call(predict_ids: Callable[[dict[str, np.ndarray], list[str]], np.ndarray], ids: list[str]
             ) -> Callable[[list[dict[str, np.ndarray]]], list[np.ndarray]]:
    """``predict_all`` for an engine whose every call is a job (Ray): the passes stacked into one call, each row's id
    (``ids``, in row order) suffixed with its pass so that ids stay unique. ``predict_ids(inputs, ids) -> (N, 3)``."""
    def predict_all(passes: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        if not passes:
            return []
        rows = [len(next(iter(p.values()))) for p in passes]
        stacked = {k: np.concatenate([p[k] for p in passes]) for k in passes[0]}
        out = predict_ids(stacked, [f"{pid}\x1f{j}" for j, n in enumerate(rows) for pid in ids[:n]])
        return np.split(out, np.cumsum(rows)[:-1])
    return predict_all


def drivers(card: dict, pre: Preprocessor, inputs: dict[str, np.ndarray], predict: Predict | list[Predict],
            p50: np.ndarray, known: dict[tuple[str, ...], np.ndarray] | None = None,
            predict_all: Callable[[list[dict[str, np.ndarray]]], list[np.ndarray]] | None = None) -> Drivers:
    """Each post's drivers (module docstring): ``predict(inputs) -> (N, 3)`` runs the model, ``p50`` is its median
    on ``inputs`` as already computed; ``known`` maps groups at their reference to the median already computed
    with them there (``{CONTENT: usual pass}``), which is then not run again. Each path walks one copy of the
    inputs, moving a group at a time; given two predictors (``[predict, predict]``: sessions that run side by side)
    the two paths run at once, one on each. Or all passes in one ``predict_all(list of inputs)`` call."""
    ref = Reference(card, pre)
    players = ref.groups(inputs)
    n = len(p50)
    effects = {g: np.zeros(n) for g in GROUPS}
    if not n or not players:
        return Drivers(effects, math.nan)
    k = len(players)
    values = {frozenset(): np.asarray(p50, np.float64)}
    for groups, done in (known or {}).items():
        values.setdefault(frozenset(g for g in groups if g in players), np.asarray(done, np.float64))
    needed: list[list[str]] = []
    for i in range(1, k):
        for moved in (players[:i], players[k - i:]):
            if frozenset(moved) not in values and frozenset(moved) not in map(frozenset, needed):
                needed.append(moved)
    one = ref.apply({key: v[:1] for key, v in inputs.items()}, players)   # the reference post: one row serves all
    if predict_all is None:
        runs = predict if isinstance(predict, list) else [predict]
        reference = float(runs[0](one)[0, 1])
        skip = set(values)

        def walk(path: list[str], run: Predict) -> dict[frozenset, np.ndarray]:
            """The medians along one path: one copy of the inputs, moved a group at a time."""
            x = {key: v.copy() if key == "meta" else v for key, v in inputs.items()}
            got = {}
            for i in range(1, k):
                ref.move(x, [path[i - 1]])
                if frozenset(path[:i]) not in skip:
                    got[frozenset(path[:i])] = run(x)[:, 1].astype(np.float64)
            return got

        paths = (players, players[::-1])
        if len(runs) > 1:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="igcli-drivers") as pool:
                for got in pool.map(walk, paths, runs[:2]):
                    values.update(got)
        else:
            for path in paths:
                values.update(walk(path, runs[0]))
    else:
        *outputs, last = predict_all([ref.apply(inputs, moved) for moved in needed] + [one])
        reference = float(last[0, 1])
        for moved, out in zip(needed, outputs, strict=True):
            values[frozenset(moved)] = out[:, 1].astype(np.float64)
    values[frozenset(players)] = np.full(n, reference)
    for order in (players, players[::-1]):
        for i, g in enumerate(order):
            effects[g] += 0.5 * (values[frozenset(order[:i])] - values[frozenset(order[:i + 1])])
    return Drivers(effects, reference)


def shapley(card: dict, pre: Preprocessor, inputs: dict[str, np.ndarray], predict: Predict) -> Drivers:
    """The exact Shapley values of the groups (each post's prediction against the reference post), over every subset
    of groups: 2^groups passes. For checking ``drivers``; scoring uses ``drivers``."""
    ref = Reference(card, pre)
    players = ref.groups()
    k = len(players)
    n = len(next(iter(inputs.values())))
    values = {}
    for r in range(k + 1):
        for moved in itertools.combinations(players, r):
            values[frozenset(moved)] = predict(ref.apply(inputs, moved))[:, 1].astype(np.float64)
    effects = {g: np.zeros(n) for g in GROUPS}
    for g in players:
        others = [p for p in players if p != g]
        for r in range(k):
            weight = math.factorial(r) * math.factorial(k - r - 1) / math.factorial(k)
            for moved in itertools.combinations(others, r):  # g present, ``moved`` at reference, then g moved too
                s = frozenset(moved)
                effects[g] += weight * (values[s] - values[s | {g}])
    return Drivers(effects, float(values[frozenset(players)][0]) if n else math.nan)


# -------------------------------------------------------------------------------------------- drift

PSI_BINS = 10
DRIFT_PSI = 0.25
NOTE_PSI = 0.1
NOISE_FACTOR = 4.0
MIN_DRIFT_POSTS = 100       # below it one empty bin (of 800 or so) is likely enough to be named by chance
SHARE_FLOOR = 1e-4          # an empty bin counts as this share (else one empty bin makes PSI infinite)
CALENDAR = ("month", "weekday")


def drift_columns(card: dict, inputs: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per model input, its values (NaN = missing) and, for a categorical one, its fixed bin edges (None: edges
    from the training deciles). One-hot columns (``month=1``, ...) become one input coded 0..K-1, K for none of
    them; the embedding becomes its distance from the training mean (RMS of the standardised values); the masks
    become ``objects:present`` / ``aesthetics:present``."""
    takes = _model_inputs(card)
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    if "meta" in takes and "meta" in inputs:
        meta = inputs["meta"]
        names = Preprocessor.from_card(card).meta_names()
        columns = np.ascontiguousarray(meta.T, dtype=np.float64)    # (n_meta, N): each input's values in one run
        onehots: dict[str, list[int]] = {}
        for j, name in enumerate(names):
            if "=" in name:
                onehots.setdefault(name.split("=", 1)[0], []).append(j)
            else:
                out[name] = (columns[j], None)
        for prefix, cols in onehots.items():
            block = meta[:, cols]
            code = np.where(block.max(axis=1) > 0.5, np.argmax(block, axis=1), len(cols)).astype(np.float64)
            out[prefix] = (code, np.arange(len(cols)) + 0.5)
    if "objects" in takes and "objects" in inputs:
        present = inputs["objects_mask"][:, 0] > 0
        families = card["preprocess"]["families"]
        for j, fam in enumerate(families):
            out[f"objects:{fam}"] = (np.where(present, inputs["objects"][:, j], np.nan).astype(np.float64), None)
        out["objects:present"] = (present.astype(np.float64), None)
    if "aesthetics" in takes and "aesthetics" in inputs:
        present = inputs["aesthetics_mask"][:, 0] > 0
        scale = (card.get("scaling") or {}).get("aesthetics")
        if scale:
            emb = inputs["aesthetics"]
            mean, std = np.asarray(scale["mean"], np.float32), np.asarray(scale["std"], np.float32)
            with np.errstate(invalid="ignore"):
                z = (np.where(np.isnan(emb), mean, emb) - mean) / std           # (N, D) float32
            dist = np.sqrt(np.einsum("ij,ij->i", z, z, dtype=np.float64) / max(z.shape[1], 1))
            out["aesthetics:distance"] = (np.where(present, dist, np.nan), None)
        out["aesthetics:present"] = (present.astype(np.float64), None)
    return out


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin, bins (-inf, e1], (e1, e2], ..., (ek, inf), then missing (NaN)."""
    n = len(values)
    finite = np.isfinite(values)
    counts = np.bincount(np.searchsorted(edges, values[finite], side="left"), minlength=len(edges) + 1)
    return np.append(counts, n - int(finite.sum())) / max(n, 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, np.float64), SHARE_FLOOR)
    a = np.maximum(np.asarray(actual, np.float64), SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def fit_distribution(card: dict, inputs: dict[str, np.ndarray], bins: int = PSI_BINS) -> dict:
    """The model card's ``input_distribution``: per input, bin edges (the training deciles, deduplicated, or the
    categories) and the training rows' shares per bin and missing. ``inputs``: the training rows only."""
    entries = []
    for name, (values, fixed) in drift_columns(card, inputs).items():
        if fixed is None:
            finite = values[np.isfinite(values)]
            qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]) if len(finite) else np.zeros(0)
            edges = np.unique(qs)
        else:
            edges = fixed
        entries.append({"name": name, "edges": [float(e) for e in edges],
                        "shares": [float(s) for s in shares(values, edges)]})
    return {"bins": bins, "statistic": "psi", "rows": int(len(next(iter(inputs.values())))), "inputs": entries}


@dataclass
class InputDrift:
    name: str
    psi: float
    level: str            # drift | note | ok | calendar
    noise: float          # NOISE_FACTOR times the PSI sampling alone gives at this batch and training size

    @property
    def history(self) -> bool:
        """An input about the user's earlier posts, which a batch of new posts shifts by construction."""
        return is_history_input(self.name)

    def as_json(self) -> dict:
        return {"input": self.name, "psi": self.psi, "level": self.level, "noise": self.noise,
                "history": self.history}


def batch_drift(card: dict, inputs: dict[str, np.ndarray]) -> list[InputDrift] | None:
    """Each model input's PSI against the card's training distribution, largest first; None when the card has no
    distribution (a model exported before igcli recorded it)."""
    dist = card.get("input_distribution")
    if not dist:
        return None
    cols = drift_columns(card, inputs)
    n = len(next(iter(inputs.values()))) if inputs else 0
    sampling = 1 / n + (1 / dist["rows"] if dist.get("rows") else 0) if n else 0   # both shares are estimates
    out = []
    for entry in dist["inputs"]:
        if entry["name"] not in cols or not n:
            continue
        expected = np.asarray(entry["shares"])
        value = psi(expected, shares(cols[entry["name"]][0], np.asarray(entry["edges"], np.float64)))
        noise = NOISE_FACTOR * max(int(np.sum(expected > SHARE_FLOOR)) - 1, 1) * sampling
        if entry["name"] in CALENDAR:
            level = "calendar"
        elif n < MIN_DRIFT_POSTS:
            level = "ok"
        elif value >= DRIFT_PSI and value >= noise:
            level = "drift"
        elif value >= NOTE_PSI and value >= noise:
            level = "note"
        else:
            level = "ok"
        out.append(InputDrift(entry["name"], value, level, noise))
    out.sort(key=lambda d: -d.psi)
    return out


def drift_summary(drift: list[InputDrift] | None, posts: int | None = None, top_history: int = 3) -> str:
    """One line: the inputs past the drift threshold, then the notes, then the history inputs apart (their count and
    the largest); what a reader of ``score`` sees."""
    if drift is None:
        return "not checked: the model card has no training distribution (retrain to record it)"
    if posts is not None and posts < MIN_DRIFT_POSTS:
        return f"not judged: {posts} posts, PSI needs {MIN_DRIFT_POSTS} or more (stored all the same)"
    parts = []
    for level in ("drift", "note"):
        named = [d for d in drift if d.level == level and not d.history]
        if named:
            parts.append(f"{level}: " + ", ".join(f"{d.name} (PSI {d.psi:.2f})" for d in named))
    history = [d for d in drift if d.level in ("drift", "note") and d.history]
    if history:
        largest = ", ".join(f"{d.name} ({d.psi:.2f})" for d in history[:top_history])
        parts.append(f"history inputs past PSI {NOTE_PSI}: {len(history)}, largest {largest} (new posts come after "
                     "their users' training posts: expected to move)")
    return "; ".join(parts) or f"none: no input past PSI {NOTE_PSI} beyond sampling noise"
