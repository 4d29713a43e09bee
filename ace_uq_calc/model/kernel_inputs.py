"""The kernel inputs of a basis: :class:`~ace_uq_calc.kernels.inputs.BasisArrays` and
:class:`~ace_uq_calc.kernels.inputs.BasisLayout`, built once per :class:`~ace_uq_calc.model.basis.ACEBasis`
(a few milliseconds) and kept on the basis object.

The layout's product tree: every m-combination of a B-function of rank >= 2 is a product of A-basis
entries ("factors"); with its factors sorted, combinations of all functions of an element that share a
sorted prefix share the partial product, so each node of the prefix tree ("trie") costs one complex
multiplication. Nodes are numbered level by level (depth = number of factors), within a level by (rank
among siblings, parent). Contributions (node, function, generalized CG coefficient) are stored ordered
by function (forward pass) and ordered by node (reverse pass).
"""
from __future__ import annotations

import numpy as np

from ..kernels.inputs import BasisArrays, BasisLayout
from .basis import ACEBasis


def basis_arrays(basis: ACEBasis) -> BasisArrays:
    """The :class:`~ace_uq_calc.kernels.inputs.BasisArrays` of ``basis`` (built on first use, then kept)."""
    arrays = basis.__dict__.get("_kernel_arrays")
    if arrays is None:
        arrays = BasisArrays(
            table=np.ascontiguousarray(np.transpose(basis.radial_tables, (0, 1, 3, 2))),
            radial_scale=basis.radial_scale, radial_nlut=basis.radial_nlut, bond_r_in=basis.bond_r_in,
            bond_delta_in=basis.bond_delta_in, zbl=bool(basis.zbl), cutoff_max=float(basis.cutoff_max),
            nradbase=int(basis.nradbase), nradmax=int(basis.nradmax), lmax=int(basis.lmax),
            function_start=basis.function_start, ndensity=basis.ndensity,
            embedding_weight=basis.embedding_weight, embedding_exponent=basis.embedding_exponent,
            embedding_kind=basis.embedding_kind, rho_core_cut=basis.rho_core_cut,
            drho_core_cut=basis.drho_core_cut,
        )
        basis.__dict__["_kernel_arrays"] = arrays
    return arrays


def basis_layout(basis: ACEBasis) -> BasisLayout:
    """The :class:`~ace_uq_calc.kernels.inputs.BasisLayout` of ``basis`` (built on first use, then kept)."""
    layout = basis.__dict__.get("_kernel_layout")
    if layout is None:
        layout = _build_layout(basis)
        basis.__dict__["_kernel_layout"] = layout
    return layout


def _build_layout(basis: ACEBasis) -> BasisLayout:
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

    def f64(x):
        return np.ascontiguousarray(np.asarray(x, dtype=np.float64))

    return BasisLayout(
        lm_l=lm_l, lm_m=lm_m, harmonic_norm=f64(basis.harmonic_norm), rec_a=rec_a, rec_b=rec_b, diag=diag,
        node_start=i64(node_start), node_parent=u64(node_parent), node_factor=u64(node_factor),
        function_contrib=u64(function_contrib), contrib_node=u64(contrib_node), contrib_coef=f64(contrib_coef),
        ncontrib_start=u64(ncontrib_start), ncontrib_node=u64(ncontrib_node), ncontrib_func=u64(ncontrib_func),
        ncontrib_coef=f64(ncontrib_coef), factor_ptr=u64(factor_ptr), factor_nodes=u64(factor_nodes),
        rank1_start=u64(rank1_start), rank1_func=u64(rank1_func), rank1_index=u64(rank1_index),
        max_nodes=int(max_nodes),
    )
