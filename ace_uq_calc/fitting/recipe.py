"""The default fitting recipe: from labelled structures to a linear ACE potential in one call.

>>> result = fit(ase.io.read("train.xyz", ":"), cutoff=5.0, functions=200)
>>> write_potential_file(result.potential, "pot.yaml")
"""
from __future__ import annotations

from .basis_construction import basis_for_size, new_potential, prune_dependent_functions
from .linear_fit import FitResult, FitWeights, fit_linear

#: defaults of ``ace-uq fit`` (stated in README)
DEFAULT_CUTOFF = 5.0          # Angstrom
DEFAULT_FUNCTIONS = 200       # target number of B-functions per element
DEFAULT_WEIGHTS = FitWeights(energy=1.0, forces=0.01, stress=0.01)


def elements_of(frames) -> list:
    return sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})


def fit(frames, elements=None, cutoff: float = DEFAULT_CUTOFF, functions: int = DEFAULT_FUNCTIONS,
        weights: FitWeights | None = None, validation_fraction: float = 0.1, seed: int = 0,
        core_repulsion: bool = False, reference_energies: dict | None = None, progress: bool = False) -> FitResult:
    """Construct a basis (SBessel radial functions, ranks 1-4, about ``functions`` functions per element,
    linearly dependent ones removed) and fit it (:func:`~ace_uq_calc.fitting.linear_fit.fit_linear`).

    core_repulsion: add pacemaker's exponential core repulsion below 1.5 A (inner cut-off type
    ``distance``), which keeps atoms apart where the data has no samples.
    """
    frames = list(frames)
    elements = sorted(elements) if elements else elements_of(frames)
    limits = basis_for_size(elements, functions)
    extra = {}
    if core_repulsion:
        extra = dict(core_repulsion=(1.0, 1.0), r_in=1.5, delta_in=0.2, inner_cutoff_type="distance")
    pot = new_potential(elements, limits, rcut=cutoff, **extra)
    pot = prune_dependent_functions(pot)
    pot.metadata = {"generated_by": "ace_uq_calc fit", "cutoff": repr(cutoff),
                    "basis_limits": repr((limits.nradmax_by_rank, limits.lmax_by_rank))}
    return fit_linear(pot, frames, weights=weights or DEFAULT_WEIGHTS, validation_fraction=validation_fraction,
                      seed=seed, reference_energies=reference_energies, progress=progress)
