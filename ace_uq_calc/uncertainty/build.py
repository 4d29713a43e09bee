"""Build a D-optimality active set for a potential from training structures.

>>> active_set = build_active_set("Cu.yaml", ase.io.read("train.xyz", ":"))
>>> active_set.save("Cu.asi")          # pacemaker's .asi layout, readable by pyace and LAMMPS

The projections are computed per structure and streamed into MaxVol in batches. When all
projections fit in ``memory_limit`` bytes they are computed once and kept; otherwise every MaxVol
pass recomputes them from the structures (memory: the active set plus one batch).
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


def _frame_source(frames) -> Callable[[], Iterable]:
    if callable(frames):
        return frames
    frames = list(frames)
    return lambda: iter(frames)


def build_active_set(potential, frames, nonlinear: bool = False, batch_size: int = 20000,
                     tolerance: float = 1.001, progress: bool = False,
                     memory_limit: float = 1e9) -> ActiveSet:
    """MaxVol active set per element of ``potential`` from training ``frames``.

    frames: a sequence of ASE Atoms, or a zero-argument callable returning a fresh iterator over them
    (e.g. ``lambda: ase.io.iread("train.xyz")``) for data too large to hold in memory.
    nonlinear: use the non-linear projections (one block per density) instead of the B values.
    tolerance: MaxVol tolerance; every training atom ends with gamma <= tolerance.
    """
    basis: ACEBasis = load_basis(potential)
    source = _frame_source(frames)
    counts = {el: 0 for el in basis.elements}
    for atoms in source():
        symbols = atoms.get_chemical_symbols()
        basis.species_of(symbols)      # unknown elements: a clear error before any work
        for el in set(symbols):
            counts[el] += symbols.count(el)
    missing = [el for el, n in counts.items() if n == 0]
    if missing:
        raise ValueError(f"the training structures contain no atoms of {missing}: an active set needs "
                         f"environments of every element of the potential")
    need = sum(counts[el] * projection_width(basis, el, nonlinear) * 8 for el in basis.elements)
    by_element = {}
    if need <= memory_limit:
        rows = {e: [] for e in range(len(basis.elements))}
        for atoms in source():
            species, x = structure_projections(basis, atoms, nonlinear)
            for e, el in enumerate(basis.elements):
                mask = species == e
                if mask.any():
                    rows[e].append(x[mask, : projection_width(basis, el, nonlinear)])
        by_element = {el: np.concatenate(rows[e]) for e, el in enumerate(basis.elements)}
    else:
        for el in basis.elements:
            by_element[el] = (lambda el=el: iterate_element_batches(basis, source(), el, batch_size, nonlinear))
    return build_active_set_from_projections(by_element, tolerance=tolerance, batch_size=batch_size,
                                             nonlinear=nonlinear, progress=progress)


def build_active_set_from_files(potential, paths, **options) -> ActiveSet:
    """:func:`build_active_set` over all frames of the given structure files (read lazily)."""
    import ase.io

    paths = [paths] if isinstance(paths, str) else list(paths)

    def frames():
        for path in paths:
            yield from ase.io.iread(path, index=":")

    return build_active_set(potential, frames, **options)
