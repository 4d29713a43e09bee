"""Construct B-basis function sets (which (nu, n, l, lint) tuples) for new potentials.

A function of rank N couples N factors (neighbour element nu_t, radial index n_t, angular l_t).
Only rotation invariants are kept: sum of l even, couplings along pacemaker's tree allowed by the
triangle rule. Factors are listed in non-decreasing (nu, n, l) order so that each invariant product
appears once (permutations of the factors give the same function).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..engine.evaluate import evaluate
from ..model.basis import build_basis
from ..model.yaml_format import BondSpec, EmbeddingSpec, FunctionSpec, PotentialFile


@dataclass
class BasisLimits:
    """Per-rank limits: maximal radial index n (1-based) and maximal l for ranks 1..len(nradmax)."""

    nradmax_by_rank: tuple = (8, 3, 2, 1)
    lmax_by_rank: tuple = (0, 2, 2, 1)


def _triangle(a, b, c) -> bool:
    return abs(a - b) <= c <= a + b


def _lint_options(ls) -> list:
    """All intermediate-coupling lists for angular momenta ``ls`` (ranks 1-4), pacemaker's tree."""
    n = len(ls)
    if n == 1:
        return [()] if ls[0] == 0 else []
    if sum(ls) % 2:
        return []
    if n == 2:
        return [()] if ls[0] == ls[1] else []
    if n == 3:
        return [(ls[2],)] if _triangle(ls[0], ls[1], ls[2]) else []
    if n == 4:
        return [(L, L) for L in range(0, max(ls) * 2 + 1)
                if _triangle(ls[0], ls[1], L) and _triangle(ls[2], ls[3], L)]
    raise ValueError("basis construction supports ranks 1 to 4")


def enumerate_functions(elements, limits: BasisLimits):
    """Yield (central, neighbours, nr, nl, lint) for every element as central atom."""
    elements = sorted(elements)
    for central in elements:
        for rank, (nmax, lmax) in enumerate(zip(limits.nradmax_by_rank, limits.lmax_by_rank), start=1):
            if nmax < 1:
                continue
            if rank == 1:
                for nu in elements:
                    for n in range(1, nmax + 1):
                        yield central, (nu,), (n,), (0,), ()
                continue
            factors = [(nu, n, l) for nu in elements for n in range(1, nmax + 1) for l in range(lmax + 1)]
            for combo in itertools.combinations_with_replacement(factors, rank):
                ls = tuple(f[2] for f in combo)
                for lint in _lint_options(ls):
                    yield central, tuple(f[0] for f in combo), tuple(f[1] for f in combo), ls, lint


def new_potential(elements, limits: BasisLimits | None = None, rcut: float = 5.0, nradbase: int | None = None,
                  radbase: str = "SBessel", delta_spline_bins: float = 0.001, ndensity: int = 1,
                  embedding_exponents=None, core_repulsion=(0.0, 1.0), r_in: float = 0.0,
                  delta_in: float = 0.0, inner_cutoff_type: str = "distance", seed=None) -> PotentialFile:
    """A B-basis potential with the enumerated functions and zero coefficients (or small random ones
    when ``seed`` is given). Radial coefficients are the identity (R_nl = g_n), so the radial basis is
    the orthonormalised SBessel set itself. Linear model (F = rho) for ndensity = 1."""
    limits = limits or BasisLimits()
    elements = sorted(elements)
    nradmax = max(limits.nradmax_by_rank[1:] or (1,))
    lmax = max(limits.lmax_by_rank[1:] or (0,))
    nradbase = nradbase or max(limits.nradmax_by_rank[0], nradmax)
    crad = np.zeros((nradmax, lmax + 1, nradbase))
    for n in range(nradmax):
        crad[n, :, n] = 1.0
    rng = np.random.default_rng(seed) if seed is not None else None
    exponents = list(embedding_exponents) if embedding_exponents is not None else [1.0] + [0.5] * (ndensity - 1)
    embeddings = {
        el: EmbeddingSpec("FinnisSinclairShiftedScaled", np.ones(ndensity), np.asarray(exponents[:ndensity], float))
        for el in elements
    }
    bonds = {
        (a, b): BondSpec(radbase=radbase, radparameters=(1.0,), radcoefficients=crad.copy(), rcut=rcut, dcut=0.01,
                         r_in=r_in, delta_in=delta_in, inner_cutoff_type=inner_cutoff_type,
                         core_repulsion=tuple(core_repulsion), nradmax=nradmax, lmax=lmax, nradbase=nradbase)
        for a in elements for b in elements
    }
    functions = {el: [] for el in elements}
    for central, nus, nr, nl, lint in enumerate_functions(elements, limits):
        coeffs = rng.normal(scale=0.1, size=ndensity) if rng is not None else np.zeros(ndensity)
        spec = FunctionSpec(central=central, neighbours=nus, nr=nr, nl=nl, lint=lint, coefficients=coeffs)
        spec.file_index = len(functions[central])
        functions[central].append(spec)
    return PotentialFile(elements=elements, delta_spline_bins=delta_spline_bins, embeddings=embeddings,
                         bonds=bonds, functions=functions, metadata={}, source="<constructed>")


def random_environments(elements, rcut: float, count: int = 400, seed: int = 0):
    """Free clusters of 2-25 atoms inside a sphere of radius 0.95 rcut around atom 0 (ASE Atoms),
    with random species; used to detect linearly dependent functions numerically."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    clusters = []
    for _ in range(count):
        n = int(rng.integers(2, 26))
        directions = rng.normal(size=(n - 1, 3))
        directions /= np.linalg.norm(directions, axis=1)[:, None]
        radii = rng.uniform(0.45 * rcut, 0.95 * rcut, size=n - 1)
        positions = np.vstack([np.zeros(3), directions * radii[:, None]])
        clusters.append(Atoms(symbols=list(rng.choice(elements, size=n)), positions=positions))
    return clusters


def prune_dependent_functions(pot: PotentialFile, relative_tolerance: float = 1e-7, count: int = 400,
                              seed: int = 0) -> PotentialFile:
    """Drop functions that vanish identically or are linear combinations of earlier ones.

    Products of identical factors coupled antisymmetrically vanish, and several intermediate
    couplings of repeated factors span the same invariant; such columns make the active set and the
    fit singular. Projections on random environments are orthogonalised in pacemaker's function order
    (lower rank first) and a function is kept only if its residual exceeds ``relative_tolerance`` times
    its norm. Returns a new PotentialFile (the input is not modified).
    """
    basis = build_basis(pot)
    rcut = float(basis.cutoff_matrix.min())
    kept_specs = {}
    clusters = random_environments(pot.elements, rcut, count, seed)
    for e, el in enumerate(basis.elements):
        rows = []
        for atoms in clusters:
            atoms = atoms.copy()
            atoms.symbols[0] = el
            x = evaluate(basis, atoms.positions, atoms.cell.array, atoms.pbc,
                         basis.species_of(atoms.get_chemical_symbols()), forces=False, projections=True).projections
            rows.append(x[0, : basis.nfunc[el]])
        X = np.array(rows)
        norms = np.linalg.norm(X, axis=0)
        # a function whose values are rounding noise (identically zero) is dropped outright
        nonzero = norms > 1e-10 * np.median(norms[norms > 0]) if np.any(norms > 0) else norms > 0
        X = X / np.where(norms > 0, norms, 1.0)
        kept, q_basis = [], np.zeros((X.shape[0], 0))
        for f in range(X.shape[1]):
            if not nonzero[f]:
                continue
            col = X[:, f]
            residual = col - q_basis @ (q_basis.T @ col)
            residual = residual - q_basis @ (q_basis.T @ residual)
            norm = np.linalg.norm(residual)
            if norm > relative_tolerance:
                kept.append(f)
                q_basis = np.hstack([q_basis, (residual / norm)[:, None]])
        kept_specs[el] = [basis.ordered_functions[el][f] for f in kept]
    functions = {}
    for el in pot.elements:
        functions[el] = []
        for spec in kept_specs[el]:
            clone = FunctionSpec(central=spec.central, neighbours=spec.neighbours, nr=spec.nr, nl=spec.nl,
                                 lint=spec.lint, coefficients=spec.coefficients.copy())
            clone.file_index = len(functions[el])
            functions[el].append(clone)
    return PotentialFile(elements=list(pot.elements), delta_spline_bins=pot.delta_spline_bins,
                         embeddings=pot.embeddings, bonds=pot.bonds, functions=functions,
                         metadata=dict(pot.metadata), source=pot.source)


#: basis sizes tried by :func:`basis_for_size`, smallest first: (nradmax per rank, lmax per rank)
SIZE_LADDER = (
    ((6, 3, 2, 1), (0, 2, 2, 1)),
    ((8, 4, 3, 2), (0, 3, 2, 1)),
    ((8, 6, 3, 2), (0, 3, 2, 1)),
    ((10, 6, 4, 2), (0, 4, 2, 1)),
    ((10, 7, 4, 2), (0, 4, 3, 1)),
    ((12, 8, 5, 3), (0, 4, 3, 2)),
    ((12, 10, 6, 3), (0, 5, 4, 2)),
    ((15, 12, 7, 4), (0, 6, 4, 3)),
)


def count_functions(elements, limits: BasisLimits) -> int:
    """Number of enumerated functions per central element (before pruning)."""
    first = sorted(elements)[0]
    return sum(1 for item in enumerate_functions(elements, limits) if item[0] == first)


def basis_for_size(elements, target_functions: int, max_rank: int = 4) -> BasisLimits:
    """The largest ladder entry (truncated to ranks 1..``max_rank``) with at most ``target_functions``
    functions per element (the smallest entry if none fits)."""
    ladder = [BasisLimits(tuple(nrad[:max_rank]), tuple(lmax[:max_rank])) for nrad, lmax in SIZE_LADDER]
    chosen = ladder[0]
    for limits in ladder:
        if count_functions(elements, limits) <= target_functions:
            chosen = limits
    return chosen


MAX_RANK = 4


def check_body_order(max_body_order) -> int:
    """The maximal rank (body order - 1) for a requested maximal body order; ValueError outside 2..5."""
    if isinstance(max_body_order, bool) or int(max_body_order) != max_body_order or not 2 <= max_body_order <= MAX_RANK + 1:
        raise ValueError(f"maximal body order must be an integer from 2 to {MAX_RANK + 1} (ranks 1 to "
                         f"{MAX_RANK}), found {max_body_order!r}")
    return int(max_body_order) - 1


def check_limits(limits: BasisLimits, max_rank: int = MAX_RANK) -> BasisLimits:
    """Validated per-rank limits, truncated to ranks 1..``max_rank``: as many n as l limits, n >= 1,
    l >= 0, l = 0 for rank 1 (pair functions), at most 4 ranks. ValueError naming the problem."""
    nrad = tuple(int(v) for v in limits.nradmax_by_rank)
    lmax = tuple(int(v) for v in limits.lmax_by_rank)
    if len(nrad) != len(lmax) or not nrad:
        raise ValueError(f"basis limits need one n and one l limit per rank, found n {nrad} and l {lmax}")
    if len(nrad) > MAX_RANK:
        raise ValueError(f"basis limits for {len(nrad)} ranks: at most {MAX_RANK} ranks (body order 5) are supported")
    if min(nrad) < 1 or min(lmax) < 0:
        raise ValueError(f"basis limits must have n >= 1 and l >= 0, found n {nrad} and l {lmax}")
    if lmax[0] != 0:
        raise ValueError(f"rank-1 (pair) functions have l = 0: the first l limit must be 0, found {lmax[0]}")
    return BasisLimits(nrad[:max_rank], lmax[:max_rank])
