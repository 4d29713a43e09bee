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

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from numba import get_num_threads

from ..atomic_io import atomic_write
from ..kernels.local_gamma import local_grades

FORMAT_NAME = "ace_uq_calc.local_active_set"
FORMAT_VERSION = 1
#: per-element arrays of the file (see the module docstring)
ELEMENT_ARRAYS = ("shift", "scale", "components", "centroids", "inverse", "column_offsets", "active_rows",
                  "row_offsets", "distance_scale", "calibration", "rank", "n_train", "labels")


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
        x = np.asarray(projections, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] < self.width:
            raise ValueError(f"projection width {x.shape[-1] if x.ndim else 0} is smaller than the local active "
                             f"set width {self.width}")
        x = np.ascontiguousarray(x)
        rows = np.arange(x.shape[0], dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
        gamma = np.zeros(x.shape[0])
        cluster = np.full(x.shape[0], -1, dtype=np.int64)
        if len(rows):
            threads = get_num_threads() if num_threads is None else num_threads
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

    def grade_atoms(self, elements, species, projections, threads: int = 1) -> dict:
        """Results ``gamma_local`` (N,), ``gamma_cluster`` (N,) int64 (index into the element's clusters,
        see ``clusters[el].labels``) and ``max_gamma_local`` of a structure whose atoms have species indices
        ``species`` (N,) into ``elements`` and ``projections`` (N, >= width) of the kind of this set.
        The grader interface of :func:`ace_uq_calc.engine.results.model_results`."""
        n = len(species)
        gamma = np.zeros(n)
        cluster = np.full(n, -1, dtype=np.int64)
        for e, el in enumerate(elements):
            rows = np.flatnonzero(species == e)
            if len(rows):
                gamma[rows], cluster[rows] = self._of(el).grades(projections, rows, num_threads=threads)
        return {"gamma_local": gamma, "gamma_cluster": cluster, "max_gamma_local": float(gamma.max()) if n else 0.0}

    def for_basis(self, basis, source: str = "local active set") -> "LocalActiveSet":
        """This local active set after checking that it belongs to ``basis`` (ACEBasis; ValueError otherwise)."""
        ndensity = {el: int(basis.ndensity[e]) for e, el in enumerate(basis.elements)}
        self.check_compatible(basis.nfunc, ndensity, basis.elements, source=source)
        return self

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
