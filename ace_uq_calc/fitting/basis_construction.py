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

from ..potential.yaml_format import BondSpec, EmbeddingSpec, FunctionSpec, PotentialFile


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
