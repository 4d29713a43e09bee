"""Clustering of atomic environments for local D-optimality: standardisation, PCA, k-means with
k-means++ restarts, the automatic number of clusters and the merging of small clusters.
NumPy only; see :mod:`ace_uq_calc.uncertainty.local_build` for how the clusters are used.
"""
from __future__ import annotations

import numpy as np

DEFAULT_PCA_VARIANCE = 0.99
DEFAULT_N_INIT = 20
DEFAULT_MAX_CLUSTERS = 60


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale): the column means and standard deviations; a scale below 1e-12 times the largest
    (a constant projection) is set to 1 so that it stays 0 after standardising."""
    shift = x.mean(axis=0)
    scale = x.std(axis=0)
    floor = 1e-12 * (scale.max() if scale.size and scale.max() > 0 else 1.0)
    scale = np.where(scale > floor, scale, 1.0)
    return shift, scale


def principal_components(z: np.ndarray, variance: float) -> np.ndarray:
    """(m, p) leading principal directions of the (centred) rows z holding >= ``variance`` of the total
    variance (p >= 1); variance >= 1 keeps all directions (identity)."""
    m = z.shape[1]
    if variance >= 1.0:
        return np.eye(m)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    power = s ** 2
    total = power.sum()
    if total <= 0:
        return np.eye(m)[:, :1]
    p = int(np.searchsorted(np.cumsum(power) / total, variance) + 1)
    return np.ascontiguousarray(vt[:min(p, len(s))].T)


def squared_distances(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (z * z).sum(1)[:, None] - 2.0 * z @ centres.T + (centres * centres).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans(z: np.ndarray, n_clusters: int, seed: int = 0, n_init: int = DEFAULT_N_INIT,
           max_iterations: int = 300) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means (k-means++ seeding, Lloyd iterations), best of ``n_init`` restarts by inertia.

    Returns (labels (n,) int64, centres (K, p), inertia = sum of squared distances to the centres).
    Empty clusters are re-seeded with the point farthest from its centre.
    """
    z = np.ascontiguousarray(z, dtype=np.float64)
    n = z.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"k-means: n_clusters must be between 1 and the number of points {n}, got {n_clusters}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, n_init)):
        centres = np.empty((n_clusters, z.shape[1]))
        centres[0] = z[rng.integers(n)]
        closest = squared_distances(z, centres[:1])[:, 0]
        for c in range(1, n_clusters):
            total = closest.sum()
            index = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
            centres[c] = z[index]
            closest = np.minimum(closest, squared_distances(z, centres[c:c + 1])[:, 0])
        labels = None
        for _ in range(max_iterations):
            d = squared_distances(z, centres)
            new = np.argmin(d, axis=1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            counts = np.bincount(labels, minlength=n_clusters)
            for c in np.flatnonzero(counts == 0):       # re-seed an empty cluster
                far = int(np.argmax(d[np.arange(n), labels]))
                labels[far] = c
                counts = np.bincount(labels, minlength=n_clusters)
            sums = np.zeros_like(centres)
            np.add.at(sums, labels, z)
            centres = sums / counts[:, None]
        inertia = float(squared_distances(z, centres)[np.arange(n), labels].sum())
        if best is None or inertia < best[2]:
            best = (labels.astype(np.int64), centres, inertia)
    return best


#: atoms per function that an average cluster should hold (see :func:`choose_n_clusters`)
ATOMS_PER_FUNCTION = 20


def choose_n_clusters(n_atoms: int, n_functions: int, max_clusters: int = DEFAULT_MAX_CLUSTERS,
                      atoms_per_function: int = ATOMS_PER_FUNCTION) -> int:
    """Automatic K = n_atoms // (atoms_per_function * n_functions), clipped to 2..max_clusters.

    Justification (exchangeability): an unseen atom drawn from the same distribution as the n_c training
    atoms of a cluster has gamma_c > 1 only if it would enter the MaxVol active set of those n_c + 1
    atoms, which holds at most m of them, so its probability is about <= m / (n_c + 1). Asking for
    <= 1 / atoms_per_function (5 %) false alarms per in-domain atom in an average cluster gives
    n_c >= 20 m, hence K <= n / (20 m). More clusters make the grade more local (better novelty
    ranking) but every cluster sparser (more false alarms); docs/local-d-optimality.md shows both.
    """
    if n_functions < 1 or n_atoms < 1:
        raise ValueError(f"choose_n_clusters needs positive sizes, got n_atoms={n_atoms}, n_functions={n_functions}")
    return int(min(max_clusters, max(2, n_atoms // (atoms_per_function * n_functions))))


def merge_small_clusters(z: np.ndarray, assignment: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge, smallest first, every cluster with fewer than ``min_size`` points into the cluster with the
    nearest centroid; returns (assignment renumbered 0..K'-1, centroids (K', p))."""
    assignment = assignment.copy()
    while True:
        ids, counts = np.unique(assignment, return_counts=True)
        if len(ids) <= 1 or counts.min() >= min_size:
            break
        small = ids[np.argmin(counts)]
        centres = np.stack([z[assignment == c].mean(0) for c in ids])
        d = ((centres - centres[ids == small]) ** 2).sum(1)
        d[ids == small] = np.inf
        assignment[assignment == small] = ids[np.argmin(d)]
    ids, assignment = np.unique(assignment, return_inverse=True)
    return assignment, np.stack([z[assignment == c].mean(0) for c in range(len(ids))])
