"""Numba kernel of one B-basis ACE model: energies, pair gradients (forces, virial) and projections.

Nothing here knows about ASE or the rest of the package. Inputs: the basis as
:class:`~ace_uq_calc.kernels.inputs.BasisArrays` and :class:`~ace_uq_calc.kernels.inputs.BasisLayout`,
the model's coefficients (F, max ndensity) and a CSR
:class:`~ace_uq_calc.kernels.neighbours.NeighbourList`. Units: Angstrom, eV, eV/Angstrom.

Per atom (:func:`_evaluate_atom`) the stages of :mod:`ace_uq_calc.kernels.atom_stages` (neighbours,
A-basis, tree products, B values), then the densities rho_p = sum_f c_fp B_f, the embedding and the
energy; for forces one reverse pass over the product tree (two complex multiplications per node)
gives dE/dA, which is folded onto m >= 0 and contracted by the shared
:func:`~ace_uq_calc.kernels.atom_stages.pair_gradients` into dE_i/dr_ij.
:func:`accumulate_forces` sums the pair gradients into forces and the virial.

Rounding differs from a straightforward evaluation order by a few ulp; results agree with
pacemaker's to the 1e-10 level of the tests.

Threads: ``prange`` over contiguous chunks of atoms; every chunk allocates its scratch arrays once and
reuses them for all its atoms. Each atom is computed the same way whatever the chunking, so results do
not depend on the number of threads.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .atom_stages import (
    FMA_ONLY,
    energy_switch,
    fold_negative_m,
    neighbour_stage,
    pair_gradients,
    tree_values,
)
from .embedding import embedding_value
from .inputs import atom_scratch


@njit(cache=True, fastmath=FMA_ONLY)
def _evaluate_atom(i, species, neighbours, arrays, layout, coefficients, compute_forces, compute_projections,
                   compute_nonlinear, out, s):
    """Atom i into the rows of ``out`` (:class:`~ace_uq_calc.kernels.inputs.AtomOutputs`), with the
    chunk's scratch ``s`` (:class:`~ace_uq_calc.kernels.inputs.AtomScratch`)."""
    ei, start, nn, rho_core, zbl_selected = neighbour_stage(i, species, neighbours, arrays, layout,
                                                            compute_forces, s)
    nf = tree_values(ei, layout, arrays.function_start, s)
    f0 = arrays.function_start[ei]
    nd = arrays.ndensity[ei]
    max_nd = coefficients.shape[1]
    b_values = s.b_values
    rho = s.rho
    dfsum = s.dfsum
    for pd in range(max_nd):
        rho[pd] = 0.0
        dfsum[pd] = 0.0
    for f in range(nf):
        b = b_values[f]
        for pd in range(nd):
            rho[pd] += coefficients[f0 + f, pd] * b
    fsum = 0.0
    for pd in range(nd):
        fv, fd = embedding_value(rho[pd], arrays.embedding_exponent[ei, pd], arrays.embedding_kind[ei])
        fsum += arrays.embedding_weight[ei, pd] * fv
        dfsum[pd] = arrays.embedding_weight[ei, pd] * fd
    weight, core_weight, dweight_drho, dweight_dr = energy_switch(ei, start, zbl_selected, rho_core, species,
                                                                  neighbours, arrays, s)
    out.energies[i] = weight * fsum + core_weight * rho_core
    for pd in range(nd):
        out.densities[i, pd] = rho[pd]
        out.dF_drho[i, pd] = dfsum[pd] * weight
    if compute_projections:
        for f in range(nf):
            out.projections[i, f] = b_values[f]
    if compute_nonlinear:
        for pd in range(nd):
            for f in range(nf):
                out.nonlinear_projections[i, pd * nf + f] = dfsum[pd] * b_values[f]
    if not compute_forces:
        return

    # ---------------- reverse pass: dE/dB, then adjoints over the tree
    node_start = layout.node_start
    node_factor = layout.node_factor
    node_parent = layout.node_parent
    de_db = s.de_db
    w1 = s.w1
    v_re = s.v_re
    v_im = s.v_im
    af_re = s.af_re
    af_im = s.af_im
    wf_re = s.wf_re
    wf_im = s.wf_im
    for f in range(nf):
        de = 0.0
        for pd in range(nd):
            de += coefficients[f0 + f, pd] * dfsum[pd]
        de_db[f] = de * weight
    for a in range(w1.shape[0]):
        w1[a, 0] = 0.0
    for c in range(layout.rank1_start[ei], layout.rank1_start[ei + 1]):
        w1[layout.rank1_index[c], 0] += de_db[layout.rank1_func[c]]
    # node adjoints (second block of the node scratch; the values are still needed), pushed from the
    # leaves towards the root level by level: adj(parent) += adj(node) A_factor(node); the factor
    # gets adj(node) value(parent) (third block), summed per factor afterwards.
    n0 = node_start[ei]
    nodes = node_start[ei + 1] - n0
    for node in range(nodes):
        v_re[nodes + node] = 0.0
        v_im[nodes + node] = 0.0
    for c in range(layout.ncontrib_start[ei], layout.ncontrib_start[ei + 1]):
        v_re[nodes + layout.ncontrib_node[c]] += de_db[layout.ncontrib_func[c]] * layout.ncontrib_coef[c]
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
    factor_ptr = layout.factor_ptr
    factor_nodes = layout.factor_nodes
    for k in range(wf_re.shape[0]):
        sr = 0.0
        si = 0.0
        for c in range(factor_ptr[ei, k], factor_ptr[ei, k + 1]):
            node = factor_nodes[c]
            sr += v_re[w2 + node]
            si += v_im[w2 + node]
        wf_re[k, 0] = sr
        wf_im[k, 0] = si
    fold_negative_m(arrays, layout, wf_re, wf_im, s.wh_re, s.wh_im)
    core_factor = core_weight + fsum * dweight_drho
    pair_gradients(0, start, nn, arrays, layout, w1, s.wh_re, s.wh_im, core_factor, zbl_selected,
                   (fsum - rho_core) * dweight_dr, s, out.pair_gradient)


@njit(cache=True, parallel=True)
def evaluate_atoms(species, neighbours, arrays, layout, coefficients, compute_forces, compute_projections,
                   compute_nonlinear, n_chunks, out):
    """Evaluate every atom into ``out`` (:class:`~ace_uq_calc.kernels.inputs.AtomOutputs`, preallocated).

    species (N,) int64 indices into the basis elements; neighbours: the CSR
    :class:`~ace_uq_calc.kernels.neighbours.NeighbourList`; arrays, layout: the basis
    (:mod:`ace_uq_calc.kernels.inputs`); coefficients (F, max ndensity). The atoms are split into
    ``n_chunks`` contiguous chunks (run in parallel); scratch arrays are allocated once per chunk.
    """
    first = neighbours.first
    n_atoms = species.shape[0]
    n_elements = arrays.ndensity.shape[0]
    lmax = arrays.lmax
    nlm = (lmax + 1) * (lmax + 2) // 2
    lm_full = (lmax + 1) * (lmax + 1)
    ncol = arrays.table.shape[3]
    n_a1 = n_elements * arrays.nradbase
    n_half = n_elements * arrays.nradmax * nlm
    n_full = n_elements * arrays.nradmax * lm_full
    max_nd = coefficients.shape[1]
    max_nf = 0
    for e in range(n_elements):
        max_nf = max(max_nf, arrays.function_start[e + 1] - arrays.function_start[e])
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
                               layout.max_nodes, max_nf, max_nd)
        for i in range(lo, hi):
            _evaluate_atom(i, species, neighbours, arrays, layout, coefficients, compute_forces,
                           compute_projections, compute_nonlinear, out, scratch)


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
