"""The active set of one element: streamed MaxVol after one rank decision made on all the data.

Pass 1 (statistics) accumulates, batch by batch, the Gram matrix G = X^T X of the training projections
X (n, m) (memory O(m^2)). In column-equilibrated coordinates (X D^-1, D the column norms, which makes
the decision independent of the scale of each basis function, like MaxVol itself) its eigenvectors V
and the square roots s_1 >= s_2 >= ... of its eigenvalues are the directions and extents of the data.
The eigenvalues of G carry an absolute rounding error of about m eps s_1^2, so extents below
``sqrt(m eps) s_1`` cannot be told from zero: the data are taken to span the r = #{s_i > tol s_1}
leading directions with ``tol = RANK_SAFETY sqrt(m eps)`` (:func:`rank_tolerance`). The decision is made
once, on all the data; deciding it per batch (as before) made it oscillate between passes.

Passes 2, 3, ... run MaxVol (:func:`~ace_uq_calc.uncertainty.maxvol.maxvol`) in the whitened coordinates
w = x D^-1 V_r S_r^-1, where the training rows have orthonormal columns (every direction has extent 1):
for each batch, MaxVol on [active rows; batch] starting from the active rows; until the active set holds r
rows, rows that complete its span are added first, greedily (largest component outside the current
span, at least 0.1 / sqrt(n), since every unit direction has a training row with a component of at
least 1 / sqrt(n)). Passes repeat until one makes no swap (typically the second MaxVol pass); then every
training row has |coefficients| <= tolerance in the active rows.

The grade of a new environment x (dimensionless) is

    gamma(x) = max( max_j |(x D^-1 V_r Z_S^-1)_j| ,  ||x D^-1 N|| / s_dist )

with Z_S = X_S D^-1 V_r the active rows in subspace coordinates, N the orthonormal complement of V_r (the
directions the data do not resolve) and the distance scale s_dist = max(sigma_min(Z_S), max_training
||x D^-1 N|| / tolerance): the unresolved directions are treated as sampled no more thinly than the
thinnest resolved one, and every training row stays within the tolerance. On data of full rank (r = m)
the first term is pacemaker's gamma = max_j |(x A^-1)_j| for the active rows A = X_S and the second is
absent. The grading operator is stored as the (m, m) matrix [D^-1 V_r Z_S^-1 | D^-1 N / s_dist] with the
number r of its max-columns (:mod:`ace_uq_calc.kernels.gamma`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from tqdm import tqdm

from .maxvol import AceUqWarning, batch_factory, checked_batch

_EPS = np.finfo(np.float64).eps

#: factor over sqrt(m eps), the relative extent below which the Gram matrix cannot resolve a direction
RANK_SAFETY = 10.0

#: passes of MaxVol over the data at most (after the statistics pass)
MAX_MAXVOL_PASSES = 10

#: rows per MaxVol step of the passes in memory (a swap costs O(chunk rows x r))
MAXVOL_CHUNK = 1024

#: bytes of projections (and their whitened copies) kept in memory between the passes
MEMORY_BUDGET = 4 * 2**30


def rank_tolerance(n_functions: int) -> float:
    """Relative extent (in column-equilibrated coordinates) below which a direction counts as not
    spanned by the training data: RANK_SAFETY sqrt(m eps)."""
    return RANK_SAFETY * float(np.sqrt(max(n_functions, 1) * _EPS))


@dataclass
class SubspaceActiveSet:
    """The selected active set of one element and its grading operator (see the module docstring)."""

    rows: np.ndarray              # (r, m) the active training projections X_S
    operator: np.ndarray          # (m, m) [D^-1 V_r Z_S^-1 | D^-1 N / s_dist], C-contiguous
    rank: int                     # r, the number of max-columns of the operator
    n_rows: int                   # training rows seen
    extents: np.ndarray           # (m,) relative extents s_i / s_1 of the equilibrated data, descending
    distance_scale: float         # s_dist (0 when r = m)
    max_training_distance: float  # max over training rows of ||x D^-1 N||
    passes: int                   # MaxVol passes (the last one found nothing to swap when converged)
    source_reads: int             # times the projections were read from their source (1 when kept in memory)
    converged: bool               # the last MaxVol pass made no swap
    coefficient_max: float        # max |coefficient| of the training rows in the active rows (last pass)
    condition_number: float       # cond(Z_S), the active rows in equilibrated subspace coordinates

    @property
    def n_functions(self) -> int:
        return self.operator.shape[0]

    @property
    def inverse(self) -> np.ndarray:
        """pacemaker's (m, m) inverse active set: the max-columns, zero beyond the rank."""
        out = np.zeros_like(self.operator)
        out[:, :self.rank] = self.operator[:, :self.rank]
        return out

    @property
    def distance_columns(self) -> np.ndarray:
        """(m, m - r) the columns whose coordinates measure the distance from the spanned subspace."""
        return np.ascontiguousarray(self.operator[:, self.rank:])


def _statistics(factory, n_functions, progress: tqdm | None, memory_budget: float):
    """(Gram matrix (m, m), rows seen, the batches kept in memory or None) of all batches; the batches
    are kept while they (and their whitened copies, later) fit in ``memory_budget`` bytes."""
    gram = None
    n_rows = 0
    kept: list | None = []
    for batch in factory():
        x = checked_batch(batch, n_functions)
        if x.shape[0] == 0:
            continue
        if gram is None:
            n_functions = x.shape[1]
            gram = np.zeros((n_functions, n_functions))
        gram += x.T @ x
        n_rows += x.shape[0]
        if kept is not None:
            kept.append(np.ascontiguousarray(x))
            if 2 * 8 * n_rows * n_functions > memory_budget:
                kept = None
        if progress is not None:
            progress.update(x.shape[0])
    if gram is None:
        raise ValueError("no training projections: every batch was empty")
    return gram, n_rows, kept


#: rows of largest leverage kept per function and offered to MaxVol again at the end of each pass
POOL_ROWS_PER_FUNCTION = 4

#: rows per missing direction among which the rows completing the span are chosen (largest components first)
COMPLETION_CANDIDATES = 3


class _WhitenedRows:
    """The active rows of the MaxVol passes (raw rows and whitened coordinates) and the inverse of the
    whitened ones; rows are swapped in by rank-1 updates of the inverse and of the batch's coefficients."""

    def __init__(self, scale: np.ndarray, basis: np.ndarray, extents: np.ndarray, complement: np.ndarray,
                 completion: float, tolerance: float):
        self.scale = scale                  # (m,) D, the column norms
        self.basis = basis                  # (m, r) V_r
        self.extents = extents              # (r,) s_1 .. s_r, extents of the equilibrated data
        self.complement = complement        # (m, m - r) N: distance coordinates (x / D) @ N
        self.completion = completion        # smallest component outside the span that completes it
        self.tolerance = tolerance
        m, r = basis.shape
        self.rank = r
        self.raw = np.zeros((0, m))
        self.white = np.zeros((0, r))
        self.inverse = None                 # inv(white) once the span is complete
        self.coefficient_max = 0.0
        self.max_distance = 0.0
        self.pool_raw = np.zeros((0, m))
        self.pool_white = np.zeros((0, r))
        self.pool_level = np.zeros(0)

    @property
    def complete(self) -> bool:
        return self.white.shape[0] == self.rank

    def whitened(self, x: np.ndarray) -> np.ndarray:
        """Whitened coordinates of raw rows; records the largest distance from the subspace."""
        equilibrated = x / self.scale
        if self.complement.shape[1]:
            self.max_distance = max(self.max_distance,
                                    float(np.linalg.norm(equilibrated @ self.complement, axis=1).max()))
        return (equilibrated @ self.basis) / self.extents

    def absorb(self, x: np.ndarray, w: np.ndarray) -> bool:
        """Swap rows of the batch (raw ``x``, whitened ``w``) into the active set while one has a coefficient
        above the tolerance; True when the active rows changed."""
        changed = False
        if not self.complete:
            changed, x, w = self._complete_with(x, w)
            if not self.complete or x.shape[0] == 0:
                return changed
        x = x.copy()
        w = w.copy()
        coefficients = w @ self.inverse
        swaps = 0
        while True:
            flat = int(np.argmax(np.abs(coefficients)))
            row, column = divmod(flat, self.rank)
            largest = abs(coefficients[row, column])
            if largest <= self.tolerance:
                if swaps == 0:
                    break
                self._refresh()                 # recompute from scratch: no accumulated rounding
                coefficients = w @ self.inverse
                swaps = 0
                continue
            self._swap(x, w, coefficients, row, column)
            changed = True
            swaps += 1
            if swaps >= self.rank:
                self._refresh()
                coefficients = w @ self.inverse
                swaps = 0
        row_max = np.abs(coefficients).max(axis=1)
        self.coefficient_max = max(self.coefficient_max, float(row_max.max()))
        self._pool(x, w)
        return changed

    def _swap(self, x, w, coefficients, row: int, column: int) -> None:
        """Batch row ``row`` replaces active row ``column``; the replaced row takes its place in the batch."""
        pivot = coefficients[row, column]
        direction = coefficients[row].copy()
        direction[column] -= 1.0
        self.inverse -= np.outer(self.inverse[:, column] / pivot, direction)
        old_coefficients = -direction / pivot               # the replaced row in the new active rows
        old_coefficients[column] += 1.0
        coefficients -= np.outer(coefficients[:, column] / pivot, direction)
        coefficients[row] = old_coefficients
        self.raw[column], x[row] = x[row].copy(), self.raw[column].copy()
        self.white[column], w[row] = w[row].copy(), self.white[column].copy()

    def _refresh(self) -> None:
        self.inverse = np.linalg.inv(self.white)

    def _complete_with(self, x, w):
        """Rows of the batch that complete the span: a column-pivoted QR of their components outside the
        current span, among the COMPLETION_CANDIDATES r rows with the largest such components (pivots with
        |R_ii| below ``completion`` are left out). Returns (changed, the rest of the batch raw, whitened)."""
        residual = w
        if self.white.shape[0]:
            q, _ = np.linalg.qr(self.white.T)
            residual = w - (w @ q) @ q.T
        want = self.rank - self.white.shape[0]
        norms = np.einsum("ij,ij->i", residual, residual)
        candidates = np.argsort(norms)[::-1][:COMPLETION_CANDIDATES * want]
        upper, pivots = scipy.linalg.qr(residual[candidates].T, mode="r", pivoting=True, check_finite=False)
        count = min(want, upper.shape[0], upper.shape[1])
        diagonal = np.abs(np.diag(upper)[:count])
        accepted = np.sort(candidates[pivots[:count][diagonal > self.completion]])
        if accepted.size == 0:
            return False, x, w
        self.raw = np.concatenate([self.raw, x[accepted]])
        self.white = np.concatenate([self.white, w[accepted]])
        if self.complete:
            self._refresh()
        rest = np.setdiff1d(np.arange(x.shape[0]), accepted)
        return True, x[rest], w[rest]

    def _pool(self, x, w) -> None:
        """Keep the rows of largest leverage ||w||^2 (at most POOL_ROWS_PER_FUNCTION r of them) for the end
        of the pass, when they are offered to MaxVol again: late swaps of a pass can push rows of earlier
        batches above the tolerance, most often rows of large leverage."""
        leverage = np.einsum("ij,ij->i", w, w)
        self.pool_raw = np.concatenate([self.pool_raw, x])
        self.pool_white = np.concatenate([self.pool_white, w])
        self.pool_level = np.concatenate([self.pool_level, leverage])
        cap = POOL_ROWS_PER_FUNCTION * self.rank
        if self.pool_level.size > cap:
            keep = np.argpartition(self.pool_level, -cap)[-cap:]
            self.pool_raw, self.pool_white, self.pool_level = (self.pool_raw[keep], self.pool_white[keep],
                                                               self.pool_level[keep])

    def absorb_pool(self) -> bool:
        """Offer the pooled rows to MaxVol again (end of a pass) and empty the pool."""
        x, w = self.pool_raw, self.pool_white
        self.pool_raw, self.pool_white, self.pool_level = x[:0], w[:0], np.zeros(0)
        if x.shape[0] == 0:
            return False
        changed = self.absorb(x, w)
        self.pool_raw, self.pool_white, self.pool_level = x[:0], w[:0], np.zeros(0)
        return changed


def _largest_leverage_rows(pairs, count: int):
    """(raw, whitened) rows of largest leverage ||w||^2 among the (raw, whitened) chunks ``pairs``."""
    leverage = np.concatenate([np.einsum("ij,ij->i", w, w) for _, w in pairs])
    chosen = np.sort(np.argpartition(leverage, -min(count, leverage.size))[-min(count, leverage.size):])
    raw = np.concatenate([x for x, _ in pairs])[chosen]
    white = np.concatenate([w for _, w in pairs])[chosen]
    return raw, white


def select_subspace_active_set(batches, n_functions: int | None = None, tolerance: float = 1.001,
                               max_passes: int = MAX_MAXVOL_PASSES, progress: tqdm | None = None,
                               label: str = "", memory_budget: float = MEMORY_BUDGET) -> SubspaceActiveSet:
    """Select the active set of one element from its training projections (module docstring).

    batches: a zero-argument callable returning a fresh iterator of (k, m) arrays (one call per pass),
    a list of arrays, or one 2-d array; a one-shot iterator is read once into memory. ``tolerance``:
    MaxVol's (pacemaker: 1.001). ``memory_budget`` (bytes): while the projections and their whitened
    copies fit, they are kept in memory after the statistics pass and the MaxVol passes run there (the
    source, e.g. the evaluation of training structures, is then read once); larger data are read again
    for every pass. ``progress``: a bar counting rows (reset every pass).
    Warns (AceUqWarning) when MaxVol did not converge within ``max_passes`` passes.
    """
    factory, reiterable = batch_factory(batches)
    gram, n_rows, kept = _statistics(factory, n_functions, progress, memory_budget if reiterable else np.inf)
    m = gram.shape[0]
    scale = np.sqrt(np.diag(gram))
    scale = np.where(scale > 0, scale, 1.0)
    eigenvalues, vectors = np.linalg.eigh(gram / np.outer(scale, scale))
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    sigma = np.sqrt(np.maximum(eigenvalues, 0.0))       # extents of the equilibrated data
    if not sigma[0] > 0:
        raise ValueError("all training projections are zero (atoms without neighbours only)")
    extents = sigma / sigma[0]
    rank = int(np.count_nonzero(extents > rank_tolerance(m)))
    state = _WhitenedRows(scale, np.ascontiguousarray(vectors[:, :rank]), sigma[:rank],
                          np.ascontiguousarray(vectors[:, rank:]), 0.1 / np.sqrt(n_rows), tolerance)
    if kept is not None:                     # whiten once; the passes run in memory, in small chunks
        pairs = [(x[k:k + MAXVOL_CHUNK], w[k:k + MAXVOL_CHUNK])
                 for x, w in ((x, state.whitened(x)) for x in kept) for k in range(0, x.shape[0], MAXVOL_CHUNK)]
        source = lambda: iter(pairs)        # noqa: E731
        state.absorb(*_largest_leverage_rows(pairs, COMPLETION_CANDIDATES * rank))   # a good start
    else:
        source = lambda: ((x, state.whitened(x)) for x in map(lambda b: checked_batch(b, m), factory()))  # noqa: E731
    passes, converged = 0, False
    for _ in range(max_passes):
        if progress is not None:
            progress.reset()
        changed = False
        for x, w in source():
            if x.shape[0]:
                changed |= state.absorb(x, w)
                if progress is not None:
                    progress.set_postfix_str(f"MaxVol pass {passes + 1}, active rows {state.white.shape[0]}/"
                                             f"{rank} of {m}", refresh=False)
                    progress.update(x.shape[0])
        changed |= state.absorb_pool()
        passes += 1
        if not changed and state.white.shape[0] == rank:
            converged = True
            break
    if state.white.shape[0] < rank:
        raise ValueError(f"{label}MaxVol could not complete the spanned subspace ({state.white.shape[0]} of "
                         f"{rank} rows): the data changed between passes?")
    if not converged:
        warnings.warn(f"{label}active-set selection did not converge within {passes} MaxVol pass(es) "
                      f"(max |coefficient| = {state.coefficient_max:.6g}); some training environments may "
                      "have a grade slightly above the tolerance", AceUqWarning, stacklevel=2)
    return _assembled(state, extents, n_rows, passes, converged, source_reads=1 if kept is not None else 1 + passes)


def _assembled(state: _WhitenedRows, extents, n_rows: int, passes: int, converged: bool,
               source_reads: int) -> SubspaceActiveSet:
    """The grading operator of the selected rows."""
    m, rank = state.basis.shape
    z = (state.raw / state.scale) @ state.basis               # Z_S (r, r)
    operator = np.empty((m, m))
    operator[:, :rank] = (state.basis / state.scale[:, None]) @ np.linalg.inv(z)
    sigma = scipy.linalg.svdvals(z)
    distance_scale = 0.0
    if rank < m:
        distance_scale = max(float(sigma[-1]), state.max_distance / state.tolerance)
        operator[:, rank:] = state.complement / state.scale[:, None] / distance_scale
    return SubspaceActiveSet(
        rows=state.raw, operator=np.ascontiguousarray(operator), rank=rank, n_rows=n_rows, extents=extents,
        distance_scale=distance_scale, max_training_distance=state.max_distance, passes=passes,
        source_reads=source_reads,
        converged=converged, coefficient_max=state.coefficient_max,
        condition_number=float(sigma[0] / sigma[-1]),
    )
