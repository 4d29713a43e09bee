"""Numba kernel of the extrapolation grade gamma_i = max_j |(x_i @ ASI)_j| (D-optimality).

The only implementation of gamma in the package (``ace_uq_calc.uncertainty.grades`` calls it): blocks
of four atoms inside Numba's own thread pool instead of one BLAS product, because for the small products
of one calculator call a multi-threaded BLAS competes with the (spinning) Numba/OpenMP threads for the
cores and was up to 20 times slower on a busy 2-core machine. Results agree with a BLAS product to
rounding (a few ulp of sum_k |x_k ASI_kj|).
"""
import numpy as np
from numba import njit, prange

_BLOCK = 4
# Columns of ASI handled at a time: a panel of m x 128 doubles (0.5 MB for m = 500) stays in the L2
# cache while all atoms of a chunk pass over it.
_PANEL = 128


@njit(cache=True, fastmath={"contract"})
def _block_panel(x, rows, start, count, asi, j0, j1, acc, best, squares):
    """For the ``count`` (<= 4) atoms from ``start`` and the columns j0 <= j < j1 of c_j = x[rows[start + t]] @ asi:
    best[start + t] = max(best[start + t], max_j |c_j|), or with ``squares`` best[start + t] += sum_j c_j^2.
    acc: (4, >= j1 - j0) scratch.

    Four accumulator rows updated with two rows of ASI per sweep: few enough arrays per loop for LLVM
    to vectorise the sweep over j (each extra array adds run-time overlap checks)."""
    m = asi.shape[0]
    w = j1 - j0
    a0 = acc[0, :w]
    a1 = acc[1, :w]
    a2 = acc[2, :w]
    a3 = acc[3, :w]
    for j in range(w):
        a0[j] = 0.0
        a1[j] = 0.0
        a2[j] = 0.0
        a3[j] = 0.0
    r0 = rows[start]
    r1 = rows[start + 1] if count > 1 else r0
    r2 = rows[start + 2] if count > 2 else r0
    r3 = rows[start + 3] if count > 3 else r0
    k = 0
    while k + 2 <= m:
        s0 = asi[k, j0:j1]
        s1 = asi[k + 1, j0:j1]
        x00 = x[r0, k]
        x01 = x[r0, k + 1]
        x10 = x[r1, k]
        x11 = x[r1, k + 1]
        x20 = x[r2, k]
        x21 = x[r2, k + 1]
        x30 = x[r3, k]
        x31 = x[r3, k + 1]
        for j in range(w):
            u = s0[j]
            v = s1[j]
            a0[j] += x00 * u + x01 * v
            a1[j] += x10 * u + x11 * v
            a2[j] += x20 * u + x21 * v
            a3[j] += x30 * u + x31 * v
        k += 2
    if k < m:
        s0 = asi[k, j0:j1]
        x00 = x[r0, k]
        x10 = x[r1, k]
        x20 = x[r2, k]
        x30 = x[r3, k]
        for j in range(w):
            u = s0[j]
            a0[j] += x00 * u
            a1[j] += x10 * u
            a2[j] += x20 * u
            a3[j] += x30 * u
    for t in range(count):
        row = acc[t, :w]
        b = best[start + t]
        if squares:
            for j in range(w):
                b += row[j] * row[j]
        else:
            for j in range(w):
                v = abs(row[j])
                if v > b or v != v:          # NaN propagates
                    b = v
        best[start + t] = b


@njit(cache=True, parallel=True)
def extrapolation_grades(x, rows, asi, n_max_columns, n_chunks, out):
    """out[rows[t]] = max(max_{j < n_max_columns} |c_j|, sqrt(sum_{j >= n_max_columns} c_j^2)) with
    c = x[rows[t], :m] @ asi, for every t.

    x (N, >= m) float64 projections (only the first m columns are used); rows (n,) int64 atoms of one
    element; asi (m, c) float64 C-contiguous: the inverse active set (its first ``n_max_columns``
    columns; pacemaker's gamma with n_max_columns = c = m), then, for an active set that spans a
    subspace, the columns whose coordinates measure the distance from that subspace (Euclidean norm);
    n_chunks: parallel chunks of atoms (blocks of four).
    """
    n = rows.shape[0]
    m = asi.shape[0]
    c = asi.shape[1]
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    if n_chunks < 1:
        n_chunks = 1
    best = np.zeros(n)
    squares = np.zeros(n)
    for chunk_u in prange(n_chunks):
        chunk = np.int64(chunk_u)
        b0 = (chunk * n_blocks) // n_chunks
        b1 = ((chunk + 1) * n_blocks) // n_chunks
        acc = np.empty((_BLOCK, _PANEL))
        j0 = 0
        while j0 < c:                   # panels of columns, split where the distance columns begin
            j1 = min(c, j0 + _PANEL)
            if j0 < n_max_columns < j1:
                j1 = n_max_columns
            for b in range(b0, b1):
                start = b * _BLOCK
                if j0 < n_max_columns:
                    _block_panel(x, rows, start, min(_BLOCK, n - start), asi, j0, j1, acc, best, False)
                else:
                    _block_panel(x, rows, start, min(_BLOCK, n - start), asi, j0, j1, acc, squares, True)
            j0 = j1
    for t in range(n):
        distance = np.sqrt(squares[t])
        out[rows[t]] = best[t] if best[t] >= distance or best[t] != best[t] else distance
