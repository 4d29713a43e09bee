"""The default fitting recipe: from labelled structures to a linear ACE potential in one call.

>>> result = fit(ase.io.read("train.xyz", ":"))
>>> write_potential_file(result.potential, "pot.yaml")

The defaults were chosen once for all elements on the Zuo et al. (2020) benchmark (Cu, Ni, Li, Si; see
docs/fitting.md and benchmarks/bench_fitting.py): cut-off 6 A, about 1 000 functions per element for one
element (ranks 1-4: n <= 12/8/5/3, l <= 0/4/3/2), energy weight 1, force weight 0.02, stress weight 0.01,
ridge strength chosen on a 10 % validation split.
"""
from __future__ import annotations

import time

from ..model.yaml_format import RADIAL_BASES
from .basis_construction import (
    BasisLimits,
    basis_for_size,
    check_body_order,
    check_limits,
    count_functions,
    new_potential,
    prune_dependent_functions,
)
from .linear_fit import FitResult, fit_linear
from .weights import FitWeights

#: defaults of ``ace-uq fit`` (stated in README and docs/fitting.md)
DEFAULT_CUTOFF = 6.0          # Angstrom
DEFAULT_FUNCTIONS = 1200      # upper bound on B-functions per element before pruning (one element: 1 161 -> 1 062)
DEFAULT_WEIGHTS = FitWeights(energy=1.0, forces=0.02, stress=0.01)
DEFAULT_MAX_BODY_ORDER = 5    # ranks 1-4
DEFAULT_RADIAL_BASIS = "SBessel"

#: random environments per enumerated function used to detect linearly dependent functions
#: (at least as many environments as functions are needed to see them all as independent)
PRUNE_SAMPLES_PER_FUNCTION = 3


def elements_of(frames) -> list:
    return sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})


def fit(frames, elements=None, cutoff: float = DEFAULT_CUTOFF, functions: int = DEFAULT_FUNCTIONS,
        weights: FitWeights | None = None, validation_fraction: float = 0.1, seed: int = 0,
        core_repulsion: bool = False, reference_energies: dict | None = None, progress: bool = False,
        workers: int | None = None, limits: BasisLimits | None = None, max_body_order: int = DEFAULT_MAX_BODY_ORDER,
        radial_basis: str = DEFAULT_RADIAL_BASIS) -> FitResult:
    """Construct a basis and fit it (:func:`~ace_uq_calc.fitting.linear_fit.fit_linear`).

    Basis: radial functions ``radial_basis`` (SBessel, ChebExpCos or ChebPow; R_nl = g_n), cut-off
    ``cutoff`` (Angstrom), functions of body order 2 .. ``max_body_order`` (rank = body order - 1, at
    most 5), either with the per-rank limits ``limits`` (``BasisLimits((n1, n2, ...), (0, l2, ...))``:
    maximal radial index and l of rank 1, 2, ...) or, when ``limits`` is None, the largest entry of the
    size ladder with at most ``functions`` functions per element; identically-zero and linearly
    dependent functions are removed afterwards.
    core_repulsion: add pacemaker's exponential core repulsion below 1.5 A (inner cut-off type
    ``distance``), which keeps atoms apart where the data has no samples.
    workers: processes for assembling the normal equations (default: all available CPUs for large fits).
    ``fit_time`` of the result includes the basis construction.
    """
    t0 = time.perf_counter()
    frames = list(frames)
    elements = sorted(elements) if elements else elements_of(frames)
    max_rank = check_body_order(max_body_order)
    if limits is None:
        limits = basis_for_size(elements, functions, max_rank=max_rank)
    else:
        limits = check_limits(limits, max_rank)
    if radial_basis not in RADIAL_BASES:
        raise ValueError(f"unknown radial basis {radial_basis!r}: choose one of {', '.join(RADIAL_BASES)}")
    extra = {}
    if core_repulsion:
        extra = dict(core_repulsion=(1.0, 1.0), r_in=1.5, delta_in=0.2, inner_cutoff_type="distance")
    pot = new_potential(elements, limits, rcut=cutoff, radbase=radial_basis, **extra)
    samples = max(400, PRUNE_SAMPLES_PER_FUNCTION * count_functions(elements, limits))
    pot = prune_dependent_functions(pot, count=samples)
    weights = weights or DEFAULT_WEIGHTS
    pot.metadata = {"generated_by": "ace_uq_calc fit", "cutoff": repr(cutoff),
                    "basis_limits": repr((limits.nradmax_by_rank, limits.lmax_by_rank)),
                    "radial_basis": radial_basis,
                    "fit_weights": repr((weights.energy, weights.forces, weights.stress))}
    result = fit_linear(pot, frames, weights=weights, validation_fraction=validation_fraction,
                        seed=seed, reference_energies=reference_energies, progress=progress, workers=workers)
    result.fit_time = time.perf_counter() - t0
    return result
