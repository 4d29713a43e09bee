"""The stages of evaluating one atom, shared by the single-model and the K-member ensemble kernels.

Units: Angstrom, eV, eV/Angstrom. Per atom i:

1. :func:`neighbour_stage` groups the neighbours by species and evaluates, for every neighbour, one
   row of the radial table of the bond (g_k, R_nl, phi_core and, for forces, their r-derivatives;
   rows are stored coefficient-major so that the columns are interpolated by contiguous loops) into
   structure-of-arrays storage ``[column, neighbour]``, the Legendre factors Q_l^m(z), the powers
   (x + iy)^m and the spherical harmonics in real arithmetic (real and imaginary parts apart); then
   A1 (rank 1) and the half A-basis (m >= 0) as dot products over the neighbours of each species
   (vectorised by LLVM), the full A-basis (all m) and rho_core;
2. :func:`tree_values` forms the products of the B-functions over a prefix tree ("trie") of the
   A-factors: every m-combination is a product of A's with its factors sorted, combinations (of all
   functions of the element) sharing a sorted prefix share the partial product, so each tree node
   costs one complex multiplication; then the values B_f;
3. (the kernels) densities, embedding, the atomic energy and, for forces, the adjoints dE/dA by a
   reverse pass over the tree; :func:`fold_negative_m` folds them onto m >= 0;
4. :func:`pair_gradients` contracts the adjoints of one model (one column k of the adjoint arrays),
   vectorised over the neighbours of each species, with the radial values and derivatives and with
   the harmonics' gradients (formed from Q_l^m, Q_l^{m+1} and (x + iy)^m, not stored) into the pair
   gradient f_ij = dE_i/dr_ij, written to the pair's own slot (no races between threads).

Loops meant to be vectorised run from index 0 over 1-d slices: Numba's handling of possibly negative
indices otherwise keeps LLVM from vectorising them. ``fastmath`` is limited to FMA contraction (no
reassociation, NaN/inf semantics kept), see :data:`FMA_ONLY`.
"""
from __future__ import annotations

import math

from numba import njit

from .radial import quintic_switch_scalar

#: Numba fastmath flags of the kernels: FMA contraction only (a * b + c in one rounding), no
#: reassociation and no assumptions about NaN/inf, so results stay deterministic and non-finite values
#: still propagate to the checks of the caller.
FMA_ONLY = {"contract"}


@njit(cache=True, inline="always", fastmath=FMA_ONLY)
def dot8(a, b):
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


@njit(cache=True, inline="always", fastmath=FMA_ONLY)
def sum4(a):
    """sum_q a[q] with four independent partial sums."""
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


@njit(cache=True, fastmath=FMA_ONLY)
def neighbour_stage(i, species, neighbours, arrays, layout, with_derivatives, s):
    """Stage 1 of atom i (module docstring): fills the neighbour arrays of the scratch ``s``
    (:class:`~ace_uq_calc.kernels.inputs.AtomScratch`) and A1, A (half and full).

    ``neighbours``: the CSR :class:`~ace_uq_calc.kernels.neighbours.NeighbourList`; ``arrays``,
    ``layout``: :class:`~ace_uq_calc.kernels.inputs.BasisArrays`, :class:`~ace_uq_calc.kernels.inputs.BasisLayout`;
    ``with_derivatives``: also the r-derivatives of the table rows (``s.rd``).
    Returns (species of i, first CSR entry of i, number of neighbours, rho_core, index in the grouped
    order of the neighbour that sets the ZBL switch or -1).
    """
    first = neighbours.first
    neighbour = neighbours.index
    vector = neighbours.vector
    distance = neighbours.distance
    table = arrays.table
    radial_scale = arrays.radial_scale
    radial_nlut = arrays.radial_nlut
    nradbase = arrays.nradbase
    nradmax = arrays.nradmax
    lmax = arrays.lmax
    lm_l = layout.lm_l
    lm_m = layout.lm_m
    harmonic_norm = layout.harmonic_norm
    rec_a = layout.rec_a
    rec_b = layout.rec_b
    diag = layout.diag
    perm = s.perm
    seg = s.seg
    ux = s.ux
    uy = s.uy
    uz = s.uz
    inv_r = s.inv_r
    rv = s.rv
    rd = s.rd
    q_leg = s.q_leg
    p_re = s.p_re
    p_im = s.p_im
    y_re = s.y_re
    y_im = s.y_im
    a1 = s.a1
    a_re = s.a_re
    a_im = s.a_im
    af_re = s.af_re
    af_im = s.af_im
    n_elements = arrays.ndensity.shape[0]
    nlm = (lmax + 1) * (lmax + 2) // 2
    lm_full = (lmax + 1) * (lmax + 1)
    lp1 = lmax + 1
    ncol = table.shape[3]
    col_core = ncol - 1

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
    zbl_selected = -1
    zbl_best = arrays.cutoff_max
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
            if with_derivatives:
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
            if with_derivatives:
                for c in range(ncol):
                    rd[c, qs] = 0.0
        if arrays.zbl:
            d = r - (arrays.bond_r_in[bond] - arrays.bond_delta_in[bond])
            if d < zbl_best:
                zbl_best = d
                zbl_selected = qs
    rho_core = sum4(rv[col_core, :nn])

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
            a1[nu * nradbase + k] = sum4(rv[k, lo:hi])
        for n in range(nradmax):
            base = (nu * nradmax + n) * nlm
            cb = nradbase + n * lp1
            for lm in range(nlm):
                rcol = rv[cb + lm_l[lm], lo:hi]
                a_re[base + lm] = dot8(rcol, y_re[lm, lo:hi])
                a_im[base + lm] = dot8(rcol, y_im[lm, lo:hi])

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
    return ei, start, nn, rho_core, zbl_selected


@njit(cache=True, fastmath=FMA_ONLY)
def tree_values(ei, layout, function_start, s):
    """Stage 2: the tree products (``s.v_re``, ``s.v_im``, first block) and the B values
    (``s.b_values``) of an atom of species ``ei`` from the full A-basis of stage 1. Returns the number
    of functions of the element."""
    node_start = layout.node_start
    node_factor = layout.node_factor
    node_parent = layout.node_parent
    function_contrib = layout.function_contrib
    contrib_node = layout.contrib_node
    contrib_coef = layout.contrib_coef
    rank1_start = layout.rank1_start
    rank1_func = layout.rank1_func
    rank1_index = layout.rank1_index
    v_re = s.v_re
    v_im = s.v_im
    af_re = s.af_re
    af_im = s.af_im
    a1 = s.a1
    b_values = s.b_values
    f0 = function_start[ei]
    nf = function_start[ei + 1] - f0
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
        for c in range(function_contrib[f0 + f], function_contrib[f0 + f + 1]):
            acc += contrib_coef[c] * v_re[contrib_node[c]]
        b_values[f] = acc
    for c in range(rank1_start[ei], rank1_start[ei + 1]):
        b_values[rank1_func[c]] = a1[rank1_index[c]]
    return nf


@njit(cache=True)
def energy_switch(ei, start, zbl_selected, rho_core, species, neighbours, arrays, s):
    """The per-atom switch between the ACE energy and the core term:
    E_i = weight * sum_p F_p + core_weight * rho_core.

    Returns (weight, core_weight, dweight_drho, dweight_dr). ZBL inner cut-off (spec 8.3): weight =
    1 - S(r_min) of the neighbour ``zbl_selected`` (the one deepest inside its bond's inner cut-off),
    core_weight = 1 - weight, dweight_dr its derivative; otherwise the core-density cut-off: weight =
    S(rho_core), core_weight = 1, dweight_drho its derivative.
    """
    if arrays.zbl:
        weight = 1.0
        dweight_dr = 0.0
        if zbl_selected >= 0:
            n_elements = arrays.ndensity.shape[0]
            ps = start + s.perm[zbl_selected]
            bond = ei * n_elements + species[neighbours.index[ps]]
            sv, sd = quintic_switch_scalar(neighbours.distance[ps], arrays.bond_r_in[bond],
                                           arrays.bond_delta_in[bond])
            weight = 1.0 - sv
            dweight_dr = -sd
        return weight, 1.0 - weight, 0.0, dweight_dr
    weight, dweight_drho = quintic_switch_scalar(rho_core, arrays.rho_core_cut[ei], arrays.drho_core_cut[ei])
    return weight, 1.0, dweight_drho, 0.0


@njit(cache=True, fastmath=FMA_ONLY)
def fold_negative_m(arrays, layout, wf_re, wf_im, wh_re, wh_im):
    """wh[(nu, n, l, m >= 0), k] = N_lm * (dE/dA_lm + (-1)^m conj(dE/dA_{l,-m})) for every column k:
    the adjoints of the full A-basis folded onto the stored half (A_{l,-m} = (-1)^m conj(A_lm)), times
    the harmonic normalisation. wf (n_full, K), wh (n_half, K)."""
    lm_l = layout.lm_l
    lm_m = layout.lm_m
    harmonic_norm = layout.harmonic_norm
    n_elements = arrays.ndensity.shape[0]
    nradmax = arrays.nradmax
    nlm = lm_l.shape[0]
    lm_full = (arrays.lmax + 1) * (arrays.lmax + 1)
    nmem = wf_re.shape[1]
    for nu in range(n_elements):
        for n in range(nradmax):
            hb = (nu * nradmax + n) * nlm
            fb = (nu * nradmax + n) * lm_full
            for lm in range(nlm):
                l = lm_l[lm]
                m = lm_m[lm]
                c = harmonic_norm[lm]
                plus = fb + l * l + l + m
                minus = fb + l * l + l - m
                if m > 0:
                    if m % 2 == 1:
                        for k in range(nmem):
                            wh_re[hb + lm, k] = (wf_re[plus, k] - wf_re[minus, k]) * c
                            wh_im[hb + lm, k] = (wf_im[plus, k] + wf_im[minus, k]) * c
                    else:
                        for k in range(nmem):
                            wh_re[hb + lm, k] = (wf_re[plus, k] + wf_re[minus, k]) * c
                            wh_im[hb + lm, k] = (wf_im[plus, k] - wf_im[minus, k]) * c
                else:
                    for k in range(nmem):
                        wh_re[hb + lm, k] = wf_re[plus, k] * c
                        wh_im[hb + lm, k] = wf_im[plus, k] * c


@njit(cache=True, fastmath=FMA_ONLY)
def pair_gradients(k, start, nn, arrays, layout, w1, wh_re, wh_im, core_factor, zbl_selected, zbl_gradient,
                   s, pair_gradient):
    """Stage 4 for model column ``k``: pair_gradient[p] = dE_i/dr_ij (eV/A) for the neighbour entries p
    of the atom (CSR entries ``start:start + nn``), from its adjoints w1[:, k] (dE/dA1), wh[:, k]
    (folded dE/dA), ``core_factor`` = dE/d(rho_core) and, with a ZBL switch, ``zbl_gradient`` = dE/dr of
    the neighbour ``zbl_selected`` through the switch. ``s``: the atom's
    :class:`~ace_uq_calc.kernels.inputs.AtomScratch` after :func:`neighbour_stage` with derivatives.

    Per neighbour species, vectorised over its neighbours: the radial part (A1, core term), then per
    harmonic index lm the sums t_lm = sum_n w_nlm R_nl and u_lm = sum_n w_nlm R'_nl (two radial indices
    per sweep) contracted at once with the harmonic and its gradient
    (Y = N Q P_m with N folded into w; grad_u Y: x: N Q m P_{m-1}, y: i times x, z: N Q_l^{m+1} P_m).
    """
    nradbase = arrays.nradbase
    nradmax = arrays.nradmax
    lm_l = layout.lm_l
    lm_m = layout.lm_m
    n_elements = arrays.ndensity.shape[0]
    nlm = lm_l.shape[0]
    lp1 = arrays.lmax + 1
    col_core = arrays.table.shape[3] - 1
    perm = s.perm
    seg = s.seg
    rv = s.rv
    rd = s.rd
    q_leg = s.q_leg
    p_re = s.p_re
    p_im = s.p_im
    gr = s.grad_r
    gx = s.gx
    gy = s.gy
    gz = s.gz
    for nu in range(n_elements):
        lo = seg[nu]
        hi = seg[nu + 1]
        cnt = hi - lo
        g_r = gr[lo:hi]
        rc = rd[col_core, lo:hi]
        for q in range(cnt):
            g_r[q] = core_factor * rc[q]
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
        tr = s.t_re[lo:hi]
        ti = s.t_im[lo:hi]
        ur = s.u_re[lo:hi]
        ui = s.u_im[lo:hi]
        for lm in range(nlm):
            l = lm_l[lm]
            m = lm_m[lm]
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
    if zbl_selected >= 0:
        gr[zbl_selected] += zbl_gradient
    # project out the radial component of grad_u, divide by r, add the radial part
    ux = s.ux
    uy = s.uy
    uz = s.uz
    inv_r = s.inv_r
    for qs in range(nn):
        p = start + perm[qs]
        x = ux[qs]
        y = uy[qs]
        z = uz[qs]
        ug = x * gx[qs] + y * gy[qs] + z * gz[qs]
        ir = inv_r[qs]
        g = gr[qs]
        pair_gradient[p, 0] = (gx[qs] - x * ug) * ir + g * x
        pair_gradient[p, 1] = (gy[qs] - y * ug) * ir + g * y
        pair_gradient[p, 2] = (gz[qs] - z * ug) * ir + g * z
