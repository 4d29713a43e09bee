"""MaxVol (Goreinov et al. 2010) and the linear algebra around it: dominant submatrices of tall matrices,
pseudo-inverses with a stated rank rule, and the batch-wise streaming MaxVol used for the per-cluster
active sets of local D-optimality (:mod:`ace_uq_calc.uncertainty.local_build`).

The global active set of an element is selected by :mod:`ace_uq_calc.uncertainty.subspace_selection`,
which makes one rank decision for all the data first and then runs :func:`maxvol` batch by batch.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import scipy.linalg
from tqdm import tqdm

#: cond(A_active) above which building an active set warns (fitted potentials reach 1e9 to 1e10).
CONDITION_WARNING = 1e8

_EPS = np.finfo(np.float64).eps


class AceUqWarning(UserWarning):
    """Warnings of ace_uq_calc about the reliability of uncertainty estimates (ill-conditioned or
    rank-deficient active sets, MaxVol not converged)."""


# ----------------------------------------------------------------------------------------------------
# linear algebra helpers
# ----------------------------------------------------------------------------------------------------

def singular_value_cutoff(shape) -> float:
    """Relative cutoff below which singular values count as zero: max(shape) * machine epsilon.

    The same rule as ``numpy.linalg.matrix_rank`` and ``scipy.linalg.pinv``'s default. Active-set
    matrices of real potentials (cond ~ 1e9 to 2e10) stay far above it.
    """
    return max(shape) * _EPS


def singular_values(matrix: np.ndarray) -> np.ndarray:
    return scipy.linalg.svd(matrix, compute_uv=False, check_finite=False)


def _svd(matrix: np.ndarray):
    """Economy SVD; falls back to the slower but more robust LAPACK driver if gesdd fails."""
    try:
        return scipy.linalg.svd(matrix, full_matrices=False, check_finite=False)
    except np.linalg.LinAlgError:
        return scipy.linalg.svd(matrix, full_matrices=False, check_finite=False, lapack_driver="gesvd")


def condition_number(singular_values: np.ndarray) -> float:
    """s_max / s_min of a square (m, m) matrix from its singular values (descending); inf when it is
    numerically singular (s_min <= s_max * m * eps, see :func:`singular_value_cutoff`)."""
    s = np.asarray(singular_values)
    if s.size == 0 or s[-1] <= s[0] * singular_value_cutoff(s.shape):
        return float("inf")
    return float(s[0] / s[-1])


@dataclass(frozen=True)
class PseudoInverse:
    """pinv of an active-set matrix plus what was learnt on the way."""

    inverse: np.ndarray          # (m, m) C-contiguous float64
    rank: int                    # singular values kept
    condition_number: float      # s_max / s_min of the whole matrix (inf if numerically singular)
    subspace_condition: float    # s_max / s_rank, the conditioning of the part that was inverted


def pseudo_inverse(matrix: np.ndarray) -> PseudoInverse:
    """Moore-Penrose pseudo-inverse via SVD; singular values <= s_max * m * eps are treated as zero
    (:func:`singular_value_cutoff`)."""
    a = np.asarray(matrix, dtype=np.float64)
    u, s, vt = _svd(a)
    if s.size == 0 or s[0] == 0:
        return PseudoInverse(np.zeros(a.shape[::-1]), 0, float("inf"), float("inf"))
    rank = int(np.count_nonzero(s > s[0] * singular_value_cutoff(a.shape)))
    inverse = (vt[:rank].T / s[:rank]) @ u[:, :rank].T
    return PseudoInverse(
        inverse=np.ascontiguousarray(inverse, dtype=np.float64),
        rank=rank,
        condition_number=condition_number(s),
        subspace_condition=float(s[0] / s[rank - 1]),
    )


# ----------------------------------------------------------------------------------------------------
# MaxVol
# ----------------------------------------------------------------------------------------------------

def pivoted_qr_rows(matrix: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` pivots of a column-pivoted QR of matrix.T: a greedy, well-conditioned choice of
    rows (each pivot is the row with the largest component orthogonal to the rows chosen before)."""
    _, pivots = scipy.linalg.qr(np.asarray(matrix).T, mode="r", pivoting=True, check_finite=False)
    return np.array(pivots[:count], dtype=np.intp)


def _coefficients(matrix: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """B = matrix @ inv(matrix[selected]); LinAlgError if the submatrix is numerically singular
    (1-norm condition number >= 1 / eps, where the inverse is meaningless). This is looser than the
    rank cutoff of :func:`singular_value_cutoff` (cond_1 <= r cond_2), so submatrices that the SVD
    rank test accepts are never rejected here.

    An explicit inverse and one matrix product (BLAS-3) rather than triangular solves: the solves of
    scipy's lu_solve run badly multi-threaded for the small, frequent problems of streaming selection.
    """
    square = matrix[selected]
    message = "MaxVol: the selected rows are (numerically) linearly dependent; the matrix is rank deficient"
    try:
        inverse = np.linalg.inv(square)
    except np.linalg.LinAlgError:
        raise np.linalg.LinAlgError(message) from None
    condition = np.linalg.norm(square, 1) * np.linalg.norm(inverse, 1)
    if not np.isfinite(condition) or condition * _EPS >= 1.0:
        raise np.linalg.LinAlgError(message)
    return matrix @ inverse


def _swap_update(coefficients: np.ndarray, row: int, column: int) -> None:
    """Rank-1 update of B after row ``row`` of the matrix replaces active row ``column`` (in place)."""
    pivot = coefficients[row, column]
    direction = coefficients[row, :].copy()
    direction[column] -= 1.0
    coefficients -= np.outer(coefficients[:, column] / pivot, direction)


def _validated_initial(initial, n_rows: int, rank: int) -> np.ndarray:
    selected = np.array(initial, dtype=np.intp).reshape(-1)
    if selected.size != rank or np.unique(selected).size != rank:
        raise ValueError(f"initial selection must hold {rank} distinct row indices, got {selected.size}")
    if selected.min() < 0 or selected.max() >= n_rows:
        raise ValueError(f"initial selection has row indices outside 0..{n_rows - 1}")
    return selected


def maxvol(matrix, tolerance: float = 1.001, max_iterations: int | None = None,
           initial=None) -> tuple[np.ndarray, float]:
    """Classic MaxVol: r rows of a tall (n, r) matrix of full column rank whose submatrix is dominant.

    Starting from ``initial`` (r distinct row indices) or, by default, the greedy column-pivoted QR
    selection of :func:`pivoted_qr_rows`, rows are swapped while B = matrix @ inv(matrix[selected]) has an
    entry with |B_ij| > tolerance: row i replaces selected row j, which multiplies |det(matrix[selected])|
    by |B_ij| > 1 (so |det| grows monotonically). B is updated by rank-1 updates and recomputed from
    scratch every r swaps and before the result is accepted, so rounding cannot accumulate.

    Parameters
    ----------
    matrix : (n, r) array, n >= r, full column rank (np.linalg.LinAlgError otherwise)
    tolerance : float >= 1
        Stop when max |B| <= tolerance (pacemaker's default 1.001).
    max_iterations : int, optional
        Maximum number of swaps; default 100 * r + 1000. When reached, the current selection is
        returned and ``coefficient_max`` exceeds the tolerance (the caller decides whether to warn).
    initial : sequence of r ints, optional

    Returns
    -------
    (selected_rows, coefficient_max): the (r,) row indices (position j = column j of B) and max |B|.
    """
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < a.shape[1] or a.shape[1] == 0:
        raise ValueError(f"maxvol needs a tall (n, r) matrix with n >= r >= 1, got shape {a.shape}")
    if not tolerance >= 1.0:
        raise ValueError(f"tolerance must be >= 1, got {tolerance}")
    if not np.all(np.isfinite(a)):
        raise ValueError("maxvol: the matrix contains non-finite values (NaN or inf)")
    n_rows, rank = a.shape
    if max_iterations is None:
        max_iterations = 100 * rank + 1000
    selected = pivoted_qr_rows(a, rank) if initial is None else _validated_initial(initial, n_rows, rank)

    coefficients = _coefficients(a, selected)
    swaps = swaps_since_refresh = 0
    while True:
        row, column = divmod(int(np.argmax(np.abs(coefficients))), rank)
        largest = abs(coefficients[row, column])
        if largest <= tolerance or swaps >= max_iterations:
            if swaps_since_refresh == 0:
                return selected, float(largest)
            coefficients = _coefficients(a, selected)     # verify against rounding drift
            swaps_since_refresh = 0
            continue
        _swap_update(coefficients, row, column)
        selected[column] = row
        swaps += 1
        swaps_since_refresh += 1
        if swaps_since_refresh >= rank:
            coefficients = _coefficients(a, selected)
            swaps_since_refresh = 0


# ----------------------------------------------------------------------------------------------------
# streaming selection
# ----------------------------------------------------------------------------------------------------

@dataclass
class StreamingResult:
    """Outcome of a streaming selection (see :func:`select_rows_streaming`)."""

    rows: np.ndarray             # (m, m): rank independent rows, then zero rows
    rank: int                    # dimension spanned by the training projections
    passes: int                  # passes made over the data
    converged: bool              # the last pass changed nothing (all rows within tolerance)
    single_pass: bool            # the batches were a one-shot iterator (no repeated passes possible)
    coefficient_max: float       # max |B| of the last MaxVol call


class _ActiveRows:
    """The current active rows of a streaming MaxVol selection: at most m rows, linearly independent."""

    def __init__(self, n_functions: int, tolerance: float, max_iterations: int | None):
        self.n_functions = n_functions
        self.tolerance = tolerance
        self.max_iterations = max_iterations
        self.rows = np.zeros((0, n_functions))
        self.coefficient_max = 0.0

    @property
    def rank(self) -> int:
        return self.rows.shape[0]

    def absorb(self, batch: np.ndarray) -> bool:
        """Run MaxVol on [active rows; batch] and keep the selected rows. True if the set changed."""
        stacked = np.concatenate([self.rows, batch], axis=0)
        selected = None
        if self.rank == self.n_functions:
            try:
                selected, self.coefficient_max = self._maxvol(stacked, np.arange(self.rank))
            except np.linalg.LinAlgError:   # active rows numerically dependent: treat as rank deficient
                selected = None
        if selected is None:
            selected = self._select_in_spanned_subspace(stacked)
        changed = bool(np.any(selected >= self.rank)) or selected.size != self.rank
        self.rows = np.ascontiguousarray(stacked[np.sort(selected) if changed else selected])
        return changed

    def _maxvol(self, matrix: np.ndarray, initial) -> tuple[np.ndarray, float]:
        return maxvol(matrix, self.tolerance, self.max_iterations, initial)

    def _select_in_spanned_subspace(self, stacked: np.ndarray) -> np.ndarray:
        """MaxVol on the coordinates of the row space of ``stacked`` (rank <= m rows selected)."""
        _, s, vt = _svd(stacked)
        if s[0] == 0:
            return np.zeros(0, dtype=np.intp)
        rank = int(np.count_nonzero(s > s[0] * singular_value_cutoff(stacked.shape)))
        if rank == self.n_functions:
            selected, self.coefficient_max = self._maxvol(stacked, None)
            return selected
        coordinates = stacked @ vt[:rank].T
        initial = np.arange(self.rank) if rank == self.rank else None
        try:
            selected, self.coefficient_max = self._maxvol(coordinates, initial)
        except np.linalg.LinAlgError:
            selected, self.coefficient_max = self._maxvol(coordinates, None)
        return selected

    def padded(self) -> np.ndarray:
        """The (m, m) active-set matrix: the independent rows followed by zero rows."""
        missing = self.n_functions - self.rank
        return np.ascontiguousarray(np.concatenate([self.rows, np.zeros((missing, self.n_functions))]))


def checked_batch(batch, n_functions: int | None) -> np.ndarray:
    x = np.asarray(batch, dtype=np.float64)
    if x.ndim == 1 and x.size == 0:
        return x.reshape(0, n_functions or 0)
    if x.ndim != 2:
        raise ValueError(f"projection batches must be 2-d (k, m) arrays, got shape {x.shape}")
    if n_functions is not None and x.shape[1] != n_functions:
        raise ValueError(f"projection batch has {x.shape[1]} columns, expected n_functions = {n_functions}")
    if not np.all(np.isfinite(x)):
        raise ValueError("projection batch contains non-finite values (NaN or inf)")
    return x


def batch_factory(batches) -> tuple[Callable[[], Iterator], bool]:
    """(a function returning a fresh iterator over the batches, whether several passes are possible).

    A callable is called once per pass; a 2-d array is a single batch; a sequence (list, tuple) can be
    iterated repeatedly; a one-shot iterator or generator allows only one pass.
    """
    if callable(batches):
        return batches, True
    if isinstance(batches, np.ndarray):
        return (lambda: iter([batches])), True
    if iter(batches) is batches:
        return (lambda: batches), False
    return (lambda: iter(batches)), True


def select_rows_streaming(batches, n_functions: int | None = None, tolerance: float = 1.001,
                          max_passes: int = 20, max_iterations: int | None = None,
                          progress: tqdm | None = None) -> StreamingResult:
    """Streaming MaxVol without warnings; see :func:`select_active_set_streaming` for the parameters.

    progress: a bar (:func:`ace_uq_calc.progress.progress_bar`) counting the rows of each pass."""
    factory, reiterable = batch_factory(batches)
    state = None
    passes, converged = 0, False
    for pass_index in range(max_passes):
        changed = False
        if progress is not None and pass_index:
            progress.reset()
        for batch in factory():
            x = checked_batch(batch, n_functions)
            if x.shape[0] == 0:
                continue
            if state is None:
                n_functions = x.shape[1]
                state = _ActiveRows(n_functions, tolerance, max_iterations)
            changed |= state.absorb(x)
            if progress is not None:
                progress.set_postfix_str(f"pass {pass_index + 1}, active set rank {state.rank}/{n_functions}",
                                         refresh=False)
                progress.update(x.shape[0])
        passes = pass_index + 1
        if state is None:
            raise ValueError("no training projections: every batch was empty")
        if not changed:
            converged = True
            break
        if not reiterable:
            break
    return StreamingResult(rows=state.padded(), rank=state.rank, passes=passes, converged=converged,
                           single_pass=not reiterable, coefficient_max=state.coefficient_max)


def select_active_set_streaming(batches, n_functions: int | None = None, tolerance: float = 1.001,
                                max_passes: int = 20, max_iterations: int | None = None) -> np.ndarray:
    """Select the (m, m) active rows from projection batches of one element, holding one batch at a time.

    For every batch, MaxVol runs on the stacked [current active rows; batch] (starting from the current
    active rows) and the selected rows become the new active set. A swap late in a pass can push a row of
    an earlier batch slightly above the tolerance, so passes are repeated until a whole pass swaps nothing;
    then every training row has gamma <= tolerance with respect to the result (|det| grows with every swap,
    so this terminates). Memory: the active rows plus one batch (plus MaxVol's (m + k, m) coefficients).

    Parameters
    ----------
    batches : callable, sequence, 2-d array or iterator
        Preferably a zero-argument callable returning a fresh iterator of (k, m) arrays (e.g.
        ``lambda: iterate_element_batches(basis, frames, "Cu")``), so several passes are possible; a list
        or tuple of arrays works too. A one-shot iterator allows a single pass only (the tolerance
        guarantee then holds for the last batch, earlier rows may exceed it slightly). k may be smaller
        than m; empty batches are skipped.
    n_functions : int, optional
        m; inferred from the first non-empty batch when omitted.
    tolerance, max_iterations : see :func:`maxvol`.
    max_passes : int
        Upper bound on the passes over the data.

    Rank deficiency: if the data span only rank < m dimensions, the result holds rank maximal-volume
    independent rows followed by m - rank zero rows (see the module docstring) and an
    :class:`AceUqWarning` reports it. Non-convergence within ``max_passes`` also warns.
    """
    result = select_rows_streaming(batches, n_functions, tolerance, max_passes, max_iterations)
    _warn_about_selection("", result)
    if result.rank < result.rows.shape[1]:
        pinv = pseudo_inverse(result.rows)
        warnings.warn(_rank_message("", result.rank, result.rows.shape[1], pinv.condition_number,
                                    pinv.subspace_condition), AceUqWarning, stacklevel=2)
    return result.rows


def _rank_message(label: str, rank: int, size: int, condition: float, subspace_condition: float) -> str:
    return (f"{label}the training projections span only {rank} of {size} dimensions (rank deficient); the "
            f"active set holds {rank} independent rows and {size - rank} zero rows, condition number "
            f"{condition:.3g} ({subspace_condition:.3g} on the spanned subspace). Components of new "
            f"environments outside the spanned subspace do not raise the extrapolation grade: add more "
            f"diverse training structures.")


def _warn_about_selection(label: str, result: StreamingResult) -> None:
    """Warn when repeated passes were possible but did not reach a pass without swaps."""
    if not result.converged and not result.single_pass:
        warnings.warn(f"{label}active-set selection did not converge within {result.passes} pass(es) "
                      f"(max |B| = {result.coefficient_max:.6g}); some training environments may have "
                      f"a grade slightly above the tolerance", AceUqWarning, stacklevel=3)
