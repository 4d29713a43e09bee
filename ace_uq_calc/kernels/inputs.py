"""The structures that carry a basis into the evaluator kernels (NumPy arrays in NamedTuples).

Numba passes a NamedTuple of arrays as one argument, so a kernel takes a handful of these instead
of dozens of positional arrays (two arrays of the same type can then no longer be swapped by
accident). They are built once per potential by :mod:`ace_uq_calc.model.kernel_inputs`; index
conventions are those of :mod:`ace_uq_calc.model.basis`. All arrays are C-contiguous; float arrays
float64, integer arrays int64 or (tree and contribution indices, never negative) uint64, which spares
Numba's negative-index test on every access in the product stage.

Also here: the per-chunk scratch arrays of the atom stages (:class:`AtomScratch`, :class:`MemberScratch`)
and the outputs of the evaluator kernel (:class:`AtomOutputs`).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit


class BasisArrays(NamedTuple):
    """Radial tables, bond parameters, sizes and embedding of a basis (S elements, S*S ordered bonds).

    table            (S*S, rows, 4, ncol) radial table per bond, cubic Hermite coefficients, coefficient-major
                     per row: columns g_k (nradbase), R_nl (nradmax * (lmax + 1), n-major), phi_core (last)
    radial_scale     (S*S,) knots per Angstrom of the table
    radial_nlut      (S*S,) number of knots; a distance with r * scale >= nlut is beyond the cut-off
    bond_r_in, bond_delta_in (S*S,) inner cut-off and its width, Angstrom (ZBL switch)
    zbl              True when the inner cut-off type is ``zbl`` (per-atom ACE/ZBL switch)
    cutoff_max       largest bond cut-off, Angstrom
    nradbase, nradmax, lmax  sizes of the radial basis and of the A-basis
    function_start   (S+1,) functions of element e are function_start[e]:function_start[e+1]
    ndensity         (S,) densities per element
    embedding_weight, embedding_exponent  (S, max ndensity) F_p = weight * F(rho_p; exponent)
    embedding_kind   (S,) embedding function (:mod:`ace_uq_calc.kernels.embedding`)
    rho_core_cut, drho_core_cut (S,) core-density cut-off of the energy and its width
    """

    table: np.ndarray
    radial_scale: np.ndarray
    radial_nlut: np.ndarray
    bond_r_in: np.ndarray
    bond_delta_in: np.ndarray
    zbl: bool
    cutoff_max: float
    nradbase: int
    nradmax: int
    lmax: int
    function_start: np.ndarray
    ndensity: np.ndarray
    embedding_weight: np.ndarray
    embedding_exponent: np.ndarray
    embedding_kind: np.ndarray
    rho_core_cut: np.ndarray
    drho_core_cut: np.ndarray


class BasisLayout(NamedTuple):
    """Harmonic indexing and the product tree of the B-functions.

    lm_l, lm_m      (nlm,) l and m of stored harmonic index lm = l (l + 1) / 2 + m (m >= 0)
    harmonic_norm   (nlm,) pacemaker normalisation including (-1)^m (see kernels.harmonics)
    rec_a, rec_b    (nlm,) Legendre recursion Q_l^m = rec_a z Q_{l-1}^m - rec_b Q_{l-2}^m (l >= m + 2)
    diag            (lmax + 2,) Q_m^m = (2m - 1)!!
    node_start      (S+1,) product-tree nodes of element e: node_start[e]:node_start[e+1]; local
                    node 0 is the root (value 1), then the nodes level by level (depth = number of
                    factors), within a level ordered by (rank among siblings, parent), so that
                    consecutive nodes rarely share a parent (no store-to-load chains in the reverse pass)
    node_parent     (nodes,) parent node, local to the element (root: 0)
    node_factor     (nodes,) flat index of the A factor (full basis, see the basis module; root: 0)
    function_contrib (F+1,) contributions of function g: function_contrib[g]:function_contrib[g+1]
    contrib_node    (C,) local node whose product contributes, ordered by function
    contrib_coef    (C,) generalized CG coefficient (B_f += coef * Re(product))
    ncontrib_start  (S+1,) the same contributions ordered by node, per element:
    ncontrib_node, ncontrib_func, ncontrib_coef (C,) local node, local function, coefficient
    factor_ptr      (S, n_full + 1) nodes with factor k: factor_nodes[factor_ptr[e, k]:factor_ptr[e, k+1]]
    factor_nodes    (nodes,) local node indices
    rank1_start     (S+1,) rank-1 functions of element e: rank1_start[e]:rank1_start[e+1]
    rank1_func      (R,) local function index
    rank1_index     (R,) flat A1 index
    max_nodes       the largest tree of one element
    """

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


class AtomOutputs(NamedTuple):
    """Outputs of :func:`~ace_uq_calc.kernels.evaluator.evaluate_atoms` (preallocated; rows written per atom).

    energies               (N,) eV
    pair_gradient          (P, 3) eV/A, dE_i/dr_ij per neighbour entry (forces only; else (0, 3))
    projections            (N, max nfunc) linear B-projections (else (0, max nfunc))
    nonlinear_projections  (N, max nfunc * max ndensity) w_p F'(rho_p) B_f, density-major (else empty)
    densities              (N, max ndensity) rho_p
    dF_drho                (N, max ndensity) w_p F'(rho_p) times the core-cut-off or ZBL weight
    """

    energies: np.ndarray
    pair_gradient: np.ndarray
    projections: np.ndarray
    nonlinear_projections: np.ndarray
    densities: np.ndarray
    dF_drho: np.ndarray


class AtomScratch(NamedTuple):
    """Scratch arrays of the atom stages, allocated once per chunk of atoms by :func:`atom_scratch`.

    Neighbour quantities are stored structure-of-arrays, ``[component, neighbour]``, with the
    neighbours of the atom grouped by species (``perm`` maps the grouped order to the CSR order, species
    e owns ``seg[e]:seg[e + 1]``). ``w1``, ``wf_*``, ``wh_*`` hold adjoints for one model (a column of
    width 1, the layout of :class:`MemberScratch` with K = 1).
    """

    perm: np.ndarray       # (mx,) int64
    seg: np.ndarray        # (S+1,) int64
    ux: np.ndarray         # (mx,) unit vector components
    uy: np.ndarray
    uz: np.ndarray
    inv_r: np.ndarray      # (mx,) 1 / r
    rv: np.ndarray         # (ncol, mx) table values
    rd: np.ndarray         # (ncol, mf) table r-derivatives
    q_leg: np.ndarray      # (nlm, mx) Q_l^m(z)
    p_re: np.ndarray       # (lmax + 1, mx) (x + iy)^m
    p_im: np.ndarray
    y_re: np.ndarray       # (nlm, mx) spherical harmonics
    y_im: np.ndarray
    t_re: np.ndarray       # (mf,) contraction accumulators
    t_im: np.ndarray
    u_re: np.ndarray
    u_im: np.ndarray
    gx: np.ndarray         # (mf,) angular gradient accumulators
    gy: np.ndarray
    gz: np.ndarray
    grad_r: np.ndarray     # (mf,) radial gradient accumulator
    a1: np.ndarray         # (n_a1,) rank-1 A
    a_re: np.ndarray       # (n_half,) A_nlm, m >= 0
    a_im: np.ndarray
    af_re: np.ndarray      # (n_full,) A_nlm, all m
    af_im: np.ndarray
    v_re: np.ndarray       # (3 max_nodes + 1,) tree values, adjoints, factor adjoints
    v_im: np.ndarray
    b_values: np.ndarray   # (max nfunc + 1,)
    rho: np.ndarray        # (max ndensity,)
    dfsum: np.ndarray      # (max ndensity,)
    de_db: np.ndarray      # (max nfunc + 1,)
    w1: np.ndarray         # (n_a1, 1) dE/dA1
    wf_re: np.ndarray      # (n_full, 1) dE/dA, all m
    wf_im: np.ndarray
    wh_re: np.ndarray      # (n_half, 1) dE/dA folded onto m >= 0, times the harmonic normalisation
    wh_im: np.ndarray


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
        np.empty(mf), np.empty(mf), np.empty(mf), np.empty(mf),
        np.empty(mf), np.empty(mf), np.empty(mf), np.empty(mf),
        np.empty(n_a1), np.empty(n_half), np.empty(n_half), np.empty(n_full), np.empty(n_full),
        np.empty(3 * max_nodes + 1), np.empty(3 * max_nodes + 1), np.empty(max_nf + 1),
        np.empty(max_nd), np.empty(max_nd), np.empty(max_nf + 1),
        np.empty((max(n_a1, 1), 1)), np.empty((n_full, 1)), np.empty((n_full, 1)),
        np.empty((n_half, 1)), np.empty((n_half, 1)),
    )


class EnsembleTree(NamedTuple):
    """Per-node arrays of the K-member reverse pass over a :class:`BasisLayout`
    (global node index g = node_start[e] + local node); built by :func:`ensemble_tree`.

    node_seed    (nodes, max ndensity, K) float64: sum over the node's contributions (function f,
                 generalized CG coefficient c) of c * member_coefficients[f, p, k]
    node_slot    (nodes,) int64: row of an inner node (one with children) in the adjoint accumulator
                 of its element, -1 for a leaf
    parent_slot  (nodes,) int64: node_slot of the node's parent (the root's slot for depth-1 nodes)
    slot_count   (S,) int64: inner nodes per element
    """

    node_seed: np.ndarray
    node_slot: np.ndarray
    parent_slot: np.ndarray
    slot_count: np.ndarray


def ensemble_tree(layout: BasisLayout, function_start, member_coefficients: np.ndarray) -> EnsembleTree:
    """The :class:`EnsembleTree` of a layout, the basis's ``function_start`` and the members'
    coefficients (F, max ndensity, K); NumPy, milliseconds."""
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


class MemberScratch(NamedTuple):
    """K-wide scratch of the ensemble kernel (member index last and contiguous), per chunk of atoms."""

    rho: np.ndarray          # (max ndensity, K) densities
    dfsum: np.ndarray        # (max ndensity, K) w_p F'(rho_p), then times the core/ZBL weight
    fsum: np.ndarray         # (K,) sum_p w_p F(rho_p)
    core_factor: np.ndarray  # (K,) dE/d(rho_core)
    acc_re: np.ndarray       # (max inner nodes + 1, K) adjoint accumulators of the inner tree nodes
    acc_im: np.ndarray
    seed: np.ndarray         # (K,) a node's seed
    w1: np.ndarray           # (n_a1, K) dE/dA1
    wf_re: np.ndarray        # (n_full, K) dE/dA, all m
    wf_im: np.ndarray
    wh_re: np.ndarray        # (n_half, K) folded onto m >= 0, times the harmonic normalisation
    wh_im: np.ndarray


@njit(cache=True)
def member_scratch(n_members, max_nd, max_slots, n_a1, n_half, n_full):
    """The :class:`MemberScratch` of K = ``n_members`` members."""
    return MemberScratch(
        np.empty((max_nd, n_members)), np.empty((max_nd, n_members)), np.empty(n_members),
        np.empty(n_members), np.empty((max_slots + 1, n_members)), np.empty((max_slots + 1, n_members)),
        np.empty(n_members), np.empty((max(n_a1, 1), n_members)), np.empty((n_full, n_members)),
        np.empty((n_full, n_members)), np.empty((n_half, n_members)), np.empty((n_half, n_members)),
    )
