"""Local (clustering-enhanced) D-optimality: one active set per cluster of training environments.

Global D-optimality on a heterogeneous training set gives one huge polytope, inside which many novel
environments fall (gamma < 1). Here the training environments of each element are partitioned into
clusters, every cluster gets its own MaxVol active set, and an atom is graded against all of them:

    gamma_local(x)   = min_c g_c(x)              (dimensionless, same scale as gamma)
    gamma_cluster(x) = argmin_c g_c(x)

so an atom is "interpolative" (gamma_local <= 1) only if ONE cluster's active set contains it.
See docs/local-d-optimality.md for the study on tungsten and the justification of the defaults.

Partition
---------
* ``cluster_by="config_type"``: by a label in ``atoms.info`` (every atom gets its structure's label);
  fewer than two distinct labels is an error.
* unsupervised (default): k-means on the *standardised* projections (each function shifted by its
  training mean and divided by its training standard deviation), after a PCA to the leading
  components that hold ``pca_variance`` of the variance; k-means++ with ``n_init`` restarts (the
  lowest inertia wins, which makes the partition less dependent on the seed). ``n_clusters="auto"``
  (the default) chooses K = n_atoms // (20 m) by the false-alarm argument of :func:`choose_n_clusters`.
  Optional: ``min_cluster_size`` merges small k-means clusters into their nearest neighbour,
  ``overlap`` lets clusters share atoms near their boundaries, ``calibration_quantile`` divides each
  cluster's grade by a cross-fitted quantile (:func:`cross_fitted_quantile`). All three are off by
  default: on tungsten they lowered false alarms only together with the novelty ranking.

Small or rank-deficient clusters
--------------------------------
A cluster whose projections span only r < m dimensions (always so when it has fewer than m atoms)
cannot give a square active set. Its grade is then

    g_c(x) = max( max_j |(x @ pinv(A_c))_j| ,  ||x (I - P_c)|| / s_c )

with A_c (r, m) the MaxVol rows in the cluster's r-dimensional row space (coordinates of x in the
cluster's own basis: <= tolerance for the cluster's atoms), P_c = pinv(A_c) A_c the orthogonal projector
on that row space, and the distance-from-subspace scale

    s_c = max( sigma_min(A_c),  max_{i in cluster} ||x_i (I - P_c)|| / tolerance ).

sigma_min(A_c) is the extent of the cluster's thinnest sampled direction: the unsampled directions
are treated as if sampled as thinly as the thinnest sampled one (the most lenient continuation the
cluster's data allow), and the second term keeps every training atom of the cluster <= tolerance
(their residual is rounding). The grade is therefore finite and positive for any atom off the
subspace (never a silent 0), reduces to the ordinary D-optimality grade inside the subspace, and a
full-rank cluster (r = m) has P_c = I and g_c = the usual gamma.

File format (``.lasi``, an uncompressed ``np.savez`` archive, loaded with ``allow_pickle=False``)
-------------------------------------------------------------------------------------------------
Global members: ``format`` (str, "ace_uq_calc.local_active_set"), ``version`` (int, 1), ``elements``
(str array), ``nonlinear`` (bool), ``tolerance`` (float), ``method`` (str: how the clusters were made).
Per element ``E`` (m = projection width, K clusters, p clustering dimensions):

=========================== ============ ===========================================================
``E.shift``                 (m,)         training mean of each projection (standardisation)
``E.scale``                 (m,)         training standard deviation (1 where it vanishes)
``E.components``            (m, p)       PCA directions of the standardised projections
``E.centroids``             (K, p)       cluster centres in that space (visiting order only)
``E.inverse``               (m, R)       pinv of every cluster's active rows, side by side
``E.column_offsets``        (K+1,) int64 cluster c = columns [off[c], off[c+1]) of ``E.inverse``
``E.active_rows``           (S, m)       active rows A_c of the reduced clusters
``E.row_offsets``           (K+1,) int64 cluster c = rows [off[c], off[c+1]) (empty when full rank)
``E.distance_scale``        (K,)         s_c, 0 for full-rank clusters
``E.rank``                  (K,) int64   dimension spanned by each cluster
``E.n_train``               (K,) int64   training atoms per cluster
``E.labels``                (K,) str     cluster names (label values or "cluster-<c>")
=========================== ============ ===========================================================
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .._atomic_io import atomic_write
from .active_set import AceUqWarning, pseudo_inverse, select_rows_streaming

FORMAT_NAME = "ace_uq_calc.local_active_set"
FORMAT_VERSION = 1
#: per-element arrays of the file (see the module docstring)
ELEMENT_ARRAYS = ("shift", "scale", "components", "centroids", "inverse", "column_offsets", "active_rows",
                  "row_offsets", "distance_scale", "calibration", "rank", "n_train", "labels")

DEFAULT_PCA_VARIANCE = 0.99
DEFAULT_N_INIT = 20
DEFAULT_MAX_CLUSTERS = 60


# ----------------------------------------------------------------------------------------------------
# per-element cluster set
# ----------------------------------------------------------------------------------------------------

@dataclass
class ClusterSet:
    """Everything needed to grade atoms of one element against K clusters (arrays as in the file)."""

    shift: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    centroids: np.ndarray
    inverse: np.ndarray
    column_offsets: np.ndarray
    active_rows: np.ndarray
    row_offsets: np.ndarray
    distance_scale: np.ndarray
    calibration: np.ndarray
    rank: np.ndarray
    n_train: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        for name in ELEMENT_ARRAYS:
            value = getattr(self, name)
            if name == "labels":
                setattr(self, name, np.asarray(value, dtype=str))
            elif name in ("column_offsets", "row_offsets", "rank", "n_train"):
                setattr(self, name, np.ascontiguousarray(value, dtype=np.int64))
            else:
                setattr(self, name, np.ascontiguousarray(value, dtype=np.float64))
        self.validate()

    @property
    def width(self) -> int:
        """m, the projection width this cluster set grades."""
        return self.inverse.shape[0]

    @property
    def n_clusters(self) -> int:
        return self.centroids.shape[0]

    def validate(self, source: str = "local active set") -> None:
        """ValueError naming the first inconsistent array."""
        m, k = self.inverse.shape[0], self.centroids.shape[0]
        p = self.components.shape[1] if self.components.ndim == 2 else -1

        def need(ok, what):
            if not ok:
                raise ValueError(f"{source}: {what}")

        need(self.inverse.ndim == 2 and m > 0, f"inverse must be (m, R), got {self.inverse.shape}")
        need(k >= 1, "no clusters")
        need(self.shift.shape == (m,) and self.scale.shape == (m,), "shift/scale must have shape (m,)")
        need(np.all(self.scale > 0), "scale must be positive")
        need(self.components.ndim == 2 and self.components.shape[0] == m, "components must be (m, p)")
        need(self.centroids.ndim == 2 and self.centroids.shape[1] == p, "centroids must be (K, p)")
        need(self.column_offsets.shape == (k + 1,) and self.column_offsets[0] == 0
             and self.column_offsets[-1] == self.inverse.shape[1]
             and np.all(np.diff(self.column_offsets) > 0), "column_offsets inconsistent with inverse")
        need(self.active_rows.ndim == 2 and self.active_rows.shape[1] == m, "active_rows must be (S, m)")
        need(self.row_offsets.shape == (k + 1,) and self.row_offsets[0] == 0
             and self.row_offsets[-1] == self.active_rows.shape[0]
             and np.all(np.diff(self.row_offsets) >= 0), "row_offsets inconsistent with active_rows")
        need(self.distance_scale.shape == (k,) and np.all(self.distance_scale >= 0), "distance_scale must be (K,) >= 0")
        need(self.calibration.shape == (k,) and np.all(self.calibration >= 1), "calibration must be (K,) >= 1")
        for c in range(k):
            width = self.column_offsets[c + 1] - self.column_offsets[c]
            rows = self.row_offsets[c + 1] - self.row_offsets[c]
            if self.distance_scale[c] > 0:
                need(rows == width and width <= m, f"reduced cluster {c}: {rows} active rows for {width} columns")
            else:
                need(rows == 0 and width == m, f"full-rank cluster {c} needs {m} columns, has {width}")
        need(self.rank.shape == (k,) and self.n_train.shape == (k,) and self.labels.shape == (k,),
             "rank, n_train and labels must have shape (K,)")
        for name in ("shift", "scale", "components", "centroids", "inverse", "active_rows", "distance_scale",
                     "calibration"):
            need(np.all(np.isfinite(getattr(self, name))), f"{name} contains non-finite values")

    def cluster_grades(self, projections) -> np.ndarray:
        """(n, K) grade of every atom against every cluster (NumPy; for analysis and tests)."""
        x = self._checked(projections)
        out = np.empty((x.shape[0], self.n_clusters))
        for c in range(self.n_clusters):
            asi = self.inverse[:, self.column_offsets[c]:self.column_offsets[c + 1]]
            coefficients = x @ asi
            g = np.max(np.abs(coefficients), axis=1) if len(x) else np.zeros(0)
            if self.distance_scale[c] > 0:
                a = self.active_rows[self.row_offsets[c]:self.row_offsets[c + 1]]
                residual = np.linalg.norm(x - coefficients @ a, axis=1) / self.distance_scale[c]
                g = np.maximum(g, residual)
            out[:, c] = g / self.calibration[c]
        return out

    def _checked(self, projections) -> np.ndarray:
        x = np.asarray(projections, dtype=np.float64)
        if x.ndim == 1 and x.size == 0:
            x = x.reshape(0, self.width)
        if x.ndim != 2 or x.shape[1] < self.width:
            raise ValueError(f"projections must be (n_atoms, >= {self.width}), got shape {x.shape}")
        return np.ascontiguousarray(x[:, :self.width])

    def grades(self, projections, rows=None, num_threads: int | None = None):
        """(gamma_local (n,), gamma_cluster (n,) int64) by the Numba kernel; ``rows`` selects atoms of x."""
        import numba

        from ..kernels.local_gamma import local_grades

        x = np.asarray(projections, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] < self.width:
            raise ValueError(f"projection width {x.shape[-1] if x.ndim else 0} is smaller than the local active "
                             f"set width {self.width}")
        x = np.ascontiguousarray(x)
        rows = np.arange(x.shape[0], dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
        gamma = np.zeros(x.shape[0])
        cluster = np.full(x.shape[0], -1, dtype=np.int64)
        if len(rows):
            threads = numba.get_num_threads() if num_threads is None else num_threads
            local_grades(x, rows, self.shift, self.scale, self.components, self.centroids, self.inverse,
                         self.column_offsets, self.active_rows, self.row_offsets, self.distance_scale,
                         self.calibration, max(1, min(threads, len(rows))), gamma, cluster)
        return gamma[rows], cluster[rows]


# ----------------------------------------------------------------------------------------------------
# the LocalActiveSet and its file
# ----------------------------------------------------------------------------------------------------

@dataclass
class LocalActiveSet:
    """Per-element :class:`ClusterSet` s; ``grades(element, projections) -> (gamma_local, gamma_cluster)``."""

    clusters: dict
    nonlinear: bool = False
    tolerance: float = 1.001
    method: str = ""
    info: dict = field(default_factory=dict)

    @property
    def elements(self) -> list:
        return list(self.clusters)

    def grades(self, element: str, projections, num_threads: int | None = None):
        """(gamma_local (n,), gamma_cluster (n,) int64) of atoms of ``element`` from projections (n, m)."""
        return self._of(element).grades(projections, num_threads=num_threads)

    def cluster_grades(self, element: str, projections) -> np.ndarray:
        """(n, K) grades against every cluster (NumPy reference)."""
        return self._of(element).cluster_grades(projections)

    def _of(self, element: str) -> ClusterSet:
        try:
            return self.clusters[element]
        except KeyError:
            raise KeyError(f"no local active set for element {element!r} (have {', '.join(self.clusters)})") from None

    def save(self, path) -> None:
        """Write the documented ``.npz`` layout (uncompressed) atomically."""
        members = {
            "format": np.array(FORMAT_NAME), "version": np.array(FORMAT_VERSION, dtype=np.int64),
            "elements": np.array(self.elements, dtype=str), "nonlinear": np.array(bool(self.nonlinear)),
            "tolerance": np.array(float(self.tolerance)), "method": np.array(str(self.method)),
        }
        for el, cs in self.clusters.items():
            for name in ELEMENT_ARRAYS:
                members[f"{el}.{name}"] = getattr(cs, name)
        with atomic_write(path, "wb") as handle:
            np.savez(handle, **members)

    @classmethod
    def load(cls, path) -> "LocalActiveSet":
        """Read a file written by :meth:`save`; ValueError naming the file and the problem otherwise."""
        try:
            archive = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"{path}: not a local active set (.npz) file ({type(exc).__name__}: {exc})") from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not a local active set file (it holds a single array)")
        with archive:
            files = set(archive.files)
            if "format" not in files or str(archive["format"]) != FORMAT_NAME:
                raise ValueError(f"{path}: not a local active set file (no 'format' = {FORMAT_NAME!r}); a pacemaker "
                                 f".asi file is a global active set: pass it as active_set")
            version = int(archive["version"])
            if version != FORMAT_VERSION:
                raise ValueError(f"{path}: local active set format version {version}, this code reads {FORMAT_VERSION}")
            clusters = {}
            for el in [str(e) for e in archive["elements"]]:
                missing = [n for n in ELEMENT_ARRAYS if f"{el}.{n}" not in files]
                if missing:
                    raise ValueError(f"{path}: element {el!r} lacks arrays {missing}")
                try:
                    clusters[el] = ClusterSet(**{n: archive[f"{el}.{n}"] for n in ELEMENT_ARRAYS})
                except ValueError as exc:
                    raise ValueError(f"{path}: element {el!r}: {exc}") from exc
            return cls(clusters=clusters, nonlinear=bool(archive["nonlinear"]), tolerance=float(archive["tolerance"]),
                       method=str(archive["method"]))

    def check_compatible(self, nfunc_per_element: Mapping, ndensity_per_element: Mapping | None = None,
                         elements: Sequence | None = None, source: str = "local active set") -> None:
        """ValueError unless every element has a cluster set of width nfunc (linear) or nfunc * ndensity
        (non-linear, ``self.nonlinear``)."""
        for el in (list(nfunc_per_element) if elements is None else elements):
            if el not in self.clusters:
                raise ValueError(f"{source}: no clusters for element {el!r} (it has: {', '.join(self.clusters) or 'none'})")
            nfunc = int(nfunc_per_element[el])
            expected = nfunc
            if self.nonlinear:
                if ndensity_per_element is None:
                    raise ValueError(f"{source}: non-linear local active set needs ndensity per element")
                expected = nfunc * int(ndensity_per_element[el])
            width = self.clusters[el].width
            if width != expected:
                kind = "non-linear" if self.nonlinear else "linear"
                raise ValueError(f"{source}: element {el!r} has width {width}, the potential needs {expected} "
                                 f"({kind}; nfunc = {nfunc}): built for another potential?")


# ----------------------------------------------------------------------------------------------------
# clustering
# ----------------------------------------------------------------------------------------------------

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


def _squared_distances(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
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
        closest = _squared_distances(z, centres[:1])[:, 0]
        for c in range(1, n_clusters):
            total = closest.sum()
            index = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
            centres[c] = z[index]
            closest = np.minimum(closest, _squared_distances(z, centres[c:c + 1])[:, 0])
        labels = None
        for _ in range(max_iterations):
            d = _squared_distances(z, centres)
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
        inertia = float(_squared_distances(z, centres)[np.arange(n), labels].sum())
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


# ----------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------

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
        distance = np.sqrt(_squared_distances(z, centroids))
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
    from ..model.basis import load_basis
    from .projections import projection_width, structure_projections

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
# calculator support
# ----------------------------------------------------------------------------------------------------

def prepare_local_active_set(local_active_set, basis, ensemble=None) -> LocalActiveSet:
    """The LocalActiveSet (loaded from a path if needed) checked against ``basis`` (ACEBasis; for an
    ensemble calculator the first member's basis, whose projections grade the atoms)."""
    if not isinstance(local_active_set, LocalActiveSet):
        local_active_set = LocalActiveSet.load(local_active_set)
    ndensity = {el: int(basis.ndensity[e]) for e, el in enumerate(basis.elements)}
    local_active_set.check_compatible(basis.nfunc, ndensity, basis.elements,
                                      source=f"local active set for {basis.potential.source}")
    return local_active_set


def local_results(local_active_set: LocalActiveSet, basis, species, evaluation, num_threads=None) -> dict:
    """Calculator results gamma_local (N,), gamma_cluster (N,) int64 (index into the element's clusters,
    see ``local_active_set.clusters[el].labels``) and max_gamma_local from an ``Evaluation`` holding the
    projections the local set needs."""
    from ..evaluation import _Threads, kernel_threads

    x = evaluation.nonlinear_projections if local_active_set.nonlinear else evaluation.projections
    n = len(species)
    gamma = np.zeros(n)
    cluster = np.full(n, -1, dtype=np.int64)
    with _Threads(kernel_threads(n, num_threads)):
        for e, el in enumerate(basis.elements):
            rows = np.flatnonzero(species == e)
            if len(rows):
                gamma[rows], cluster[rows] = local_active_set.clusters[el].grades(x, rows)
    return {"gamma_local": gamma, "gamma_cluster": cluster,
            "max_gamma_local": float(gamma.max()) if n else 0.0}


# ----------------------------------------------------------------------------------------------------
# the study's variant: several separately fitted potentials, each with its own active set
# ----------------------------------------------------------------------------------------------------

def min_grade_over_models(models, atoms):
    """(gamma_min (N,), model_index (N,) int64): per atom the minimum global gamma over several models.

    models : sequence of (potential, active_set) pairs (paths, PotentialFile/ACEBasis and ActiveSet
    objects), e.g. one model per labelled subset as in the UQ study. Each model's own projections are
    graded against its own active set; an atom counts as interpolative if ANY model covers it.
    """
    from ..model.basis import load_basis
    from .active_set import ActiveSet
    from .projections import structure_projections

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
