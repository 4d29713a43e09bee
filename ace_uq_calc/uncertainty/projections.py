"""Per-atom projections (the vectors D-optimality works on) of many structures, streamed in batches.

Linear potentials: the B-basis values; non-linear: w_p F'(rho_p) B_f, one block per density
(spec 10.1, 10.2). Both in pacemaker's function order, from the same pass as energies.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from ..engine.evaluate import evaluate
from ..model.basis import ACEBasis


def structure_projections(basis: ACEBasis, atoms, nonlinear: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(species (N,), projections (N, width)) of one ASE Atoms; width = max nfunc (* max ndensity)."""
    species = basis.species_of(atoms.get_chemical_symbols())
    res = evaluate(basis, atoms.positions, atoms.cell.array, atoms.pbc, species, forces=False,
                   projections=not nonlinear, nonlinear=nonlinear)
    x = res.nonlinear_projections if nonlinear else res.projections
    return species, x


def projection_width(basis: ACEBasis, element: str, nonlinear: bool) -> int:
    e = basis.elements.index(element)
    return basis.nfunc[element] * (int(basis.ndensity[e]) if nonlinear else 1)


def iterate_element_batches(basis: ACEBasis, frames: Iterable, element: str, batch_size: int = 20000,
                            nonlinear: bool = False) -> Iterator[np.ndarray]:
    """Yield (k, m) arrays of projections of the atoms of ``element`` over ``frames``, k <= batch_size
    (memory: one batch). ``frames`` is any iterable of ASE Atoms (re-iterable if several passes are made)."""
    e = basis.elements.index(element)
    width = projection_width(basis, element, nonlinear)
    pending, count = [], 0
    for atoms in frames:
        species, x = structure_projections(basis, atoms, nonlinear)
        rows = x[species == e, :width]
        if len(rows):
            pending.append(rows)
            count += len(rows)
        while count >= batch_size:
            stacked = np.concatenate(pending)
            yield np.ascontiguousarray(stacked[:batch_size])
            rest = stacked[batch_size:]
            pending, count = ([rest] if len(rest) else []), len(rest)
    if count:
        yield np.ascontiguousarray(np.concatenate(pending))
