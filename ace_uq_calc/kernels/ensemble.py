"""Numba kernel of an ensemble of K ACE potentials that share one basis (only the coefficients differ).

Units: Angstrom, eV, eV/Angstrom. Everything up to the B-functions (radial table, harmonics, A-basis,
products over the prefix tree of A-factors) depends only on the basis, so per atom it is computed
once, by the single-model kernel itself (:func:`ace_uq_calc.kernels.evaluator._evaluate_atom` without
forces, which leaves the neighbour grouping, radial rows, harmonics, A, the tree values and the B
values in its scratch arrays). Then, per atom:

1. the radial derivatives of the neighbours' table rows (the forward call computes values only);
2. per member k the densities rho_p^k = sum_f c^k_{f,p} B_f, the atomic energy and
   dE_k/dB_f = w sum_p c^k_{f,p} F'(rho_p^k) (w: core cut-off or ZBL weight, shared);
3. one K-wide reverse pass over the tree: the adjoint arrays are ``[node, member]`` (member index
   innermost and contiguous, so LLVM vectorises every member loop), folded onto m >= 0;
4. the contraction with the neighbour derivatives (radial values and derivatives, Legendre factors,
   (x + iy)^m: computed once), member by member and vectorised over the neighbours like the
   single-model kernel (faster than a member-innermost loop per neighbour, which was tried); writes
   ``pair_gradient[p, k, :] = dE_i^k / dr_ij``.

:func:`accumulate_ensemble_forces` sums the pair gradients into forces (K, N, 3) and virials (K, 3, 3).
Each member's result equals a single-model evaluation of that member up to the order of a few sums
(relative differences ~1e-15).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .embedding import embedding_value
from .evaluator import _FAST, _evaluate_atom
from .radial import quintic_switch_scalar


@njit(cache=True, fastmath=_FAST)
def _ensemble_reverse_atom(
    i, species, first, neighbour, distance,
    table, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
    nradbase, nradmax, lmax, lm_l, lm_m, harmonic_norm,
    function_start, member_coefficients, node_start, node_parent, node_factor,
    ncontrib_start, ncontrib_node, ncontrib_func, ncontrib_coef,
    rank1_start, rank1_func, rank1_index,
    ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
    compute_forces, energies, pair_gradient,
    perm, seg, ux, uy, uz, inv_r, rv, rd, q_leg, p_re, p_im, af_re, af_im, v_re, v_im, b_values,
    rho, dfsum, fsum, core_factor, de_db, adj_re, adj_im, wf_re, wf_im, w1, wh_re, wh_im,
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
    for f in range(nf):
        for k in range(nmem):
            de_db[f, k] = 0.0
        for pd in range(nd):
            for k in range(nmem):
                de_db[f, k] += member_coefficients[f0 + f, pd, k] * dfsum[pd, k]
        for k in range(nmem):
            de_db[f, k] = de_db[f, k] * weight

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

    # ---------------- K-wide reverse pass over the tree
    n0 = node_start[ei]
    nodes = node_start[ei + 1] - n0
    n_a1 = n_elements * nradbase
    n_full = n_elements * nradmax * lm_full
    # node adjoints seeded with the contributions dE/dB_f * coef (ordered by node: one pass)
    s = ncontrib_start[ei]
    s_end = ncontrib_start[ei + 1]
    for node in range(nodes):
        for k in range(nmem):
            adj_re[node, k] = 0.0
            adj_im[node, k] = 0.0
        while s < s_end and ncontrib_node[s] == node:
            c = ncontrib_coef[s]
            fn = ncontrib_func[s]
            for k in range(nmem):
                adj_re[node, k] += de_db[fn, k] * c
            s += np.uint64(1)
    for a in range(n_full):
        for k in range(nmem):
            wf_re[a, k] = 0.0
            wf_im[a, k] = 0.0
    for a in range(n_a1):
        for k in range(nmem):
            w1[a, k] = 0.0
    for s in range(rank1_start[ei], rank1_start[ei + 1]):
        for k in range(nmem):
            w1[rank1_index[s], k] += de_db[rank1_func[s], k]
    for node in range(nodes - 1, 0, -1):
        fac = node_factor[n0 + node]
        par = node_parent[n0 + node]
        pr = v_re[par]
        pi = v_im[par]
        ar = af_re[fac]
        ai = af_im[fac]
        for k in range(nmem):
            jr = adj_re[node, k]
            ji = adj_im[node, k]
            wf_re[fac, k] += jr * pr - ji * pi
            wf_im[fac, k] += jr * pi + ji * pr
            adj_re[par, k] += jr * ar - ji * ai
            adj_im[par, k] += jr * ai + ji * ar
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
                for n in range(nradmax):
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
            pair_gradient[p, k, 0] = (gx[qs] - x * ug) * ir + g * x
            pair_gradient[p, k, 1] = (gy[qs] - y * ug) * ir + g * y
            pair_gradient[p, k, 2] = (gz[qs] - z * ug) * ir + g * z


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
    energies, pair_gradient, projections,
):
    """Evaluate every atom for the K members. ``member_coefficients`` (F, max ndensity, K) C-contiguous.

    Outputs (preallocated, every entry written): energies (K, N) eV; pair_gradient (P, K, 3) eV/A,
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
        perm = np.empty(mx, dtype=np.int64)
        seg = np.empty(n_elements + 1, dtype=np.int64)
        ux = np.empty(mx)
        uy = np.empty(mx)
        uz = np.empty(mx)
        inv_r = np.empty(mx)
        rv = np.empty((ncol, mx))
        rd = np.empty((ncol, mx))
        q_leg = np.empty((nlm, mx))
        p_re = np.empty((lmax + 1, mx))
        p_im = np.empty((lmax + 1, mx))
        y_re = np.empty((nlm, mx))
        y_im = np.empty((nlm, mx))
        dummy2 = np.empty((nlm, 1))
        dummy1 = np.empty(1)
        a1 = np.empty(n_a1)
        a_re = np.empty(n_half)
        a_im = np.empty(n_half)
        af_re = np.empty(n_full)
        af_im = np.empty(n_full)
        v_re = np.empty(3 * max_nodes + 1)
        v_im = np.empty(3 * max_nodes + 1)
        b_values = np.empty(max_nf + 1)
        rho1 = np.empty(max_nd)
        dfsum1 = np.empty(max_nd)
        de_db1 = np.empty(max_nf + 1)
        w1_1 = np.empty(n_a1)
        wf1_re = np.empty(n_full)
        wf1_im = np.empty(n_full)
        wh1_re = np.empty(n_half)
        wh1_im = np.empty(n_half)
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
        de_db = np.empty((max_nf + 1, nmem))
        adj_re = np.empty((max_nodes + 1, nmem))
        adj_im = np.empty((max_nodes + 1, nmem))
        wf_re = np.empty((n_full, nmem))
        wf_im = np.empty((n_full, nmem))
        w1 = np.empty((max(n_a1, 1), nmem))
        wh_re = np.empty((n_half, nmem))
        wh_im = np.empty((n_half, nmem))
        t_re = np.empty(mx)
        t_im = np.empty(mx)
        u_re = np.empty(mx)
        u_im = np.empty(mx)
        gx = np.empty(mx)
        gy = np.empty(mx)
        gz = np.empty(mx)
        gr = np.empty(mx)
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
                perm, seg, ux, uy, uz, inv_r, rv, rd, q_leg, p_re, p_im, y_re, y_im,
                dummy2, dummy2, dummy2, dummy2, dummy1, dummy1, dummy1, dummy1,
                a1, a_re, a_im, af_re, af_im, v_re, v_im, b_values, rho1, dfsum1, de_db1,
                w1_1, wf1_re, wf1_im, wh1_re, wh1_im,
            )
            _ensemble_reverse_atom(
                i, species, first, neighbour, distance,
                table, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
                nradbase, nradmax, lmax, lm_l, lm_m, harmonic_norm,
                function_start, member_coefficients, node_start, node_parent, node_factor,
                ncontrib_start, ncontrib_node, ncontrib_func, ncontrib_coef,
                rank1_start, rank1_func, rank1_index,
                ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
                compute_forces, energies, pair_gradient,
                perm, seg, ux, uy, uz, inv_r, rv, rd, q_leg, p_re, p_im, af_re, af_im, v_re, v_im, b_values,
                rho, dfsum, fsum, core_factor, de_db, adj_re, adj_im, wf_re, wf_im, w1, wh_re, wh_im,
                t_re, t_im, u_re, u_im, gx, gy, gz, gr,
            )


@njit(cache=True)
def accumulate_ensemble_forces(first, neighbour, vector, pair_gradient, forces, virial):
    """Per member k: forces[k, i] += f_ij, forces[k, j] -= f_ij; virial[k, a, b] += (r_ij)_a (f_ij)_b.

    pair_gradient (P, K, 3) eV/A; forces (K, N, 3) eV/A; virial (K, 3, 3) eV (all entries written).
    """
    n_atoms = first.shape[0] - 1
    nmem = forces.shape[0]
    for k in range(nmem):
        for a in range(3):
            for b in range(3):
                virial[k, a, b] = 0.0
        for i in range(n_atoms):
            forces[k, i, 0] = 0.0
            forces[k, i, 1] = 0.0
            forces[k, i, 2] = 0.0
    for i in range(n_atoms):
        for p in range(first[i], first[i + 1]):
            j = neighbour[p]
            rx = vector[p, 0]
            ry = vector[p, 1]
            rz = vector[p, 2]
            for k in range(nmem):
                gx = pair_gradient[p, k, 0]
                gy = pair_gradient[p, k, 1]
                gz = pair_gradient[p, k, 2]
                forces[k, i, 0] += gx
                forces[k, i, 1] += gy
                forces[k, i, 2] += gz
                forces[k, j, 0] -= gx
                forces[k, j, 1] -= gy
                forces[k, j, 2] -= gz
                virial[k, 0, 0] += rx * gx
                virial[k, 0, 1] += rx * gy
                virial[k, 0, 2] += rx * gz
                virial[k, 1, 0] += ry * gx
                virial[k, 1, 1] += ry * gy
                virial[k, 1, 2] += ry * gz
                virial[k, 2, 0] += rz * gx
                virial[k, 2, 1] += rz * gy
                virial[k, 2, 2] += rz * gz
