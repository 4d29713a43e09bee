"""Structure preparation and input checks of an evaluation (no ASE): contiguous arrays, finite
positions and cell, species indices, duplicate atoms, cells far too small for the cut-off, and the
checked neighbour list. Errors are ValueErrors that name the problem (atoms, sizes, limits).

Units: Angstrom.
"""
from __future__ import annotations

import numpy as np

from ..kernels.checks import all_finite, neighbour_list_summary, species_in_range
from ..kernels.neighbours import build_neighbour_list, minimum_pair_distance
from ..model.basis import ACEBasis

#: Pairs closer than this (Angstrom) are rejected: the radial tables of pacemaker start at one knot.
MIN_PAIR_DISTANCE = 1e-3

#: Structures in which an atom has more neighbours than this within the cut-off are rejected. A solid
#: at twice its normal density with a 12 Angstrom cut-off has about 3000; the limit only stops absurd
#: inputs (a periodic cell far smaller than the cut-off, atoms piled up) from running for minutes or
#: exhausting memory.
MAX_NEIGHBOURS_PER_ATOM = 100_000


def check_structure(positions, cell, pbc):
    """Raise ValueError for malformed or non-finite positions or cell (any entry, periodic or not)."""
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), found {positions.shape}")
    if not np.all(np.isfinite(positions)):
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise ValueError(f"positions of atoms {bad[:10].tolist()} are NaN or infinite")
    if not np.all(np.isfinite(cell)):
        raise ValueError(f"the cell contains NaN or infinite entries: {cell.tolist()}")


def check_species(species, n_atoms: int, n_elements: int):
    if species.shape != (n_atoms,):
        raise ValueError(f"species must have shape ({n_atoms},), found {species.shape}")
    if n_atoms and (species.min() < 0 or species.max() >= n_elements):
        raise ValueError(f"species indices must lie in 0..{n_elements - 1}, found {species.min()}..{species.max()}")


_UNIT_BALL = {1: 2.0, 2: np.pi, 3: 4.0 * np.pi / 3.0}


def check_image_density(n_atoms: int, cell, pbc, cutoff: float):
    """ValueError before the neighbour list is built when the periodic cell is so small that every atom
    would have more than MAX_NEIGHBOURS_PER_ATOM neighbours (own periodic images, plus the other atoms
    of the cell for three periodic directions). Degenerate cells are left to the neighbour list."""
    periodic_rows = cell[pbc]
    k = len(periodic_rows)
    if k == 0 or n_atoms == 0 or cutoff <= 0.0:
        return
    lengths = np.linalg.norm(periodic_rows, axis=1)
    measure = float(np.sqrt(max(np.linalg.det(periodic_rows @ periodic_rows.T), 0.0)))
    if not measure > 1e-10 * float(np.prod(lengths)):
        return
    images = _UNIT_BALL[k] * cutoff ** k / measure * (n_atoms if k == 3 else 1)
    if images > MAX_NEIGHBOURS_PER_ATOM:
        kind = {1: "length", 2: "area", 3: "volume"}[k]
        raise ValueError(
            f"the periodic cell is far too small for the cut-off {cutoff:g} Angstrom: cell {kind} "
            f"{measure:.3g}, about {images:.3g} neighbours per atom (limit {MAX_NEIGHBOURS_PER_ATOM})"
        )


def check_duplicate_positions(positions):
    """ValueError for two atoms at exactly the same position, before the neighbour list is built: with
    all positions left at zero (a common scripting slip) the list would hold N^2 pairs and could exhaust
    memory before the distance check below runs. O(N log N)."""
    if len(positions) < 2:
        return
    order = np.lexsort(positions.T[::-1])
    ordered = positions[order]
    same = np.all(ordered[1:] == ordered[:-1], axis=1)
    if same.any():
        k = int(np.argmax(same))
        i, j = sorted((int(order[k]), int(order[k + 1])))
        raise ValueError(
            f"atoms {i} and {j} are 0 Angstrom apart (closer than {MIN_PAIR_DISTANCE} Angstrom): "
            "they sit at the same position"
        )


def check_neighbour_list(nl, n_atoms: int):
    if len(nl.first) != n_atoms + 1:
        raise ValueError(f"neighbour list is for {len(nl.first) - 1} atoms, the structure has {n_atoms}")
    if len(nl.index) and (nl.index.min() < 0 or nl.index.max() >= n_atoms):
        raise ValueError("neighbour list refers to atoms outside the structure")
    counts = np.diff(nl.first)
    if n_atoms and counts.max() > MAX_NEIGHBOURS_PER_ATOM:
        i = int(np.argmax(counts))
        raise ValueError(
            f"atom {i} has {int(counts[i])} neighbours within the cut-off (limit {MAX_NEIGHBOURS_PER_ATOM}): "
            "atoms piled up far beyond any material density, or a periodic cell far smaller than the cut-off"
        )


def prepared_structure(basis: ACEBasis, positions, cell, pbc, species):
    """(positions (N, 3), cell (3, 3), pbc (3,), species (N,)) as contiguous float64 / bool / int64 arrays,
    checked (finite positions and cell, species indices of ``basis``); errors name the problem. A scalar
    pbc applies to all three directions."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.array(pbc, dtype=bool)
    if pbc.shape != (3,):
        pbc = np.broadcast_to(pbc, (3,)).copy()
    species = np.ascontiguousarray(species, dtype=np.int64)
    if positions.ndim != 2 or positions.shape[1] != 3 or not (all_finite(positions) and all_finite(cell)):
        check_structure(positions, cell, pbc)          # raises with the details
    n_atoms = len(positions)
    if species.shape != (n_atoms,) or not species_in_range(species, basis.n_elements):
        check_species(species, n_atoms, basis.n_elements)
    return positions, cell, pbc, species


def checked_neighbour_list(basis: ACEBasis, positions, cell, pbc, species, neighbour_list=None,
                           neighbour_cache=None):
    """The neighbour list for an evaluation (the caller's, the cache's or a new one), checked: no atom
    with more than :data:`MAX_NEIGHBOURS_PER_ATOM` neighbours, no pair closer than
    :data:`MIN_PAIR_DISTANCE` (ValueError naming the atoms). Inputs as for :func:`evaluate`, already
    converted to contiguous arrays."""
    n_atoms = len(positions)
    if neighbour_list is None:
        if neighbour_cache is not None:
            neighbour_list = neighbour_cache.neighbour_list(basis, positions, cell, pbc, species)
        else:
            check_duplicate_positions(positions)
            check_image_density(n_atoms, cell, pbc, basis.cutoff_max)
            neighbour_list = build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix)
    else:
        check_neighbour_list(neighbour_list, n_atoms)      # a list from the caller
    nl = neighbour_list
    most, most_atom, dmin, entry = neighbour_list_summary(nl.first, nl.distance)
    if most > MAX_NEIGHBOURS_PER_ATOM:
        check_neighbour_list(nl, n_atoms)
    if dmin < MIN_PAIR_DISTANCE:
        dmin, i, j = minimum_pair_distance(nl)
        raise ValueError(
            f"atoms {i} and {j} are {dmin:.3g} Angstrom apart (closer than {MIN_PAIR_DISTANCE} Angstrom)"
        )
    return nl
