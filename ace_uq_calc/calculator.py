"""ASE calculator for pacemaker B-basis ACE potentials, with extrapolation grades.

>>> from ace_uq_calc import ACECalculator
>>> atoms.calc = ACECalculator("Cu.yaml", active_set="Cu.asi")
>>> atoms.get_potential_energy(); atoms.calc.results["gamma"]

The ASE layer only: ``Atoms`` -> arrays -> :func:`ace_uq_calc.engine.results.model_results` -> ``results``.
Units: energy eV, forces eV/Angstrom, stress eV/Angstrom^3 (ASE Voigt order xx yy zz yz xz xy,
positive when the energy rises on expansion), gamma dimensionless.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)

from .engine.model import Model
from .engine.results import model_results
from .engine.statistics import ENSEMBLE_PROPERTIES
from .engine.threads import checked_thread_count
from .model.basis import ACEBasis
from .model.ensemble_file import member_list
from .uncertainty.active_set import ActiveSet
from .uncertainty.calibration import ErrorCalibration
from .uncertainty.local_active_set import LocalActiveSet

#: Default neighbour-list skin in Angstrom (see ACECalculator).
DEFAULT_SKIN = 0.5

_GAMMA_PROPERTIES = {"gamma", "max_gamma"}
_LOCAL_PROPERTIES = {"gamma_local", "gamma_cluster", "max_gamma_local"}


class ACECalculator(Calculator):
    """Evaluate a pacemaker B-basis ``.yaml`` potential (energies, forces, stress, per-atom energies)
    and, with an active set, the per-atom extrapolation grade gamma.

    Parameters
    ----------
    potential : path, PotentialFile or ACEBasis, or a list of them, or an ensemble file
        The model. Several potentials (a list, an ensemble file, or ``ensemble=``) make an ensemble
        calculator: it returns the members' mean energy, forces, stress, energies and their spreads
        ``energy_std``, ``energies_std`` (N), ``forces_std`` (N, 3), ``stress_std`` (6) and
        ``forces_dev`` (N), eV and eV/A (docs/ensembles.md); members sharing one basis are evaluated in
        one descriptor pass. Grades (active sets) apply to the first member.
    active_set : path or ActiveSet, optional
        pacemaker ``.asi`` file (linear or non-linear); adds ``gamma`` (N,) and ``max_gamma``.
    compute_gamma : bool
        Set False to skip the grades even when active sets are loaded.
    reference_energies : bool
        Add the one-body reference energies E0 (eV per atom of each element) that ace_uq_calc's
        fitting stores in the potential's metadata (default True). pacemaker and LAMMPS ignore
        them, so their energies equal ours with ``reference_energies=False``.
    num_threads : int, optional
        Numba threads for this calculator's kernels (1 .. ``numba.config.NUMBA_NUM_THREADS``); default:
        Numba's current setting (``NUMBA_NUM_THREADS``, all cores unless set). Structures below
        ``engine.threads.PARALLEL_MIN_ATOMS`` (64) atoms always run on one thread.
    skin : float
        Neighbour-list skin in Angstrom (default 0.5; 0 disables reuse). The list is built with
        cut-off + skin and reused, with vectors recomputed from the current positions and filtered by
        the true cut-off, until an atom has moved more than skin / 2 or the cell, pbc or atoms change.
        Results are identical to rebuilding every call; see ``engine.neighbour_cache.NeighbourListCache``.
    ensemble : list of potentials, optional
        Further members of an ensemble (after ``potential``).
    error_calibration : path or ErrorCalibration, optional
        A map from an uncertainty measure (gamma, gamma_local or forces_dev) to the expected force error
        (``ace_uq_calc.uncertainty.calibration``, fitted on validation data, e.g. by ``ace-uq uq-report``);
        adds ``forces_error_estimate`` (N,) in eV/A. The measure must be computed by this calculator.
    local_active_set : path or LocalActiveSet, optional
        Per-cluster active sets (``ace-uq activeset --local``, ``ace_uq_calc.uncertainty.local_build``); adds
        ``gamma_local`` (N,) = min over clusters of the cluster grade, ``gamma_cluster`` (N,) = the cluster
        attaining it, and ``max_gamma_local``. Shares the descriptor pass with ``gamma``.
    """

    implemented_properties = [
        "energy", "free_energy", "forces", "stress", "energies",
        "gamma", "max_gamma", "neighbour_count", "forces_error_estimate",
        "gamma_local", "gamma_cluster", "max_gamma_local",
    ]
    default_parameters: dict = {}

    def __init__(self, potential, active_set=None, compute_gamma: bool = True, reference_energies: bool = True,
                 num_threads: int | None = None, skin: float = DEFAULT_SKIN, error_calibration=None,
                 ensemble=None, local_active_set=None, **kwargs):
        super().__init__(**kwargs)
        self.model = Model(member_list(potential, ensemble), reference_energies=reference_energies, skin=skin)
        if self.model.size > 1:
            self.implemented_properties = list(type(self).implemented_properties) + ENSEMBLE_PROPERTIES
        self.basis: ACEBasis = self.model.bases[0]
        self.num_threads = checked_thread_count(num_threads)
        self.compute_gamma = compute_gamma
        source = self.basis.potential.source
        self.active_set = None
        if active_set is not None:
            if not isinstance(active_set, ActiveSet):
                active_set = ActiveSet.load(
                    active_set, nfunc_per_element=self.basis.nfunc,
                    ndensity_per_element={el: int(self.basis.ndensity[e]) for e, el in enumerate(self.basis.elements)},
                    elements=self.basis.elements)
            # also for ActiveSet objects: wrong sizes would give wrong gamma
            self.active_set = active_set.for_basis(self.basis, source=f"active set for {source}")
        self.local_active_set = None
        if local_active_set is not None:
            if not isinstance(local_active_set, LocalActiveSet):
                local_active_set = LocalActiveSet.load(local_active_set)
            self.local_active_set = local_active_set.for_basis(self.basis, source=f"local active set for {source}")
        if error_calibration is not None and not isinstance(error_calibration, ErrorCalibration):
            error_calibration = ErrorCalibration.load(error_calibration)
        self.error_calibration = error_calibration
        self._species_key = None

    @property
    def ensemble(self) -> Model | None:
        """The model when it has several members (an ensemble calculator), else None."""
        return self.model if self.model.size > 1 else None

    @property
    def skin(self) -> float:
        return self.model.caches[0].skin

    @property
    def neighbour_cache(self):
        """The neighbour-list cache of the first member's basis."""
        return self.model.caches[0]

    @property
    def elements(self) -> list:
        return list(self.basis.elements)

    def check_state(self, atoms, tol=1e-15):
        """ASE's change detection (``compare_atoms``) with exact comparisons instead of ``allclose``
        (about 20 times cheaper; a change below 1e-15 now also counts as a change, which only costs
        a recalculation)."""
        old = self.atoms
        if old is None:
            return super().check_state(atoms, tol)
        check = set(all_changes) - set(getattr(self, "ignored_changes", ()))
        changes = []
        if "cell" in check and not np.array_equal(old.cell.array, atoms.cell.array):
            changes.append("cell")
        if "pbc" in check and not np.array_equal(old.pbc, atoms.pbc):
            changes.append("pbc")
        arrays1, arrays2 = old.arrays, atoms.arrays
        for name in check:
            if name in ("cell", "pbc"):
                continue
            a1, a2 = arrays1.get(name), arrays2.get(name)
            if a1 is None and a2 is None:
                continue
            if a1 is None or a2 is None or not np.array_equal(a1, a2):
                changes.append(name)
        return changes

    def _species(self, atoms) -> np.ndarray:
        numbers = atoms.numbers
        key = self._species_key
        if key is not None and np.array_equal(key[0], numbers):
            return key[1]
        species = self.basis.species_of(atoms.get_chemical_symbols())
        self._species_key = (numbers.copy(), species)
        return species

    def _graders(self, properties) -> list:
        """The active sets that grade this call; PropertyNotImplementedError for a requested grade
        without its active set."""
        wanted = set(properties)
        if wanted & _GAMMA_PROPERTIES and self.active_set is None:
            raise PropertyNotImplementedError(
                "gamma needs an active set: ACECalculator(potential, active_set='potential.asi')")
        if wanted & _LOCAL_PROPERTIES and self.local_active_set is None:
            raise PropertyNotImplementedError(
                "gamma_local needs a local active set: ACECalculator(potential, local_active_set='pot.lasi')")
        ensemble_only = [p for p in properties if p in ENSEMBLE_PROPERTIES]
        if ensemble_only and self.model.size == 1:
            raise PropertyNotImplementedError(
                f"{', '.join(ensemble_only)} need an ensemble: ACECalculator([pot1.yaml, pot2.yaml, ...]) "
                "(or an ensemble file, see docs/ensembles.md)")
        if not self.compute_gamma:
            return []
        return [g for g in (self.active_set, self.local_active_set) if g is not None]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        graders = self._graders(properties)
        cell = atoms.cell.array
        results = model_results(self.model, atoms.positions, cell, atoms.pbc, self._species(atoms), graders,
                                self.error_calibration, self.num_threads)
        if "stress" not in results and ("stress" in properties or "stress_std" in properties):
            raise PropertyNotImplementedError("stress needs a three-dimensional cell (rank-3 cell vectors)")
        if "forces_error_estimate" in properties and "forces_error_estimate" not in results:
            raise PropertyNotImplementedError(
                f"forces_error_estimate: the error calibration maps {self.error_calibration.measure!r}, which this "
                "calculator does not compute (give it the matching active set, local active set or ensemble)"
                if self.error_calibration is not None else
                "forces_error_estimate needs an error calibration: ACECalculator(..., error_calibration=FILE)")
        self.results.update(results)
