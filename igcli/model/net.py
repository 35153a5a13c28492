"""The fusion model: optional metadata / objects / aesthetics branches and a quantile head.

Branches are looked up by name in ``BRANCHES`` (add one by registering a builder here). The model owns
its normalisation constants as buffers, so the exported ONNX graph takes the preprocessed inputs as they
come from ``igcli.model.preprocess`` (NaN = missing) and returns ln-likes quantiles ``(B, 3)``: p10, p50, p90.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from igcli.util import stable_bucket

QUANTILES = (0.1, 0.5, 0.9)
BRANCH_ORDER = ("metadata", "objects", "aesthetics")


CLIP = 6.0          # standardised inputs are clipped to +-CLIP: one extreme value can't dominate the head


class Standardize(nn.Module):
    """NaN -> training mean, then (x - mean) / std (clipped to +-``clip`` when given); constants fitted on the
    training part."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, clip: float | None = None):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(x), self.mean.expand_as(x), x)
        z = (x - self.mean) / self.std
        return z.clamp(-self.clip, self.clip) if self.clip is not None else z


def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out), nn.GELU())


class MetadataBranch(nn.Module):
    """The metadata inputs, standardised and clipped: the shared head does the learning (a wide linear skip
    plus an MLP over all branches' features at once, which beat a per-branch MLP on the warm holdout)."""

    input_names = ("meta",)

    def __init__(self, n_in: int, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.norm = Standardize(mean, std, clip=CLIP)
        self.out_dim = n_in

    def forward(self, meta: torch.Tensor) -> torch.Tensor:  # (B, n_meta) -> (B, n_meta)
        return self.norm(meta)


class ObjectsBranch(nn.Module):
    """An embedding of WordNet families weighted by the classifier's probabilities (a bias-free linear
    map of the family-weight vector), then an MLP; masked to zero for posts without classes."""

    input_names = ("objects", "objects_mask")

    def __init__(self, n_families: int, dim: int = 16, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Linear(n_families, dim, bias=False)
        self.net = _mlp(dim, 32, 16, dropout)
        self.out_dim = 16 + 1

    def forward(self, objects: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, F), (B, 1)
        return torch.cat([self.net(self.embed(objects)) * mask, mask], dim=1)


class AestheticsBranch(nn.Module):
    """The stored (frozen) image embedding -> fixed projections fitted on the training rows.

    The projections are constants of the graph, so ``score`` feeds the raw embedding: the top principal
    components of the standardised embedding (``proj``, (D, k)) and a ridge score of the user-relative target
    (``ridge_w``, ``ridge_b``), then standardised like the other head inputs (``out``: training moments of the
    components and of the out-of-fold ridge score) and clipped. During training the ridge score of the
    training rows is replaced by its out-of-fold value (``ridge_override``), so the head does not learn to
    trust a score fitted on its own targets. Masked to zero for posts without an embedding."""

    input_names = ("aesthetics", "aesthetics_mask")

    def __init__(self, n_in: int, mean: np.ndarray, std: np.ndarray, proj: np.ndarray | None = None,
                 ridge: tuple[np.ndarray, float] | None = None,
                 out_moments: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__()
        self.norm = Standardize(mean, std)
        proj = np.zeros((n_in, 0), np.float32) if proj is None else proj
        w, b = ridge if ridge is not None else (np.zeros(n_in, np.float32), 0.0)
        self.register_buffer("proj", torch.as_tensor(np.asarray(proj, np.float32)))          # (D, k)
        self.register_buffer("ridge_w", torch.as_tensor(np.asarray(w, np.float32))[:, None])  # (D, 1)
        self.register_buffer("ridge_b", torch.tensor(float(b)))
        k = self.proj.shape[1] + 1
        out_moments = out_moments or (np.zeros(k, np.float32), np.ones(k, np.float32))
        self.out = Standardize(*out_moments, clip=CLIP)
        self.out_dim = k + 1

    def projections(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, D) -> (B, k), (B, 1)
        z = self.norm(emb)
        return z @ self.proj, z @ self.ridge_w + self.ridge_b

    def forward(self, emb: torch.Tensor, mask: torch.Tensor,
                ridge_override: torch.Tensor | None = None) -> torch.Tensor:  # (B, D), (B, 1)
        pcs, ridge = self.projections(emb)
        if ridge_override is not None:
            ridge = ridge_override
        f = self.out(torch.cat([pcs, ridge], dim=1)) * mask                  # (B, k + 1)
        return torch.cat([f, mask], dim=1)


BRANCHES: dict[str, Callable[..., nn.Module]] = {
    "metadata": MetadataBranch,
    "objects": ObjectsBranch,
    "aesthetics": AestheticsBranch,
}


class FusionModel(nn.Module):
    """Branch outputs -> a shared head predicting p10 / p50 / p90 of ln-likes.

    The head is a linear skip (weights 0, biases -1 / 0 / 1) plus an MLP n -> hidden -> hidden -> 3 whose last
    layer starts at 0, so training starts from the anchor with a +-1 std interval. p50 = o1,
    p10 = o1 - softplus(o0), p90 = o1 + softplus(o2) (quantiles never cross), in units of ``y_std``.
    With ``anchor_index`` (the column of the user's mean past ln-likes in ``meta``) the head predicts a
    correction to that anchor, falling back to a cold-start prior for users without history: the model
    starts from the strongest baseline instead of having to rediscover it.
    """

    def __init__(self, branches: dict[str, nn.Module], y_mean: float, y_std: float, hidden: int = 64,
                 dropout: float = 0.2, anchor_index: int | None = None,
                 prior: tuple[np.ndarray, float] | None = None):
        super().__init__()
        self.anchor_index = anchor_index
        # Cold-start prior: a ridge fit of ln-likes on the scaled non-history inputs (training rows),
        # used as the anchor where the user has no history. Fixed, not trained further.
        w, b = prior if prior is not None else (np.zeros(1, np.float32), float(y_mean))
        self.register_buffer("prior_w", torch.as_tensor(np.asarray(w, np.float32)))
        self.register_buffer("prior_b", torch.tensor(float(b)))
        self.names = [b for b in BRANCH_ORDER if b in branches]
        self.branches = nn.ModuleDict({b: branches[b] for b in self.names})
        n = sum(branches[b].out_dim for b in self.names)
        self.skip = nn.Linear(n, 3)
        self.head = nn.Sequential(nn.Linear(n, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                                  nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 3))
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))
        self.init_weights()

    def init_weights(self) -> None:
        """Fresh random weights (from torch's current seed) with the head's fixed starting point."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.head[-1].weight)
        with torch.no_grad():
            self.skip.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))

    @property
    def input_names(self) -> list[str]:
        return [name for b in self.names for name in self.branches[b].input_names]

    def anchor(self, meta: torch.Tensor) -> torch.Tensor:  # (B, n_meta) -> (B, 1) ln-likes
        """What the head corrects: the user's history mean, or the cold-start prior without history."""
        hist = meta[:, self.anchor_index:self.anchor_index + 1]                   # (B, 1) raw ln-likes
        z = self.branches["metadata"].norm(meta)                                  # (B, n_meta)
        prior = (z @ self.prior_w)[:, None] + self.prior_b                        # (B, 1)
        return torch.where(torch.isnan(hist), prior, hist)

    def forward(self, *inputs: torch.Tensor, ridge_override: torch.Tensor | None = None) -> torch.Tensor:
        feats, i = [], 0
        for b in self.names:
            k = len(self.branches[b].input_names)
            if b == "aesthetics" and ridge_override is not None:
                feats.append(self.branches[b](*inputs[i:i + k], ridge_override=ridge_override))
            else:
                feats.append(self.branches[b](*inputs[i:i + k]))
            i += k
        h = torch.cat(feats, dim=1)                            # (B, n)
        o = self.skip(h) + self.head(h)                        # (B, 3)
        mid = o[:, 1:2]                                        # median, in units of y_std
        low = mid - nn.functional.softplus(o[:, 0:1])
        high = mid + nn.functional.softplus(o[:, 2:3])
        base = self.anchor(inputs[0]) if self.anchor_index is not None else self.y_mean
        return torch.cat([low, mid, high], dim=1) * self.y_std + base   # (B, 3) ln-likes


class Ensemble(nn.Module):
    """The exported model: the average of member models' quantiles (members differ only in their random
    init and batch order; normalisation, projections and prior are shared), with the p10 / p90 distances from
    the median scaled by a factor calibrated on the validation part, one for posts with user history and one
    for cold-start posts (``interval_scale``: [with history, cold start])."""

    def __init__(self, members: list[FusionModel]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("interval_scale", torch.ones(2))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("names", "branches", "anchor_index", "y_mean", "y_std", "prior_w", "prior_b",
                        "input_names", "anchor", "ridge_oof"):
                return getattr(self._modules["members"][0], name)
            raise

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        q = torch.stack([m(*inputs) for m in self.members]).mean(dim=0)        # (B, 3)
        mid = q[:, 1:2]
        c = self.interval_scale[0]
        if self.anchor_index is not None:
            cold = torch.isnan(inputs[0][:, self.anchor_index:self.anchor_index + 1])     # (B, 1)
            c = torch.where(cold, self.interval_scale[1], self.interval_scale[0])
        return torch.cat([mid - c * (mid - q[:, 0:1]), mid, mid + c * (q[:, 2:3] - mid)], dim=1)


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std ignoring NaN; all-NaN or constant columns get 0 and 1."""

    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
        std = np.nanstd(x, axis=0) if len(x) else np.ones(x.shape[1])
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


N_COMPONENTS = 32
RIDGE_ALPHA = 3000.0
RIDGE_FOLDS = 5


def pca_projection(z: np.ndarray, k: int = N_COMPONENTS) -> np.ndarray:
    """(D, k') top principal directions of the standardised rows ``z`` (k' = min(k, D, rows - 1))."""
    k = max(0, min(k, z.shape[1], len(z) - 1))
    if k == 0:
        return np.zeros((z.shape[1], 0), np.float32)
    zc = z.astype(np.float64) - z.mean(axis=0)
    vals, vecs = np.linalg.eigh(zc.T @ zc)
    top = vecs[:, np.argsort(vals)[::-1][:k]]
    top *= np.where(top[np.argmax(np.abs(top), axis=0), np.arange(k)] < 0, -1.0, 1.0)   # deterministic sign
    return top.astype(np.float32)


def ridge_fit(z: np.ndarray, r: np.ndarray, alpha: float = RIDGE_ALPHA) -> tuple[np.ndarray, float]:
    zm, rm = z.mean(axis=0), float(np.mean(r))
    zc = (z - zm).astype(np.float64)
    w = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ (r - rm))
    return w.astype(np.float32), float(rm - zm @ w)


def ridge_out_of_fold(z: np.ndarray, r: np.ndarray, groups: np.ndarray, folds: int = RIDGE_FOLDS,
                      alpha: float = RIDGE_ALPHA) -> np.ndarray:
    """Each row's ridge score from a fit on the other folds; folds are whole groups (users)."""
    names, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)  # hash each group once
    fold = np.array([stable_bucket(g, folds) for g in names], dtype=np.int64)[inverse]
    out = np.zeros(len(r), np.float32)
    for f in range(folds):
        held = fold == f
        if not held.any():
            continue
        if held.all():                     # a single group: no out-of-fold fit exists
            return out
        w, b = ridge_fit(z[~held], r[~held], alpha)
        out[held] = z[held] @ w + b
    return out


def build_model(branches: tuple[str, ...], train_inputs: dict[str, np.ndarray], y_train: np.ndarray,
                dropout: float = 0.2, hidden: int = 64, anchor_index: int | None = None,
                history_columns: np.ndarray | None = None, groups: np.ndarray | None = None) -> FusionModel:
    """Create the model for ``branches``; normalisation constants, projections and ridge weights come from
    the training inputs only. With the aesthetics branch, ``model.ridge_oof`` holds the training rows'
    out-of-fold ridge scores (by ``groups``, the users) for the training loop."""
    parts: dict[str, nn.Module] = {}
    for b in branches:
        if b not in BRANCHES:
            raise ValueError(f"unknown branch {b!r}: choose from {', '.join(BRANCHES)}")
    if "metadata" in branches:
        x = train_inputs["meta"]
        parts["metadata"] = MetadataBranch(x.shape[1], *_moments(x))
    if "objects" in branches:
        parts["objects"] = ObjectsBranch(train_inputs["objects"].shape[1], dropout=dropout)
    if "metadata" not in branches:
        anchor_index = None
    y_mean = float(np.mean(y_train))
    y_std = float(np.std(y_train) or 1.0)
    target = (y_train - y_mean) / y_std                     # what the head corrects, standardised
    prior = None
    if anchor_index is not None:
        import torch as _torch

        with _torch.no_grad():
            z = parts["metadata"].norm(_torch.from_numpy(train_inputs["meta"])).numpy()
        hist = train_inputs["meta"][:, anchor_index]
        prior = ridge_prior(z, y_train, exclude=history_columns)
        cold = (z @ prior[0]) + prior[1]
        resid = y_train - np.where(np.isnan(hist), cold, hist)  # scale of what the head has to correct
        y_std = float(np.std(resid) or 1.0)
        target = resid / y_std
    ridge_oof = None
    if "aesthetics" in branches:
        x = train_inputs["aesthetics"]
        present = train_inputs["aesthetics_mask"][:, 0] > 0
        mean, std = _moments(x[present])
        z = (x[present] - mean) / std
        proj = pca_projection(z)
        ridge, ridge_oof = None, np.zeros((len(x), 1), np.float32)
        if present.sum() > 1:
            ridge = ridge_fit(z, target[present])
            g = groups[present] if groups is not None else np.arange(int(present.sum()))
            ridge_oof[present, 0] = ridge_out_of_fold(z, target[present], g)
        # the head sees the components and the (out-of-fold) ridge score standardised on the training rows
        out_moments = _moments(np.concatenate([z @ proj, ridge_oof[present]], axis=1))
        parts["aesthetics"] = AestheticsBranch(x.shape[1], mean, std, proj=proj, ridge=ridge,
                                               out_moments=out_moments)
    model = FusionModel(parts, y_mean, y_std, hidden=hidden, dropout=dropout, anchor_index=anchor_index,
                        prior=prior)
    model.ridge_oof = ridge_oof
    return model


def ridge_prior(z: np.ndarray, y: np.ndarray, exclude: np.ndarray | None = None,
                alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """Closed-form ridge regression of ``y`` on scaled inputs ``z``; ``exclude`` columns get weight 0."""
    keep = np.ones(z.shape[1], dtype=bool) if exclude is None else ~exclude
    x = z[:, keep].astype(np.float64)
    xm, ym = x.mean(axis=0), float(np.mean(y))
    xc = x - xm
    w_keep = np.linalg.solve(xc.T @ xc + alpha * len(y) * 1e-3 * np.eye(x.shape[1]), xc.T @ (y - ym))
    w = np.zeros(z.shape[1])
    w[keep] = w_keep
    return w.astype(np.float32), float(ym - xm @ w_keep)


def pinball_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss over the three quantiles; at 0.5 it is half the absolute error."""
    q = torch.tensor(QUANTILES, dtype=pred.dtype, device=pred.device)   # (3,)
    diff = y[:, None] - pred                                             # (B, 3)
    return torch.maximum(q * diff, (q - 1) * diff).mean()


RANK_TEMPERATURE = 0.1      # ln-likes: a pair ordered right by 0.1 costs log(1 + e^-1) in the logistic term


def within_user_pair_loss(pred: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, kind: str = "logistic"
                          ) -> torch.Tensor:
    """Mean over the batch's pairs of posts by the same user with different ``y``: ``logistic`` = softplus of
    the wrongly ordered predicted difference (RankNet), ``diff`` = |predicted difference - true difference|.
    0 when the batch has no such pair."""
    same = (groups[:, None] == groups[None, :]) & (y[:, None] != y[None, :])          # (B, B)
    same = torch.triu(same, diagonal=1)
    if not bool(same.any()):
        return pred.sum() * 0.0
    dp = (pred[:, None] - pred[None, :])[same]
    dy = (y[:, None] - y[None, :])[same]
    if kind == "diff":
        return (dp - dy).abs().mean()
    return nn.functional.softplus(-torch.sign(dy) * dp / RANK_TEMPERATURE).mean()
