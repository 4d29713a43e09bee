"""ASE calculator for pacemaker B-basis ACE potentials, with extrapolation grades.

>>> from ace_uq_calc import ACECalculator
>>> atoms.calc = ACECalculator("Cu.yaml", active_set="Cu.asi")
>>> atoms.get_potential_energy(); atoms.calc.results["gamma"]

Units: energy eV, forces eV/Angstrom, stress eV/Angstrom^3 (ASE Voigt order xx yy zz yz xz xy,
positive when the energy rises on expansion), gamma dimensionless.
"""
from __future__ import annotations

import numba
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .evaluation import NeighbourListCache, _Threads, evaluate, kernel_threads
from .kernels.gamma import extrapolation_grades
from .model.basis import ACEBasis, load_basis
from .model.yaml_format import reference_energies_of
from .uncertainty.ensemble import ENSEMBLE_PROPERTIES

#: Default neighbour-list skin in Angstrom (see ACECalculator).
DEFAULT_SKIN = 0.5


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
    num_threads : int, optional
        Numba threads for this calculator's kernels (1 .. ``numba.config.NUMBA_NUM_THREADS``); default:
        Numba's current setting (``NUMBA_NUM_THREADS``, all cores unless set). Structures below
        ``evaluation.PARALLEL_MIN_ATOMS`` (64) atoms always run on one thread.
    skin : float
        Neighbour-list skin in Angstrom (default 0.5; 0 disables reuse). The list is built with
        cut-off + skin and reused, with vectors recomputed from the current positions and filtered by
        the true cut-off, until an atom has moved more than skin / 2 or the cell, pbc or atoms change.
        Results are identical to rebuilding every call; see ``evaluation.NeighbourListCache``.
    ensemble : list of potentials, optional
        Further members of an ensemble (after ``potential``). ``potential`` itself may also be a list of
        potentials or an ensemble file (``ace_uq_calc.ensemble_evaluation``). An ensemble calculator
        returns the members' mean energy, forces, stress, energies and their spreads ``energy_std``,
        ``energies_std`` (N), ``forces_std`` (N, 3), ``stress_std`` (6) and ``forces_dev`` (N), eV and
        eV/A (docs/ensembles.md); members sharing one basis are evaluated in one descriptor pass. Its
        active set (gamma) applies to the first member.
    error_calibration : path or ErrorCalibration, optional
        A map from an uncertainty measure (gamma, gamma_local or forces_dev) to the expected force error
        (``ace_uq_calc.uncertainty.calibration``, fitted on validation data, e.g. by ``ace-uq uq-report``);
        adds ``forces_error_estimate`` (N,) in eV/A. The measure must be computed by this calculator.
    local_active_set : path or LocalActiveSet, optional
        Per-cluster active sets (``ace-uq activeset --local``, ``ace_uq_calc.uncertainty.local``); adds
        ``gamma_local`` (N,) = min over clusters of the cluster grade, ``gamma_cluster`` (N,) = the cluster
        attaining it, and ``max_gamma_local``. Shares the descriptor pass with ``gamma`` (ensembles: the first
        member's projections, like ``gamma``).
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
        from .ensemble_evaluation import EnsembleModel, ensemble_members

        members = ensemble_members(potential, ensemble)
        self.ensemble = None        # EnsembleModel of an ensemble calculator
        if members is not None:
            self.ensemble = EnsembleModel(members, reference_energies=reference_energies, skin=skin)
            potential = self.ensemble.bases[0]
            self.implemented_properties = list(type(self).implemented_properties) + ENSEMBLE_PROPERTIES
        if error_calibration is not None:
            from .uncertainty.calibration import ErrorCalibration

            if not isinstance(error_calibration, ErrorCalibration):
                error_calibration = ErrorCalibration.load(error_calibration)
        self.error_calibration = error_calibration
        if num_threads is not None:
            if isinstance(num_threads, bool) or int(num_threads) != num_threads or not (
                    1 <= int(num_threads) <= numba.config.NUMBA_NUM_THREADS):
                raise ValueError(f"num_threads must be an integer from 1 to {numba.config.NUMBA_NUM_THREADS} "
                                 f"(NUMBA_NUM_THREADS), got {num_threads!r}")
            num_threads = int(num_threads)
        self.num_threads = num_threads
        self.neighbour_cache = NeighbourListCache(skin)
        self._species_key = None
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
        self._inverse = {}      # element -> C-contiguous float64 ASI, for the gamma kernel
        if self.active_set is not None:
            for el in self.basis.elements:
                if el in self.active_set.inverse:
                    self._inverse[el] = np.ascontiguousarray(self.active_set.inverse[el], dtype=np.float64)
        self.local_active_set = None
        if local_active_set is not None:
            from .uncertainty.local import prepare_local_active_set

            self.local_active_set = prepare_local_active_set(local_active_set, self.basis, self.ensemble)

    @property
    def skin(self) -> float:
        return self.neighbour_cache.skin

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
        species = self._species(atoms)
        if self.ensemble is not None:
            from .ensemble_evaluation import ensemble_results

            self.results.update(ensemble_results(self, atoms, species, properties, wants_gamma))
            if self.error_calibration is not None:
                self._estimate_errors(properties)
            return
        wanted = [p for p in properties if p in ENSEMBLE_PROPERTIES]
        if wanted:
            raise PropertyNotImplementedError(
                f"{', '.join(wanted)} need an ensemble: ACECalculator([pot1.yaml, pot2.yaml, ...]) "
                "(or an ensemble file, see docs/ensembles.md)")
        cell = atoms.cell.array
        pbc = atoms.pbc
        nonlinear = bool(wants_gamma and self.active_set is not None and self.active_set.nonlinear)
        local = self.local_active_set if self.compute_gamma else None
        result = evaluate(
            self.basis, atoms.positions, cell, pbc, species,
            forces=True,
            projections=bool(wants_gamma and not nonlinear) or bool(local is not None and not local.nonlinear),
            nonlinear=nonlinear or bool(local is not None and local.nonlinear),
            neighbour_cache=self.neighbour_cache,
            num_threads=self.num_threads,
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
        if local is not None:
            from .uncertainty.local import local_results

            self.results.update(local_results(local, self.basis, species, result, self.num_threads))
        elif {"gamma_local", "gamma_cluster", "max_gamma_local"} & set(properties):
            raise PropertyNotImplementedError(
                "gamma_local needs a local active set: ACECalculator(potential, local_active_set='pot.lasi')")
        # (keep this step last: it maps a per-atom uncertainty computed above to an expected error)
        if self.error_calibration is not None:
            self._estimate_errors(properties)

    def _estimate_errors(self, properties) -> None:
        measure = self.error_calibration.measure
        if measure not in self.results:
            if "forces_error_estimate" in properties:
                raise PropertyNotImplementedError(
                    f"forces_error_estimate: the error calibration maps {measure!r}, which this calculator "
                    f"does not compute (give it the matching active set, local active set or ensemble)")
            return
        self.results["forces_error_estimate"] = self.error_calibration.predict(self.results[measure])

    def _gamma(self, species, result) -> np.ndarray:
        """gamma_i = max_j |x_i @ ASI[:, j]| per element, in a Numba kernel (no BLAS threads)."""
        x = result.nonlinear_projections if self.active_set.nonlinear else result.projections
        gamma = np.zeros(len(species))
        if not len(species):
            return gamma
        with _Threads(kernel_threads(len(species), self.num_threads)):
            threads = numba.get_num_threads()
            for e, el in enumerate(self.basis.elements):
                rows = np.flatnonzero(species == e)
                if not len(rows):
                    continue
                asi = self._inverse.get(el)
                if asi is None:     # let the active set raise its error for a missing element
                    self.active_set.grades(el, x[rows])
                    continue
                if asi.shape[0] > x.shape[1]:
                    raise ValueError(f"projection width {x.shape[1]} does not match the inverse active set "
                                     f"size {asi.shape[0]}")
                extrapolation_grades(x, rows.astype(np.int64), asi, min(threads, len(rows)), gamma)
        return gamma
