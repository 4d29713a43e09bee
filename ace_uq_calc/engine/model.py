"""A model: K >= 1 member potentials evaluated together, without ASE. A single potential is a model
of one member; an ensemble has several.

Members that share one basis (:func:`shared_basis_mismatch` is None: everything but the B-function
coefficients identical) are evaluated together by the shared-basis kernel: one descriptor pass, K
coefficient vectors (:func:`~ace_uq_calc.engine.evaluate.evaluate_shared`). Members with different
bases (e.g. independently trained pacemaker potentials) are evaluated one by one; both give the same
numbers.

Units: energies eV, forces eV/Angstrom, virial eV.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.inputs import ensemble_tree
from ..model.basis import ACEBasis, load_basis
from ..model.kernel_inputs import basis_layout
from ..model.yaml_format import reference_energies_of
from .evaluate import evaluate, evaluate_shared
from .neighbour_cache import NeighbourListCache

#: ACEBasis arrays that must be equal (exactly, same shape and dtype) for two members to share a basis:
#: everything the descriptor pass and the embedding use. Only ``coefficients`` may differ.
SHARED_BASIS_ARRAYS = (
    "cutoff_matrix", "radial_tables", "radial_scale", "radial_nlut", "bond_r_in", "bond_delta_in",
    "harmonic_norm", "function_start", "function_rank", "function_a1_index", "function_ms_start",
    "ms_coefficient", "ms_factor", "ndensity", "embedding_weight", "embedding_exponent", "embedding_kind",
    "rho_core_cut", "drho_core_cut",
)
SHARED_BASIS_SCALARS = ("elements", "nradbase", "nradmax", "lmax", "zbl")


def shared_basis_mismatch(a: ACEBasis, b: ACEBasis) -> str | None:
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


@dataclass
class ModelEvaluation:
    """All members of a model on one structure (reference energies not included)."""

    energies: np.ndarray            # (K, N) eV
    forces: np.ndarray | None       # (K, N, 3) eV/A
    virial: np.ndarray | None       # (K, 3, 3) eV
    projections: np.ndarray | None             # (N, max nfunc) linear projections of member 0
    nonlinear_projections: np.ndarray | None   # (N, max nfunc * max ndensity) of member 0
    neighbour_count: np.ndarray     # (N,)


class Model:
    """K >= 1 member potentials (paths, PotentialFile or ACEBasis), grouped by shared basis.

    ``groups`` lists the member indices of each shared-basis group (first appearance order); groups of
    two or more members run the shared-basis kernel (one descriptor pass) unless ``fast=False``, the
    others the single-model kernel member by member. ``reference_energy`` (K, n_elements) eV holds each
    member's one-body energies E0 (metadata ``reference_energy_<El>``, zero with
    ``reference_energies=False``) in the element order of member 0; all members must know the same
    elements. ``skin``: neighbour-list skin in Angstrom (one cache per group, see
    :class:`~ace_uq_calc.engine.neighbour_cache.NeighbourListCache`).
    """

    def __init__(self, members, reference_energies: bool = True, skin: float = 0.0, fast: bool = True):
        members = list(members)
        if not members:
            raise ValueError("a model needs at least one member potential")
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
                if shared_basis_mismatch(self.bases[g[0]], b) is None:
                    g.append(k)
                    break
            else:
                groups.append([k])
        self.groups = groups
        self._stacked = {}      # first member of a group -> (member coefficients (F, nd, K), tree)
        for g in groups:
            if len(g) > 1 and self.fast:
                coef = np.ascontiguousarray(np.stack([self.bases[k].coefficients for k in g], axis=2),
                                            dtype=np.float64)
                base = self.bases[g[0]]
                self._stacked[g[0]] = (coef, ensemble_tree(basis_layout(base), base.function_start, coef))
        self.reference_energy = np.zeros((len(self.bases), first.n_elements))
        if reference_energies:
            for k, b in enumerate(self.bases):
                e0 = reference_energies_of(b.potential)
                self.reference_energy[k] = [e0.get(el, 0.0) for el in first.elements]
        self._group_species = [self._species_lookup(g) for g in groups]
        self.caches = [NeighbourListCache(skin) for _ in groups]

    def _species_lookup(self, group) -> np.ndarray | None:
        """Map from member 0's species indices to the group's, or None when the element orders agree."""
        names = self.bases[0].elements
        els = self.bases[group[0]].elements
        if els == names:
            return None
        return np.array([els.index(el) for el in names], dtype=np.int64)

    @property
    def size(self) -> int:
        """K, the number of members."""
        return len(self.bases)

    @property
    def elements(self) -> list:
        return list(self.bases[0].elements)

    @property
    def shared(self) -> bool:
        """True when all members share one basis (one descriptor pass per call)."""
        return len(self.groups) == 1

    def clear_neighbour_lists(self) -> None:
        for cache in self.caches:
            cache.clear()

    def evaluate(self, positions, cell, pbc, species, forces: bool = True, projections: bool = False,
                 nonlinear: bool = False, num_threads: int | None = None) -> ModelEvaluation:
        """All members on one structure; ``species``: indices into :attr:`elements` (N,).
        ``projections`` / ``nonlinear``: the linear / non-linear projections of member 0."""
        species = np.asarray(species)
        n_atoms = len(species)
        n_members = self.size
        if n_members == 1:      # the common case without copies
            r = evaluate(self.bases[0], positions, cell, pbc, species, forces=forces, projections=projections,
                         nonlinear=nonlinear, neighbour_cache=self.caches[0], num_threads=num_threads)
            return ModelEvaluation(
                energies=r.energies[None], forces=None if r.forces is None else r.forces[None],
                virial=None if r.virial is None else r.virial[None], projections=r.projections,
                nonlinear_projections=r.nonlinear_projections, neighbour_count=r.neighbour_count)
        energies = np.empty((n_members, n_atoms))
        force_arr = np.empty((n_members, n_atoms, 3)) if forces else None
        virial = np.empty((n_members, 3, 3)) if forces else None
        proj = nlproj = counts = None
        for gi, group in enumerate(self.groups):
            lookup = self._group_species[gi]
            sp = species if lookup is None else lookup[species]
            first_group = gi == 0
            stacked = self._stacked.get(group[0])
            if stacked is not None:
                r = evaluate_shared(self.bases[group[0]], stacked[0], positions, cell, pbc, sp, forces=forces,
                                    projections=projections and first_group, neighbour_cache=self.caches[gi],
                                    num_threads=num_threads, tree=stacked[1])
                energies[group] = r.energies
                if forces:
                    force_arr[group] = r.forces
                    virial[group] = r.virial
                if first_group:
                    proj = r.projections
                counts = r.neighbour_count if counts is None else counts
                continue
            for k in group:
                first_member = k == 0
                r = evaluate(self.bases[k], positions, cell, pbc, sp, forces=forces,
                             projections=projections and first_member, nonlinear=nonlinear and first_member,
                             neighbour_cache=self.caches[gi], num_threads=num_threads)
                energies[k] = r.energies
                if forces:
                    force_arr[k] = r.forces
                    virial[k] = r.virial
                if first_member:
                    proj, nlproj = r.projections, r.nonlinear_projections
                counts = r.neighbour_count if counts is None else counts
        if nonlinear and nlproj is None:    # member 0 ran in the shared kernel, which has linear projections only
            nlproj = evaluate(self.bases[0], positions, cell, pbc, species, forces=False, nonlinear=True,
                              neighbour_cache=self.caches[0], num_threads=num_threads).nonlinear_projections
        return ModelEvaluation(energies=energies, forces=force_arr, virial=virial, projections=proj,
                               nonlinear_projections=nlproj, neighbour_count=counts)
