"""Numba kernels of the B-basis ACE evaluator: A-basis, B-basis, embedding, and the reverse pass.

Nothing here knows about ASE. Inputs are the flat arrays of
:class:`ace_uq_calc.potential.basis.ACEBasis` plus a CSR neighbour list; see that module for the
index conventions. Units: Angstrom, eV, eV/Angstrom.

Per atom i the kernel
1. evaluates, for every neighbour, the radial table of the bond (g_k, R_nl, phi_core and their
   r-derivatives) and the spherical harmonics with their gradients, and keeps them;
2. accumulates A1 (rank 1), the half A-basis (m >= 0) and rho_core;
3. forms B_f (the linear projections), the densities rho_p and the atomic energy;
4. (forces) runs one reverse pass: dE/dB -> adjoints of A1 and A -> one pair gradient
   f_ij = dE_i/dr_ij per neighbour, written to its own slot (no races between threads).
"""
import numpy as np
from numba import njit, prange

from .embedding import embedding_value
from .harmonics import spherical_harmonics
from .radial import evaluate_radial_table, quintic_switch_scalar


@njit(cache=True, parallel=True)
def evaluate_atoms(
    species, first, neighbour, vector, distance,
    radial_tables, radial_scale, radial_nlut, bond_r_in, bond_delta_in, zbl, cutoff_max,
    nradbase, nradmax, lmax, harmonic_norm,
    function_start, function_rank, function_a1_index, function_ms_start, coefficients,
    ms_coefficient, ms_factor,
    ndensity, embedding_weight, embedding_exponent, embedding_kind, rho_core_cut, drho_core_cut,
    compute_forces, compute_projections, compute_nonlinear,
    energies, pair_gradient, projections, nonlinear_projections, densities, dF_drho,
):
    """Evaluate every atom. Outputs (preallocated, written per atom):

    energies (N,) eV; pair_gradient (P, 3) eV/A = dE_i/dr_ij per neighbour entry (if compute_forces);
    projections (N, max nfunc) linear B-projections (if compute_projections);
    nonlinear_projections (N, max nfunc * max ndensity) w_p F'(rho_p) B_f, density-major (if compute_nonlinear);
    densities (N, max ndensity) rho_p; dF_drho (N, max ndensity) w_p F'(rho_p) * (f_cut or ZBL weight).
    """
    n_atoms = species.shape[0]
    n_elements = ndensity.shape[0]
    nlm = (lmax + 1) * (lmax + 2) // 2
    lm_full = (lmax + 1) * (lmax + 1)
    n_rl = nradmax * (lmax + 1)
    ncol = nradbase + n_rl + 1
    col_core = nradbase + n_rl
    n_a1 = n_elements * nradbase
    n_half = n_elements * nradmax * nlm
    n_full = n_elements * nradmax * lm_full
    max_nd = coefficients.shape[1]
    max_rank = ms_factor.shape[1]

    for i in prange(n_atoms):
        ei = species[i]
        start = first[i]
        nn = first[i + 1] - start
        # ---------------- per-neighbour radial values and harmonics
        rad_val = np.empty((nn, ncol))
        rad_der = np.empty((nn, ncol))
        ylm = np.empty((nn, nlm), dtype=np.complex128)
        dylm = np.empty((nn, nlm, 3), dtype=np.complex128)
        legendre = np.empty((lmax + 2, lmax + 2))
        a1 = np.zeros(n_a1)
        a_half = np.zeros(n_half, dtype=np.complex128)
        rho_core = 0.0
        zbl_selected = -1
        zbl_best = cutoff_max
        for q in range(nn):
            p = start + q
            ej = species[neighbour[p]]
            bond = ei * n_elements + ej
            r = distance[p]
            evaluate_radial_table(radial_tables[bond], radial_scale[bond], radial_nlut[bond], r,
                                  rad_val[q], rad_der[q])
            inv_r = 1.0 / r
            spherical_harmonics(lmax, harmonic_norm, vector[p, 0] * inv_r, vector[p, 1] * inv_r,
                                vector[p, 2] * inv_r, inv_r, legendre, ylm[q], dylm[q])
            for k in range(nradbase):
                a1[ej * nradbase + k] += rad_val[q, k]
            for n in range(nradmax):
                base = (ej * nradmax + n) * nlm
                for l in range(lmax + 1):
                    rnl = rad_val[q, nradbase + n * (lmax + 1) + l]
                    if rnl == 0.0:
                        continue
                    for m in range(l + 1):
                        lm = l * (l + 1) // 2 + m
                        a_half[base + lm] += rnl * ylm[q, lm]
            rho_core += rad_val[q, col_core]
            if zbl:
                d = r - (bond_r_in[bond] - bond_delta_in[bond])
                if d < zbl_best:
                    zbl_best = d
                    zbl_selected = q

        # ---------------- full A (all m) from the half basis
        a_full = np.empty(n_full, dtype=np.complex128)
        for nu in range(n_elements):
            for n in range(nradmax):
                hb = (nu * nradmax + n) * nlm
                fb = (nu * nradmax + n) * lm_full
                for l in range(lmax + 1):
                    for m in range(l + 1):
                        val = a_half[hb + l * (l + 1) // 2 + m]
                        a_full[fb + l * l + l + m] = val
                        if m > 0:
                            conj = val.conjugate()
                            if m % 2 == 1:
                                conj = -conj
                            a_full[fb + l * l + l - m] = conj

        # ---------------- B functions, densities, energy
        f0 = function_start[ei]
        nf = function_start[ei + 1] - f0
        nd = ndensity[ei]
        b_values = np.empty(nf)
        rho = np.zeros(max_nd)
        for f in range(nf):
            g = f0 + f
            if function_rank[g] == 1:
                b = a1[function_a1_index[g]]
            else:
                rank = function_rank[g]
                acc = 0.0
                for s in range(function_ms_start[g], function_ms_start[g + 1]):
                    prod = a_full[ms_factor[s, 0]]
                    for t in range(1, rank):
                        prod = prod * a_full[ms_factor[s, t]]
                    acc += ms_coefficient[s] * prod.real
                b = acc
            b_values[f] = b
            for pd in range(nd):
                rho[pd] += coefficients[g, pd] * b
        fsum = 0.0
        dfsum = np.zeros(max_nd)     # w_p F'(rho_p)
        for pd in range(nd):
            fv, fd = embedding_value(rho[pd], embedding_exponent[ei, pd], embedding_kind[ei])
            fsum += embedding_weight[ei, pd] * fv
            dfsum[pd] = embedding_weight[ei, pd] * fd

        if zbl:
            weight = 1.0
            dweight_dr = 0.0
            if zbl_selected >= 0:
                ps = start + zbl_selected
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
            continue

        # ---------------- reverse pass: adjoints of A1 and A
        w1 = np.zeros(n_a1)
        w_full = np.zeros(n_full, dtype=np.complex128)
        prefix = np.empty(max_rank + 1, dtype=np.complex128)
        suffix = np.empty(max_rank + 1, dtype=np.complex128)
        for f in range(nf):
            g = f0 + f
            de_db = 0.0
            for pd in range(nd):
                de_db += coefficients[g, pd] * dfsum[pd]
            de_db *= weight
            if de_db == 0.0:
                continue
            rank = function_rank[g]
            if rank == 1:
                w1[function_a1_index[g]] += de_db
                continue
            for s in range(function_ms_start[g], function_ms_start[g + 1]):
                prefix[0] = 1.0
                for t in range(rank):
                    prefix[t + 1] = prefix[t] * a_full[ms_factor[s, t]]
                suffix[rank] = 1.0
                for t in range(rank - 1, -1, -1):
                    suffix[t] = suffix[t + 1] * a_full[ms_factor[s, t]]
                scale = de_db * ms_coefficient[s]
                for t in range(rank):
                    w_full[ms_factor[s, t]] += scale * prefix[t] * suffix[t + 1]
        # fold negative m onto m >= 0: A_{l,-m} = (-1)^m conj(A_lm)
        w_half = np.zeros(n_half, dtype=np.complex128)
        for nu in range(n_elements):
            for n in range(nradmax):
                hb = (nu * nradmax + n) * nlm
                fb = (nu * nradmax + n) * lm_full
                for l in range(lmax + 1):
                    for m in range(l + 1):
                        w = w_full[fb + l * l + l + m]
                        if m > 0:
                            wn = w_full[fb + l * l + l - m].conjugate()
                            if m % 2 == 1:
                                wn = -wn
                            w = w + wn
                        w_half[hb + l * (l + 1) // 2 + m] = w

        # ---------------- pair gradients
        t_lm = np.empty(nlm, dtype=np.complex128)
        u_lm = np.empty(nlm, dtype=np.complex128)
        for q in range(nn):
            p = start + q
            ej = species[neighbour[p]]
            r = distance[p]
            inv_r = 1.0 / r
            ux = vector[p, 0] * inv_r
            uy = vector[p, 1] * inv_r
            uz = vector[p, 2] * inv_r
            radial_part = 0.0
            for k in range(nradbase):
                radial_part += w1[ej * nradbase + k] * rad_der[q, k]
            radial_part += core_factor * rad_der[q, col_core]
            if zbl and q == zbl_selected:
                radial_part += (fsum - rho_core) * dweight_dr
            for lm in range(nlm):
                t_lm[lm] = 0.0
                u_lm[lm] = 0.0
            for n in range(nradmax):
                base = (ej * nradmax + n) * nlm
                for l in range(lmax + 1):
                    col = nradbase + n * (lmax + 1) + l
                    rv = rad_val[q, col]
                    rd = rad_der[q, col]
                    for m in range(l + 1):
                        lm = l * (l + 1) // 2 + m
                        w = w_half[base + lm]
                        t_lm[lm] += w * rv
                        u_lm[lm] += w * rd
            gx = 0.0
            gy = 0.0
            gz = 0.0
            for lm in range(nlm):
                radial_part += (u_lm[lm] * ylm[q, lm]).real
                tv = t_lm[lm]
                gx += (tv * dylm[q, lm, 0]).real
                gy += (tv * dylm[q, lm, 1]).real
                gz += (tv * dylm[q, lm, 2]).real
            pair_gradient[p, 0] = gx + radial_part * ux
            pair_gradient[p, 1] = gy + radial_part * uy
            pair_gradient[p, 2] = gz + radial_part * uz


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
    for i in range(n_atoms):
        for p in range(first[i], first[i + 1]):
            j = neighbour[p]
            for a in range(3):
                g = pair_gradient[p, a]
                forces[i, a] += g
                forces[j, a] -= g
                for b in range(3):
                    virial[b, a] += vector[p, b] * g
