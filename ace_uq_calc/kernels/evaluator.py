"""Numba kernels of the B-basis ACE evaluator: A-basis, B-basis, embedding, and the reverse pass.

Nothing here knows about ASE. Inputs are the flat arrays of :class:`KernelLayout` (built once per
potential by :func:`kernel_layout` from :class:`ace_uq_calc.model.basis.ACEBasis`; see that
module for the index conventions) plus a CSR neighbour list. Units: Angstrom, eV, eV/Angstrom.

Per atom i the kernel
1. groups the neighbours by species and evaluates, for every neighbour, one row of the radial table of
   the bond (g_k, R_nl, phi_core and, with forces, their r-derivatives; rows are stored
   coefficient-major so that the columns are interpolated by contiguous loops) into
   structure-of-arrays storage ``[column, neighbour]``, and the Legendre factors Q_l^m(z), the powers
   (x + iy)^m and the spherical harmonics in real arithmetic (real and imaginary parts apart);
2. accumulates A1 (rank 1) and the half A-basis (m >= 0) as dot products over the neighbours of each
   species (vectorised by LLVM), and rho_core;
3. forms the products of the B-functions over a prefix tree ("trie") of the A-factors: every
   m-combination is a product of A's with its factors sorted, combinations (of all functions of the
   element) sharing a sorted prefix share the partial product, so each tree node costs one complex
   multiplication (2 633 nodes instead of 7 419 factor products for Cu_fs500); then B_f (the linear
   projections), the densities rho_p and the atomic energy;
4. (forces) runs one reverse pass over the tree (two complex multiplications per node) giving dE/dA,
   folds it onto m >= 0 and contracts it, vectorised over the neighbours, with the radial values and
   derivatives and with the harmonics' gradients (formed from Q_l^m, Q_l^{m+1} and (x + iy)^m, not
   stored) into the pair gradient f_ij = dE_i/dr_ij, written to the pair's own slot (no races).

Loops meant to be vectorised run from index 0 over 1-d slices: Numba's handling of possibly
negative indices otherwise keeps LLVM from vectorising them. ``fastmath`` is limited to FMA
contraction (no reassociation, NaN/inf semantics kept). Rounding differs from a straightforward
evaluation order by a few ulp; results agree with pacemaker's to the 1e-10 level of the tests.

Threads: ``prange`` over contiguous chunks of atoms; every chunk allocates its scratch arrays once
and reuses them for all its atoms. Each atom is computed the same way whatever the chunking, so
results do not depend on the number of threads.
"""
from __future__ import annotations

import math
from collections import namedtuple
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .embedding import embedding_value
from .radial import quintic_switch_scalar


# ----------------------------------------------------------------------------------------------
# Kernel layout (numpy, once per potential)
# ----------------------------------------------------------------------------------------------


class KernelLayout(NamedTuple):
    """Arrays derived from an ACEBasis for :func:`evaluate_atoms` (C-contiguous float64 / int64; the
    tree, contribution and rank-1 index arrays are uint64, which spares Numba's negative-index test
    on every access in the product stage).

    table           (S*S, rows, 4, ncol) radial table, coefficient-major per row
    lm_l, lm_m      (nlm,) l and m of stored harmonic index lm = l (l + 1) / 2 + m
    harmonic_norm   (nlm,) pacemaker normalisation incl. (-1)^m (see kernels.harmonics)
    rec_a, rec_b    (nlm,) Legendre recursion Q_l^m = rec_a z Q_{l-1}^m - rec_b Q_{l-2}^m (l >= m + 2)
    diag            (lmax + 2,) Q_m^m = (2m - 1)!!
    node_start      (S+1,) product-tree nodes of element e: node_start[e]:node_start[e+1]; local
                    node 0 is the root (value 1), then the nodes level by level (depth = number of
                    factors), within a level ordered by (rank among siblings, parent), so that
                    consecutive nodes rarely share a parent (no store-to-load chains in the reverse pass)
    node_parent     (nodes,) parent node, local to the element (root: 0)
    node_factor     (nodes,) flat index of the A factor (full basis, see basis module; root: 0)
    function_contrib (F+1,) contributions of function g: function_contrib[g]:function_contrib[g+1]
    contrib_node    (C,) local node whose product contributes, ordered by function
    contrib_coef    (C,) generalized CG coefficient (B_f += coef * Re(product))
    ncontrib_start  (S+1,) the same contributions ordered by node, per element:
    ncontrib_node, ncontrib_func, ncontrib_coef (C,) local node, local function, coefficient
    factor_ptr      (S, n_full + 1) nodes with factor k: factor_nodes[factor_ptr[e, k]:factor_ptr[e, k+1]]
    factor_nodes    (nodes,) local node indices (offset by node_start[e] in the global array)
    rank1_start     (S+1,) rank-1 functions of element e
    rank1_func      (R,) local function index
    rank1_index     (R,) flat A1 index
    """

    table: np.ndarray
    lm_l: np.ndarray
    lm_m: np.ndarray
    harmonic_norm: np.ndarray
    rec_a: np.ndarray
    rec_b: np.ndarray
    diag: np.ndarray
    node_start: np.ndarray
    node_parent: np.ndarray
    node_factor: np.ndarray
    function_contrib: np.ndarray
    contrib_node: np.ndarray
    contrib_coef: np.ndarray
    ncontrib_start: np.ndarray
    ncontrib_node: np.ndarray
    ncontrib_func: np.ndarray
    ncontrib_coef: np.ndarray
    factor_ptr: np.ndarray
    factor_nodes: np.ndarray
    rank1_start: np.ndarray
    rank1_func: np.ndarray
    rank1_index: np.ndarray
    max_nodes: int


def kernel_layout(basis) -> KernelLayout:
    """Build the :class:`KernelLayout` of an ACEBasis (a few milliseconds; cached by the caller)."""
    lmax = basis.lmax
    nlm = (lmax + 1) * (lmax + 2) // 2
    lm_l = np.empty(nlm, dtype=np.int64)
    lm_m = np.empty(nlm, dtype=np.int64)
    rec_a = np.zeros(nlm)
    rec_b = np.zeros(nlm)
    for l in range(lmax + 1):
        for m in range(l + 1):
            lm = l * (l + 1) // 2 + m
            lm_l[lm], lm_m[lm] = l, m
            if l >= m + 2:
                rec_a[lm] = (2 * l - 1) / (l - m)
                rec_b[lm] = (l + m - 1) / (l - m)
    diag = np.ones(lmax + 2)
    for m in range(1, lmax + 2):
        diag[m] = diag[m - 1] * (2 * m - 1)
    table = np.ascontiguousarray(np.transpose(basis.radial_tables, (0, 1, 3, 2)))

    n_el = basis.n_elements
    n_full = basis.n_a_full
    node_start, node_parent, node_factor = [0], [], []
    function_contrib, contrib_node, contrib_coef = [0], [], []
    ncontrib_start, ncontrib_node, ncontrib_func, ncontrib_coef = [0], [], [], []
    factor_ptr = np.zeros((n_el, n_full + 1), dtype=np.int64)
    factor_nodes = []
    rank1_start, rank1_func, rank1_index = [0], [], []
    max_nodes = 0
    for e in range(n_el):
        f0, f1 = int(basis.function_start[e]), int(basis.function_start[e + 1])
        combos = []         # (sorted factor tuple, local function, coefficient), in function order
        for g in range(f0, f1):
            rank = int(basis.function_rank[g])
            if rank == 1:
                rank1_func.append(g - f0)
                rank1_index.append(int(basis.function_a1_index[g]))
            else:
                for s in range(int(basis.function_ms_start[g]), int(basis.function_ms_start[g + 1])):
                    combos.append((tuple(sorted(int(v) for v in basis.ms_factor[s, :rank])), g - f0,
                                   float(basis.ms_coefficient[s])))
        keys = {key[:d] for key, _, _ in combos for d in range(1, len(key) + 1)}
        local = {(): 0}
        order = [()]
        depth = 1
        while True:
            level = sorted(k for k in keys if len(k) == depth)
            if not level:
                break
            sibling = {}
            ranked = []
            for key in level:                       # sorted: siblings are consecutive here
                par = local[key[:-1]]
                rank_ = sibling.get(par, 0)
                sibling[par] = rank_ + 1
                ranked.append((rank_, par, key))
            for _, _, key in sorted(ranked):
                local[key] = len(order)
                order.append(key)
            depth += 1
        for key in order:
            node_parent.append(local[key[:-1]] if key else 0)
            node_factor.append(key[-1] if key else 0)
        for key, f, coef in combos:                 # function order
            contrib_node.append(local[key])
            contrib_coef.append(coef)
        counts = np.bincount([f for _, f, _ in combos], minlength=f1 - f0) if combos else np.zeros(f1 - f0, int)
        function_contrib.extend((function_contrib[-1] + np.cumsum(counts)).tolist())
        for key, f, coef in sorted(combos, key=lambda c: (local[c[0]], c[1])):
            ncontrib_node.append(local[key])
            ncontrib_func.append(f)
            ncontrib_coef.append(coef)
        ncontrib_start.append(len(ncontrib_node))
        by_factor = sorted(range(1, len(order)), key=lambda n: (order[n][-1], n))
        factor_nodes.extend(by_factor)
        fcount = np.bincount([order[n][-1] for n in by_factor], minlength=n_full) if by_factor else np.zeros(n_full, int)
        factor_ptr[e, 1:] = len(factor_nodes) - len(by_factor) + np.cumsum(fcount)
        factor_ptr[e, 0] = len(factor_nodes) - len(by_factor)
        node_start.append(len(node_parent))
        rank1_start.append(len(rank1_func))
        max_nodes = max(max_nodes, len(order))

    def i64(x):
        return np.ascontiguousarray(np.asarray(x, dtype=np.int64))

    def u64(x):     # indices that are never negative: no wrap-around test on every array access
        return np.ascontiguousarray(np.asarray(x, dtype=np.uint64))

    return KernelLayout(
        table=table, lm_l=lm_l, lm_m=lm_m,
        harmonic_norm=np.ascontiguousarray(basis.harmonic_norm, dtype=np.float64),
        rec_a=rec_a, rec_b=rec_b, diag=diag,
        node_start=i64(node_start), node_parent=u64(node_parent), node_factor=u64(node_factor),
        function_contrib=u64(function_contrib), contrib_node=u64(contrib_node),
        contrib_coef=np.ascontiguousarray(np.asarray(contrib_coef, dtype=np.float64)),
        ncontrib_start=u64(ncontrib_start), ncontrib_node=u64(ncontrib_node), ncontrib_func=u64(ncontrib_func),
        ncontrib_coef=np.ascontiguousarray(np.asarray(ncontrib_coef, dtype=np.float64)),
        factor_ptr=u64(factor_ptr), factor_nodes=u64(factor_nodes),
        rank1_start=u64(rank1_start), rank1_func=u64(rank1_func), rank1_index=u64(rank1_index),
        max_nodes=max_nodes,
    )


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

# FMA contraction only (a * b + c in one rounding): no reassociation, no assumptions about NaN/inf,
# so results stay deterministic and non-finite values still propagate to the checks of the caller.
_FAST = {"contract"}


# Loops meant to be vectorised run over whole 1-d arrays (slices) from index 0: with an index that
# could be negative, Numba's wrap-around handling of negative indices keeps LLVM from vectorising.


@njit(cache=True, inline="always", fastmath=_FAST)
def _dot(a, b):
    """sum_q a[q] b[q] with eight independent partial sums (vectorised by LLVM)."""
    n = a.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
    s5 = 0.0
    s6 = 0.0
    s7 = 0.0
    for k in range(n // 8):
        q = 8 * k
        s0 += a[q] * b[q]
        s1 += a[q + 1] * b[q + 1]
        s2 += a[q + 2] * b[q + 2]
        s3 += a[q + 3] * b[q + 3]
        s4 += a[q + 4] * b[q + 4]
        s5 += a[q + 5] * b[q + 5]
        s6 += a[q + 6] * b[q + 6]
        s7 += a[q + 7] * b[q + 7]
    for q in range(8 * (n // 8), n):
        s0 += a[q] * b[q]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True, inline="always", fastmath=_FAST)
def _sum(a):
    n = a.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for k in range(n // 4):
        q = 4 * k
        s0 += a[q]
        s1 += a[q + 1]
        s2 += a[q + 2]
        s3 += a[q + 3]
    for q in range(4 * (n // 4), n):
        s0 += a[q]
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, inline="always", fastmath=_FAST)
def _axpy(y, a, x):
    """y += a x (1-d arrays of equal length)."""
    for k in range(y.shape[0]):
        y[k] += a * x[k]


# ----------------------------------------------------------------------------------------------
# Per-chunk scratch arrays of the atom kernel
# ----------------------------------------------------------------------------------------------

#: the scratch arrays of :func:`_evaluate_atom` (allocated once per chunk of atoms by :func:`atom_scratch`)
AtomScratch = namedtuple("AtomScratch", (
    "perm seg ux uy uz inv_r rv rd q_leg p_re p_im y_re y_im t_re t_im u_re u_im gx gy gz grad_r "
    "a1 a_re a_im af_re af_im v_re v_im b_values rho dfsum de_db w1 wf_re wf_im wh_re wh_im"))


@njit(cache=True)
def atom_scratch(mx, mf, n_elements, ncol, lmax, n_a1, n_half, n_full, max_nodes, max_nf, max_nd):
    """Scratch arrays for atoms with at most ``mx`` neighbours; the force-pass arrays (radial
    derivatives, contraction) get ``mf`` neighbour columns (1 when forces are not computed)."""
    nlm = (lmax + 1) * (lmax + 2) // 2
    return AtomScratch(
        np.empty(mx, dtype=np.int64), np.empty(n_elements + 1, dtype=np.int64),
        np.empty(mx), np.empty(mx), np.empty(mx), np.empty(mx),
        np.empty((ncol, mx)), np.empty((ncol, mf)), np.empty((nlm, mx)),
        np.empty((lmax + 1, mx)), np.empty((lmax + 1, mx)), np.empty((nlm, mx)), np.empty((nlm, mx)),
        np.empty((nlm, mf)), np.empty((nlm, mf)), np.empty((nlm, mf)), np.empty((nlm, mf)),
        np.empty(mf), np.empty(mf), np.empty(mf), np.empty(mf),
        np.empty(n_a1), np.empty(n_half), np.empty(n_half), np.empty(n_full), np.empty(n_full),
        np.empty(3 * max_nodes + 1), np.empty(3 * max_nodes + 1), np.empty(max_nf + 1),
        np.empty(max_nd), np.empty(max_nd), np.empty(max_nf + 1),
        np.empty(n_a1), np.empty(n_full), np.empty(n_full), np.empty(n_half), np.empty(n_half),
    )


# ----------------------------------------------------------------------------------------------
# One atom
# ----------------------------------------------------------------------------------------------


@njit(cache=True, fastmath=_FAST)
def _evaluate_atom(
    i, species, first, neighbour, vector, distance,
    table, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
    nradbase, nradmax, lmax, lm_l, lm_m, harmonic_norm, rec_a, rec_b, diag,
    function_start, coefficients, node_start, node_parent, node_factor,
    function_contrib, contrib_node, contrib_coef, ncontrib_start, ncontrib_node, ncontrib_func,
    ncontrib_coef, factor_ptr, factor_nodes,
    rank1_start, rank1_func, rank1_index,
    ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
    compute_forces, compute_projections, compute_nonlinear,
    energies, pair_gradient, projections, nonlinear_projections, densities, dF_drho,
    scratch,
):
    """Atom i. ``scratch``: an :data:`AtomScratch` from :func:`atom_scratch`. Neighbour quantities are
    stored structure-of-arrays, ``[component, neighbour]``, with the neighbours grouped by species
    (``perm`` maps the grouped order to the CSR order, species ``e`` owns ``seg[e]:seg[e + 1]``), so
    that the loops over neighbours are contiguous."""
    (perm, seg, ux, uy, uz, inv_r, rv, rd, q_leg, p_re, p_im, y_re, y_im, t_re, t_im, u_re, u_im, gx, gy, gz,
     grad_r, a1, a_re, a_im, af_re, af_im, v_re, v_im, b_values, rho, dfsum, de_db, w1, wf_re, wf_im, wh_re,
     wh_im) = scratch
    n_elements = ndensity.shape[0]
    nlm = (lmax + 1) * (lmax + 2) // 2
    lm_full = (lmax + 1) * (lmax + 1)
    lp1 = lmax + 1
    ncol = table.shape[3]
    col_core = ncol - 1
    max_nd = coefficients.shape[1]

    ei = species[i]
    start = first[i]
    nn = first[i + 1] - start

    # ---------------- group neighbours by species (counting sort, stable)
    for e in range(n_elements + 1):
        seg[e] = 0
    for qn in range(nn):
        seg[species[neighbour[start + qn]] + 1] += 1
    for e in range(n_elements):
        seg[e + 1] += seg[e]
    for qn in range(nn):
        e = species[neighbour[start + qn]]
        perm[seg[e]] = qn
        seg[e] += 1
    for e in range(n_elements, 0, -1):
        seg[e] = seg[e - 1]
    seg[0] = 0

    # ---------------- radial rows (table columns -> rv[c, q]) and unit vectors
    rho_core = 0.0
    zbl_selected = -1
    zbl_best = cutoff_max
    for qs in range(nn):
        p = start + perm[qs]
        ej = species[neighbour[p]]
        bond = ei * n_elements + ej
        r = distance[p]
        ir = 1.0 / r
        inv_r[qs] = ir
        ux[qs] = vector[p, 0] * ir
        uy[qs] = vector[p, 1] * ir
        uz[qs] = vector[p, 2] * ir
        x = r * radial_scale[bond]
        if x < radial_nlut[bond]:
            j = int(math.floor(x))
            if j < 1:
                j = 1
            w = x - j
            row = table[bond, j]
            if compute_forces:
                sc = radial_scale[bond]
                for c in range(ncol):
                    c1 = row[1, c]
                    c2 = row[2, c]
                    c3 = row[3, c]
                    rv[c, qs] = row[0, c] + w * (c1 + w * (c2 + w * c3))
                    rd[c, qs] = (c1 + w * (2.0 * c2 + 3.0 * w * c3)) * sc
            else:
                for c in range(ncol):
                    rv[c, qs] = row[0, c] + w * (row[1, c] + w * (row[2, c] + w * row[3, c]))
        else:                     # beyond the table (or NaN): all zero
            for c in range(ncol):
                rv[c, qs] = 0.0
            if compute_forces:
                for c in range(ncol):
                    rd[c, qs] = 0.0
        if zbl:
            d = r - (bond_r_in[bond] - bond_delta_in[bond])
            if d < zbl_best:
                zbl_best = d
                zbl_selected = qs
    rho_core = _sum(rv[col_core, :nn])

    # ---------------- Q_l^m(z) = d^m P_l/dz^m, (x + iy)^m and Y_lm = N_lm Q_l^m (x + iy)^m
    for m in range(lp1):
        mm = m * (m + 1) // 2 + m
        dm = diag[m]
        qr = q_leg[mm]
        for qs in range(nn):
            qr[qs] = dm
        if m + 1 <= lmax:
            qr1 = q_leg[mm + m + 1]
            f = (2 * m + 1) * dm
            for qs in range(nn):
                qr1[qs] = f * uz[qs]
        for l in range(m + 2, lp1):
            lm = l * (l + 1) // 2 + m
            ca = rec_a[lm]
            cb = rec_b[lm]
            qa = q_leg[lm - l]
            qb = q_leg[lm - l - l + 1]
            qo = q_leg[lm]
            for qs in range(nn):
                qo[qs] = ca * uz[qs] * qa[qs] - cb * qb[qs]
    pr0 = p_re[0]
    pi0 = p_im[0]
    for qs in range(nn):
        pr0[qs] = 1.0
        pi0[qs] = 0.0
    for m in range(1, lp1):
        prp = p_re[m - 1]
        pip = p_im[m - 1]
        prm = p_re[m]
        pim = p_im[m]
        for qs in range(nn):
            prm[qs] = prp[qs] * ux[qs] - pip[qs] * uy[qs]
            pim[qs] = prp[qs] * uy[qs] + pip[qs] * ux[qs]
    for lm in range(nlm):
        m = lm_m[lm]
        c = harmonic_norm[lm]
        qo = q_leg[lm]
        yr = y_re[lm]
        yi = y_im[lm]
        prm = p_re[m]
        pim = p_im[m]
        for qs in range(nn):
            cq = c * qo[qs]
            yr[qs] = cq * prm[qs]
            yi[qs] = cq * pim[qs]

    # ---------------- A1 and the half A-basis: sums over the neighbours of each species
    for nu in range(n_elements):
        lo = seg[nu]
        hi = seg[nu + 1]
        for k in range(nradbase):
            a1[nu * nradbase + k] = _sum(rv[k, lo:hi])
        for n in range(nradmax):
            base = (nu * nradmax + n) * nlm
            cb = nradbase + n * lp1
            for lm in range(nlm):
                rcol = rv[cb + lm_l[lm], lo:hi]
                a_re[base + lm] = _dot(rcol, y_re[lm, lo:hi])
                a_im[base + lm] = _dot(rcol, y_im[lm, lo:hi])

    # ---------------- full A (all m) from the half basis: A_{l,-m} = (-1)^m conj(A_lm)
    for nu in range(n_elements):
        for n in range(nradmax):
            hb = (nu * nradmax + n) * nlm
            fb = (nu * nradmax + n) * lm_full
            for lm in range(nlm):
                l = lm_l[lm]
                m = lm_m[lm]
                vr = a_re[hb + lm]
                vi = a_im[hb + lm]
                af_re[fb + l * l + l + m] = vr
                af_im[fb + l * l + l + m] = vi
                if m > 0:
                    if m % 2 == 1:
                        af_re[fb + l * l + l - m] = -vr
                        af_im[fb + l * l + l - m] = vi
                    else:
                        af_re[fb + l * l + l - m] = vr
                        af_im[fb + l * l + l - m] = -vi

    # ---------------- products over the tree, B functions, densities, energy
    f0 = function_start[ei]
    nf = function_start[ei + 1] - f0
    nd = ndensity[ei]
    n0 = node_start[ei]
    nodes = node_start[ei + 1] - n0
    v_re[0] = 1.0
    v_im[0] = 0.0
    for node in range(1, nodes):
        k = node_factor[n0 + node]
        par = node_parent[n0 + node]
        pr = v_re[par]
        pi = v_im[par]
        ar = af_re[k]
        ai = af_im[k]
        v_re[node] = pr * ar - pi * ai
        v_im[node] = pr * ai + pi * ar
    for f in range(nf):
        acc = 0.0
        for s in range(function_contrib[f0 + f], function_contrib[f0 + f + 1]):
            acc += contrib_coef[s] * v_re[contrib_node[s]]
        b_values[f] = acc
    for s in range(rank1_start[ei], rank1_start[ei + 1]):
        b_values[rank1_func[s]] = a1[rank1_index[s]]
    for pd in range(max_nd):
        rho[pd] = 0.0
        dfsum[pd] = 0.0
    for f in range(nf):
        b = b_values[f]
        for pd in range(nd):
            rho[pd] += coefficients[f0 + f, pd] * b
    fsum = 0.0
    for pd in range(nd):
        fv, fd = embedding_value(rho[pd], embedding_exponent[ei, pd], embedding_kind[ei])
        fsum += embedding_weight[ei, pd] * fv
        dfsum[pd] = embedding_weight[ei, pd] * fd

    if zbl:
        weight = 1.0
        dweight_dr = 0.0
        if zbl_selected >= 0:
            ps = start + perm[zbl_selected]
            bs = ei * n_elements + species[neighbour[ps]]
            sv, sd = quintic_switch_scalar(distance[ps], bond_r_in[bs], bond_delta_in[bs])
            weight = 1.0 - sv
            dweight_dr = -sd
        energies[i] = weight * fsum + (1.0 - weight) * rho_core
        core_factor = 1.0 - weight
    else:
        weight, dweight_drho = quintic_switch_scalar(rho_core, rho_core_cut[ei], drho_core_cut[ei])
        energies[i] = weight * fsum + rho_core
        core_factor = fsum * dweight_drho + 1.0
        dweight_dr = 0.0

    for pd in range(nd):
        densities[i, pd] = rho[pd]
        dF_drho[i, pd] = dfsum[pd] * weight
    if compute_projections:
        for f in range(nf):
            projections[i, f] = b_values[f]
    if compute_nonlinear:
        for pd in range(nd):
            for f in range(nf):
                nonlinear_projections[i, pd * nf + f] = dfsum[pd] * b_values[f]

    if not compute_forces:
        return

    # ---------------- reverse pass: dE/dB, then adjoints over the tree
    for f in range(nf):
        de = 0.0
        for pd in range(nd):
            de += coefficients[f0 + f, pd] * dfsum[pd]
        de_db[f] = de * weight
    n_a1 = n_elements * nradbase
    for k in range(n_a1):
        w1[k] = 0.0
    n_full = n_elements * nradmax * lm_full
    for s in range(rank1_start[ei], rank1_start[ei + 1]):
        w1[rank1_index[s]] += de_db[rank1_func[s]]
    # node adjoints (second block of the node scratch; the values are still needed), pushed from the
    # leaves towards the root level by level: adj(parent) += adj(node) A_factor(node); the factor
    # gets adj(node) value(parent) (third block), summed per factor afterwards.
    for node in range(nodes):
        v_re[nodes + node] = 0.0
        v_im[nodes + node] = 0.0
    for s in range(ncontrib_start[ei], ncontrib_start[ei + 1]):
        v_re[nodes + ncontrib_node[s]] += de_db[ncontrib_func[s]] * ncontrib_coef[s]
    w2 = 2 * nodes
    for node in range(nodes - 1, 0, -1):
        k = node_factor[n0 + node]
        par = node_parent[n0 + node]
        jr = v_re[nodes + node]
        ji = v_im[nodes + node]
        pr = v_re[par]
        pi = v_im[par]
        v_re[w2 + node] = jr * pr - ji * pi
        v_im[w2 + node] = jr * pi + ji * pr
        ar = af_re[k]
        ai = af_im[k]
        v_re[nodes + par] += jr * ar - ji * ai
        v_im[nodes + par] += jr * ai + ji * ar
    for k in range(n_full):
        sr = 0.0
        si = 0.0
        for s in range(factor_ptr[ei, k], factor_ptr[ei, k + 1]):
            node = factor_nodes[s]
            sr += v_re[w2 + node]
            si += v_im[w2 + node]
        wf_re[k] = sr
        wf_im[k] = si
    # fold negative m onto m >= 0 (A_{l,-m} = (-1)^m conj(A_lm)), times the harmonic normalisation
    for nu in range(n_elements):
        for n in range(nradmax):
            hb = (nu * nradmax + n) * nlm
            fb = (nu * nradmax + n) * lm_full
            for lm in range(nlm):
                l = lm_l[lm]
                m = lm_m[lm]
                wr = wf_re[fb + l * l + l + m]
                wi = wf_im[fb + l * l + l + m]
                if m > 0:
                    nr_ = wf_re[fb + l * l + l - m]
                    ni_ = wf_im[fb + l * l + l - m]
                    if m % 2 == 1:
                        wr -= nr_
                        wi += ni_
                    else:
                        wr += nr_
                        wi -= ni_
                c = harmonic_norm[lm]
                wh_re[hb + lm] = wr * c
                wh_im[hb + lm] = wi * c

    # ---------------- pair gradients, vectorised over the neighbours of each species
    for nu in range(n_elements):
        lo = seg[nu]
        hi = seg[nu + 1]
        cnt = hi - lo
        # radial derivative part: A1, core term
        gr = grad_r[lo:hi]
        rc = rd[col_core, lo:hi]
        for k in range(cnt):
            gr[k] = core_factor * rc[k]
        for k in range(nradbase):
            wk = w1[nu * nradbase + k]
            if wk != 0.0:
                _axpy(gr, wk, rd[k, lo:hi])
        # t_lm = sum_n w_nlm R_nl, u_lm = sum_n w_nlm R'_nl (per neighbour)
        for lm in range(nlm):
            tr = t_re[lm, lo:hi]
            ti = t_im[lm, lo:hi]
            ur = u_re[lm, lo:hi]
            ui = u_im[lm, lo:hi]
            for k in range(cnt):
                tr[k] = 0.0
                ti[k] = 0.0
                ur[k] = 0.0
                ui[k] = 0.0
            for n in range(nradmax):
                h = (nu * nradmax + n) * nlm + lm
                wr = wh_re[h]
                wi = wh_im[h]
                col = nradbase + n * lp1 + lm_l[lm]
                rvc = rv[col, lo:hi]
                rdc = rd[col, lo:hi]
                for k in range(cnt):
                    tr[k] += wr * rvc[k]
                    ti[k] += wi * rvc[k]
                    ur[k] += wr * rdc[k]
                    ui[k] += wi * rdc[k]
        sx = gx[lo:hi]
        sy = gy[lo:hi]
        sz = gz[lo:hi]
        for k in range(cnt):
            sx[k] = 0.0
            sy[k] = 0.0
            sz[k] = 0.0
        # Y = N Q P_m (N folded into t, u); grad_u Y: x: N Q m P_{m-1}, y: i times x, z: N Q_l^{m+1} P_m
        for lm in range(nlm):
            l = lm_l[lm]
            m = lm_m[lm]
            ql = q_leg[lm, lo:hi]
            tr = t_re[lm, lo:hi]
            ti = t_im[lm, lo:hi]
            ur = u_re[lm, lo:hi]
            ui = u_im[lm, lo:hi]
            prm = p_re[m, lo:hi]
            pim = p_im[m, lo:hi]
            for k in range(cnt):
                gr[k] += ql[k] * (ur[k] * prm[k] - ui[k] * pim[k])
            if m < l:
                qz = q_leg[lm + 1, lo:hi]
                for k in range(cnt):
                    sz[k] += qz[k] * (tr[k] * prm[k] - ti[k] * pim[k])
            if m > 0:
                prp = p_re[m - 1, lo:hi]
                pip = p_im[m - 1, lo:hi]
                for k in range(cnt):
                    mq = m * ql[k]
                    sx[k] += mq * (tr[k] * prp[k] - ti[k] * pip[k])
                    sy[k] -= mq * (tr[k] * pip[k] + ti[k] * prp[k])
    if zbl and zbl_selected >= 0:
        grad_r[zbl_selected] += (fsum - rho_core) * dweight_dr
    # project out the radial component of grad_u, divide by r, add the radial part
    for qs in range(nn):
        p = start + perm[qs]
        x = ux[qs]
        y = uy[qs]
        z = uz[qs]
        ug = x * gx[qs] + y * gy[qs] + z * gz[qs]
        ir = inv_r[qs]
        g = grad_r[qs]
        pair_gradient[p, 0] = (gx[qs] - x * ug) * ir + g * x
        pair_gradient[p, 1] = (gy[qs] - y * ug) * ir + g * y
        pair_gradient[p, 2] = (gz[qs] - z * ug) * ir + g * z


@njit(cache=True, parallel=True)
def evaluate_atoms(
    species, first, neighbour, vector, distance,
    table, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
    nradbase, nradmax, lmax, lm_l, lm_m, harmonic_norm, rec_a, rec_b, diag,
    function_start, coefficients, node_start, node_parent, node_factor,
    function_contrib, contrib_node, contrib_coef, ncontrib_start, ncontrib_node, ncontrib_func,
    ncontrib_coef, factor_ptr, factor_nodes,
    rank1_start, rank1_func, rank1_index,
    max_nodes,
    ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
    compute_forces, compute_projections, compute_nonlinear, n_chunks,
    energies, pair_gradient, projections, nonlinear_projections, densities, dF_drho,
):
    """Evaluate every atom. Outputs (preallocated, written per atom):

    energies (N,) eV; pair_gradient (P, 3) eV/A = dE_i/dr_ij per neighbour entry (if compute_forces);
    projections (N, max nfunc) linear B-projections (if compute_projections);
    nonlinear_projections (N, max nfunc * max ndensity) w_p F'(rho_p) B_f, density-major (if compute_nonlinear);
    densities (N, max ndensity) rho_p; dF_drho (N, max ndensity) w_p F'(rho_p) * (f_cut or ZBL weight).

    The atoms are split into ``n_chunks`` contiguous chunks (run in parallel); scratch arrays are
    allocated once per chunk.
    """
    n_atoms = species.shape[0]
    n_elements = ndensity.shape[0]
    nlm = (lmax + 1) * (lmax + 2) // 2
    lm_full = (lmax + 1) * (lmax + 1)
    ncol = table.shape[3]
    n_a1 = n_elements * nradbase
    n_half = n_elements * nradmax * nlm
    n_full = n_elements * nradmax * lm_full
    max_nd = coefficients.shape[1]
    max_nf = 0
    for e in range(n_elements):
        max_nf = max(max_nf, function_start[e + 1] - function_start[e])
    if n_chunks < 1:
        n_chunks = 1
    for chunk_u in prange(n_chunks):
        chunk = np.int64(chunk_u)
        lo = (chunk * n_atoms) // n_chunks
        hi = ((chunk + 1) * n_atoms) // n_chunks
        mx = 1
        for i in range(lo, hi):
            mx = max(mx, first[i + 1] - first[i])
        scratch = atom_scratch(mx, mx if compute_forces else 1, n_elements, ncol, lmax, n_a1, n_half, n_full,
                               max_nodes, max_nf, max_nd)
        for i in range(lo, hi):
            _evaluate_atom(
                i, species, first, neighbour, vector, distance,
                table, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
                nradbase, nradmax, lmax, lm_l, lm_m, harmonic_norm, rec_a, rec_b, diag,
                function_start, coefficients, node_start, node_parent, node_factor,
                function_contrib, contrib_node, contrib_coef, ncontrib_start, ncontrib_node, ncontrib_func,
                ncontrib_coef, factor_ptr, factor_nodes,
                rank1_start, rank1_func, rank1_index,
                ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
                compute_forces, compute_projections, compute_nonlinear,
                energies, pair_gradient, projections, nonlinear_projections, densities, dF_drho,
                scratch,
            )


@njit(cache=True)
def accumulate_forces(first, neighbour, vector, pair_gradient, forces, virial):
    """forces[i] += f_ij, forces[j] -= f_ij; virial[a, b] += (r_ij)_a (f_ij)_b  (eV/A, eV)."""
    n_atoms = first.shape[0] - 1
    for a in range(3):
        for b in range(3):
            virial[a, b] = 0.0
    for i in range(n_atoms):
        forces[i, 0] = 0.0
        forces[i, 1] = 0.0
        forces[i, 2] = 0.0
    v00 = v01 = v02 = v10 = v11 = v12 = v20 = v21 = v22 = 0.0
    for i in range(n_atoms):
        fx = 0.0
        fy = 0.0
        fz = 0.0
        for p in range(first[i], first[i + 1]):
            j = neighbour[p]
            gx = pair_gradient[p, 0]
            gy = pair_gradient[p, 1]
            gz = pair_gradient[p, 2]
            fx += gx
            fy += gy
            fz += gz
            forces[j, 0] -= gx
            forces[j, 1] -= gy
            forces[j, 2] -= gz
            rx = vector[p, 0]
            ry = vector[p, 1]
            rz = vector[p, 2]
            v00 += rx * gx
            v01 += rx * gy
            v02 += rx * gz
            v10 += ry * gx
            v11 += ry * gy
            v12 += ry * gz
            v20 += rz * gx
            v21 += rz * gy
            v22 += rz * gz
        forces[i, 0] += fx
        forces[i, 1] += fy
        forces[i, 2] += fz
    virial[0, 0] = v00
    virial[0, 1] = v01
    virial[0, 2] = v02
    virial[1, 0] = v10
    virial[1, 1] = v11
    virial[1, 2] = v12
    virial[2, 0] = v20
    virial[2, 1] = v21
    virial[2, 2] = v22
