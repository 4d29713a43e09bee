"""Numba kernel of an ensemble of K ACE potentials that share one basis (only the coefficients differ).

Units: Angstrom, eV, eV/Angstrom. Everything up to the B-functions (radial table, harmonics, A-basis,
products over the prefix tree of A-factors) depends only on the basis, so per atom it is computed once
by the stages of :mod:`ace_uq_calc.kernels.atom_stages`. Then, per atom:

1. per member k the densities rho_p^k = sum_f c^k_{f,p} B_f, the atomic energy and the scale
   s_p^k = w F'(rho_p^k) (w: core cut-off or ZBL weight, shared), so that dE_k/dB_f = sum_p c^k_{f,p} s_p^k;
2. one K-wide reverse pass over the tree (member index innermost and contiguous, so LLVM vectorises
   every member loop). A node's seed sum_f coef * dE_k/dB_f is sum_p s_p^k node_seed[node, p, k], with
   ``node_seed`` summed over the node's contributions once per ensemble
   (:func:`~ace_uq_calc.kernels.inputs.ensemble_tree`); leaves (about two thirds of the nodes) have real
   adjoints and no accumulator; inner nodes gather their children's adjoints in a compact accumulator.
   Then folded onto m >= 0 (:func:`~ace_uq_calc.kernels.atom_stages.fold_negative_m`);
3. the contraction with the neighbour derivatives, member by member, by the single-model kernel's
   :func:`~ace_uq_calc.kernels.atom_stages.pair_gradients`, writing
   ``pair_gradient[k, p, :] = dE_i^k / dr_ij`` (member-major: each member's rows are contiguous).

:func:`accumulate_ensemble_forces` sums the pair gradients into forces (K, N, 3) and virials (K, 3, 3).
Each member's result equals a single-model evaluation of that member up to the order of a few sums
(relative differences ~1e-15).
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
from .evaluator import accumulate_forces
from .inputs import atom_scratch, member_scratch


@njit(cache=True, fastmath=FMA_ONLY)
def _ensemble_atom(i, species, neighbours, arrays, layout, member_coefficients, tree, compute_forces,
                   compute_projections, energies, pair_gradient, projections, s, ms):
    """Members' energies (K, N) and pair gradients (K, P, 3) of atom i, and its projections; ``s``:
    :class:`~ace_uq_calc.kernels.inputs.AtomScratch`, ``ms``: :class:`~ace_uq_calc.kernels.inputs.MemberScratch`
    of the chunk."""
    ei, start, nn, rho_core, zbl_selected = neighbour_stage(i, species, neighbours, arrays, layout,
                                                            compute_forces, s)
    nf = tree_values(ei, layout, arrays.function_start, s)
    b_values = s.b_values
    if compute_projections:
        for f in range(nf):
            projections[i, f] = b_values[f]
    nmem = member_coefficients.shape[2]
    f0 = arrays.function_start[ei]
    nd = arrays.ndensity[ei]
    rho = ms.rho
    dfsum = ms.dfsum
    fsum = ms.fsum
    core_factor = ms.core_factor

    # ---------------- per member: densities, energy, dE/dB
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
            fv, fd = embedding_value(rho[pd, k], arrays.embedding_exponent[ei, pd], arrays.embedding_kind[ei])
            fsum[k] += arrays.embedding_weight[ei, pd] * fv
            dfsum[pd, k] = arrays.embedding_weight[ei, pd] * fd
    weight, core_weight, dweight_drho, dweight_dr = energy_switch(ei, start, zbl_selected, rho_core, species,
                                                                  neighbours, arrays, s)
    for k in range(nmem):
        energies[k, i] = weight * fsum[k] + core_weight * rho_core
        core_factor[k] = core_weight + fsum[k] * dweight_drho
    if not compute_forces:
        return
    # dE_k/dB_f = sum_p c^k_{f,p} scale[p, k] with scale = (core / ZBL weight) * w_p F'(rho_p^k)
    for pd in range(nd):
        for k in range(nmem):
            dfsum[pd, k] = dfsum[pd, k] * weight

    # ---------------- K-wide reverse pass over the tree, leaves first (level by level, deepest first).
    # A node's seed is sum_p scale[p, k] node_seed[node, p, k]; a leaf's adjoint is its (real) seed, an
    # inner node's adds what its children passed up, gathered in its slot of acc (inner nodes only).
    node_seed = tree.node_seed
    node_slot = tree.node_slot
    parent_slot = tree.parent_slot
    node_start = layout.node_start
    node_factor = layout.node_factor
    node_parent = layout.node_parent
    v_re = s.v_re
    v_im = s.v_im
    af_re = s.af_re
    af_im = s.af_im
    acc_re = ms.acc_re
    acc_im = ms.acc_im
    seed = ms.seed
    w1 = ms.w1
    wf_re = ms.wf_re
    wf_im = ms.wf_im
    n0 = node_start[ei]
    nodes = node_start[ei + 1] - n0
    for a in range(wf_re.shape[0]):
        for k in range(nmem):
            wf_re[a, k] = 0.0
            wf_im[a, k] = 0.0
    for a in range(w1.shape[0]):
        for k in range(nmem):
            w1[a, k] = 0.0
    for c in range(layout.rank1_start[ei], layout.rank1_start[ei + 1]):
        fn = f0 + layout.rank1_func[c]
        row = layout.rank1_index[c]
        for pd in range(nd):
            for k in range(nmem):
                w1[row, k] += member_coefficients[fn, pd, k] * dfsum[pd, k]
    for q in range(tree.slot_count[ei]):
        for k in range(nmem):
            acc_re[q, k] = 0.0
            acc_im[q, k] = 0.0
    for node in range(nodes - 1, 0, -1):
        g = n0 + node
        for k in range(nmem):
            seed[k] = dfsum[0, k] * node_seed[g, 0, k]
        for pd in range(1, nd):
            for k in range(nmem):
                seed[k] += dfsum[pd, k] * node_seed[g, pd, k]
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
                x = seed[k]
                wf_re[fac, k] += x * pr
                wf_im[fac, k] += x * pi
                acc_re[ps, k] += x * ar
                acc_im[ps, k] += x * ai
        else:
            for k in range(nmem):
                x = seed[k] + acc_re[slot, k]
                y = acc_im[slot, k]
                wf_re[fac, k] += x * pr - y * pi
                wf_im[fac, k] += x * pi + y * pr
                acc_re[ps, k] += x * ar - y * ai
                acc_im[ps, k] += x * ai + y * ar
    fold_negative_m(arrays, layout, wf_re, wf_im, ms.wh_re, ms.wh_im)

    # ---------------- contraction with the neighbour derivatives, member by member
    for k in range(nmem):
        pair_gradients(k, start, nn, arrays, layout, w1, ms.wh_re, ms.wh_im, core_factor[k], zbl_selected,
                       (fsum[k] - rho_core) * dweight_dr, s, pair_gradient[k])


@njit(cache=True, parallel=True)
def evaluate_ensemble_atoms(species, neighbours, arrays, layout, member_coefficients, tree, compute_forces,
                            compute_projections, n_chunks, energies, pair_gradient, projections):
    """Evaluate every atom for the K members. ``member_coefficients`` (F, max ndensity, K) C-contiguous;
    ``tree``: its :class:`~ace_uq_calc.kernels.inputs.EnsembleTree`; other inputs as for
    :func:`~ace_uq_calc.kernels.evaluator.evaluate_atoms`.

    Outputs (preallocated, every entry written): energies (K, N) eV; pair_gradient (K, P, 3) eV/A,
    dE_i^k/dr_ij per neighbour entry (if compute_forces); projections (N, max nfunc) linear
    B-projections (shared by all members; if compute_projections). Atoms are split into ``n_chunks``
    contiguous chunks run in parallel; scratch arrays are allocated once per chunk.
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
    max_nd = member_coefficients.shape[1]
    nmem = member_coefficients.shape[2]
    max_slots = 0
    max_nf = 0
    for e in range(n_elements):
        max_slots = max(max_slots, tree.slot_count[e])
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
        s = atom_scratch(mx, mx if compute_forces else 1, n_elements, ncol, lmax, n_a1, n_half, n_full,
                         layout.max_nodes, max_nf, max_nd)
        ms = member_scratch(nmem, max_nd, max_slots, n_a1, n_half, n_full)
        for i in range(lo, hi):
            _ensemble_atom(i, species, neighbours, arrays, layout, member_coefficients, tree, compute_forces,
                           compute_projections, energies, pair_gradient, projections, s, ms)


@njit(cache=True)
def accumulate_ensemble_forces(first, neighbour, vector, pair_gradient, forces, virial):
    """Per member k: forces[k, i] += f_ij, forces[k, j] -= f_ij; virial[k, a, b] += (r_ij)_a (f_ij)_b
    (the single-model :func:`~ace_uq_calc.kernels.evaluator.accumulate_forces` on each member's rows).

    pair_gradient (K, P, 3) eV/A; forces (K, N, 3) eV/A; virial (K, 3, 3) eV (all entries written).
    """
    for k in range(forces.shape[0]):
        accumulate_forces(first, neighbour, vector, pair_gradient[k], forces[k], virial[k])
