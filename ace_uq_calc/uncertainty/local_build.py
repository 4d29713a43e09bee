"""Building local active sets: partition the training environments of every element (by labels or
k-means, :mod:`ace_uq_calc.uncertainty.clustering`), select one MaxVol active set per cluster (a subspace
active set plus a distance-from-subspace scale for rank-deficient clusters) and assemble the
:class:`~ace_uq_calc.uncertainty.local_active_set.LocalActiveSet`. The method and the file format are
described in :mod:`ace_uq_calc.uncertainty.local_active_set`.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np

from ..model.basis import load_basis
from .active_set import ActiveSet
from .clustering import (
    DEFAULT_MAX_CLUSTERS,
    DEFAULT_N_INIT,
    DEFAULT_PCA_VARIANCE,
    choose_n_clusters,
    kmeans,
    merge_small_clusters,
    principal_components,
    squared_distances,
    standardisation,
)
from .local_active_set import ClusterSet, LocalActiveSet
from .maxvol import AceUqWarning, pseudo_inverse, select_rows_streaming
from .projections import projection_width, structure_projections


def cluster_operator(rows: np.ndarray, tolerance: float = 1.001) -> dict:
    """The grading operator of one cluster from its training projections (n_c, m).

    Returns dict(inverse (m, r), active_rows (r, m) or (0, m), distance_scale (0 for full rank), rank).
    """
    x = np.ascontiguousarray(rows, dtype=np.float64)
    m = x.shape[1]
    if x.shape[0] == 0:
        raise ValueError("a cluster without atoms")
    if not np.any(x):
        raise ValueError("a cluster whose projections are all zero (atoms without neighbours only)")
    result = select_rows_streaming(x, m, tolerance)
    rank = result.rank
    if rank == m:
        pinv = pseudo_inverse(result.rows)
        if pinv.rank == m:
            return dict(inverse=pinv.inverse, active_rows=np.zeros((0, m)), distance_scale=0.0, rank=m)
        rank = pinv.rank
    active = np.ascontiguousarray(result.rows[:rank])
    pinv = pseudo_inverse(active)
    if pinv.rank < rank:        # keep only the independent part (rounding-level dependence)
        active = active[:pinv.rank]
        pinv = pseudo_inverse(active)
        rank = pinv.rank
    inverse = pinv.inverse                        # (m, r)
    residual = np.linalg.norm(x - (x @ inverse) @ active, axis=1)
    sigma_min = np.linalg.svd(active, compute_uv=False)[-1]
    scale = max(float(sigma_min), float(residual.max()) / tolerance)
    if not scale > 0:
        raise ValueError("a cluster with a zero distance scale")
    return dict(inverse=np.ascontiguousarray(inverse), active_rows=active, distance_scale=scale, rank=rank)


def _grade_with(op: dict, x: np.ndarray) -> np.ndarray:
    coefficients = x @ op["inverse"]
    g = np.max(np.abs(coefficients), axis=1)
    if op["distance_scale"] > 0:
        g = np.maximum(g, np.linalg.norm(x - coefficients @ op["active_rows"], axis=1) / op["distance_scale"])
    return g


def cross_fitted_quantile(rows: np.ndarray, groups, quantile: float, tolerance: float = 1.001,
                          seed: int = 0, n_folds: int = 5) -> float:
    """Calibration factor q_c >= 1 of one cluster: the ``quantile`` (e.g. 0.99) of out-of-fold grades.

    The cluster's structures (``groups``: structure index per atom; None: atoms individually) are split
    into ``n_folds`` folds at random (``seed``); each fold is graded against an operator built from the
    other folds. Those grades are what the cluster's in-domain atoms look like when the active set has
    not seen them; dividing g_c by their quantile makes about 1 - quantile of unseen in-domain atoms
    exceed 1 (split-conformal calibration; slightly conservative, as each operator sees (n_folds - 1) /
    n_folds of the data). Never below 1, so training atoms stay <= tolerance. Only for full-rank clusters
    (a reduced cluster's out-of-fold grades measure its missing dimensions, not its spread): reduced
    clusters and clusters with fewer than ``n_folds`` structures get 1.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"calibration quantile must be in (0, 1), got {quantile}")
    groups = np.arange(len(rows)) if groups is None else np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) < n_folds:
        return 1.0
    fold_of = dict(zip(np.random.default_rng(seed).permutation(unique).tolist(), np.arange(len(unique)) % n_folds))
    fold = np.array([fold_of[g] for g in groups.tolist()])
    grades = []
    for f in range(n_folds):
        fit_mask = fold != f
        op = cluster_operator(rows[fit_mask], tolerance)
        if op["distance_scale"] > 0:
            return 1.0
        grades.append(_grade_with(op, rows[~fit_mask]))
    q = float(np.quantile(np.concatenate(grades), quantile))
    return max(1.0, q) if np.isfinite(q) else 1.0


def _assemble(shift, scale, components, centroids, operators, n_train, labels, calibration) -> ClusterSet:
    m = shift.shape[0]
    col, row = [0], [0]
    for op in operators:
        col.append(col[-1] + op["inverse"].shape[1])
        row.append(row[-1] + op["active_rows"].shape[0])
    return ClusterSet(
        shift=shift, scale=scale, components=components, centroids=centroids,
        inverse=np.concatenate([op["inverse"] for op in operators], axis=1),
        column_offsets=np.array(col), active_rows=np.concatenate([op["active_rows"] for op in operators]
                                                                 or [np.zeros((0, m))], axis=0),
        row_offsets=np.array(row), distance_scale=np.array([op["distance_scale"] for op in operators]),
        calibration=np.asarray(calibration, dtype=np.float64),
        rank=np.array([op["rank"] for op in operators]), n_train=np.asarray(n_train), labels=np.asarray(labels, dtype=str))


def build_cluster_set(x: np.ndarray, labels=None, n_clusters=None, seed: int = 0, tolerance: float = 1.001,
                      pca_variance: float = DEFAULT_PCA_VARIANCE, n_init: int = DEFAULT_N_INIT,
                      max_clusters: int = DEFAULT_MAX_CLUSTERS, overlap: float = 0.0,
                      calibration_quantile: float | None = None, groups=None, space: str = "standardised",
                      min_cluster_size: int = 0,
                      element: str = "") -> ClusterSet:
    """Cluster the training projections x (n, m) of one element and build one grading operator per cluster.

    labels : (n,) array of cluster names (supervised partition), or None for k-means.
    n_clusters : int, or None / "auto" for :func:`choose_n_clusters`; ignored with labels.
    Reduced clusters (rank < m) are reported by an AceUqWarning (they use the distance-from-subspace term).
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{element}: training projections must be a non-empty (n, m) array, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{element}: training projections contain non-finite values")
    n, m = x.shape
    if space == "standardised":
        shift, scale = standardisation(x)
        zfull = (x - shift) / scale
        components = principal_components(zfull, pca_variance)
    elif space == "active":      # coordinates in the global active set: x @ pinv(A_global)
        shift, scale = np.zeros(m), np.ones(m)
        components = cluster_operator(x, tolerance)["inverse"]
        if components.shape[1] != m:
            raise ValueError(f"{element}: space='active' needs a full-rank global active set")
        zfull = x
    else:
        raise ValueError(f"space must be 'standardised' or 'active', got {space!r}")
    z = zfull @ components
    if labels is not None:
        labels = np.asarray(labels, dtype=str)
        if labels.shape != (n,):
            raise ValueError(f"{element}: {labels.shape[0]} labels for {n} atoms")
        names, assignment = np.unique(labels, return_inverse=True)
        if len(names) < 2:
            raise ValueError(f"{element}: the training atoms carry only one distinct label ({names[0]!r}); a local "
                             f"active set needs at least two clusters (use the global active set, or --clusters K)")
        centroids = np.stack([z[assignment == c].mean(0) for c in range(len(names))])
        method = "labels"
    else:
        if n_clusters is None or n_clusters == "auto":
            n_clusters = min(n, choose_n_clusters(n, m, max_clusters))
        n_clusters = int(n_clusters)
        if not 1 <= n_clusters <= n:
            raise ValueError(f"{element}: n_clusters must be from 1 to the number of training atoms {n}, got {n_clusters}")
        assignment, centroids, _ = kmeans(z, n_clusters, seed=seed, n_init=n_init)
        if min_cluster_size > 1:
            assignment, centroids = merge_small_clusters(z, assignment, min_cluster_size)
        names = np.array([f"cluster-{c}" for c in range(len(centroids))])
        method = f"kmeans K={n_clusters}" + (f" merged to {len(centroids)}" if len(centroids) < n_clusters else "")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    membership = assignment[:, None] == np.arange(len(names))[None, :]
    if overlap > 0:     # also atoms whose distance to c is within (1 + overlap) times their nearest distance
        distance = np.sqrt(squared_distances(z, centroids))
        membership |= distance <= (1.0 + overlap) * distance.min(axis=1, keepdims=True)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"{element}: {groups.shape} groups for {n} atoms")
    operators, counts, reduced, calibration = [], [], [], []
    for c in range(len(names)):
        members = x[membership[:, c]]
        counts.append(len(members))
        calibration.append(1.0 if calibration_quantile is None else cross_fitted_quantile(
            members, None if groups is None else groups[membership[:, c]], calibration_quantile, tolerance, seed))
        try:
            op = cluster_operator(members, tolerance)
        except ValueError as exc:
            raise ValueError(f"{element}: cluster {names[c]!r}: {exc}") from exc
        if op["distance_scale"] > 0:
            reduced.append(f"{names[c]} ({len(members)} atoms, rank {op['rank']})")
        operators.append(op)
    if reduced:
        warnings.warn(f"{element}: {len(reduced)} cluster(s) span fewer than {m} dimensions and use the reduced "
                      f"basis plus distance-from-subspace grade: {', '.join(reduced)}", AceUqWarning, stacklevel=3)
    cs = _assemble(shift, scale, components, centroids, operators, counts, names, calibration)
    cs.method = method
    return cs


def build_local_active_set_from_projections(projections_by_element: Mapping, labels_by_element: Mapping | None = None,
                                            n_clusters=None, seed: int = 0, tolerance: float = 1.001,
                                            nonlinear: bool = False, groups_by_element: Mapping | None = None,
                                            **options) -> LocalActiveSet:
    """:func:`build_cluster_set` for every element; ``labels_by_element`` maps element -> (n,) labels,
    ``groups_by_element`` element -> (n,) structure index of every atom (for the calibration)."""
    clusters, methods = {}, set()
    for el, x in projections_by_element.items():
        labels = None if labels_by_element is None else labels_by_element[el]
        groups = None if groups_by_element is None else groups_by_element[el]
        cs = build_cluster_set(x, labels, n_clusters, seed, tolerance, groups=groups, element=el, **options)
        methods.add(getattr(cs, "method", ""))
        clusters[el] = cs
    return LocalActiveSet(clusters=clusters, nonlinear=nonlinear, tolerance=tolerance, method="; ".join(sorted(methods)))


def training_projections(potential, frames, nonlinear: bool = False, cluster_by: str | None = None):
    """(projections by element, labels by element or None) of the training frames (all in memory)."""
    basis = load_basis(potential)
    rows = {e: [] for e in basis.elements}
    labels = {e: [] for e in basis.elements} if cluster_by else None
    for index, atoms in enumerate(frames):
        if cluster_by:
            if cluster_by not in atoms.info:
                raise ValueError(f"training structure {index} has no atoms.info[{cluster_by!r}] label "
                                 f"(every structure needs one for cluster_by={cluster_by!r})")
            label = str(atoms.info[cluster_by])
        species, x = structure_projections(basis, atoms, nonlinear)
        for e, el in enumerate(basis.elements):
            mask = species == e
            if mask.any():
                rows[el].append(x[mask, :projection_width(basis, el, nonlinear)])
                if cluster_by:
                    labels[el].extend([label] * int(mask.sum()))
    missing = [el for el in basis.elements if not rows[el]]
    if missing:
        raise ValueError(f"the training structures contain no atoms of {missing}")
    projections = {el: np.concatenate(rows[el]) for el in basis.elements}
    if cluster_by:
        labels = {el: np.array(labels[el], dtype=str) for el in basis.elements}
    return projections, labels


def build_local_active_set(potential, frames, cluster_by: str | None = None, n_clusters=None, seed: int = 0,
                           nonlinear: bool = False, tolerance: float = 1.001, **options) -> LocalActiveSet:
    """Local active set of ``potential`` from training ``frames`` (ASE Atoms).

    cluster_by : key of ``atoms.info`` to partition by (e.g. "config_type"), or None for k-means.
    n_clusters : K for k-means, or None / "auto" (:func:`choose_n_clusters`).
    seed : k-means seed. nonlinear : use the non-linear projections (FS potentials, like a non-linear
    global active set; linear projections work with any potential).
    options : pca_variance, n_init, max_clusters (see :func:`build_cluster_set`).
    """
    if cluster_by is not None and n_clusters is not None:
        raise ValueError("give either cluster_by (labels) or n_clusters (k-means), not both")
    projections, labels = training_projections(potential, list(frames), nonlinear, cluster_by)
    return build_local_active_set_from_projections(projections, labels, n_clusters, seed, tolerance,
                                                   nonlinear, **options)




# ----------------------------------------------------------------------------------------------------
# the study's variant: several separately fitted potentials, each with its own active set
# ----------------------------------------------------------------------------------------------------

def min_grade_over_models(models, atoms):
    """(gamma_min (N,), model_index (N,) int64): per atom the minimum global gamma over several models.

    models : sequence of (potential, active_set) pairs (paths, PotentialFile/ACEBasis and ActiveSet
    objects), e.g. one model per labelled subset as in the UQ study. Each model's own projections are
    graded against its own active set; an atom counts as interpolative if ANY model covers it.
    """
    models = list(models)
    if not models:
        raise ValueError("min_grade_over_models needs at least one (potential, active_set) pair")
    grades = []
    for potential, active_set in models:
        basis = load_basis(potential)
        ndensity = {el: int(basis.ndensity[e]) for e, el in enumerate(basis.elements)}
        if not isinstance(active_set, ActiveSet):
            active_set = ActiveSet.load(active_set, basis.nfunc, ndensity, basis.elements)
        active_set.check_compatible(basis.nfunc, ndensity, basis.elements)
        species, x = structure_projections(basis, atoms, active_set.nonlinear)
        gamma = np.zeros(len(species))
        for e, el in enumerate(basis.elements):
            mask = species == e
            if mask.any():
                gamma[mask] = active_set.grades(el, x[mask][:, :active_set.inverse[el].shape[0]])
        grades.append(gamma)
    stacked = np.stack(grades)
    return stacked.min(axis=0), np.argmin(stacked, axis=0).astype(np.int64)
