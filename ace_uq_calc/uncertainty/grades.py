"""Extrapolation grade gamma (D-optimality) and its error amplification kappa.

For the atoms of one element with projection rows x_i (spec 10.1 / 10.2) and the inverse active set
ASI = pinv(A_active) of that element (spec 10.3):

    gamma_i = max_j |(x_i @ ASI)_j|                                      (spec 10.4)
    kappa_i = sum_k |x_i[k] ASI[k, j*]| / gamma_i,  j* = argmax_j |(x_i @ ASI)_j|   (spec 10.5)

kappa says how much a relative error in the projections can be amplified in gamma by the cancellations
in the matrix product; tests compare gamma with |dgamma| <= 1e-12 * kappa * gamma + 1e-12.
"""
from __future__ import annotations

import numpy as np

from ..kernels.gamma import extrapolation_grades


def _checked_operands(projections, inverse_active_set) -> tuple[np.ndarray, np.ndarray]:
    """Both operands as float64 arrays with matching shapes (n_atoms, m) and (m, m)."""
    x = np.asarray(projections, dtype=np.float64)
    asi = np.asarray(inverse_active_set, dtype=np.float64)
    if asi.ndim != 2 or asi.shape[0] != asi.shape[1]:
        raise ValueError(f"inverse active set must be a square matrix, got shape {asi.shape}")
    if x.ndim == 1 and x.size == 0:
        x = x.reshape(0, asi.shape[0])
    if x.ndim != 2:
        raise ValueError(f"projections must be a 2-d array (n_atoms, m), got shape {x.shape}")
    if x.shape[1] != asi.shape[0]:
        raise ValueError(
            f"projection width {x.shape[1]} does not match the inverse active set size {asi.shape[0]}"
        )
    return x, asi


def extrapolation_grades_into(projections, rows, operator, threads: int, out, max_columns: int | None = None) -> None:
    """out[rows] = gamma of the atoms ``rows`` (int array) of ONE element: their projections are
    ``projections[rows, :m]`` (rows may be wider than m, the number of rows of ``operator``).
    ``operator`` (m, c): the inverse active set, whose first ``max_columns`` columns (default: all) give
    max_j |(x ASI)_j|; further columns measure the distance from the spanned subspace (Euclidean norm of
    those coordinates), and gamma is the larger of the two. The Numba kernel
    :func:`~ace_uq_calc.kernels.gamma.extrapolation_grades` on ``threads`` threads (at most one per atom);
    ``projections`` and ``operator`` C-contiguous float64."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if projections.shape[1] < operator.shape[0]:
        raise ValueError(f"projection width {projections.shape[1]} does not match the inverse active set "
                         f"size {operator.shape[0]}")
    columns = operator.shape[1] if max_columns is None else int(max_columns)
    extrapolation_grades(projections, rows, operator, columns, max(1, min(int(threads), len(rows))), out)


def extrapolation_grade(projections, inverse_active_set) -> np.ndarray:
    """gamma_i = max_j |(x_i @ ASI)_j| for the projections (n_atoms, m) of atoms of ONE element.

    Returns shape (n_atoms,); (0,) for no atoms; a row of zeros (an atom without neighbours) gives 0.
    Computed by the same kernel as the calculator's grades (one thread).
    """
    x, asi = _checked_operands(projections, inverse_active_set)
    gamma = np.zeros(x.shape[0])
    if x.shape[0]:
        extrapolation_grades_into(np.ascontiguousarray(x), np.arange(x.shape[0]), np.ascontiguousarray(asi), 1,
                                  gamma)
    return gamma


def gamma_amplification(projections, inverse_active_set) -> np.ndarray:
    """kappa_i = sum_k |x_i[k] ASI[k, j*]| / gamma_i with j* the column attaining gamma_i (spec 10.5).

    kappa >= 1 wherever gamma_i > 0. Where gamma_i = 0: kappa = 0 when every term is zero (e.g. a zero
    row: the zero is exact; the fixtures use this convention too), and inf when non-zero terms cancelled
    exactly. For tests and diagnostics.
    """
    x, asi = _checked_operands(projections, inverse_active_set)
    if x.shape[0] == 0:
        return np.zeros(0)
    coefficients = x @ asi
    winning_column = np.argmax(np.abs(coefficients), axis=1)
    gamma = np.abs(coefficients[np.arange(x.shape[0]), winning_column])
    absolute_terms = np.einsum("ik,ki->i", np.abs(x), np.abs(asi[:, winning_column]))
    kappa = np.zeros_like(gamma)
    nonzero = gamma > 0
    kappa[nonzero] = absolute_terms[nonzero] / gamma[nonzero]
    kappa[~nonzero & (absolute_terms > 0)] = np.inf
    return kappa
