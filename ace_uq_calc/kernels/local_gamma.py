"""Numba kernel of the local (clustering-enhanced) D-optimality grade.

For one element with K clusters, cluster c grades an atom with projection row x (length m) by

    full-rank cluster:     g_c(x) = max_j |(x @ ASI_c)_j|                       ASI_c (m, m)
    reduced cluster:       g_c(x) = max( max_j |(x @ ASI_c)_j| , ||x - (x @ ASI_c) @ A_c|| / s_c )
                           A_c (r_c, m) its active rows, ASI_c = pinv(A_c) (m, r_c), s_c > 0

each divided by the cluster's calibration factor q_c >= 1 (1: none), and gamma_local(x) = min_c g_c(x) / q_c, gamma_cluster(x) = the c attaining it
(:mod:`ace_uq_calc.uncertainty.local_active_set` explains the reduced treatment).

Exact branch and bound: the clusters are visited nearest centroid first (centroids in the clustering
space z = ((x - shift) / scale) @ components), the columns of ASI_c in panels of ``_PANEL``; the partial
maximum over the columns done so far is a lower bound of g_c, so a cluster is abandoned as soon as that
bound reaches the best grade found so far. The result is the same minimum as grading every cluster in
full (only the cluster reported for exact ties may differ: the first one visited wins).
"""
import numpy as np
from numba import njit, prange

_PANEL = 8      # columns of the pruning bound
_WIDE = 128     # columns per sweep of the full (nearest-cluster) product
_BLOCK = 4      # atoms per block


@njit(cache=True, fastmath={"contract"})
def _block_panel(x, rows, start, count, asi, j0, j1, acc, bound, base):
    """bound[t - base] = max(bound[t - base], max_{j0 <= j < j1} |(x[rows[t]] @ asi)_j|) for the ``count``
    (<= 4) atoms t from ``start``; acc: (4, >= j1 - j0) scratch (four rows updated per sweep over j, which
    LLVM vectorises; the atoms share every loaded column of asi).

    Like ``kernels.gamma._block_panel`` but summing one row of asi per sweep, in the same order as
    :func:`_block_panel8` and :func:`_grade_one`: the pruning compares partial maxima with full grades,
    so all three must round alike (the two-row sweep of the global kernel differs by ~1e-16 relative)."""
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
    for k in range(m):
        s0 = asi[k, j0:j1]
        x0 = x[r0, k]
        x1 = x[r1, k]
        x2 = x[r2, k]
        x3 = x[r3, k]
        for j in range(w):
            u = s0[j]
            a0[j] += x0 * u
            a1[j] += x1 * u
            a2[j] += x2 * u
            a3[j] += x3 * u
    for t in range(count):
        row = acc[t, :w]
        b = bound[start + t - base]
        for j in range(w):
            v = abs(row[j])
            if v > b or v != v:
                b = v
        bound[start + t - base] = b


@njit(cache=True, fastmath={"contract"})
def _grade_one(x, i, m, inverse, col0, col1, active, row0, distance_scale, calibration, bound, coef, acc):
    """g_c of atom i divided by the cluster's calibration factor, or a value >= bound as soon as the
    partial maximum reaches bound (pruned)."""
    bound = bound * calibration
    running = 0.0
    reduced = distance_scale > 0.0
    j0 = col0
    while j0 < col1:
        j1 = min(col1, j0 + _PANEL)
        w = j1 - j0
        if w == 8:          # eight accumulators in registers (the common case)
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
            for k in range(m):
                xk = x[i, k]
                a0 += xk * inverse[k, j0]
                a1 += xk * inverse[k, j0 + 1]
                a2 += xk * inverse[k, j0 + 2]
                a3 += xk * inverse[k, j0 + 3]
                a4 += xk * inverse[k, j0 + 4]
                a5 += xk * inverse[k, j0 + 5]
                a6 += xk * inverse[k, j0 + 6]
                a7 += xk * inverse[k, j0 + 7]
            acc[0] = a0
            acc[1] = a1
            acc[2] = a2
            acc[3] = a3
            acc[4] = a4
            acc[5] = a5
            acc[6] = a6
            acc[7] = a7
        else:
            for j in range(w):
                acc[j] = 0.0
            for k in range(m):
                xk = x[i, k]
                for j in range(w):
                    acc[j] += xk * inverse[k, j0 + j]
        for j in range(w):
            v = abs(acc[j])
            if v > running or v != v:
                running = v
            if reduced:
                coef[j0 - col0 + j] = acc[j]
        if running != running:
            return running
        if running >= bound:
            return running / calibration
        j0 = j1
    if reduced:
        r = col1 - col0
        residual2 = 0.0
        limit = (bound * distance_scale) ** 2     # partial sums of squares are lower bounds: prune early
        for k in range(m):
            s = x[i, k]
            for t in range(r):
                s -= coef[t] * active[row0 + t, k]
            residual2 += s * s
            if residual2 >= limit:
                break
        d = np.sqrt(residual2) / distance_scale
        if d > running or d != d:
            running = d
    return running / calibration


@njit(cache=True, fastmath={"contract"})
def _block_panel8(x, rows, start, count, asi, j0, bound):
    """As :func:`_block_panel` for exactly 8 columns j0..j0+7, accumulators in registers."""
    r0 = rows[start]
    r1 = rows[start + 1] if count > 1 else r0
    r2 = rows[start + 2] if count > 2 else r0
    r3 = rows[start + 3] if count > 3 else r0
    a00 = a01 = a02 = a03 = a04 = a05 = a06 = a07 = a10 = a11 = a12 = a13 = a14 = a15 = a16 = a17 = a20 = a21 = a22 = a23 = a24 = a25 = a26 = a27 = a30 = a31 = a32 = a33 = a34 = a35 = a36 = a37 = 0.0
    for k in range(asi.shape[0]):
        x0 = x[r0, k]
        x1 = x[r1, k]
        x2 = x[r2, k]
        x3 = x[r3, k]
        s0 = asi[k, j0 + 0]
        s1 = asi[k, j0 + 1]
        s2 = asi[k, j0 + 2]
        s3 = asi[k, j0 + 3]
        s4 = asi[k, j0 + 4]
        s5 = asi[k, j0 + 5]
        s6 = asi[k, j0 + 6]
        s7 = asi[k, j0 + 7]
        a00 += x0 * s0
        a01 += x0 * s1
        a02 += x0 * s2
        a03 += x0 * s3
        a04 += x0 * s4
        a05 += x0 * s5
        a06 += x0 * s6
        a07 += x0 * s7
        a10 += x1 * s0
        a11 += x1 * s1
        a12 += x1 * s2
        a13 += x1 * s3
        a14 += x1 * s4
        a15 += x1 * s5
        a16 += x1 * s6
        a17 += x1 * s7
        a20 += x2 * s0
        a21 += x2 * s1
        a22 += x2 * s2
        a23 += x2 * s3
        a24 += x2 * s4
        a25 += x2 * s5
        a26 += x2 * s6
        a27 += x2 * s7
        a30 += x3 * s0
        a31 += x3 * s1
        a32 += x3 * s2
        a33 += x3 * s3
        a34 += x3 * s4
        a35 += x3 * s5
        a36 += x3 * s6
        a37 += x3 * s7
    m0 = max(abs(a00), abs(a01), abs(a02), abs(a03), abs(a04), abs(a05), abs(a06), abs(a07))
    if a00 != a00 or a01 != a01 or a02 != a02 or a03 != a03 or a04 != a04 or a05 != a05 or a06 != a06 or a07 != a07:
        m0 = np.nan
    m1 = max(abs(a10), abs(a11), abs(a12), abs(a13), abs(a14), abs(a15), abs(a16), abs(a17))
    if a10 != a10 or a11 != a11 or a12 != a12 or a13 != a13 or a14 != a14 or a15 != a15 or a16 != a16 or a17 != a17:
        m1 = np.nan
    m2 = max(abs(a20), abs(a21), abs(a22), abs(a23), abs(a24), abs(a25), abs(a26), abs(a27))
    if a20 != a20 or a21 != a21 or a22 != a22 or a23 != a23 or a24 != a24 or a25 != a25 or a26 != a26 or a27 != a27:
        m2 = np.nan
    m3 = max(abs(a30), abs(a31), abs(a32), abs(a33), abs(a34), abs(a35), abs(a36), abs(a37))
    if a30 != a30 or a31 != a31 or a32 != a32 or a33 != a33 or a34 != a34 or a35 != a35 or a36 != a36 or a37 != a37:
        m3 = np.nan
    for t in range(count):
        v = m0 if t == 0 else (m1 if t == 1 else (m2 if t == 2 else m3))
        if v > bound[t] or v != v:
            bound[t] = v


@njit(cache=True, fastmath=True)
def _cluster_coordinates(x, i, weights_t, offset, z):
    """z = x[i] @ weights_t.T - offset (only orders the clusters, so reassociation is harmless)."""
    m = weights_t.shape[1]
    for q in range(weights_t.shape[0]):
        s = 0.0
        for k in range(m):
            s += x[i, k] * weights_t[q, k]
        z[q] = s - offset[q]


@njit(cache=True, parallel=True)
def local_grades(x, rows, shift, scale, components, centroids, inverse, col_offsets, active, row_offsets,
                 distance_scale, calibration, n_chunks, gamma_out, cluster_out):
    """gamma_out[rows[t]] = min_c g_c(x[rows[t]]) and cluster_out[rows[t]] = its argmin c, for every t.

    x (N, >= m) float64 projections (first m columns used); rows (n,) int64; shift, scale (m,);
    components (m, p); centroids (K, p); inverse (m, R) all clusters' ASI_c side by side, cluster c in
    columns col_offsets[c]:col_offsets[c+1]; active (S, m) the active rows of the reduced clusters, cluster
    c in rows row_offsets[c]:row_offsets[c+1] (empty for full-rank clusters); distance_scale (K,) s_c,
    0 for full-rank clusters; calibration (K,) >= 1, every g_c is divided by it. NaN in x gives NaN and
    cluster -1.

    Two passes: (1) the nearest cluster of every atom (by centroid) is graded in full, in blocks of four
    atoms sharing that cluster (the blocked product of ``kernels.gamma``); (2) every other cluster is
    bounded from below by its first column panel, again in blocks of four, and graded further only
    where that bound is below the best grade so far.
    """
    n = rows.shape[0]
    m = inverse.shape[0]
    p = components.shape[1]
    n_clusters = centroids.shape[0]
    if n_chunks < 1:
        n_chunks = 1
    if n == 0:
        return
    # z = ((x - shift) / scale) @ components = x @ weights - offset, weights stored transposed (p, m)
    weights_t = np.ascontiguousarray((components / scale.reshape(-1, 1)).T)
    offset = (shift / scale) @ components
    nearest = np.empty(n, dtype=np.int64)
    for chunk_u in prange(n_chunks):
        chunk = np.int64(chunk_u)
        z = np.empty(p)
        for t in range((chunk * n) // n_chunks, ((chunk + 1) * n) // n_chunks):
            _cluster_coordinates(x, rows[t], weights_t, offset, z)
            best_d = np.inf
            best_c = 0
            for c in range(n_clusters):
                s = 0.0
                for q in range(p):
                    d = z[q] - centroids[c, q]
                    s += d * d
                if s < best_d:
                    best_d = s
                    best_c = c
            nearest[t] = best_c
    order = np.argsort(nearest, kind="mergesort")
    sorted_rows = rows[order]
    sorted_nearest = nearest[order]
    best = np.empty(n)
    best_cluster = np.empty(n, dtype=np.int64)
    for chunk_u in prange(n_chunks):
        chunk = np.int64(chunk_u)
        t0 = (chunk * n) // n_chunks
        t1 = ((chunk + 1) * n) // n_chunks
        coef = np.empty(m)
        acc = np.empty((_BLOCK, max(_WIDE, _PANEL)))
        panel = np.empty(_PANEL)
        bound = np.empty(_BLOCK)
        # pass 1: the nearest cluster in full
        t = t0
        while t < t1:
            c = sorted_nearest[t]
            count = 1
            while count < _BLOCK and t + count < t1 and sorted_nearest[t + count] == c:
                count += 1
            if distance_scale[c] > 0.0:
                for u in range(count):
                    best[t + u] = _grade_one(x, sorted_rows[t + u], m, inverse, col_offsets[c], col_offsets[c + 1],
                                             active, row_offsets[c], distance_scale[c], calibration[c], np.inf,
                                             coef, panel)
            else:
                for u in range(count):
                    bound[u] = 0.0
                for j0 in range(col_offsets[c], col_offsets[c + 1], _WIDE):
                    j1 = min(col_offsets[c + 1], j0 + _WIDE)
                    _block_panel(x, sorted_rows, t, count, inverse, j0, j1, acc, bound, t)
                for u in range(count):
                    best[t + u] = bound[u] / calibration[c]
            for u in range(count):
                best_cluster[t + u] = c
            t += count
        # pass 2: the other clusters, pruned by their first panel
        for c in range(n_clusters):
            j0 = col_offsets[c]
            j1 = min(col_offsets[c + 1], j0 + _PANEL)
            for b in range(t0, t1, _BLOCK):
                count = min(_BLOCK, t1 - b)
                for u in range(count):
                    bound[u] = 0.0
                if j1 - j0 == 8:
                    _block_panel8(x, sorted_rows, b, count, inverse, j0, bound)
                else:
                    _block_panel(x, sorted_rows, b, count, inverse, j0, j1, acc, bound, b)
                for u in range(count):
                    t = b + u
                    g = best[t]
                    if sorted_nearest[t] == c or g != g:
                        continue
                    if bound[u] / calibration[c] >= g:
                        continue
                    g_c = _grade_one(x, sorted_rows[t], m, inverse, j0, col_offsets[c + 1], active, row_offsets[c],
                                     distance_scale[c], calibration[c], g, coef, panel)
                    if g_c < g or g_c != g_c:
                        best[t] = g_c
                        best_cluster[t] = c
    for t in range(n):
        i = sorted_rows[t]
        gamma_out[i] = best[t]
        cluster_out[i] = best_cluster[t] if best[t] == best[t] else -1
