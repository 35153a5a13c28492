"""From stored features to model inputs, for both `train` and `score`.

``igcli.features.frames`` reads the feature rows of some posts from the store (metadata, weight-free image quality,
object classes, aesthetics embeddings). ``Preprocessor`` is fitted on the training part only and then
travels in the model card: ``Preprocessor.from_card(card).transform(frame)`` rebuilds exactly the inputs
the model was trained on. Scaling constants live in the model itself (see ``igcli.model.net``); here we only
apply fixed transforms (log1p), one-hot encodings and family vectors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from igcli.errors import FeatureMismatch
from igcli.features.frames import Frame
from igcli.features.schema import (
    CATEGORICAL,
    FLAGS,
    IMAGE_HISTORY_FEATURES,
    NUMERIC,
    QUALITY,
    content_columns,
    extra_numeric,
)
from igcli.vision.families import DEFAULT_FAMILY_DEPTH, family_table

OTHER_FAMILY = "other"
# Relative history: the user's recent / extreme levels as differences from their history mean (the anchor the
# model corrects), so the head sees "recent posts did better than usual" directly. Computed here from stored
# columns, for train and score alike; NaN where either side is missing.
RELATIVE_TO = "hist_mean"
RELATIVE = ("hist_median", "hist_last5", "hist_last10", "hist_decayed", "h_last1", "h_max", "h_min")
# The history trend extrapolated to the post: h_slope (per 30 days) times the days from the middle of the liked
# history (approximated as halfway between the first post and the last liked one) to the post.
SLOPE_AT_NOW = "rel_slope_at_now"


def relative_columns(cols: dict[str, np.ndarray], bases: list[str]) -> dict[str, np.ndarray]:
    """``rel_<X>`` = X - hist_mean for each of ``bases`` (and ``rel_slope_at_now`` when listed)."""
    out = {}
    for b in bases:
        if b == SLOPE_AT_NOW:
            mid = 0.5 * (cols["days_since_first"] + cols["days_since_last_liked"])
            out[b] = cols["h_slope"] / 30.0 * mid
        else:
            out[f"rel_{b}"] = cols[b] - cols[RELATIVE_TO]
    return out


def relative_columns_names(bases: list[str]) -> list[str]:
    return [b if b == SLOPE_AT_NOW else f"rel_{b}" for b in bases]


def _relative_bases(cols: dict) -> list[str]:
    bases = [b for b in RELATIVE if b in cols]
    if {"h_slope", "days_since_first", "days_since_last_liked"} <= set(cols):
        bases.append(SLOPE_AT_NOW)
    return bases


# Inputs unknown (or meaningless) for a post whose user has no liked history: left out of the cold-start prior.
_HISTORY_PREFIXES = ("hist_", "days_since_", "rel_", "h_", "tag_perf", "tag_novel", "img_")
_HISTORY_NAMES = {"n_posts_before", "posts_last30d", "no_history", "hist_std_missing"}


def is_history_input(name: str) -> bool:
    return name.startswith(_HISTORY_PREFIXES) or name in _HISTORY_NAMES


def _apply(x: np.ndarray, transform: str) -> np.ndarray:
    if transform == "log1p":
        return np.log1p(np.clip(x, 0, None))
    return x


@dataclass
class Preprocessor:
    """Fixed transforms and vocabularies; ``fit`` sees the training rows only."""

    numeric: list[tuple[str, str]] = field(default_factory=list)
    categories: dict[str, list[int]] = field(default_factory=dict)
    families: list[str] = field(default_factory=list)
    family_depth: int = DEFAULT_FAMILY_DEPTH
    embedding_dim: int = 0
    use_nima: bool = False
    objects_mean: list[float] = field(default_factory=list)   # training mean of the objects input (usual)
    relative: list[str] = field(default_factory=list)         # bases of the rel_* inputs (relative_columns)

    @classmethod
    def fit(cls, frame: Frame, branches: tuple[str, ...], family_depth: int = DEFAULT_FAMILY_DEPTH,
            min_family_count: int = 5, relative: bool = True,
            image_history: tuple[str, ...] = IMAGE_HISTORY_FEATURES) -> Preprocessor:
        numeric = list(NUMERIC) + list(QUALITY) + [(c, tf) for c, tf in extra_numeric() if c in frame.cols]
        if "aesthetics" in branches:     # the photo against the user's earlier photos (igcli.features.frames)
            numeric += [(c, "none") for c in image_history if c in frame.cols]
        cats = {c: sorted({int(v) for v in frame.cols[c] if not np.isnan(v)}) for c in CATEGORICAL}
        fams: list[str] = []
        if "objects" in branches and frame.classes is not None:
            table = family_table(family_depth)
            counts = Counter(table.get(w, OTHER_FAMILY) for row in frame.classes for w, _ in row)
            fams = sorted(f for f, n in counts.items() if n >= min_family_count and f != OTHER_FAMILY)
            fams.append(OTHER_FAMILY)
        dim, nima = 0, False
        if "aesthetics" in branches and frame.embedding is not None:
            dim = frame.embedding.shape[1]
            nima = bool(frame.nima_mean is not None and np.isfinite(frame.nima_mean).any())
        rel = _relative_bases(frame.cols) if relative else []
        return cls(numeric, cats, fams, family_depth, dim, nima, relative=rel)

    # ------------------------------------------------------------------ names, in input order
    def meta_names(self) -> list[str]:
        names = [n for n, _ in self.numeric] + list(relative_columns_names(self.relative)) + list(FLAGS)
        for c, vocab in self.categories.items():
            names += [f"{c}={v}" for v in vocab]
        return names

    def transform(self, frame: Frame) -> dict[str, np.ndarray]:
        """Model inputs: ``meta`` (N, n_meta) with NaN for missing values (the model imputes and scales),
        and where fitted ``objects`` (N, F) + ``objects_mask`` (N, 1), ``aesthetics`` (N, D) +
        ``aesthetics_mask`` (N, 1)."""
        n = len(frame)
        lacking = [name for name, _ in self.numeric if name not in frame.cols]
        if lacking:
            raise FeatureMismatch(f"the model needs features {', '.join(lacking[:4])} that the store lacks: "
                                  "run `igcli featurize --rebuild` with this igcli")
        parts = [_apply(frame.cols[name], tf) for name, tf in self.numeric]
        parts += list(relative_columns(frame.cols, self.relative).values())
        hist_std = frame.cols["hist_std"]
        quality_present = np.isfinite(frame.cols["brightness"])
        parts += [frame.cols["no_history"], (~np.isfinite(hist_std)).astype(np.float64),
                  quality_present.astype(np.float64)]
        for c, vocab in self.categories.items():
            vals = frame.cols[c]
            parts += [(vals == v).astype(np.float64) for v in vocab]
        meta = np.empty((n, len(parts)), np.float32)      # each column cast once (no float64 copy of the whole)
        for j, part in enumerate(parts):
            meta[:, j] = part
        out = {"meta": meta}
        if self.families:
            if frame.classes is None:
                raise FeatureMismatch("the model needs object classes but none were loaded")
            table = family_table(self.family_depth)
            index = {f: i for i, f in enumerate(self.families)}
            other = index[OTHER_FAMILY]
            obj = np.zeros((n, len(self.families)), dtype=np.float32)
            for r, row in enumerate(frame.classes):
                for wnid, prob in row:
                    obj[r, index.get(table.get(wnid, OTHER_FAMILY), other)] += prob
            out["objects"] = obj
            out["objects_mask"] = np.array([[1.0 if row else 0.0] for row in frame.classes], dtype=np.float32)
        if self.embedding_dim:
            if frame.embedding is None:
                raise FeatureMismatch("the model needs aesthetics embeddings but none were loaded")
            emb = frame.embedding
            if emb.shape[1] != self.embedding_dim:
                raise FeatureMismatch(
                    f"aesthetics embeddings have {emb.shape[1]} dims, the model expects {self.embedding_dim}")
            present = np.isfinite(emb).all(axis=1)
            feats = np.where(present[:, None], emb, 0.0)
            if self.use_nima:
                nm = np.where(np.isfinite(frame.nima_mean), frame.nima_mean, 0.0)[:, None]
                feats = np.concatenate([feats, nm], axis=1)
            out["aesthetics"] = feats.astype(np.float32)
            out["aesthetics_mask"] = present.astype(np.float32)[:, None]
        return out

    def to_card(self) -> dict:
        return {"numeric": [list(x) for x in self.numeric], "flags": list(FLAGS), "categories": self.categories,
                "families": self.families, "family_depth": self.family_depth,
                "embedding_dim": self.embedding_dim, "use_nima": self.use_nima, "meta_names": self.meta_names(),
                "objects_mean": [float(v) for v in self.objects_mean], "relative": list(self.relative)}

    @classmethod
    def from_card(cls, card: dict) -> Preprocessor:
        p = card["preprocess"]
        return cls([tuple(x) for x in p["numeric"]], {k: list(v) for k, v in p["categories"].items()},
                   list(p["families"]), int(p["family_depth"]), int(p["embedding_dim"]), bool(p["use_nima"]),
                   [float(v) for v in p.get("objects_mean", [])], list(p.get("relative", [])))

    def usual_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` with this post's content at the training mean: content columns of ``meta`` become NaN
        (the model imputes the training mean), the embedding NaN with its mask on (mean embedding), the
        objects the training mean family vector. History, timing, followers and calendar stay."""
        out = dict(inputs)
        content = content_columns()
        cols = [i for i, name in enumerate(self.meta_names()) if name in content]
        meta = inputs["meta"].copy()
        meta[:, cols] = np.nan
        out["meta"] = meta
        if "aesthetics" in inputs:
            out["aesthetics"] = np.full_like(inputs["aesthetics"], np.nan)
            out["aesthetics_mask"] = np.ones_like(inputs["aesthetics_mask"])
        if "objects" in inputs:
            out["objects"] = np.broadcast_to(np.asarray(self.objects_mean, np.float32),
                                             inputs["objects"].shape).copy()
            out["objects_mask"] = np.ones_like(inputs["objects_mask"])
        return out


