"""Build a D-optimality active set for a potential from training structures, with its default thresholds.

>>> active_set = build_active_set("Cu.yaml", ase.io.read("train.xyz", ":"))
>>> active_set.save("Cu.asi")          # pacemaker's .asi (pyace, LAMMPS) and its companion file
>>> active_set.thresholds(108)         # (flag, halt) for a structure of 108 atoms

Two selections: the first on the training structures without a held-out part (by default 10 % of the
structures, chosen at random with a fixed seed), whose per-atom grades of the held-out atoms are the
in-domain grade distribution (:mod:`ace_uq_calc.uncertainty.thresholds`); the second on all structures,
the active set that is returned. The projections are computed once per structure and kept when they fit in
``memory_limit`` bytes; otherwise every pass recomputes them from the structures (memory: the active set
plus one batch).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from ..model.basis import ACEBasis, load_basis
from .active_set import ActiveSet, build_active_set_from_projections
from .projections import (
    iterate_element_batches,
    projection_width,
    structure_projections,
)
from .thresholds import GradeDistribution

#: fraction of the training structures held out of the first selection to measure in-domain grades
HELD_OUT_FRACTION = 0.1

#: fewer held-out atoms than this give no grade distribution (the monitor then uses fixed thresholds)
MIN_HELD_OUT_ATOMS = 10


def _frame_source(frames) -> Callable[[], Iterable]:
    if callable(frames):
        return frames
    frames = list(frames)
    return lambda: iter(frames)


def held_out_structures(n_structures: int, fraction: float = HELD_OUT_FRACTION, seed: int = 0) -> np.ndarray:
    """Sorted indices of the structures held out of the first selection: round(fraction n), at random
    (``numpy.random.default_rng(seed)``), none when fewer than two structures would remain."""
    count = int(round(fraction * n_structures))
    if count < 1 or n_structures - count < 2:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(n_structures)[:count])


def build_active_set(potential, frames, nonlinear: bool = False, batch_size: int = 20000,
                     tolerance: float = 1.001, progress: bool = False, memory_limit: float = 2e9,
                     held_out_fraction: float = HELD_OUT_FRACTION, seed: int = 0) -> ActiveSet:
    """Active set per element of ``potential`` from training ``frames``, with the in-domain grade
    distribution of held-out structures (module docstring).

    frames: a sequence of ASE Atoms, or a zero-argument callable returning a fresh iterator over them
    (e.g. ``lambda: ase.io.iread("train.xyz")``) for data too large to hold in memory.
    nonlinear: use the non-linear projections (one block per density) instead of the B values.
    tolerance: MaxVol tolerance; every training atom ends with gamma <= tolerance.
    held_out_fraction: 0 skips the first selection (no grade distribution, no data thresholds).
    """
    basis: ACEBasis = load_basis(potential)
    source = _frame_source(frames)
    counts = {el: 0 for el in basis.elements}
    n_structures = 0
    for atoms in source():
        symbols = atoms.get_chemical_symbols()
        basis.species_of(symbols)      # unknown elements: a clear error before any work
        for el in set(symbols):
            counts[el] += symbols.count(el)
        n_structures += 1
    missing = [el for el, n in counts.items() if n == 0]
    if missing:
        raise ValueError(f"the training structures contain no atoms of {missing}: an active set needs "
                         f"environments of every element of the potential")
    held = held_out_structures(n_structures, held_out_fraction, seed) if held_out_fraction > 0 else np.zeros(0, int)
    need = sum(counts[el] * projection_width(basis, el, nonlinear) * 8 for el in basis.elements)
    options = dict(tolerance=tolerance, batch_size=batch_size, nonlinear=nonlinear, progress=progress)
    if need <= memory_limit:
        rows, owner = _projections_in_memory(basis, source(), nonlinear)
        is_held = {el: np.isin(owner[el], held) for el in basis.elements}
        distribution = None
        if held.size and all((~is_held[el]).any() for el in basis.elements):
            first = build_active_set_from_projections({el: rows[el][~is_held[el]] for el in basis.elements},
                                                      **options)
            grades = np.concatenate([first.grades(el, rows[el][is_held[el]]) for el in basis.elements])
            distribution = _distribution(grades, held.size)
        return build_active_set_from_projections(rows, grade_distribution=distribution, **options)
    held_set = set(held.tolist())

    def kept_frames(keep):
        return (atoms for k, atoms in enumerate(source()) if keep(k))

    distribution = None
    if held_set:
        first = build_active_set_from_projections(
            {el: (lambda el=el: iterate_element_batches(basis, kept_frames(lambda k: k not in held_set), el,
                                                        batch_size, nonlinear)) for el in basis.elements}, **options)
        grades = []
        for atoms in kept_frames(lambda k: k in held_set):
            species, x = structure_projections(basis, atoms, nonlinear)
            for e, el in enumerate(basis.elements):
                if (species == e).any():
                    grades.append(first.grades(el, x[species == e, :projection_width(basis, el, nonlinear)]))
        distribution = _distribution(np.concatenate(grades), len(held_set))
    by_element = {el: (lambda el=el: iterate_element_batches(basis, source(), el, batch_size, nonlinear))
                  for el in basis.elements}
    return build_active_set_from_projections(by_element, grade_distribution=distribution, **options)


def _distribution(grades: np.ndarray, n_structures: int) -> GradeDistribution | None:
    if grades.size < MIN_HELD_OUT_ATOMS:
        return None
    return GradeDistribution.from_grades(grades, n_structures)


def _projections_in_memory(basis: ACEBasis, frames, nonlinear: bool):
    """(projections by element (n_el, m), index of the structure of every row by element)."""
    rows = {el: [] for el in basis.elements}
    owner = {el: [] for el in basis.elements}
    for k, atoms in enumerate(frames):
        species, x = structure_projections(basis, atoms, nonlinear)
        for e, el in enumerate(basis.elements):
            mask = species == e
            if mask.any():
                rows[el].append(x[mask, : projection_width(basis, el, nonlinear)])
                owner[el].append(np.full(int(mask.sum()), k))
    return ({el: np.ascontiguousarray(np.concatenate(rows[el])) for el in basis.elements},
            {el: np.concatenate(owner[el]) for el in basis.elements})


def build_active_set_from_files(potential, paths, **options) -> ActiveSet:
    """:func:`build_active_set` over all frames of the given structure files (read lazily)."""
    import ase.io

    paths = [paths] if isinstance(paths, str) else list(paths)

    def frames():
        for path in paths:
            yield from ase.io.iread(path, index=":")

    return build_active_set(potential, frames, **options)
