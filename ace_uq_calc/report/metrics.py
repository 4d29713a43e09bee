"""Measures of how good an uncertainty is (uq-methods.md section 4): ranking, calibration, novelty
detection. Pure NumPy/SciPy functions of arrays; nothing here evaluates a potential.

Conventions: ``uncertainty`` is any per-atom (or per-structure) score where larger means less
certain (gamma, gamma_local, ensemble forces_dev in eV/A); ``error`` is the true error of the same
atoms (force error norm ||F_pred - F_DFT|| in eV/A, or |dE| per atom in eV).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special, stats


def _clean(*arrays):
    arrays = [np.asarray(a, dtype=float).ravel() for a in arrays]
    n = len(arrays[0])
    for a in arrays[1:]:
        if len(a) != n:
            raise ValueError(f"arrays of different lengths: {[len(x) for x in arrays]}")
    return arrays


def spearman(uncertainty, error) -> float:
    """Spearman rank correlation between uncertainty and error (NaN when fewer than 3 values or
    when either array is constant)."""
    u, e = _clean(uncertainty, error)
    if len(u) < 3 or np.all(u == u[0]) or np.all(e == e[0]):
        return float("nan")
    return float(stats.spearmanr(u, e).statistic)


def roc_auc(negative, positive) -> float:
    """Area under the ROC curve of a score separating ``positive`` (e.g. novel-family atoms) from
    ``negative`` (held-out in-domain atoms): the probability that a random positive scores higher
    than a random negative, ties counted one half (the Mann-Whitney U statistic / (n_pos n_neg))."""
    neg, = _clean(negative)
    pos, = _clean(positive)
    if not len(neg) or not len(pos):
        raise ValueError("roc_auc needs at least one positive and one negative value")
    ranks = stats.rankdata(np.concatenate([pos, neg]))       # average ranks for ties
    u_stat = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u_stat / (len(pos) * len(neg)))


def roc_curve(negative, positive):
    """False-positive and true-positive rates over all thresholds ("score > threshold" flags),
    from (0, 0) to (1, 1); returns (fpr, tpr, thresholds)."""
    neg, = _clean(negative)
    pos, = _clean(positive)
    thresholds = np.unique(np.concatenate([neg, pos]))[::-1]
    neg_sorted = np.sort(neg)
    pos_sorted = np.sort(pos)
    fpr = 1.0 - np.searchsorted(neg_sorted, thresholds, side="left") / len(neg)
    tpr = 1.0 - np.searchsorted(pos_sorted, thresholds, side="left") / len(pos)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr]), np.concatenate([[np.inf], thresholds])


def flagged_fraction(scores, threshold: float) -> float:
    """Fraction of scores strictly above ``threshold`` (detection rate on novel atoms, false-alarm
    rate on in-domain atoms); NaN for an empty array."""
    s, = _clean(scores)
    return float(np.mean(s > threshold)) if len(s) else float("nan")


def gaussian_coverage(error_components, sigma, k_values=(1.0, 2.0, 3.0)) -> dict:
    """Observed fraction of |error| <= k sigma versus the Gaussian expectation erf(k / sqrt 2).

    error_components, sigma: arrays of the same shape (e.g. force components (N, 3) in eV/A and the
    ensemble's forces_std). Returns {k: (observed, expected)}."""
    e, s = _clean(error_components, sigma)
    out = {}
    for k in k_values:
        out[float(k)] = (float(np.mean(np.abs(e) <= k * s)) if len(e) else float("nan"),
                         float(special.erf(k / math.sqrt(2.0))))
    return out


def miscalibration_area(error_components, sigma, points: int = 99) -> float:
    """Mean |observed - expected| coverage over central Gaussian intervals with expected coverage
    p = 0.01 .. 0.99 (0: perfectly calibrated; 0.5: maximally miscalibrated). A sigma that is too
    small (over-confident) and one that is too large both raise it."""
    e, s = _clean(error_components, sigma)
    if not len(e):
        return float("nan")
    p = np.linspace(0.01, 0.99, points)
    k = special.erfinv(p) * math.sqrt(2.0)
    z = np.abs(e) / np.where(s > 0, s, np.finfo(float).tiny)
    z.sort()
    observed = np.searchsorted(z, k, side="right") / len(z)
    return float(np.mean(np.abs(observed - p)))


def log_bins(values, per_decade: int = 2, lowest: float | None = None):
    """Bin edges spaced evenly in log10 covering the positive ``values`` (whole multiples of
    1/per_decade decades); values <= lowest (default: the smallest positive value) fall in bin 0."""
    v, = _clean(values)
    positive = v[v > 0]
    if not len(positive):
        return np.array([0.0, 1.0])
    lo = math.floor(math.log10(lowest if lowest else positive.min()) * per_decade) / per_decade
    hi = math.ceil(math.log10(positive.max()) * per_decade + 1e-12) / per_decade
    if hi <= lo:
        hi = lo + 1.0 / per_decade
    return 10.0 ** np.arange(lo, hi + 0.5 / per_decade, 1.0 / per_decade)


def error_by_bin(uncertainty, error, edges) -> list:
    """Error distribution per uncertainty bin: list of dicts (low, high, count, mean, rms, median,
    p90 of the error). Values below the first edge go to the first bin, above the last to the last."""
    u, e = _clean(uncertainty, error)
    edges = np.asarray(edges, dtype=float)
    which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        sel = e[which == b]
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(len(sel))}
        if len(sel):
            row.update(mean=float(sel.mean()), rms=float(np.sqrt(np.mean(sel ** 2))),
                       median=float(np.median(sel)), p90=float(np.quantile(sel, 0.9)))
        else:
            row.update(mean=float("nan"), rms=float("nan"), median=float("nan"), p90=float("nan"))
        rows.append(row)
    return rows
