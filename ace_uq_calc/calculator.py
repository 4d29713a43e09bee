"""ASE calculator for pacemaker B-basis ACE potentials, with extrapolation grades.

>>> from ace_uq_calc import ACECalculator
>>> atoms.calc = ACECalculator("Cu.yaml", active_set="Cu.asi")
>>> atoms.get_potential_energy(); atoms.calc.results["gamma"]

Units: energy eV, forces eV/Angstrom, stress eV/Angstrom^3 (ASE Voigt order xx yy zz yz xz xy,
positive when the energy rises on expansion), gamma dimensionless.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .evaluation import evaluate
from .potential.basis import ACEBasis, load_basis
from .potential.yaml_format import reference_energies_of


class ACECalculator(Calculator):
    """Evaluate a pacemaker B-basis ``.yaml`` potential (energies, forces, stress, per-atom energies)
    and, with an active set, the per-atom extrapolation grade gamma.

    Parameters
    ----------
    potential : path, PotentialFile or ACEBasis
        The model.
    active_set : path or ActiveSet, optional
        pacemaker ``.asi`` file (linear or non-linear); adds ``gamma`` (N,) and ``max_gamma``.
    compute_gamma : bool
        Set False to skip gamma even when an active set is loaded.
    reference_energies : bool
        Add the one-body reference energies E0 (eV per atom of each element) that ace_uq_calc's
        fitting stores in the potential's metadata (default True). pacemaker and LAMMPS ignore
        them, so their energies equal ours with ``reference_energies=False``.
    """

    implemented_properties = [
        "energy", "free_energy", "forces", "stress", "energies",
        "gamma", "max_gamma", "neighbour_count",
    ]
    default_parameters: dict = {}

    def __init__(self, potential, active_set=None, compute_gamma: bool = True, reference_energies: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.basis: ACEBasis = load_basis(potential)
        e0 = reference_energies_of(self.basis.potential) if reference_energies else {}
        self.reference_energy = np.array([e0.get(el, 0.0) for el in self.basis.elements])
        self.active_set = None
        if active_set is not None:
            from .uncertainty.active_set import ActiveSet

            if not isinstance(active_set, ActiveSet):
                active_set = ActiveSet.load(
                    active_set,
                    nfunc_per_element=self.basis.nfunc,
                    ndensity_per_element={el: int(self.basis.ndensity[e]) for e, el in enumerate(self.basis.elements)},
                    elements=self.basis.elements,
                )
            active_set.check_compatible(   # also for ActiveSet objects: wrong sizes would give wrong gamma
                self.basis.nfunc, {el: int(self.basis.ndensity[e]) for e, el in enumerate(self.basis.elements)},
                self.basis.elements, source=f"active set for {self.basis.potential.source}")
            self.active_set = active_set
        self.compute_gamma = compute_gamma

    @property
    def elements(self) -> list:
        return list(self.basis.elements)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        wants_gamma = self.compute_gamma and ("gamma" in properties or "max_gamma" in properties
                                              or self.active_set is not None)
        if ("gamma" in properties or "max_gamma" in properties) and self.active_set is None:
            raise PropertyNotImplementedError(
                "gamma needs an active set: ACECalculator(potential, active_set='potential.asi')"
            )
        species = self.basis.species_of(atoms.get_chemical_symbols())
        cell = atoms.cell.array
        pbc = atoms.pbc
        nonlinear = bool(wants_gamma and self.active_set is not None and self.active_set.nonlinear)
        result = evaluate(
            self.basis, atoms.positions, cell, pbc, species,
            forces=True,
            projections=bool(wants_gamma and not nonlinear),
            nonlinear=nonlinear,
        )
        energies = result.energies
        if self.reference_energy.any():
            energies = energies + self.reference_energy[species]
        self.results["energy"] = float(energies.sum())
        self.results["free_energy"] = self.results["energy"]
        self.results["energies"] = energies
        self.results["forces"] = result.forces
        self.results["neighbour_count"] = result.neighbour_count
        volume = abs(np.linalg.det(cell))
        if volume > 1e-9:   # a three-dimensional cell; for slabs the volume includes the vacuum
            sigma = result.virial / volume
            sigma = 0.5 * (sigma + sigma.T)
            self.results["stress"] = np.array(
                [sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]]
            )
        elif "stress" in properties:
            raise PropertyNotImplementedError("stress needs a three-dimensional cell (rank-3 cell vectors)")
        if wants_gamma and self.active_set is not None:
            gamma = self._gamma(species, result)
            self.results["gamma"] = gamma
            self.results["max_gamma"] = float(gamma.max()) if len(gamma) else 0.0

    def _gamma(self, species, result) -> np.ndarray:
        x = result.nonlinear_projections if self.active_set.nonlinear else result.projections
        gamma = np.zeros(len(species))
        for e, el in enumerate(self.basis.elements):
            mask = species == e
            if not mask.any():
                continue
            n = self.active_set.inverse[el].shape[0]
            gamma[mask] = self.active_set.grades(el, np.ascontiguousarray(x[mask, :n]))
        return gamma
