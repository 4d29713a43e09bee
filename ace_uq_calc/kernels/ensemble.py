"""Numba kernel of an ensemble of K ACE potentials that share one basis (only the coefficients differ).

Units: Angstrom, eV, eV/Angstrom. Everything up to the B-functions (radial table, harmonics, A-basis,
products over the prefix tree of A-factors) depends only on the basis, so per atom it is computed
once, by the single-model kernel itself (:func:`ace_uq_calc.kernels.evaluator._evaluate_atom` without
forces, which leaves the neighbour grouping, radial rows, harmonics, A, the tree values and the B
values in its scratch arrays). Then, per atom:

1. the radial derivatives of the neighbours' table rows (the forward call computes values only);
2. per member k the densities rho_p^k = sum_f c^k_{f,p} B_f, the atomic energy and the scale
   s_p^k = w F'(rho_p^k) (w: core cut-off or ZBL weight, shared), so that dE_k/dB_f = sum_p c^k_{f,p} s_p^k;
3. one K-wide reverse pass over the tree (member index innermost and contiguous, so LLVM vectorises
   every member loop). A node's seed sum_f coef * dE_k/dB_f is sum_p s_p^k node_seed[node, p, k], with
   ``node_seed`` summed over the node's contributions once per ensemble (:func:`ensemble_tree`); leaves
   (about two thirds of the nodes) have real adjoints and no accumulator; inner nodes gather their
   children's adjoints in a compact accumulator. Then folded onto m >= 0;
4. the contraction with the neighbour derivatives (radial values and derivatives, Legendre factors,
   (x + iy)^m: computed once), member by member and vectorised over the neighbours like the
   single-model kernel, two radial indices per sweep (faster than a member-innermost loop per
   neighbour, which was tried); writes ``pair_gradient[k, p, :] = dE_i^k / dr_ij`` (member-major: each
   member's rows of an atom are contiguous).

:func:`accumulate_ensemble_forces` sums the pair gradients into forces (K, N, 3) and virials (K, 3, 3).
Each member's result equals a single-model evaluation of that member up to the order of a few sums
(relative differences ~1e-15).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .embedding import embedding_value
from .evaluator import _FAST, _evaluate_atom, accumulate_forces, atom_scratch
from .radial import quintic_switch_scalar


@njit(cache=True, fastmath=_FAST)
def _ensemble_reverse_atom(
    i, species, first, neighbour, distance,
    table, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
    nradbase, nradmax, lmax, lm_l, lm_m, harmonic_norm,
    function_start, member_coefficients, node_start, node_parent, node_factor,
    node_seed, node_slot, parent_slot, slot_count,
    rank1_start, rank1_func, rank1_index,
    ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
    compute_forces, energies, pair_gradient,
    perm, seg, ux, uy, uz, inv_r, rv, rd, q_leg, p_re, p_im, af_re, af_im, v_re, v_im, b_values,
    rho, dfsum, fsum, core_factor, acc_re, acc_im, jr, wf_re, wf_im, w1, wh_re, wh_im,
    t_re, t_im, u_re, u_im, gx, gy, gz, gr,
):
    """Members' energies and pair gradients of atom i, after the forward call of the single-model kernel
    filled the scratch arrays (see module docstring). ``member_coefficients`` is (F, max ndensity, K)."""
    n_elements = ndensity.shape[0]
    nlm = (lmax + 1) * (lmax + 2) // 2
    lm_full = (lmax + 1) * (lmax + 1)
    lp1 = lmax + 1
    ncol = table.shape[3]
    col_core = ncol - 1
    nmem = member_coefficients.shape[2]

    ei = species[i]
    start = first[i]
    nn = first[i + 1] - start

    # ---------------- shared scalars: rho_core, the ZBL neighbour, the core / ZBL weight
    zbl_selected = -1
    zbl_best = cutoff_max
    if zbl:
        for qs in range(nn):
            p = start + perm[qs]
            bond = ei * n_elements + species[neighbour[p]]
            d = distance[p] - (bond_r_in[bond] - bond_delta_in[bond])
            if d < zbl_best:
                zbl_best = d
                zbl_selected = qs
    # the forward kernel sums rho_core with four partial sums: take its exact value from the same helper
    rho_core = _partial_sum4(rv[col_core, :nn])

    # ---------------- per member: densities, energy, dE/dB
    f0 = function_start[ei]
    nf = function_start[ei + 1] - f0
    nd = ndensity[ei]
    for pd in range(nd):
        for k in range(nmem):
            rho[pd, k] = 0.0
    for f in range(nf):
        b = b_values[f]
        for pd in range(nd):
            for k in range(nmem):
                rho[pd, k] += member_coefficients[f0 + f, pd, k] * b
    for k in range(nmem):
        fsum[k] = 0.0
    for pd in range(nd):
        for k in range(nmem):
            fv, fd = embedding_value(rho[pd, k], embedding_exponent[ei, pd], embedding_kind[ei])
            fsum[k] += embedding_weight[ei, pd] * fv
            dfsum[pd, k] = embedding_weight[ei, pd] * fd
    if zbl:
        weight = 1.0
        dweight_dr = 0.0
        if zbl_selected >= 0:
            ps = start + perm[zbl_selected]
            bs = ei * n_elements + species[neighbour[ps]]
            sv, sd = quintic_switch_scalar(distance[ps], bond_r_in[bs], bond_delta_in[bs])
            weight = 1.0 - sv
            dweight_dr = -sd
        for k in range(nmem):
            energies[k, i] = weight * fsum[k] + (1.0 - weight) * rho_core
            core_factor[k] = 1.0 - weight
    else:
        weight, dweight_drho = quintic_switch_scalar(rho_core, rho_core_cut[ei], drho_core_cut[ei])
        dweight_dr = 0.0
        for k in range(nmem):
            energies[k, i] = weight * fsum[k] + rho_core
            core_factor[k] = fsum[k] * dweight_drho + 1.0
    if not compute_forces:
        return
    # dE_k/dB_f = sum_p c^k_{f,p} scale[p, k] with scale = (core / ZBL weight) * w_p F'(rho_p^k)
    for pd in range(nd):
        for k in range(nmem):
            dfsum[pd, k] = dfsum[pd, k] * weight

    # ---------------- radial derivatives of the neighbours' rows (values are in rv already)
    for qs in range(nn):
        p = start + perm[qs]
        bond = ei * n_elements + species[neighbour[p]]
        x = distance[p] * radial_scale[bond]
        if x < radial_nlut[bond]:
            j = int(math.floor(x))
            if j < 1:
                j = 1
            w = x - j
            row = table[bond, j]
            sc = radial_scale[bond]
            for c in range(ncol):
                c1 = row[1, c]
                c2 = row[2, c]
                c3 = row[3, c]
                rd[c, qs] = (c1 + w * (2.0 * c2 + 3.0 * w * c3)) * sc
        else:
            for c in range(ncol):
                rd[c, qs] = 0.0

    # ---------------- K-wide reverse pass over the tree, leaves first (level by level, deepest first).
    # A node's seed is sum_p scale[p, k] node_seed[node, p, k] (node_seed = the members' coefficients
    # summed over the node's contributions, precomputed); a leaf's adjoint is its (real) seed, an inner
    # node's adds what its children passed up, gathered in its slot of acc (inner nodes only).
    n0 = node_start[ei]
    nodes = node_start[ei + 1] - n0
    n_a1 = n_elements * nradbase
    n_full = n_elements * nradmax * lm_full
    for a in range(n_full):
        for k in range(nmem):
            wf_re[a, k] = 0.0
            wf_im[a, k] = 0.0
    for a in range(n_a1):
        for k in range(nmem):
            w1[a, k] = 0.0
    for s in range(rank1_start[ei], rank1_start[ei + 1]):
        fn = f0 + rank1_func[s]
        row = rank1_index[s]
        for pd in range(nd):
            for k in range(nmem):
                w1[row, k] += member_coefficients[fn, pd, k] * dfsum[pd, k]
    for q in range(slot_count[ei]):
        for k in range(nmem):
            acc_re[q, k] = 0.0
            acc_im[q, k] = 0.0
    for node in range(nodes - 1, 0, -1):
        g = n0 + node
        for k in range(nmem):
            jr[k] = dfsum[0, k] * node_seed[g, 0, k]
        for pd in range(1, nd):
            for k in range(nmem):
                jr[k] += dfsum[pd, k] * node_seed[g, pd, k]
        fac = node_factor[g]
        par = node_parent[g]
        ps = parent_slot[g]
        pr = v_re[par]
        pi = v_im[par]
        ar = af_re[fac]
        ai = af_im[fac]
        slot = node_slot[g]
        if slot < 0:
            for k in range(nmem):
                x = jr[k]
                wf_re[fac, k] += x * pr
                wf_im[fac, k] += x * pi
                acc_re[ps, k] += x * ar
                acc_im[ps, k] += x * ai
        else:
            for k in range(nmem):
                x = jr[k] + acc_re[slot, k]
                y = acc_im[slot, k]
                wf_re[fac, k] += x * pr - y * pi
                wf_im[fac, k] += x * pi + y * pr
                acc_re[ps, k] += x * ar - y * ai
                acc_im[ps, k] += x * ai + y * ar
    # fold negative m onto m >= 0 (A_{l,-m} = (-1)^m conj(A_lm)), times the harmonic normalisation
    for nu in range(n_elements):
        for n in range(nradmax):
            hb = (nu * nradmax + n) * nlm
            fb = (nu * nradmax + n) * lm_full
            for lm in range(nlm):
                l = lm_l[lm]
                m = lm_m[lm]
                c = harmonic_norm[lm]
                if m > 0:
                    if m % 2 == 1:
                        for k in range(nmem):
                            wh_re[hb + lm, k] = (wf_re[fb + l * l + l + m, k] - wf_re[fb + l * l + l - m, k]) * c
                            wh_im[hb + lm, k] = (wf_im[fb + l * l + l + m, k] + wf_im[fb + l * l + l - m, k]) * c
                    else:
                        for k in range(nmem):
                            wh_re[hb + lm, k] = (wf_re[fb + l * l + l + m, k] + wf_re[fb + l * l + l - m, k]) * c
                            wh_im[hb + lm, k] = (wf_im[fb + l * l + l + m, k] - wf_im[fb + l * l + l - m, k]) * c
                else:
                    for k in range(nmem):
                        wh_re[hb + lm, k] = wf_re[fb + l * l + l + m, k] * c
                        wh_im[hb + lm, k] = wf_im[fb + l * l + l + m, k] * c

    # ---------------- contraction with the neighbour derivatives, member by member, vectorised over
    # the neighbours of each species (the single-model kernel's loops, with member k's adjoints)
    for k in range(nmem):
        for nu in range(n_elements):
            lo = seg[nu]
            hi = seg[nu + 1]
            cnt = hi - lo
            g_r = gr[lo:hi]
            rc = rd[col_core, lo:hi]
            cf = core_factor[k]
            for q in range(cnt):
                g_r[q] = cf * rc[q]
            for kb in range(nradbase):
                wk = w1[nu * nradbase + kb, k]
                if wk != 0.0:
                    rdk = rd[kb, lo:hi]
                    for q in range(cnt):
                        g_r[q] += wk * rdk[q]
            sx = gx[lo:hi]
            sy = gy[lo:hi]
            sz = gz[lo:hi]
            for q in range(cnt):
                sx[q] = 0.0
                sy[q] = 0.0
                sz[q] = 0.0
            for lm in range(nlm):
                l = lm_l[lm]
                m = lm_m[lm]
                tr = t_re[lo:hi]
                ti = t_im[lo:hi]
                ur = u_re[lo:hi]
                ui = u_im[lo:hi]
                for q in range(cnt):
                    tr[q] = 0.0
                    ti[q] = 0.0
                    ur[q] = 0.0
                    ui[q] = 0.0
                # two radial indices per sweep: half the loads and stores of the accumulators
                n = 0
                while n + 1 < nradmax:
                    h0 = (nu * nradmax + n) * nlm + lm
                    h1 = h0 + nlm
                    wr0 = wh_re[h0, k]
                    wi0 = wh_im[h0, k]
                    wr1 = wh_re[h1, k]
                    wi1 = wh_im[h1, k]
                    col = nradbase + n * lp1 + l
                    rv0 = rv[col, lo:hi]
                    rd0 = rd[col, lo:hi]
                    rv1 = rv[col + lp1, lo:hi]
                    rd1 = rd[col + lp1, lo:hi]
                    for q in range(cnt):
                        tr[q] += wr0 * rv0[q] + wr1 * rv1[q]
                        ti[q] += wi0 * rv0[q] + wi1 * rv1[q]
                        ur[q] += wr0 * rd0[q] + wr1 * rd1[q]
                        ui[q] += wi0 * rd0[q] + wi1 * rd1[q]
                    n += 2
                if n < nradmax:
                    h = (nu * nradmax + n) * nlm + lm
                    wr = wh_re[h, k]
                    wi = wh_im[h, k]
                    col = nradbase + n * lp1 + l
                    rvc = rv[col, lo:hi]
                    rdc = rd[col, lo:hi]
                    for q in range(cnt):
                        tr[q] += wr * rvc[q]
                        ti[q] += wi * rvc[q]
                        ur[q] += wr * rdc[q]
                        ui[q] += wi * rdc[q]
                ql = q_leg[lm, lo:hi]
                prm = p_re[m, lo:hi]
                pim = p_im[m, lo:hi]
                for q in range(cnt):
                    g_r[q] += ql[q] * (ur[q] * prm[q] - ui[q] * pim[q])
                if m < l:
                    qz = q_leg[lm + 1, lo:hi]
                    for q in range(cnt):
                        sz[q] += qz[q] * (tr[q] * prm[q] - ti[q] * pim[q])
                if m > 0:
                    prp = p_re[m - 1, lo:hi]
                    pip = p_im[m - 1, lo:hi]
                    for q in range(cnt):
                        mq = m * ql[q]
                        sx[q] += mq * (tr[q] * prp[q] - ti[q] * pip[q])
                        sy[q] -= mq * (tr[q] * pip[q] + ti[q] * prp[q])
        if zbl and zbl_selected >= 0:
            gr[zbl_selected] += (fsum[k] - rho_core) * dweight_dr
        for qs in range(nn):
            p = start + perm[qs]
            x = ux[qs]
            y = uy[qs]
            z = uz[qs]
            ug = x * gx[qs] + y * gy[qs] + z * gz[qs]
            ir = inv_r[qs]
            g = gr[qs]
            pair_gradient[k, p, 0] = (gx[qs] - x * ug) * ir + g * x
            pair_gradient[k, p, 1] = (gy[qs] - y * ug) * ir + g * y
            pair_gradient[k, p, 2] = (gz[qs] - z * ug) * ir + g * z


class EnsembleTree(NamedTuple):
    """Per-node arrays of the ensemble's reverse pass over a :class:`~ace_uq_calc.kernels.evaluator.KernelLayout`
    (global node index g = node_start[e] + local node).

    node_seed    (nodes, max ndensity, K) float64: sum over the node's contributions (function f,
                 generalized CG coefficient c) of c * member_coefficients[f, p, k]
    node_slot    (nodes,) int64: row of an inner node (one with children) in the adjoint accumulator
                 of its element, -1 for a leaf
    parent_slot  (nodes,) int64: node_slot of the node's parent (the root's slot for depth-1 nodes)
    slot_count   (n_elements,) int64: inner nodes per element
    """

    node_seed: np.ndarray
    node_slot: np.ndarray
    parent_slot: np.ndarray
    slot_count: np.ndarray


def ensemble_tree(layout, function_start, member_coefficients: np.ndarray) -> EnsembleTree:
    """The :class:`EnsembleTree` of a layout, the basis's ``function_start`` (first function of each
    element) and the members' coefficients (F, max ndensity, K); NumPy, milliseconds."""
    node_start = np.asarray(layout.node_start, dtype=np.int64)
    total = int(node_start[-1])
    coef = np.asarray(member_coefficients, dtype=np.float64)
    seed = np.zeros((total, coef.shape[1], coef.shape[2]))
    node_slot = np.full(total, -1, dtype=np.int64)
    parent_slot = np.zeros(total, dtype=np.int64)
    slot_count = np.zeros(len(node_start) - 1, dtype=np.int64)
    ncontrib_start = np.asarray(layout.ncontrib_start, dtype=np.int64)
    for e in range(len(node_start) - 1):
        n0, n1 = int(node_start[e]), int(node_start[e + 1])
        parents = np.asarray(layout.node_parent[n0 + 1:n1], dtype=np.int64)
        inner = np.zeros(n1 - n0, dtype=bool)
        inner[0] = True
        inner[parents] = True
        slots = np.cumsum(inner) - 1
        node_slot[n0:n1] = np.where(inner, slots, -1)
        parent_slot[n0 + 1:n1] = slots[parents]
        slot_count[e] = int(inner.sum())
        c0, c1 = int(ncontrib_start[e]), int(ncontrib_start[e + 1])
        nodes = np.asarray(layout.ncontrib_node[c0:c1], dtype=np.int64)
        funcs = np.asarray(layout.ncontrib_func[c0:c1], dtype=np.int64)
        cg = np.asarray(layout.ncontrib_coef[c0:c1], dtype=np.float64)
        np.add.at(seed, n0 + nodes, cg[:, None, None] * coef[int(function_start[e]) + funcs])
    return EnsembleTree(node_seed=np.ascontiguousarray(seed), node_slot=node_slot, parent_slot=parent_slot,
                        slot_count=slot_count)


@njit(cache=True, inline="always", fastmath=_FAST)
def _partial_sum4(a):
    """The same four-partial-sum order as the forward kernel's ``_sum`` (bit-identical rho_core)."""
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


@njit(cache=True, parallel=True)
def evaluate_ensemble_atoms(
    species, first, neighbour, vector, distance,
    table, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
    nradbase, nradmax, lmax, lm_l, lm_m, harmonic_norm, rec_a, rec_b, diag,
    function_start, member_coefficients, node_start, node_parent, node_factor,
    function_contrib, contrib_node, contrib_coef, ncontrib_start, ncontrib_node, ncontrib_func,
    ncontrib_coef, factor_ptr, factor_nodes,
    rank1_start, rank1_func, rank1_index,
    max_nodes,
    ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
    compute_forces, compute_projections, n_chunks,
    node_seed, node_slot, parent_slot, slot_count,
    energies, pair_gradient, projections,
):
    """Evaluate every atom for the K members. ``member_coefficients`` (F, max ndensity, K) C-contiguous.

    Outputs (preallocated, every entry written): energies (K, N) eV; pair_gradient (K, P, 3) eV/A,
    dE_i^k/dr_ij per neighbour entry (if compute_forces); projections (N, max nfunc) linear
    B-projections (shared by all members; if compute_projections). Atoms are split into ``n_chunks``
    contiguous chunks run in parallel; scratch arrays are allocated once per chunk.
    """
    n_atoms = species.shape[0]
    n_elements = ndensity.shape[0]
    nlm = (lmax + 1) * (lmax + 2) // 2
    lm_full = (lmax + 1) * (lmax + 1)
    ncol = table.shape[3]
    n_a1 = n_elements * nradbase
    n_half = n_elements * nradmax * nlm
    n_full = n_elements * nradmax * lm_full
    max_nd = member_coefficients.shape[1]
    nmem = member_coefficients.shape[2]
    max_slots = 0
    for e in range(n_elements):
        max_slots = max(max_slots, slot_count[e])
    max_nf = 0
    for e in range(n_elements):
        max_nf = max(max_nf, function_start[e + 1] - function_start[e])
    # the forward call needs one coefficient matrix (its energies are discarded)
    first_member = np.ascontiguousarray(member_coefficients[:, :, 0])
    if n_chunks < 1:
        n_chunks = 1
    for chunk_u in prange(n_chunks):
        chunk = np.int64(chunk_u)
        lo = (chunk * n_atoms) // n_chunks
        hi = ((chunk + 1) * n_atoms) // n_chunks
        mx = 1
        for i in range(lo, hi):
            mx = max(mx, first[i + 1] - first[i])
        # the forward call's scratch; its force-pass arrays are not used by the forward call, but the
        # radial derivatives (rd) are filled here, so they get mx columns too
        sc = atom_scratch(mx, mx, n_elements, ncol, lmax, n_a1, n_half, n_full, max_nodes, max_nf, max_nd)
        own_energy = np.empty(n_atoms)
        own_nl = np.empty((0, 1))
        own_dens = np.empty((n_atoms, max_nd))
        own_df = np.empty((n_atoms, max_nd))
        own_pg = np.empty((0, 3))
        # K-wide scratch, member index last
        rho = np.empty((max_nd, nmem))
        dfsum = np.empty((max_nd, nmem))
        fsum = np.empty(nmem)
        core_factor = np.empty(nmem)
        acc_re = np.empty((max_slots + 1, nmem))
        acc_im = np.empty((max_slots + 1, nmem))
        jr = np.empty(nmem)
        wf_re = np.empty((n_full, nmem))
        wf_im = np.empty((n_full, nmem))
        w1 = np.empty((max(n_a1, 1), nmem))
        wh_re = np.empty((n_half, nmem))
        wh_im = np.empty((n_half, nmem))
        # contraction accumulators of the reverse pass: the forward call leaves these scratch rows unused
        t_re = sc.t_re[0]
        t_im = sc.t_im[0]
        u_re = sc.u_re[0]
        u_im = sc.u_im[0]
        gx = sc.gx
        gy = sc.gy
        gz = sc.gz
        gr = sc.grad_r
        for i in range(lo, hi):
            _evaluate_atom(
                i, species, first, neighbour, vector, distance,
                table, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
                nradbase, nradmax, lmax, lm_l, lm_m, harmonic_norm, rec_a, rec_b, diag,
                function_start, first_member, node_start, node_parent, node_factor,
                function_contrib, contrib_node, contrib_coef, ncontrib_start, ncontrib_node, ncontrib_func,
                ncontrib_coef, factor_ptr, factor_nodes,
                rank1_start, rank1_func, rank1_index,
                ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
                False, compute_projections, False,
                own_energy, own_pg, projections, own_nl, own_dens, own_df,
                sc,
            )
            _ensemble_reverse_atom(
                i, species, first, neighbour, distance,
                table, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
                nradbase, nradmax, lmax, lm_l, lm_m, harmonic_norm,
                function_start, member_coefficients, node_start, node_parent, node_factor,
                node_seed, node_slot, parent_slot, slot_count,
                rank1_start, rank1_func, rank1_index,
                ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
                compute_forces, energies, pair_gradient,
                sc.perm, sc.seg, sc.ux, sc.uy, sc.uz, sc.inv_r, sc.rv, sc.rd, sc.q_leg, sc.p_re, sc.p_im, sc.af_re,
                sc.af_im, sc.v_re, sc.v_im, sc.b_values,
                rho, dfsum, fsum, core_factor, acc_re, acc_im, jr, wf_re, wf_im, w1, wh_re, wh_im,
                t_re, t_im, u_re, u_im, gx, gy, gz, gr,
            )


@njit(cache=True)
def accumulate_ensemble_forces(first, neighbour, vector, pair_gradient, forces, virial):
    """Per member k: forces[k, i] += f_ij, forces[k, j] -= f_ij; virial[k, a, b] += (r_ij)_a (f_ij)_b
    (the single-model :func:`~ace_uq_calc.kernels.evaluator.accumulate_forces` on each member's rows).

    pair_gradient (K, P, 3) eV/A; forces (K, N, 3) eV/A; virial (K, 3, 3) eV (all entries written).
    """
    for k in range(forces.shape[0]):
        accumulate_forces(first, neighbour, vector, pair_gradient[k], forces[k], virial[k])
