"""Evaluation of an ensemble of ACE potentials on one structure, without ASE.

Members that share one basis (:func:`basis_mismatch` returns None: identical everything except the
B-function coefficients) are evaluated together by the shared-basis kernel
(:mod:`ace_uq_calc.kernels.ensemble`): one descriptor pass, K coefficient vectors. Members with different
bases (e.g. independently trained pacemaker potentials) are evaluated one by one with
:func:`ace_uq_calc.evaluation.evaluate` ("slow path"); both give the same numbers.

Units: energies eV, forces eV/Angstrom, virial eV.

Ensemble files: a ``.yaml`` file whose top-level key ``ace_uq_ensemble`` lists member potential paths
(relative to the ensemble file) is accepted wherever a list of members is, e.g.::

    ace_uq_ensemble:
      - pot.ensemble/member_00.yaml
      - pot.ensemble/member_01.yaml
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .evaluation import (
    NeighbourListCache, _Threads, basis_layout, checked_neighbour_list, evaluate, kernel_basis_arguments,
    kernel_threads, prepared_structure,
)
from .kernels.checks import all_finite
from .kernels.ensemble import EnsembleTree, accumulate_ensemble_forces, ensemble_tree, evaluate_ensemble_atoms
from .model.basis import ACEBasis, load_basis
from .model.yaml_format import PotentialFormatError, reference_energies_of

#: top-level key of an ensemble file (a YAML list of member paths, relative to the file)
ENSEMBLE_FILE_KEY = "ace_uq_ensemble"

#: ACEBasis arrays that must be equal (exactly, same shape and dtype) for two members to share a basis:
#: everything the descriptor pass and the embedding use. Only ``coefficients`` may differ.
SHARED_BASIS_ARRAYS = (
    "cutoff_matrix", "radial_tables", "radial_scale", "radial_nlut", "bond_r_in", "bond_delta_in",
    "harmonic_norm", "function_start", "function_rank", "function_a1_index", "function_ms_start",
    "ms_coefficient", "ms_factor", "ndensity", "embedding_weight", "embedding_exponent", "embedding_kind",
    "rho_core_cut", "drho_core_cut",
)
SHARED_BASIS_SCALARS = ("elements", "nradbase", "nradmax", "lmax", "zbl")


def basis_mismatch(a: ACEBasis, b: ACEBasis) -> str | None:
    """None if ``a`` and ``b`` share one basis (same elements, radial sizes, inner cut-off type, and every
    array of :data:`SHARED_BASIS_ARRAYS` bit-identical; coefficient matrices of equal shape), else the
    name of the first thing that differs."""
    if a is b:
        return None
    for name in SHARED_BASIS_SCALARS:
        if getattr(a, name) != getattr(b, name):
            return name
    for name in SHARED_BASIS_ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
            return name
    if a.coefficients.shape != b.coefficients.shape:
        return "coefficients shape"
    return None


def read_ensemble_file(path) -> list:
    """Member paths of an ensemble file (see module docstring), resolved relative to the file."""
    import yaml

    path = os.fspath(path)
    with open(path, encoding="utf-8") as fh:
        document = yaml.safe_load(fh)
    if not is_ensemble_document(document):
        raise PotentialFormatError(f"{path}: not an ensemble file (needs a top-level '{ENSEMBLE_FILE_KEY}' list)")
    members = document[ENSEMBLE_FILE_KEY]
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise PotentialFormatError(f"{path}: '{ENSEMBLE_FILE_KEY}' must be a non-empty list of potential paths")
    base = os.path.dirname(os.path.abspath(path))
    return [m if os.path.isabs(m) else os.path.join(base, m) for m in members]


def is_ensemble_document(document) -> bool:
    return isinstance(document, dict) and ENSEMBLE_FILE_KEY in document


def is_ensemble_file(path) -> bool:
    """True for a ``.yaml`` file whose first non-comment line starts the ensemble key (cheap check)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                return stripped.startswith(ENSEMBLE_FILE_KEY)
    return False


def write_ensemble_file(path, member_paths) -> None:
    """Write an ensemble file listing ``member_paths`` (stored relative to the file's directory)."""
    from ._atomic_io import atomic_write

    base = os.path.dirname(os.path.abspath(os.fspath(path)))
    lines = [f"{ENSEMBLE_FILE_KEY}:"]
    for member in member_paths:
        rel = os.path.relpath(os.path.abspath(os.fspath(member)), base)
        lines.append(f"  - {rel!r}" if any(c in rel for c in ":#'\"") else f"  - {rel}")
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def expand_members(potentials) -> list:
    """A list of members (paths, PotentialFile, ACEBasis; ensemble files are expanded) from a list or
    from one ensemble file path."""
    if isinstance(potentials, (str, os.PathLike)):
        potentials = [potentials]
    out = []
    for item in potentials:
        if isinstance(item, (str, os.PathLike)) and is_ensemble_file(item):
            out.extend(read_ensemble_file(item))
        else:
            out.append(item)
    if not out:
        raise ValueError("an ensemble needs at least one member potential")
    return out


class EnsembleModel:
    """K member potentials, grouped by shared basis.

    members: list of paths, PotentialFile or ACEBasis (ensemble files expanded). ``groups`` lists the
    member indices of each shared-basis group (first appearance order); groups of two or more members
    run the shared-basis kernel (one descriptor pass) unless ``fast=False``, the others the single-model
    evaluator member by member. ``reference_energy`` (K, n_elements) eV holds each member's E0 (metadata
    ``reference_energy_<El>``) in the element order of the first member; all members must know the same
    elements.
    """

    def __init__(self, members, reference_energies: bool = True, fast: bool = True, skin: float = 0.0):
        members = expand_members(members)
        self.bases = [load_basis(m) for m in members]
        first = self.bases[0]
        for k, b in enumerate(self.bases[1:], start=1):
            if sorted(b.elements) != sorted(first.elements):
                raise ValueError(f"ensemble member {k} ({b.potential.source}) has elements {b.elements}, "
                                 f"member 0 ({first.potential.source}) has {first.elements}")
        self.fast = bool(fast)
        groups: list = []
        for k, b in enumerate(self.bases):
            for g in groups:
                if basis_mismatch(self.bases[g[0]], b) is None:
                    g.append(k)
                    break
            else:
                groups.append([k])
        self.groups = groups
        self._stacked = {}
        self._trees = {}
        for g in groups:
            if len(g) > 1 and self.fast:
                coef = np.ascontiguousarray(np.stack([self.bases[k].coefficients for k in g], axis=2),
                                            dtype=np.float64)
                self._stacked[g[0]] = coef
                base = self.bases[g[0]]
                self._trees[g[0]] = ensemble_tree(basis_layout(base), base.function_start, coef)
        self.reference_energy = np.zeros((len(self.bases), first.n_elements))
        if reference_energies:
            for k, b in enumerate(self.bases):
                e0 = reference_energies_of(b.potential)
                self.reference_energy[k] = [e0.get(el, 0.0) for el in first.elements]
        self.caches = [NeighbourListCache(skin) for _ in groups]

    @property
    def size(self) -> int:
        return len(self.bases)

    @property
    def elements(self) -> list:
        return list(self.bases[0].elements)

    @property
    def shared(self) -> bool:
        """True when all members share one basis (one descriptor pass per call)."""
        return len(self.groups) == 1

    def species_per_group(self, species0: np.ndarray) -> list:
        """Species indices (element order of member 0) translated to each group's element order."""
        out = []
        names = self.bases[0].elements
        for g in self.groups:
            els = self.bases[g[0]].elements
            if els == names:
                out.append(species0)
            else:
                lookup = np.array([els.index(el) for el in names], dtype=np.int64)
                out.append(lookup[species0])
        return out


@dataclass
class EnsembleEvaluation:
    energies: np.ndarray           # (K, N) eV, reference energies not included
    forces: np.ndarray | None      # (K, N, 3) eV/A
    virial: np.ndarray | None      # (K, 3, 3) eV
    projections: np.ndarray | None  # (N, max nfunc) of the first group's basis
    neighbour_count: np.ndarray    # (N,)


def evaluate_shared(basis: ACEBasis, member_coefficients: np.ndarray, positions, cell, pbc, species,
                    forces: bool = True, projections: bool = False, neighbour_cache: NeighbourListCache | None = None,
                    num_threads: int | None = None, tree: EnsembleTree | None = None):
    """K members sharing ``basis`` and differing in ``member_coefficients`` (F, max ndensity, K).

    ``tree``: the members' :func:`~ace_uq_calc.kernels.ensemble.ensemble_tree` if the caller keeps it
    (computed here otherwise). Returns (energies (K, N) eV, forces (K, N, 3) eV/A or None, virial
    (K, 3, 3) eV or None, projections (N, max nfunc) or None, neighbour_count (N,)).
    """
    coef = np.ascontiguousarray(member_coefficients, dtype=np.float64)
    if coef.ndim != 3 or coef.shape[:2] != basis.coefficients.shape or coef.shape[2] < 1:
        raise ValueError(f"member_coefficients must have shape {basis.coefficients.shape + ('K',)} with K >= 1, "
                         f"found {coef.shape}")
    positions, cell, pbc, species = prepared_structure(basis, positions, cell, pbc, species)
    if tree is None:
        tree = ensemble_tree(basis_layout(basis), basis.function_start, coef)
    n_atoms = len(positions)
    nmem = coef.shape[2]
    threads = kernel_threads(n_atoms, num_threads)
    with _Threads(threads):
        nl = checked_neighbour_list(basis, positions, cell, pbc, species, neighbour_cache=neighbour_cache)
        energies = np.empty((nmem, n_atoms))
        pair_gradient = np.empty((nmem, len(nl.distance) if forces else 0, 3))
        proj = np.zeros((n_atoms if projections else 0, basis.max_nfunc))
        if n_atoms:
            evaluate_ensemble_atoms(
                species, nl.first, nl.index, nl.vector, nl.distance,
                *kernel_basis_arguments(basis, coef),
                forces, projections, min(n_atoms, threads),
                *tree,
                energies, pair_gradient, proj,
            )
    force_arr = virial = None
    if forces:
        force_arr = np.empty((nmem, n_atoms, 3))
        virial = np.empty((nmem, 3, 3))
        accumulate_ensemble_forces(nl.first, nl.index, nl.vector, pair_gradient, force_arr, virial)
    if not (all_finite(energies.ravel()) and (force_arr is None or all_finite(force_arr.reshape(-1, 3)))
            and (virial is None or all_finite(virial.reshape(-1, 3)))):
        bad = np.unique(np.nonzero(~np.isfinite(energies))[1]) if energies.size else []
        raise FloatingPointError(
            f"the ensemble on {basis.potential.source} gives non-finite results (atoms {list(bad)[:10]}): its "
            "parameters overflow at this geometry")
    return energies, force_arr, virial, (proj if projections else None), np.diff(nl.first)


def evaluate_ensemble(model: EnsembleModel, positions, cell, pbc, species, forces: bool = True,
                      projections: bool = False, num_threads: int | None = None) -> EnsembleEvaluation:
    """All members of ``model`` on one structure (species: indices into ``model.elements``).
    Shared-basis groups of two or more members use one descriptor pass; the others run one by one."""
    n_atoms = len(positions)
    nmem = model.size
    energies = np.empty((nmem, n_atoms))
    force_arr = np.empty((nmem, n_atoms, 3)) if forces else None
    virial = np.empty((nmem, 3, 3)) if forces else None
    proj = None
    counts = None
    for gi, (group, sp) in enumerate(zip(model.groups, model.species_per_group(np.asarray(species)))):
        want_proj = projections and gi == 0
        stacked = model._stacked.get(group[0])
        if stacked is not None:
            e, f, v, p, c = evaluate_shared(model.bases[group[0]], stacked, positions, cell, pbc, sp, forces=forces,
                                            projections=want_proj, neighbour_cache=model.caches[gi],
                                            num_threads=num_threads, tree=model._trees[group[0]])
            energies[group] = e
            if forces:
                force_arr[group] = f
                virial[group] = v
            if want_proj:
                proj = p
            counts = c if counts is None else counts
        else:
            for k in group:
                r = evaluate(model.bases[k], positions, cell, pbc, sp, forces=forces,
                             projections=want_proj and k == group[0], neighbour_cache=model.caches[gi],
                             num_threads=num_threads)
                energies[k] = r.energies
                if forces:
                    force_arr[k] = r.forces
                    virial[k] = r.virial
                if want_proj and k == group[0]:
                    proj = r.projections
                counts = r.neighbour_count if counts is None else counts
    return EnsembleEvaluation(energies=energies, forces=force_arr, virial=virial, projections=proj,
                              neighbour_count=counts)


def ensemble_members(potential, ensemble=None):
    """The member list of an ensemble calculator, or None for a single model: ``potential`` is a list /
    tuple of members or an ensemble file, or ``ensemble`` lists further members (added after
    ``potential``)."""
    if isinstance(potential, (list, tuple)):
        members = list(potential)
    elif isinstance(potential, (str, os.PathLike)) and is_ensemble_file(potential):
        members = [potential]
    else:
        members = None if not ensemble else [potential]
    if ensemble:
        extra = [ensemble] if isinstance(ensemble, (str, os.PathLike)) else list(ensemble)
        members = (members or []) + extra
    return members


class _Projections:
    """What ``ACECalculator._gamma`` reads of an evaluation."""

    def __init__(self, projections=None, nonlinear_projections=None):
        self.projections = projections
        self.nonlinear_projections = nonlinear_projections


def ensemble_results(calc, atoms, species, properties, wants_gamma: bool) -> dict:
    """Results of an ensemble ACECalculator (``calc.ensemble`` an :class:`EnsembleModel`): the mean energy,
    free_energy, energies, forces, stress (3-D cells) and energy_std, energies_std, forces_std,
    stress_std, forces_dev (see :func:`ace_uq_calc.uncertainty.ensemble.ensemble_statistics`), each
    member with its own reference energies; gamma / max_gamma of the first member when an active set is
    loaded (members sharing a basis have identical linear projections)."""
    from ase.calculators.calculator import PropertyNotImplementedError

    from .uncertainty.ensemble import ensemble_statistics

    model: EnsembleModel = calc.ensemble
    cell = atoms.cell.array
    active = calc.active_set if wants_gamma else None
    local = calc.local_active_set if calc.compute_gamma else None
    linear_gamma = active is not None and not active.nonlinear
    linear_local = local is not None and not local.nonlinear
    ev = evaluate_ensemble(model, atoms.positions, cell, atoms.pbc, species, forces=True,
                           projections=linear_gamma or linear_local, num_threads=calc.num_threads)
    energies = ev.energies
    if model.reference_energy.any():
        energies = energies + model.reference_energy[:, species]
    volume = abs(np.linalg.det(cell))
    stresses = None
    if volume > 1e-9:
        sigma = ev.virial / volume
        sigma = 0.5 * (sigma + np.transpose(sigma, (0, 2, 1)))
        stresses = np.stack([sigma[:, 0, 0], sigma[:, 1, 1], sigma[:, 2, 2],
                             sigma[:, 1, 2], sigma[:, 0, 2], sigma[:, 0, 1]], axis=1)
    elif "stress" in properties or "stress_std" in properties:
        raise PropertyNotImplementedError("stress needs a three-dimensional cell (rank-3 cell vectors)")
    results = ensemble_statistics(energies, ev.forces, stresses)
    results["free_energy"] = results["energy"]
    results["neighbour_count"] = ev.neighbour_count
    results["ensemble_energies"] = energies.sum(axis=1)     # (K,) eV, total energy of each member
    # grades of the first member (members sharing a basis have identical linear projections)
    nonlinear_x = None
    if (active is not None and active.nonlinear) or (local is not None and local.nonlinear):
        nonlinear_x = evaluate(model.bases[0], atoms.positions, cell, atoms.pbc, species, forces=False,
                               nonlinear=True, num_threads=calc.num_threads).nonlinear_projections
    proj = _Projections(projections=ev.projections, nonlinear_projections=nonlinear_x)
    if active is not None:
        gamma = calc._gamma(species, proj)
        results["gamma"] = gamma
        results["max_gamma"] = float(gamma.max()) if len(gamma) else 0.0
    if local is not None:
        from .uncertainty.local import local_results

        results.update(local_results(local, model.bases[0], species, proj, calc.num_threads))
    return results
