"""Numba kernel for fitting linear ACE models: derivatives of every B-function with respect to
every atom position (the design rows of forces and virial), which only fitting needs.

For a linear model E = sum_i sum_f c_f B_f(i), the forces and virial are linear in c:
F_k = sum_f c_f D_f(k) and W = sum_f c_f V_f. This kernel returns, per structure,
the energy row sum_i B_f(i) (eV per unit coefficient), D (3N, m) and V (9, m).

Per atom, the Jacobian dB_f/dA of every function (complex, m x nA) is contracted with
dA/dr_ij of all neighbours of one species at a time by two real matrix products (BLAS).
Index conventions as in :mod:`ace_uq_calc.model.basis`.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from .harmonics import spherical_harmonics
from .radial import evaluate_radial_table


class FunctionSet(NamedTuple):
    """The B-functions of a basis as the design kernel reads them (see :mod:`ace_uq_calc.model.basis`).

    radial_tables   (S*S, rows, ncol, 4) radial table per ordered bond (cubic Hermite coefficients)
    radial_scale    (S*S,) knots per Angstrom;  radial_nlut (S*S,) number of knots
    nradbase, nradmax, lmax  radial and angular sizes
    harmonic_norm   (nlm,) spherical-harmonic normalisation
    function_start  (S+1,) functions of element e: function_start[e]:function_start[e+1]
    function_rank   (F,) rank;  function_a1_index (F,) flat A1 index of rank-1 functions
    function_ms_start (F+1,) m-combinations of function g;  ms_coefficient (Q,) generalized CG;
    ms_factor       (Q, max rank) flat A indices of the factors
    """

    radial_tables: np.ndarray
    radial_scale: np.ndarray
    radial_nlut: np.ndarray
    nradbase: int
    nradmax: int
    lmax: int
    harmonic_norm: np.ndarray
    function_start: np.ndarray
    function_rank: np.ndarray
    function_a1_index: np.ndarray
    function_ms_start: np.ndarray
    ms_coefficient: np.ndarray
    ms_factor: np.ndarray


@njit(cache=True)
def linear_design_rows(species, neighbours, functions, energy_row, force_rows, virial_rows):
    """Fill energy_row (m,), force_rows (3N, m) and virial_rows (9, m) (all zero on entry) of the
    structure with species (N,) and CSR ``neighbours`` (:class:`~ace_uq_calc.kernels.neighbours.NeighbourList`);
    ``functions``: :class:`FunctionSet`.

    force_rows[3k + a, g] = dF_{k,a}/dc_g (eV/A); virial_rows[3a + b, g] = sum (r_ij)_a (dB_g/dr_ij)_b (eV).
    Columns g are the global function indices (elements concatenated in species order).
    """
    first = neighbours.first
    neighbour = neighbours.index
    vector = neighbours.vector
    distance = neighbours.distance
    radial_tables = functions.radial_tables
    radial_scale = functions.radial_scale
    radial_nlut = functions.radial_nlut
    nradbase = functions.nradbase
    nradmax = functions.nradmax
    lmax = functions.lmax
    harmonic_norm = functions.harmonic_norm
    function_start = functions.function_start
    function_rank = functions.function_rank
    function_a1_index = functions.function_a1_index
    function_ms_start = functions.function_ms_start
    ms_coefficient = functions.ms_coefficient
    ms_factor = functions.ms_factor
    n_atoms = species.shape[0]
    n_elements = function_start.shape[0] - 1
    nlm = (lmax + 1) * (lmax + 2) // 2
    lm_full = (lmax + 1) * (lmax + 1)
    n_rl = nradmax * (lmax + 1)
    ncol = nradbase + n_rl + 1
    n_a1 = n_elements * nradbase
    n_block = nradmax * nlm               # half A entries of one neighbour species
    n_half = n_elements * n_block
    n_full = n_elements * nradmax * lm_full
    max_rank = ms_factor.shape[1]
    legendre = np.empty((lmax + 2, lmax + 2))
    prefix = np.empty(max_rank + 1, dtype=np.complex128)
    suffix = np.empty(max_rank + 1, dtype=np.complex128)

    for i in range(n_atoms):
        ei = species[i]
        start = first[i]
        nn = first[i + 1] - start
        f0 = function_start[ei]
        nf = function_start[ei + 1] - f0
        rad_val = np.empty((nn, ncol))
        rad_der = np.empty((nn, ncol))
        ylm = np.empty((nn, nlm), dtype=np.complex128)
        dylm = np.empty((nn, nlm, 3), dtype=np.complex128)
        a1 = np.zeros(n_a1)
        a_half = np.zeros(n_half, dtype=np.complex128)
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
                base = ej * n_block + n * nlm
                for l in range(lmax + 1):
                    rnl = rad_val[q, nradbase + n * (lmax + 1) + l]
                    for m in range(l + 1):
                        lm = l * (l + 1) // 2 + m
                        a_half[base + lm] += rnl * ylm[q, lm]
        a_full = np.empty(n_full, dtype=np.complex128)
        for nu in range(n_elements):
            for n in range(nradmax):
                hb = nu * n_block + n * nlm
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

        # values and Jacobians dB_f/dA (folded onto m >= 0) of the functions of element ei
        jac_re = np.zeros((n_elements, nf, n_block))
        jac_im = np.zeros((n_elements, nf, n_block))
        w_full = np.empty(n_full, dtype=np.complex128)
        for f in range(nf):
            g = f0 + f
            rank = function_rank[g]
            if rank == 1:
                energy_row[g] += a1[function_a1_index[g]]
                continue
            for s in range(n_full):
                w_full[s] = 0.0
            b = 0.0
            for s in range(function_ms_start[g], function_ms_start[g + 1]):
                prefix[0] = 1.0
                for t in range(rank):
                    prefix[t + 1] = prefix[t] * a_full[ms_factor[s, t]]
                suffix[rank] = 1.0
                for t in range(rank - 1, -1, -1):
                    suffix[t] = suffix[t + 1] * a_full[ms_factor[s, t]]
                c = ms_coefficient[s]
                b += c * prefix[rank].real
                for t in range(rank):
                    w_full[ms_factor[s, t]] += c * prefix[t] * suffix[t + 1]
            energy_row[g] += b
            for nu in range(n_elements):
                for n in range(nradmax):
                    fb = (nu * nradmax + n) * lm_full
                    for l in range(lmax + 1):
                        for m in range(l + 1):
                            w = w_full[fb + l * l + l + m]
                            if m > 0:
                                wn = w_full[fb + l * l + l - m].conjugate()
                                if m % 2 == 1:
                                    wn = -wn
                                w = w + wn
                            col = n * nlm + l * (l + 1) // 2 + m
                            jac_re[nu, f, col] = w.real
                            jac_im[nu, f, col] = w.imag

        # contract with dA/dr_ij, one neighbour species at a time
        for nu in range(n_elements):
            members = np.empty(nn, dtype=np.int64)
            ns = 0
            for q in range(nn):
                if species[neighbour[start + q]] == nu:
                    members[ns] = q
                    ns += 1
            if ns == 0:
                continue
            d_re = np.zeros((n_block, 3 * ns))
            d_im = np.zeros((n_block, 3 * ns))
            for c in range(ns):
                q = members[c]
                p = start + q
                inv_r = 1.0 / distance[p]
                u0 = vector[p, 0] * inv_r
                u1 = vector[p, 1] * inv_r
                u2 = vector[p, 2] * inv_r
                for n in range(nradmax):
                    for l in range(lmax + 1):
                        col = nradbase + n * (lmax + 1) + l
                        rv = rad_val[q, col]
                        rd = rad_der[q, col]
                        for m in range(l + 1):
                            lm = l * (l + 1) // 2 + m
                            row = n * nlm + lm
                            y = ylm[q, lm]
                            v0 = rd * y * u0 + rv * dylm[q, lm, 0]
                            v1 = rd * y * u1 + rv * dylm[q, lm, 1]
                            v2 = rd * y * u2 + rv * dylm[q, lm, 2]
                            d_re[row, 3 * c] = v0.real
                            d_re[row, 3 * c + 1] = v1.real
                            d_re[row, 3 * c + 2] = v2.real
                            d_im[row, 3 * c] = v0.imag
                            d_im[row, 3 * c + 1] = v1.imag
                            d_im[row, 3 * c + 2] = v2.imag
            grads = np.dot(jac_re[nu], d_re) - np.dot(jac_im[nu], d_im)   # (nf, 3 ns)
            # rank-1 functions: dA1/dr_ij = g'_k rhat
            for f in range(nf):
                g = f0 + f
                if function_rank[g] != 1:
                    continue
                idx = function_a1_index[g]
                if idx // nradbase != nu:
                    continue
                k = idx % nradbase
                for c in range(ns):
                    q = members[c]
                    p = start + q
                    scale = rad_der[q, k] / distance[p]
                    grads[f, 3 * c] += scale * vector[p, 0]
                    grads[f, 3 * c + 1] += scale * vector[p, 1]
                    grads[f, 3 * c + 2] += scale * vector[p, 2]
            for c in range(ns):
                q = members[c]
                p = start + q
                j = neighbour[p]
                for f in range(nf):
                    g = f0 + f
                    for a in range(3):
                        ga = grads[f, 3 * c + a]
                        force_rows[3 * i + a, g] += ga
                        force_rows[3 * j + a, g] -= ga
                        for bb in range(3):
                            virial_rows[3 * bb + a, g] += vector[p, bb] * ga
