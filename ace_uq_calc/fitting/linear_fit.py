"""Linear ACE fits of energies, forces and stresses by regularised least squares.

Assembly streams over structures into normal equations (memory O(m^2) in the number of functions,
not O(data)). The ridge strength is chosen on a validation split of the training structures
(by structure, fixed seed) using the validation normal equations, then the model is refitted on
all training structures with that strength.

Loss (each term averaged over its own rows, so the weights are relative importances):
  w_E * mean_s ((E_s - E^_s) / N_s)^2 + w_F * mean_components (F - F^)^2 + w_S * mean (sigma - sigma^)^2
Energies in eV, forces eV/A, stress eV/A^3.

One-body reference energies E0 per element are extra, unregularised columns (or fixed from
isolated-atom structures when the data contain them), fitted as corrections to a least-squares fit of
the total energies on the compositions alone (which keeps the normal equations well conditioned when
the energies are large, e.g. all-electron totals). pacemaker's .yaml has no field for them: they
are stored in the file's ``metadata`` as ``reference_energy_<El>`` (eV), which pacemaker ignores and
:class:`~ace_uq_calc.ACECalculator` adds by default.

The normal equations are assembled by :mod:`ace_uq_calc.fitting.assembly`.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

from ..kernels.neighbours import build_neighbour_list
from ..model.basis import ACEBasis, build_basis
from ..model.yaml_format import (
    REFERENCE_ENERGY_KEY,
    PotentialFile,
)
from .assembly import (
    NormalEquations,
    assemble,
    consecutive_chunks,
    has_energy,
    resolve_workers,
    row_norms,
    start_workers,
)
from .design import is_linear
from .posterior import posterior_scale_from_validation
from .weights import FitWeights

#: ridge strengths tried on the validation split: 1e-16 ... 1 in half decades (relative to the diagonal
#: of the column-normalised normal equations)
DEFAULT_LAMBDAS = tuple(10.0 ** np.arange(-16.0, 0.25, 0.5))

def isolated_atom_energies(frames, basis: ACEBasis) -> dict:
    """E0 per element from single-atom structures with no neighbour within the cut-off."""
    out = {}
    for atoms in frames:
        if len(atoms) != 1 or not has_energy(atoms):
            continue
        species = basis.species_of(atoms.get_chemical_symbols())
        nl = build_neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, species, basis.cutoff_matrix)
        if len(nl.index) == 0:
            out.setdefault(atoms.get_chemical_symbols()[0], atoms.get_potential_energy())
    return out


def solve_ridge(eq: NormalEquations, lam: float, m: int, e0_ridge: float = 0.0) -> np.ndarray:
    """Minimise ||A c - b||^2 + lam * ||D c_ACE||^2, D = sqrt(diag(A^T A)) of the ACE columns
    (a scale-free ridge; the E0 columns are penalised only by ``e0_ridge``, default 0)."""
    d = np.sqrt(np.maximum(np.diag(eq.ata), 1e-300))
    ata = eq.ata / np.outer(d, d)
    atb = eq.atb / d
    reg = np.full(len(d), float(e0_ridge))
    reg[:m] = lam
    # columns that never appear (no data) get a unit ridge so the system stays regular
    reg[np.diag(eq.ata) == 0] = 1.0
    system = ata + np.diag(reg)
    try:        # Cholesky (half the cost of LU); near-singular systems (tiny lam) fall back to LU
        scaled = cho_solve(cho_factor(system, lower=False, check_finite=False), atb, check_finite=False)
        if not np.all(np.isfinite(scaled)):
            raise LinAlgError("non-finite solution")
    except (LinAlgError, ValueError):
        try:
            scaled = np.linalg.solve(system, atb)
        except np.linalg.LinAlgError:      # exactly singular (lam = 0 with dependent columns)
            scaled = np.linalg.lstsq(system, atb, rcond=None)[0]
    return scaled / d


#: ridge on the (scaled) E0 columns when the training compositions do not determine them all
DEGENERATE_E0_RIDGE = 1e-8


def composition_offsets(frames, elements, fixed_e0: dict):
    """Least-squares E0 per free element from the total energies and compositions alone
    (minimum-norm when the compositions do not determine them), and the free elements whose E0 the
    compositions leave undetermined (empty list when they are all determined)."""
    free = [el for el in elements if el not in fixed_e0]
    if not free:
        return {}, []
    counts, energies = [], []
    for atoms in frames:
        if not has_energy(atoms):
            continue
        symbols = atoms.get_chemical_symbols()
        energies.append(atoms.get_potential_energy() - sum(fixed_e0.get(s, 0.0) for s in symbols))
        counts.append([symbols.count(el) for el in free])
    C = np.array(counts, dtype=float).reshape(-1, len(free))
    if C.size == 0:
        return {el: 0.0 for el in free}, []
    offset = np.linalg.lstsq(C, np.array(energies), rcond=None)[0]
    present = C.any(axis=0)
    rank = np.linalg.matrix_rank(C[:, present]) if present.any() else 0
    undetermined = [el for el, p in zip(free, present) if p] if rank < present.sum() else []
    return {el: float(v) for el, v in zip(free, offset)}, undetermined


@dataclass
class FitResult:
    potential: PotentialFile
    coefficients: np.ndarray
    reference_energies: dict
    regularisation: float
    validation_curve: list = field(default_factory=list)
    fit_time: float = 0.0
    n_train: int = 0
    n_validation: int = 0
    #: energies subtracted per atom of each element before assembling (composition-only fit); the E0
    #: columns of the normal equations are corrections to these (reference_energies include them)
    e0_offset: dict = field(default_factory=dict)
    #: the final (training + validation) normal equations, for posterior ensembles
    normal_equations: NormalEquations | None = None
    #: ridge on the E0 columns used in the final solve; E0 fixed by isolated atoms (not fitted)
    e0_ridge: float = 0.0
    fixed_e0: dict = field(default_factory=dict)
    #: widening of the posterior that makes its spread match the validation error (1 without a
    #: validation split; see fitting.posterior.posterior_scale_from_validation)
    posterior_scale: float = 1.0
    #: the weights of the loss (energy, forces, stress)
    weights: FitWeights | None = None


def fit_linear(basis_or_potential, frames, weights: FitWeights | None = None, validation_fraction: float = 0.1,
               seed: int = 0, lambdas=None, reference_energies: dict | None = None,
               progress: bool = False, workers: int | None = None) -> FitResult:
    """Fit the coefficients of a linear basis (one density, F = rho) to labelled ASE structures.

    frames: Atoms with energies (and forces, stress when present) attached as calculator results
    (e.g. from ``ase.io.read(extxyz, ":")``). reference_energies: E0 per element to use (eV); by default
    taken from isolated-atom structures in ``frames`` if present, otherwise fitted.
    lambdas: ridge strengths to try on the validation split (default :data:`DEFAULT_LAMBDAS`).
    workers: processes for the assembly (None: all available CPUs for large fits, or the environment
    variable ACE_UQ_FIT_WORKERS; 1: this process only). The fit does not depend on it.
    Returns the potential with fitted coefficients and E0 in its metadata.
    """
    t0 = time.perf_counter()
    weights = weights or FitWeights()
    if isinstance(basis_or_potential, ACEBasis):
        basis = basis_or_potential
    else:
        basis = build_basis(basis_or_potential)
    if not is_linear(basis):
        raise ValueError("fit_linear needs a linear basis: one density per element with F(rho) = rho")
    frames = [a for a in frames if len(a) > 0]
    if not frames:
        raise ValueError("no training structures")
    fixed = dict(reference_energies) if reference_energies else isolated_atom_energies(frames, basis)
    # centre the energies on a composition-only fit (better conditioned normal equations); the E0
    # columns then fit the corrections. If the compositions cannot separate the E0 of some elements
    # (e.g. every structure is AB), a tiny ridge on the E0 columns picks the minimum-norm split.
    offset, undetermined = composition_offsets(frames, basis.elements, fixed)
    e0_ridge = DEGENERATE_E0_RIDGE if undetermined else 0.0
    if undetermined:
        warnings.warn(f"the compositions of the training structures do not determine the reference energies of "
                      f"{', '.join(undetermined)} separately (only combinations of them); they are split by a "
                      f"minimum-norm rule. Energies of other compositions are then not meaningful: add structures "
                      f"of other compositions or isolated atoms, or pass reference_energies.", RuntimeWarning,
                      stacklevel=2)
    m = int(basis.function_start[-1])
    norms = row_norms(frames, weights)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frames))
    n_val = int(round(validation_fraction * len(frames))) if len(frames) >= 10 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_frames = [frames[i] for i in train_idx]
    val_frames = [frames[i] for i in val_idx]
    pool = start_workers(resolve_workers(workers, frames, basis, len(consecutive_chunks(train_frames))), basis, weights,
                          norms, fixed, offset)
    try:
        train_eq = assemble(basis, train_frames, weights, norms, fixed, progress, "fit: assembling", pool=pool,
                            e0_offset=offset)
        val_eq = (assemble(basis, val_frames, weights, norms, fixed, progress, "fit: validation", pool=pool,
                           e0_offset=offset) if n_val else None)
    finally:
        if pool is not None:
            pool.close()
    lambdas = list(lambdas) if lambdas is not None else list(DEFAULT_LAMBDAS)
    curve = []
    if n_val:
        for lam in lambdas:
            coef = solve_ridge(train_eq, lam, m, e0_ridge)
            curve.append((lam, val_eq.sse(coef)))
        best = min(curve, key=lambda item: item[1])[0]
        scale = posterior_scale_from_validation(train_eq, val_eq, best, m, e0_ridge)
        train_eq += val_eq
    else:
        best = 1e-8
        scale = 1.0
    coef = solve_ridge(train_eq, best, m, e0_ridge)
    fitted, e0 = fitted_potential(basis, coef, offset, fixed)
    return FitResult(potential=fitted, coefficients=coef[:m], reference_energies=e0, regularisation=best,
                     validation_curve=curve, fit_time=time.perf_counter() - t0,
                     n_train=len(train_idx), n_validation=n_val, e0_offset=dict(offset),
                     normal_equations=train_eq, e0_ridge=e0_ridge, fixed_e0=dict(fixed), posterior_scale=scale,
                     weights=weights)


def fitted_potential(basis: ACEBasis, coef: np.ndarray, offset: dict, fixed: dict):
    """The potential of ``basis`` with the linear coefficients ``coef`` (m ACE columns then one E0 column
    per element, as solved from the normal equations) and its reference energies (metadata
    ``reference_energy_<El>``: fitted E0 column + composition offset, or the fixed value).
    Returns (PotentialFile, {element: E0 in eV})."""
    m = int(basis.function_start[-1])
    e0 = {el: float(coef[m + e]) + offset.get(el, 0.0) for e, el in enumerate(basis.elements)}
    e0.update(fixed)
    pot = basis.potential
    new_functions = {}
    for e, el in enumerate(basis.elements):
        specs = []
        f0 = basis.function_start[e]
        for k, spec in enumerate(basis.ordered_functions[el]):
            clone = type(spec)(central=spec.central, neighbours=spec.neighbours, nr=spec.nr, nl=spec.nl,
                               lint=spec.lint, coefficients=np.array([coef[f0 + k]]))
            clone.file_index = k
            specs.append(clone)
        new_functions[el] = specs
    metadata = dict(pot.metadata)
    for el, value in e0.items():
        metadata[REFERENCE_ENERGY_KEY + el] = repr(float(value))
    fitted = PotentialFile(elements=list(pot.elements), delta_spline_bins=pot.delta_spline_bins,
                           embeddings=pot.embeddings, bonds=pot.bonds, functions=new_functions,
                           metadata=metadata, source=pot.source)
    return fitted, e0
