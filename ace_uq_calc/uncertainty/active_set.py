"""Active sets for the D-optimality extrapolation grade: MaxVol selection, pseudo-inverse, the ``.asi`` file.

Spec: pacemaker-format.md section 10, uq-methods.md section 1.

* The projections of all training atoms of one element form a tall matrix X (n, m). The active set is
  the (m, m) submatrix A_active of (locally) maximal |det|, found by MaxVol (Goreinov et al. 2010):
  every row x of X then satisfies max_j |(x A_active^-1)_j| <= tolerance.
* Training sets do not fit in memory, so selection streams over batches
  (:func:`select_active_set_streaming`): only the active rows and one batch are held at a time.
* The ``.asi`` file stores ASI = pinv(A_active) per element (:class:`ActiveSet`); the grade of an atom
  is gamma = ||x @ ASI||_inf (:mod:`.grades`).

Rank deficiency (training data that span fewer than m directions, e.g. only perfect bcc crystals) is
handled deliberately: the active set keeps a maximal-volume set of rank-many independent rows (MaxVol in
the coordinates of the spanned subspace) and fills the remaining rows with zeros, the pseudo-inverse
then drops the empty directions, and an :class:`AceUqWarning` reports the rank and the condition
number. Zero rows (rather than further, dependent training rows) keep the coefficients of every training
row in the spanned subspace exactly those of the subspace MaxVol, so training rows still have
gamma <= tolerance; components of new atoms outside the spanned subspace do not contribute to gamma,
which is what the warning is about.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import scipy.linalg
from tqdm import tqdm

from ..atomic_io import atomic_write
from ..progress import progress_bar
from .grades import extrapolation_grade, extrapolation_grades_into

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


def _singular_values(matrix: np.ndarray) -> np.ndarray:
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


def _checked_batch(batch, n_functions: int | None) -> np.ndarray:
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


def _as_batch_factory(batches) -> tuple[Callable[[], Iterator], bool]:
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
    factory, reiterable = _as_batch_factory(batches)
    state = None
    passes, converged = 0, False
    for pass_index in range(max_passes):
        changed = False
        if progress is not None and pass_index:
            progress.reset()
        for batch in factory():
            x = _checked_batch(batch, n_functions)
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


# ----------------------------------------------------------------------------------------------------
# the ActiveSet and its .asi file
# ----------------------------------------------------------------------------------------------------

def _as_inverse_matrix(matrix, element: str) -> np.ndarray:
    a = np.ascontiguousarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"inverse active set of {element!r} must be a square matrix, got shape {a.shape}")
    return a


@dataclass
class ActiveSet:
    """Inverse active sets ASI = pinv(A_active) of all elements of a potential (the ``.asi`` content).

    Attributes
    ----------
    inverse : dict element -> (m, m) C-contiguous float64
    nonlinear : bool
        True for non-linear projections (m = nfunc * ndensity, spec 10.2), False for linear (m = nfunc).
    active_projections : dict element -> (m, m) or None
        The selected rows A_active, when known (they are not stored in ``.asi`` files).
    condition_numbers : dict element -> float
        cond(A_active) (= cond(ASI)); inf for rank-deficient sets. Computed when not given.
    """

    inverse: dict
    nonlinear: bool = False
    active_projections: dict | None = None
    condition_numbers: dict = field(default_factory=dict)

    def __post_init__(self):
        self.inverse = {el: _as_inverse_matrix(asi, el) for el, asi in self.inverse.items()}
        for el, asi in self.inverse.items():
            if el not in self.condition_numbers:
                self.condition_numbers[el] = condition_number(_singular_values(asi))

    @property
    def elements(self) -> list:
        return list(self.inverse)

    def _inverse_of(self, element: str) -> np.ndarray:
        try:
            return self.inverse[element]
        except KeyError:
            raise KeyError(f"no active set for element {element!r} (have {', '.join(self.inverse)})") from None

    def grades(self, element: str, projections) -> np.ndarray:
        """Extrapolation grades gamma (n_atoms,) of atoms of ``element`` from their (n_atoms, m) projections."""
        return extrapolation_grade(projections, self._inverse_of(element))

    def grade_atoms(self, elements, species, projections, threads: int = 1) -> dict:
        """Results ``gamma`` (N,) and ``max_gamma`` (0 for no atoms) of a structure whose atoms have species
        indices ``species`` (N,) into ``elements`` and ``projections`` (N, >= m) of the kind of this active
        set (rows padded beyond each element's m). ``threads``: Numba threads of the grading kernel.
        The grader interface of :func:`ace_uq_calc.engine.results.model_results`."""
        n_atoms = len(species)
        gamma = np.zeros(n_atoms)
        for e, element in enumerate(elements):
            rows = np.flatnonzero(species == e)
            if len(rows):
                extrapolation_grades_into(projections, rows, self._inverse_of(element), threads, gamma)
        return {"gamma": gamma, "max_gamma": float(gamma.max()) if n_atoms else 0.0}

    def for_basis(self, basis, source: str = "active set") -> "ActiveSet":
        """This active set after checking that it belongs to ``basis`` (an ACEBasis; ValueError otherwise)."""
        self.check_compatible(basis.nfunc, {el: int(basis.ndensity[e]) for e, el in enumerate(basis.elements)},
                              basis.elements, source=source)
        return self

    def save(self, path) -> None:
        """Write pacemaker's ``.asi`` layout atomically: an uncompressed ``np.savez`` archive, one member per
        element symbol, float64 little-endian C order (readable by pyace and LAMMPS' C++ reader)."""
        members = {el: np.ascontiguousarray(asi, dtype="<f8") for el, asi in self.inverse.items()}
        with atomic_write(path, "wb") as handle:
            np.savez(handle, **members)

    def check_compatible(self, nfunc_per_element: Mapping, ndensity_per_element: Mapping | None = None,
                         elements: Iterable | None = None, source: str = "active set") -> None:
        """ValueError unless this active set belongs to a potential with these function counts.

        Every element (default: the keys of ``nfunc_per_element``) must have a matrix of size nfunc
        (linear) or nfunc * ndensity (non-linear), all of the same kind, and that kind must agree with
        ``self.nonlinear``. Used for ActiveSet objects handed to the calculator (files are checked by
        :meth:`load`); catches an active set of another potential before it can give wrong grades.
        """
        if elements is None:
            elements = list(nfunc_per_element)
        layouts = {}
        for el in elements:
            if el not in self.inverse:
                have = ", ".join(self.inverse) or "none"
                raise ValueError(f"{source}: no inverse active set for element {el!r} (it has: {have})")
            if el in nfunc_per_element:
                ndensity = None if ndensity_per_element is None else ndensity_per_element.get(el)
                layouts[el] = _layout_of(source, el, self.inverse[el].shape[0], int(nfunc_per_element[el]), ndensity)
        kinds = set(layouts.values())
        if len(kinds) > 1:
            listing = ", ".join(f"{el}: {kind}" for el, kind in layouts.items())
            raise ValueError(f"{source}: elements mix linear and non-linear active sets ({listing})")
        if kinds and (kinds.pop() == "non-linear") != bool(self.nonlinear):
            raise ValueError(
                f"{source}: the matrix sizes are those of a {'linear' if self.nonlinear else 'non-linear'} active "
                f"set, but it is marked nonlinear={self.nonlinear}"
            )

    @classmethod
    def load(cls, path, nfunc_per_element: Mapping | None = None, ndensity_per_element: Mapping | None = None,
             elements: Iterable | None = None) -> "ActiveSet":
        """Read an ``.asi`` file (ours or pacemaker's; also compressed archives).

        Parameters
        ----------
        path : the file
        nfunc_per_element : mapping element -> nfunc, optional
            With it, each matrix size must be nfunc (linear) or nfunc * ndensity (non-linear), and all
            elements must agree; ``nonlinear`` is detected from the sizes. Without it the sizes cannot
            be checked and the set is taken as linear (``nonlinear=False``).
        ndensity_per_element : mapping element -> ndensity, optional
            Needed to recognise non-linear sizes; without it any multiple k * nfunc (k > 1) is accepted
            as non-linear.
        elements : iterable of str, optional
            Elements that must be present (default: the keys of ``nfunc_per_element``, else all members).

        Raises ValueError naming the file for: not an ``.npz`` archive, a missing element, a non-square or
        non-float member, a size that fits neither layout, non-finite entries, mixed linear/non-linear.
        """
        members = _read_npz_members(path)
        if elements is None:
            elements = list(nfunc_per_element) if nfunc_per_element is not None else list(members)
        inverse, layouts = {}, {}
        for el in elements:
            matrix = _checked_member(path, members, el)
            if nfunc_per_element is not None and el in nfunc_per_element:
                ndensity = None if ndensity_per_element is None else ndensity_per_element.get(el)
                layouts[el] = _layout_of(path, el, matrix.shape[0], int(nfunc_per_element[el]), ndensity)
            inverse[el] = matrix
        if len(set(layouts.values())) > 1:
            listing = ", ".join(f"{el}: {kind}" for el, kind in layouts.items())
            raise ValueError(f"{path}: elements mix linear and non-linear active sets ({listing})")
        nonlinear = bool(layouts) and next(iter(layouts.values())) == "non-linear"
        return cls(inverse=inverse, nonlinear=nonlinear)


def _read_npz_members(path) -> dict:
    """All members of an .npz archive as arrays (allow_pickle=False); ValueError naming the file otherwise."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # text files, truncated archives, pickles: np.load raises various types
        raise ValueError(f"{path}: not a NumPy .npz active-set archive ({type(exc).__name__}: {exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz active-set archive (it holds a single array)")
    try:
        with archive:
            return {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise ValueError(f"{path}: unreadable .npz active-set archive ({type(exc).__name__}: {exc})") from exc


def _checked_member(path, members: dict, element: str) -> np.ndarray:
    if element not in members:
        have = ", ".join(sorted(members)) or "none"
        raise ValueError(f"{path}: element {element!r} is missing from the active-set file (members: {have})")
    matrix = members[element]
    if matrix.dtype.kind not in "fiu":
        raise ValueError(f"{path}: member {element!r} has dtype {matrix.dtype}, expected float64")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{path}: member {element!r} is not a square matrix (shape {matrix.shape})")
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{path}: member {element!r} contains non-finite values (NaN or inf)")
    return matrix


def _layout_of(path, element: str, size: int, nfunc: int, ndensity: int | None) -> str:
    """'linear' or 'non-linear' from the matrix size (spec 10.3); ValueError if it fits neither."""
    if size == nfunc:
        return "linear"
    if ndensity is not None:
        if size == nfunc * ndensity:
            return "non-linear"
        expected = f"{nfunc} (linear, nfunc) or {nfunc * ndensity} (non-linear, nfunc*ndensity)"
    else:
        if nfunc > 0 and size % nfunc == 0 and size > nfunc:
            return "non-linear"
        expected = f"{nfunc} (linear, nfunc) or a multiple of it (non-linear)"
    raise ValueError(f"{path}: member {element!r} has size {size}x{size}, expected {expected}")


# ----------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------

def _array_batches(array: np.ndarray, batch_size: int) -> Callable[[], Iterator[np.ndarray]]:
    return lambda: (array[start:start + batch_size] for start in range(0, array.shape[0], batch_size))


def build_active_set_from_projections(projections_by_element: Mapping, tolerance: float = 1.001,
                                      batch_size: int = 10000, nonlinear: bool = False,
                                      progress: bool = False, max_passes: int = 20,
                                      condition_warning: float = CONDITION_WARNING) -> ActiveSet:
    """Select active sets by streaming MaxVol and invert them: ASI = pinv(A_active) per element.

    Parameters
    ----------
    projections_by_element : mapping element -> (n, m) array or batch source
        An array is cut into ``batch_size`` row batches; anything else is passed to
        :func:`select_active_set_streaming` (preferably a callable returning a fresh batch iterator).
    tolerance : MaxVol tolerance (pacemaker's default 1.001)
    nonlinear : whether the projections are the non-linear ones (recorded in the result)
    progress : show a progress bar per element on stderr
    condition_warning : warn (AceUqWarning) when cond(A_active) exceeds it

    The pseudo-inverse drops singular values <= s_max * m * eps (:func:`pseudo_inverse`); the condition
    number of every element is recorded, and a warning naming it is issued for rank-deficient or
    ill-conditioned active sets.
    """
    inverse, active, conditions = {}, {}, {}
    for element, source in projections_by_element.items():
        total = None
        if isinstance(source, np.ndarray):
            if source.ndim != 2:
                raise ValueError(f"projections of {element!r} must be a 2-d array, got shape {source.shape}")
            if source.shape[0] == 0:
                raise ValueError(f"no training projections for element {element!r}")
            total = source.shape[0]
            source = _array_batches(source, batch_size)
        display = progress_bar(total, element, True, unit="environment") if progress else None
        try:
            result = select_rows_streaming(source, None, tolerance, max_passes, progress=display)
        except ValueError as exc:
            raise ValueError(f"element {element!r}: {exc}") from exc
        finally:
            if display is not None:
                display.close()
        label = f"element {element}: "
        _warn_about_selection(label, result)
        pinv = pseudo_inverse(result.rows)
        m = result.rows.shape[0]
        if result.rank < m or pinv.rank < m:
            rank = min(result.rank, pinv.rank)
            warnings.warn(_rank_message(label, rank, m, pinv.condition_number, pinv.subspace_condition),
                          AceUqWarning, stacklevel=2)
        elif pinv.condition_number > condition_warning:
            warnings.warn(f"{label}the active set is ill-conditioned, condition number "
                          f"{pinv.condition_number:.3g} (> {condition_warning:.3g}); grades of in-distribution "
                          f"atoms carry large rounding amplification", AceUqWarning, stacklevel=2)
        inverse[element] = pinv.inverse
        active[element] = result.rows
        conditions[element] = pinv.condition_number
    return ActiveSet(inverse=inverse, nonlinear=nonlinear, active_projections=active,
                     condition_numbers=conditions)
