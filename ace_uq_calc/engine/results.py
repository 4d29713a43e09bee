"""The one result path: from a structure's arrays to the results of a calculator call, for a model
of K >= 1 members, without ASE.

:func:`model_results` evaluates the members (:meth:`~ace_uq_calc.engine.model.Model.evaluate`), adds
each member's reference energies, turns virials into stresses, reduces the members (K = 1: the model's
own results; K > 1: the mean and the spreads of :func:`~ace_uq_calc.engine.statistics.ensemble_statistics`),
then lets each *grader* add its per-atom uncertainties from member 0's projections and, last, an
error *calibration* map an uncertainty to an expected force error.

Graders and calibrations come from the caller (the calculator loads them from their files; see
:mod:`ace_uq_calc.uncertainty`); the engine only needs:

* a grader: attribute ``nonlinear`` (bool: which projections it grades) and a method
  ``grade_atoms(elements, species, projections, threads) -> dict`` of results;
* a calibration: attributes ``measure`` (the name of a result) and ``predict(values) -> array``.

Units: energy eV, forces eV/Angstrom, stress eV/Angstrom^3 (ASE Voigt order xx yy zz yz xz xy,
positive when the energy rises on expansion).
"""
from __future__ import annotations

import numpy as np

from .model import Model
from .statistics import ensemble_statistics
from .threads import KernelThreads, kernel_threads

#: smallest cell volume (Angstrom^3) for which a stress is computed; below it the cell is not
#: three-dimensional (for slabs the volume includes the vacuum, as in pacemaker)
MIN_STRESS_VOLUME = 1e-9


def virial_to_stress(virial: np.ndarray, volume: float) -> np.ndarray:
    """(K, 6) Voigt stresses xx yy zz yz xz xy (eV/A^3) of (K, 3, 3) virials (eV), symmetrised."""
    sigma = virial / volume
    sigma = 0.5 * (sigma + np.transpose(sigma, (0, 2, 1)))
    return np.stack([sigma[:, 0, 0], sigma[:, 1, 1], sigma[:, 2, 2], sigma[:, 1, 2], sigma[:, 0, 2],
                     sigma[:, 0, 1]], axis=1)


def model_results(model: Model, positions, cell, pbc, species, graders=(), calibration=None,
                  num_threads: int | None = None) -> dict:
    """Results of one structure: ``energy``, ``free_energy``, ``energies``, ``forces``,
    ``neighbour_count`` and, for a three-dimensional cell, ``stress``; for K > 1 also ``energy_std``,
    ``energies_std``, ``forces_std``, ``stress_std``, ``forces_dev`` and ``ensemble_energies`` (K,) (each
    member's total energy); then the results of each grader and ``forces_error_estimate`` of the
    calibration when the measure it maps has been computed.

    positions (N, 3) Angstrom; cell (3, 3) Angstrom; pbc (3,) bool; species (N,) indices into
    ``model.elements``. Energies include each member's reference energies.
    """
    graders = [g for g in graders if g is not None]
    linear = any(not g.nonlinear for g in graders)
    nonlinear = any(g.nonlinear for g in graders)
    ev = model.evaluate(positions, cell, pbc, species, forces=True, projections=linear, nonlinear=nonlinear,
                        num_threads=num_threads)
    energies = ev.energies
    if model.reference_energy.any():
        energies = energies + model.reference_energy[:, species]
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    volume = abs(np.linalg.det(cell))
    stresses = virial_to_stress(ev.virial, volume) if volume > MIN_STRESS_VOLUME else None
    if model.size == 1:
        results = {"energy": float(energies[0].sum()), "energies": energies[0], "forces": ev.forces[0]}
        if stresses is not None:
            results["stress"] = stresses[0]
    else:
        results = ensemble_statistics(energies, ev.forces, stresses)
        results["ensemble_energies"] = energies.sum(axis=1)
    results["free_energy"] = results["energy"]
    results["neighbour_count"] = ev.neighbour_count
    if graders:
        n_atoms = len(species)
        threads = kernel_threads(n_atoms, num_threads)
        with KernelThreads(threads):
            for grader in graders:
                x = ev.nonlinear_projections if grader.nonlinear else ev.projections
                results.update(grader.grade_atoms(model.elements, species, x, threads))
    if calibration is not None and calibration.measure in results:
        results["forces_error_estimate"] = calibration.predict(results[calibration.measure])
    return results
