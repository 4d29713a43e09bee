"""Neighbour lists with periodic images, per-species-pair cut-offs, O(N) bins and Numba threads.

Nothing here knows about ASE. Units: Angstrom throughout.

Method
------
1. The periodic cell vectors are kept; every non-periodic direction is replaced by a unit vector
   orthogonal to the periodic ones (and to each other), giving an invertible "completed" cell M.
   Fractional coordinates s = r M^-1 are then periodic coordinates along periodic directions and plain
   Cartesian projections (Angstrom) along the others.
2. Along periodic directions atoms are wrapped into [0, 1) (integer wrap w per atom, kept to report
   shifts relative to the original, unwrapped positions). Along non-periodic directions empty gaps wider
   than a few cut-offs are collapsed (binning coordinate only; distances always use true positions), so
   one atom that has flown far away costs nothing.
3. Atoms are counting-sorted into a grid of bins; a sphere of radius r_c spans rc * |column d of M^-1|
   in fractional coordinate d, which gives the bin reach per direction. A bin reached across a periodic
   boundary carries an integer lattice translation t; cells shorter than the cut-off simply give a
   reach of several cell lengths, so all images (including self-images) are found.
4. Two passes over atoms in ``numba.prange`` (count, then fill after a prefix sum): no races. The
   count pass keeps the sort keys it finds (up to a capacity per atom estimated from the density), so
   the fill pass only sorts and decodes them; atoms beyond the capacity visit their bins again.
   Within an atom neighbours are sorted by (j, shift), so the list does not depend on thread count or
   binning.

For a candidate the inclusion test uses the exact reported vector
``positions[j] + n @ cell - positions[i]`` (n = t + w_i - w_j), so ``distance < cutoff`` holds for
every reported entry by construction.
"""
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

# A bin is at least this fraction of the cut-off wide (before the bin-count cap enlarges it).
_BIN_FRACTION_OF_CUTOFF = 0.5
# Number of bins allowed: _BINS_PER_ATOM * N + _BINS_EXTRA.
_BINS_PER_ATOM = 4
_BINS_EXTRA = 1000
# Empty gaps along non-periodic directions wider than this many cut-offs are collapsed for binning.
_GAP_COLLAPSE_IN_CUTOFFS = 3.0
# Relative tolerance under which periodic cell vectors count as degenerate.
_DEGENERACY_TOLERANCE = 1e-10
# Largest allowed |coordinate| (Angstrom) and |fractional coordinate| along periodic directions.
_MAX_ABS_COORDINATE = 1e100
_MAX_ABS_FRACTIONAL = 1e15
# Refuse geometries needing more (bin, image) visits per atom than this (cell far shorter than r_c).
_MAX_VISITS_PER_ATOM = 10_000_000


class NeighbourList(NamedTuple):
    """CSR neighbour list. Neighbours of atom i are the entries ``first[i]:first[i + 1]``.

    first    (N+1,) int64    CSR offsets.
    index    (P,)   int64    neighbour atom j (index into the N real atoms).
    shift    (P, 3) int64    integer lattice shift n: the neighbour sits at positions[j] + n @ cell.
    vector   (P, 3) float64  r_ij = positions[j] + n @ cell - positions[i], Angstrom.
    distance (P,)   float64  |r_ij|, Angstrom.
    """

    first: np.ndarray
    index: np.ndarray
    shift: np.ndarray
    vector: np.ndarray
    distance: np.ndarray


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------


def build_neighbour_list(positions, cell, pbc, species, cutoff_matrix) -> NeighbourList:
    """All neighbours within per-species-pair cut-offs, periodic images included.

    positions (N, 3) float64 Angstrom; cell (3, 3) rows = lattice vectors, Angstrom (only the rows of
    periodic directions are used; may be all zero when pbc is all False); pbc (3,) bool (a scalar is
    broadcast); species (N,) int64 species index 0..S-1; cutoff_matrix (S, S) float64 cut-off in
    Angstrom per (central species, neighbour species); it need not be symmetric.

    Inclusion rule: |r_ij| < cutoff_matrix[species[i], species[j]] (strict), over all atoms j and all
    lattice shifts n along periodic directions, except j == i at n == 0. Self-images (j == i, n != 0)
    are included. Two distinct atoms (or an atom and another atom's image) at exactly the same point
    are reported with distance 0, so that :func:`minimum_pair_distance` can reject them.

    Atoms may lie outside the cell along periodic directions; ``shift`` refers to the positions as
    given. Neighbours of each atom are ordered by (j, shift).

    Raises ValueError for wrong shapes, non-finite positions/cell/cut-offs, negative cut-offs,
    species outside 0..S-1, degenerate periodic cell vectors, and geometries needing an absurd number
    of periodic images (a periodic length far below the cut-off).
    """
    positions, cell, pbc, species, cutoff_matrix = _validated_inputs(
        positions, cell, pbc, species, cutoff_matrix
    )
    n_atoms = positions.shape[0]
    if n_atoms == 0:
        return _empty_neighbour_list(0)
    present = np.unique(species)
    cutoff_max = float(cutoff_matrix[np.ix_(present, present)].max())
    if cutoff_max <= 0.0:
        return _empty_neighbour_list(n_atoms)

    layout = _bin_layout(positions, cell, pbc, cutoff_max)
    bin_start, bin_atoms = _sort_atoms_into_bins(layout.atom_bin_flat, layout.n_bins)
    wrapped_in_bin_order = np.ascontiguousarray(layout.wrapped_positions[bin_atoms])

    # Prefilter radius per central species: its largest cut-off, padded against the round-off
    # difference between wrapped and exactly reconstructed vectors.
    cutoff_row_max = np.zeros(cutoff_matrix.shape[0])
    cutoff_row_max[present] = cutoff_matrix[np.ix_(present, present)].max(axis=1)
    magnitude = 1.0 + np.abs(positions).max() + np.abs(layout.wrapped_positions).max()
    prefilter_squared = (cutoff_row_max * (1.0 + 1e-9) + 1e-9 * magnitude) ** 2

    # bits of the sort key per direction: translation t_d + shift_bound_d in [0, 2 * shift_bound_d]
    key_bits = np.array([int(2 * b).bit_length() for b in layout.shift_bound], dtype=np.int64)
    if n_atoms >= 2 ** (62 - int(key_bits.sum())):
        raise ValueError("too many atoms and periodic images for 64-bit neighbour sort keys")
    bin_grid = np.ascontiguousarray(
        np.stack([layout.grid, layout.reach, layout.periodic, layout.shift_bound, key_bits]),
        dtype=np.int64,
    )
    args = (
        positions, layout.wrap, wrapped_in_bin_order, species, cutoff_matrix, prefilter_squared,
        layout.periodic_cell, layout.atom_bin, bin_grid, bin_start, bin_atoms,
    )
    first = np.zeros(n_atoms + 1, dtype=np.int64)
    # One visit of the bins per atom: the count pass keeps up to `capacity` sort keys per atom (an
    # estimate from the mean density); atoms with more neighbours are visited a second time.
    capacity = _key_capacity(n_atoms, cell, pbc, layout, cutoff_max)
    keys = np.empty((n_atoms, capacity), dtype=np.int64)
    _neighbour_collect(*args, keys, first)
    np.cumsum(first, out=first)
    n_pairs = int(first[-1])
    index = np.empty(n_pairs, dtype=np.int64)
    shift = np.empty((n_pairs, 3), dtype=np.int64)
    vector = np.empty((n_pairs, 3), dtype=np.float64)
    distance = np.empty(n_pairs, dtype=np.float64)
    _neighbour_pass(True, *args, keys, first, index, shift, vector, distance)
    return NeighbourList(first, index, shift, vector, distance)


def minimum_pair_distance(neighbour_list: NeighbourList):
    """Closest pair in the list: (distance in Angstrom, i, j); (inf, -1, -1) if the list is empty."""
    distance = neighbour_list.distance
    if distance.shape[0] == 0:
        return math.inf, -1, -1
    entry = int(np.argmin(distance))
    centre = int(np.searchsorted(neighbour_list.first, entry, side="right") - 1)
    return float(distance[entry]), centre, int(neighbour_list.index[entry])


# ----------------------------------------------------------------------------------------------
# Validation and geometry (numpy, O(N log N) at most)
# ----------------------------------------------------------------------------------------------


def _empty_neighbour_list(n_atoms: int) -> NeighbourList:
    return NeighbourList(
        np.zeros(n_atoms + 1, dtype=np.int64),
        np.empty(0, dtype=np.int64),
        np.empty((0, 3), dtype=np.int64),
        np.empty((0, 3), dtype=np.float64),
        np.empty(0, dtype=np.float64),
    )


def _validated_inputs(positions, cell, pbc, species, cutoff_matrix):
    """Contiguous float64/int64/bool copies of the inputs; ValueError on anything invalid."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
    n_atoms = positions.shape[0]
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
    pbc_array = np.asarray(pbc)
    if pbc_array.shape == ():
        pbc_array = np.repeat(pbc_array, 3)
    if pbc_array.shape != (3,):
        raise ValueError(f"pbc must have shape (3,), got {pbc_array.shape}")
    pbc = pbc_array.astype(bool)
    species_array = np.asarray(species)
    if species_array.shape != (n_atoms,):
        raise ValueError(f"species must have shape ({n_atoms},), got {species_array.shape}")
    if n_atoms and not np.issubdtype(species_array.dtype, np.integer):
        raise ValueError(f"species must be integers, got dtype {species_array.dtype}")
    species = np.ascontiguousarray(species_array, dtype=np.int64)
    cutoff_matrix = np.ascontiguousarray(cutoff_matrix, dtype=np.float64)
    if cutoff_matrix.ndim != 2 or cutoff_matrix.shape[0] != cutoff_matrix.shape[1]:
        raise ValueError(f"cutoff_matrix must be square (S, S), got {cutoff_matrix.shape}")
    n_species = cutoff_matrix.shape[0]
    if not np.all(np.isfinite(cutoff_matrix)):
        raise ValueError("cutoff_matrix contains NaN or inf")
    if np.any(cutoff_matrix < 0.0):
        raise ValueError("cutoff_matrix contains negative cut-offs")
    if n_atoms and (species.min() < 0 or species.max() >= n_species):
        raise ValueError(f"species indices must lie in 0..{n_species - 1}")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or inf")
    if n_atoms and np.abs(positions).max() > _MAX_ABS_COORDINATE:
        raise ValueError(f"positions beyond {_MAX_ABS_COORDINATE:g} Angstrom")
    periodic_rows = cell[pbc]
    if not np.all(np.isfinite(periodic_rows)):
        raise ValueError("cell vectors of periodic directions contain NaN or inf")
    _check_periodic_vectors(periodic_rows)
    return positions, cell, pbc, species, cutoff_matrix


def _check_periodic_vectors(periodic_rows):
    """ValueError if the periodic cell vectors are zero or linearly dependent."""
    lengths = np.linalg.norm(periodic_rows, axis=1)
    if np.any(lengths == 0.0):
        raise ValueError("a periodic direction has a zero-length cell vector")
    if periodic_rows.shape[0] == 2:
        area = np.linalg.norm(np.cross(periodic_rows[0], periodic_rows[1]))
        if area <= _DEGENERACY_TOLERANCE * lengths.prod():
            raise ValueError("the two periodic cell vectors are parallel (degenerate cell)")
    elif periodic_rows.shape[0] == 3:
        volume = abs(np.linalg.det(periodic_rows))
        if volume <= _DEGENERACY_TOLERANCE * lengths.prod():
            raise ValueError("the periodic cell vectors are linearly dependent (zero cell volume)")


def _completed_cell(cell, pbc):
    """Periodic rows of ``cell``; non-periodic rows replaced by orthonormal vectors orthogonal to them."""
    completed = np.zeros((3, 3))
    periodic_dirs = np.flatnonzero(pbc)
    free_dirs = np.flatnonzero(~pbc)
    completed[periodic_dirs] = cell[periodic_dirs]
    if len(periodic_dirs) == 0:
        completed[:] = np.eye(3)
    elif len(periodic_dirs) == 1:
        a = cell[periodic_dirs[0]] / np.linalg.norm(cell[periodic_dirs[0]])
        least_aligned_axis = np.eye(3)[np.argmin(np.abs(a))]
        e1 = np.cross(a, least_aligned_axis)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(a, e1)
        e2 /= np.linalg.norm(e2)
        completed[free_dirs[0]] = e1
        completed[free_dirs[1]] = e2
    elif len(periodic_dirs) == 2:
        normal = np.cross(cell[periodic_dirs[0]], cell[periodic_dirs[1]])
        completed[free_dirs[0]] = normal / np.linalg.norm(normal)
    return completed


def _collapsed_coordinate(values, max_gap):
    """Coordinate along a non-periodic direction with every empty gap wider than max_gap shrunk to
    max_gap (Angstrom), shifted to start at 0. Gaps up to max_gap keep their exact widths (up to one
    rounding), so pairs closer than max_gap keep their separation."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    removed = np.maximum(np.diff(sorted_values) - max_gap, 0.0)
    removed_before = np.concatenate(([0.0], np.cumsum(removed)))
    collapsed = np.empty_like(values)
    collapsed[order] = sorted_values - removed_before
    return collapsed - collapsed.min()


class _BinLayout(NamedTuple):
    wrap: np.ndarray               # (N, 3) int64, integer wrap: wrapped = positions - wrap @ cell
    wrapped_positions: np.ndarray  # (N, 3) float64, Angstrom
    periodic_cell: np.ndarray      # (3, 3) float64, cell with non-periodic rows zeroed
    atom_bin: np.ndarray           # (N, 3) int64, bin coordinates per atom
    atom_bin_flat: np.ndarray      # (N,) int64
    grid: np.ndarray               # (3,) int64, bins per direction
    reach: np.ndarray              # (3,) int64, bins searched on each side
    periodic: np.ndarray           # (3,) int64, 1 for periodic directions
    shift_bound: np.ndarray        # (3,) int64, bound on |lattice translation| of a visited bin
    n_bins: int
    bin_width: float               # target bin width used, Angstrom


def _bin_layout(positions, cell, pbc, cutoff_max) -> _BinLayout:
    """Wrap atoms, choose the bin grid (bounded number of bins) and assign atoms to bins."""
    n_atoms = positions.shape[0]
    completed = _completed_cell(cell, pbc)
    inverse = np.linalg.inv(completed)
    fractional = positions @ inverse
    # A sphere of radius r spans r * |column d of M^-1| in fractional coordinate d.
    fractional_per_angstrom = np.linalg.norm(inverse, axis=0)
    periodic_cell = np.where(pbc[:, None], cell, 0.0)

    wrap = np.zeros((n_atoms, 3), dtype=np.int64)
    coordinate = np.empty((n_atoms, 3))  # wrapped fractional (periodic) or collapsed Angstrom (free)
    extent = np.empty(3)                 # coordinate range per direction
    for d in range(3):
        if pbc[d]:
            s = fractional[:, d]
            if np.abs(s).max() > _MAX_ABS_FRACTIONAL:
                raise ValueError("an atom lies too many cell lengths outside the periodic cell")
            w = np.floor(s)
            s_wrapped = s - w
            rounded_up = s_wrapped >= 1.0
            s_wrapped[rounded_up] = 0.0
            w[rounded_up] += 1.0
            wrap[:, d] = w.astype(np.int64)
            coordinate[:, d] = s_wrapped
            extent[d] = 1.0
        else:
            coordinate[:, d] = _collapsed_coordinate(
                fractional[:, d], _GAP_COLLAPSE_IN_CUTOFFS * cutoff_max
            )
            extent[d] = coordinate[:, d].max()
    wrapped_positions = positions - wrap.astype(np.float64) @ periodic_cell

    # Bin width slightly above r_c / 2 so that the reach is not an exact integer (which would cost an
    # extra layer of bins after the safety margin below).
    bin_width = cutoff_max * _BIN_FRACTION_OF_CUTOFF * (1.0 + 1e-6)
    max_bins = _BINS_PER_ATOM * n_atoms + _BINS_EXTRA
    while True:
        grid = np.empty(3, dtype=np.int64)
        for d in range(3):
            if pbc[d]:
                plane_spacing = 1.0 / fractional_per_angstrom[d]
                grid[d] = max(1, int(plane_spacing / bin_width))
            else:
                grid[d] = int(extent[d] / bin_width) + 1
        n_bins = int(np.prod(grid.astype(np.float64)))
        if n_bins <= max_bins:
            break
        bin_width *= max(1.01, 1.01 * (n_bins / max_bins) ** (1.0 / 3.0))

    periodic = pbc.astype(np.int64)
    reach = np.empty(3, dtype=np.int64)
    atom_bin = np.empty((n_atoms, 3), dtype=np.int64)
    for d in range(3):
        if pbc[d]:
            bins_per_fraction = grid[d]
        else:
            bins_per_fraction = 1.0 / bin_width
        span_in_bins = cutoff_max * fractional_per_angstrom[d] * bins_per_fraction
        reach[d] = int(math.ceil(span_in_bins * (1.0 + 1e-9)))
        atom_bin[:, d] = np.minimum((coordinate[:, d] * bins_per_fraction).astype(np.int64), grid[d] - 1)
    visits = np.prod((2 * reach + 1).astype(np.float64))
    if visits > _MAX_VISITS_PER_ATOM:
        raise ValueError(
            f"the cut-off {cutoff_max:g} A is too long for the periodic cell: {visits:.3g} bin/image "
            "visits per atom would be needed (degenerate or tiny cell?)"
        )
    shift_bound = np.where(pbc, reach // grid + 1, 0).astype(np.int64)
    atom_bin_flat = (atom_bin[:, 0] * grid[1] + atom_bin[:, 1]) * grid[2] + atom_bin[:, 2]
    return _BinLayout(
        wrap, np.ascontiguousarray(wrapped_positions), np.ascontiguousarray(periodic_cell), atom_bin,
        atom_bin_flat, grid, reach, periodic, shift_bound, n_bins, bin_width,
    )


_KEY_CAPACITY_MAX = 4096


def _key_capacity(n_atoms, cell, pbc, layout, cutoff_max) -> int:
    """Keys kept per atom by the count pass: 1.5 times the mean neighbour count of the structure's
    density (volume: the periodic cell, extended along non-periodic directions by the atoms' extent
    plus the cut-off) plus 32; at most _KEY_CAPACITY_MAX."""
    completed = _completed_cell(cell, pbc)
    volume = abs(float(np.linalg.det(completed)))
    for d in range(3):
        if not pbc[d]:
            extent = float(layout.bin_width * layout.grid[d])
            volume *= extent + cutoff_max
    sphere = 4.0 / 3.0 * math.pi * cutoff_max ** 3
    estimate = 1.5 * n_atoms * sphere / volume if volume > 0.0 else float(_KEY_CAPACITY_MAX)
    return int(min(_KEY_CAPACITY_MAX, estimate + 32.0)) if math.isfinite(estimate) else _KEY_CAPACITY_MAX


# ----------------------------------------------------------------------------------------------
# Numba kernels
# ----------------------------------------------------------------------------------------------


@njit(cache=True)
def _sort_atoms_into_bins(atom_bin_flat, n_bins):
    """Counting sort: atoms of bin b are bin_atoms[bin_start[b]:bin_start[b + 1]], ascending."""
    n_atoms = atom_bin_flat.shape[0]
    bin_start = np.zeros(n_bins + 1, dtype=np.int64)
    for a in range(n_atoms):
        bin_start[atom_bin_flat[a] + 1] += 1
    for b in range(n_bins):
        bin_start[b + 1] += bin_start[b]
    cursor = bin_start[:-1].copy()
    bin_atoms = np.empty(n_atoms, dtype=np.int64)
    for a in range(n_atoms):
        b = atom_bin_flat[a]
        bin_atoms[cursor[b]] = a
        cursor[b] += 1
    return bin_start, bin_atoms


@njit(cache=True)
def _bin_and_translation(centre_bin, offset, bins, is_periodic):
    """Bin index reached from centre_bin + offset along one direction and its lattice translation;
    bin -1 when it falls off a non-periodic edge."""
    c = centre_bin + offset
    if is_periodic:
        translation = c // bins  # floor division, also for negative c
        return c - translation * bins, translation
    if c < 0 or c >= bins:
        return -1, 0
    return c, 0


@njit(cache=True)
def _image_vector(positions, periodic_cell, i, j, n0, n1, n2):
    """r_ij = positions[j] + n @ cell - positions[i] (Angstrom) and its length. The single place
    where reported vectors are computed, so the inclusion test and the output agree bit for bit."""
    vx = positions[j, 0] - positions[i, 0] + (
        n0 * periodic_cell[0, 0] + n1 * periodic_cell[1, 0] + n2 * periodic_cell[2, 0])
    vy = positions[j, 1] - positions[i, 1] + (
        n0 * periodic_cell[0, 1] + n1 * periodic_cell[1, 1] + n2 * periodic_cell[2, 1])
    vz = positions[j, 2] - positions[i, 2] + (
        n0 * periodic_cell[0, 2] + n1 * periodic_cell[1, 2] + n2 * periodic_cell[2, 2])
    return vx, vy, vz, math.sqrt(vx * vx + vy * vy + vz * vz)


@njit(cache=True)
def _visit_neighbours(
    i, positions, wrap, wrapped_in_bin_order, species, cutoff_matrix, prefilter_squared,
    periodic_cell, atom_bin, bin_grid, bin_start, bin_atoms, write, out_key,
):
    """Count the neighbours of atom i; if ``write``, also store their sort keys
    (j, t0 + b0, t1 + b1, t2 + b2) as bit fields (b = bound on |t|) in out_key (as many as fit:
    only the first out_key.shape[0]). Returns the count.

    bin_grid (5, 3) int64 rows: bins per direction, bins searched on each side, 1 if periodic,
    bound on |lattice translation t| of a visited bin, bits of the sort key per direction.
    The shift of a neighbour is n = t + w_i - w_j, so for a fixed j the key orders shifts
    lexicographically."""
    grid = bin_grid[0]
    reach = bin_grid[1]
    periodic = bin_grid[2]
    shift_bound = bin_grid[3]
    key_bits = bin_grid[4]
    j_shift = key_bits[0] + key_bits[1] + key_bits[2]
    count = 0
    species_i = species[i]
    pre_r2 = prefilter_squared[species_i]
    wi0 = wrap[i, 0]
    wi1 = wrap[i, 1]
    wi2 = wrap[i, 2]
    # wrapped position of atom i
    qx = positions[i, 0] - (wi0 * periodic_cell[0, 0] + wi1 * periodic_cell[1, 0] + wi2 * periodic_cell[2, 0])
    qy = positions[i, 1] - (wi0 * periodic_cell[0, 1] + wi1 * periodic_cell[1, 1] + wi2 * periodic_cell[2, 1])
    qz = positions[i, 2] - (wi0 * periodic_cell[0, 2] + wi1 * periodic_cell[1, 2] + wi2 * periodic_cell[2, 2])
    for k0 in range(-reach[0], reach[0] + 1):
        b0, t0 = _bin_and_translation(atom_bin[i, 0], k0, grid[0], periodic[0])
        if b0 < 0:
            continue
        for k1 in range(-reach[1], reach[1] + 1):
            b1, t1 = _bin_and_translation(atom_bin[i, 1], k1, grid[1], periodic[1])
            if b1 < 0:
                continue
            for k2 in range(-reach[2], reach[2] + 1):
                b2, t2 = _bin_and_translation(atom_bin[i, 2], k2, grid[2], periodic[2])
                if b2 < 0:
                    continue
                # bin translation t @ cell minus the wrapped centre
                ox = t0 * periodic_cell[0, 0] + t1 * periodic_cell[1, 0] + t2 * periodic_cell[2, 0] - qx
                oy = t0 * periodic_cell[0, 1] + t1 * periodic_cell[1, 1] + t2 * periodic_cell[2, 1] - qy
                oz = t0 * periodic_cell[0, 2] + t1 * periodic_cell[1, 2] + t2 * periodic_cell[2, 2] - qz
                translation_code = (
                    ((((t0 + shift_bound[0]) << key_bits[1]) | (t1 + shift_bound[1])) << key_bits[2])
                    | (t2 + shift_bound[2])
                )
                b = (b0 * grid[1] + b1) * grid[2] + b2
                for p in range(bin_start[b], bin_start[b + 1]):
                    dx = wrapped_in_bin_order[p, 0] + ox
                    dy = wrapped_in_bin_order[p, 1] + oy
                    dz = wrapped_in_bin_order[p, 2] + oz
                    if dx * dx + dy * dy + dz * dz >= pre_r2:
                        continue
                    j = bin_atoms[p]
                    n0 = t0 + wi0 - wrap[j, 0]
                    n1 = t1 + wi1 - wrap[j, 1]
                    n2 = t2 + wi2 - wrap[j, 2]
                    if j == i and n0 == 0 and n1 == 0 and n2 == 0:
                        continue
                    r = _image_vector(positions, periodic_cell, i, j, n0, n1, n2)[3]
                    if not r < cutoff_matrix[species_i, species[j]]:
                        continue
                    if write and count < out_key.shape[0]:
                        out_key[count] = (j << j_shift) | translation_code
                    count += 1
    return count


@njit(cache=True)
def _sort_keys_in_place(keys):
    """Ascending in-place sort of int64 keys: quicksort (median of three) with insertion sort below 24."""
    n = keys.shape[0]
    stack = np.empty(128, dtype=np.int64)
    top = 0
    lo = 0
    hi = n - 1
    while True:
        while hi - lo >= 24:
            mid = (lo + hi) >> 1
            if keys[mid] < keys[lo]:
                keys[mid], keys[lo] = keys[lo], keys[mid]
            if keys[hi] < keys[lo]:
                keys[hi], keys[lo] = keys[lo], keys[hi]
            if keys[hi] < keys[mid]:
                keys[hi], keys[mid] = keys[mid], keys[hi]
            pivot = keys[mid]
            a = lo
            b = hi
            while a <= b:
                while keys[a] < pivot:
                    a += 1
                while pivot < keys[b]:
                    b -= 1
                if a <= b:
                    keys[a], keys[b] = keys[b], keys[a]
                    a += 1
                    b -= 1
            # push the larger part, continue with the smaller (stack depth <= log2 n)
            if b - lo > hi - a:
                stack[top] = lo
                stack[top + 1] = b
                top += 2
                lo = a
            else:
                stack[top] = a
                stack[top + 1] = hi
                top += 2
                hi = b
        for x in range(lo + 1, hi + 1):
            v = keys[x]
            y = x - 1
            while y >= lo and keys[y] > v:
                keys[y + 1] = keys[y]
                y -= 1
            keys[y + 1] = v
        if top == 0:
            break
        top -= 2
        lo = stack[top]
        hi = stack[top + 1]


@njit(cache=True)
def _neighbours_of_atom(
    i, positions, wrap, wrapped_in_bin_order, species, cutoff_matrix, prefilter_squared,
    periodic_cell, atom_bin, bin_grid, bin_start, bin_atoms, kept_keys, first, index, shift, vector, distance,
):
    """Write the neighbours of atom i into first[i]:first[i + 1] (CSR offsets), sorted by (j, shift),
    from the sort keys kept by the count pass (kept_keys[i]) or, if they did not all fit, from a
    second visit of the bins."""
    start = first[i]
    count = first[i + 1] - start
    if count <= kept_keys.shape[1]:
        keys = kept_keys[i, :count]
    else:
        keys = np.empty(count, dtype=np.int64)
        _visit_neighbours(
            i, positions, wrap, wrapped_in_bin_order, species, cutoff_matrix, prefilter_squared,
            periodic_cell, atom_bin, bin_grid, bin_start, bin_atoms, True, keys,
        )
    _sort_keys_in_place(keys)
    shift_bound = bin_grid[3]
    key_bits = bin_grid[4]
    mask1 = (np.int64(1) << key_bits[1]) - 1
    mask2 = (np.int64(1) << key_bits[2]) - 1
    for q in range(keys.shape[0]):
        key = keys[q]
        t2 = (key & mask2) - shift_bound[2]
        key >>= key_bits[2]
        t1 = (key & mask1) - shift_bound[1]
        key >>= key_bits[1]
        t0 = (key & ((np.int64(1) << key_bits[0]) - 1)) - shift_bound[0]
        j = key >> key_bits[0]
        n0 = t0 + wrap[i, 0] - wrap[j, 0]
        n1 = t1 + wrap[i, 1] - wrap[j, 1]
        n2 = t2 + wrap[i, 2] - wrap[j, 2]
        vx, vy, vz, r = _image_vector(positions, periodic_cell, i, j, n0, n1, n2)
        p = start + q
        index[p] = j
        shift[p, 0] = n0
        shift[p, 1] = n1
        shift[p, 2] = n2
        vector[p, 0] = vx
        vector[p, 1] = vy
        vector[p, 2] = vz
        distance[p] = r


@njit(cache=True, parallel=True)
def _neighbour_collect(
    positions, wrap, wrapped_in_bin_order, species, cutoff_matrix, prefilter_squared,
    periodic_cell, atom_bin, bin_grid, bin_start, bin_atoms, kept_keys, first,
):
    """Count pass over all atoms in parallel: first[i + 1] = number of neighbours of atom i, and the
    first kept_keys.shape[1] of their sort keys in kept_keys[i] (atom i writes only its own slots)."""
    for i in prange(positions.shape[0]):
        # explicit int64: parfor lowering types the loop index as uint64, which would compile the
        # callee a second time
        ii = np.int64(i)
        first[ii + 1] = _visit_neighbours(
            ii, positions, wrap, wrapped_in_bin_order, species, cutoff_matrix, prefilter_squared,
            periodic_cell, atom_bin, bin_grid, bin_start, bin_atoms, True, kept_keys[ii],
        )


@njit(cache=True, parallel=True)
def _neighbour_pass(
    fill, positions, wrap, wrapped_in_bin_order, species, cutoff_matrix, prefilter_squared,
    periodic_cell, atom_bin, bin_grid, bin_start, bin_atoms, kept_keys, first, index, shift, vector, distance,
):
    """Fill pass over all atoms in parallel (see :func:`_neighbours_of_atom`); atom i writes only its
    own CSR slot, so there are no races. ``fill`` is kept for the signature (always True)."""
    for i in prange(positions.shape[0]):
        _neighbours_of_atom(
            np.int64(i), positions, wrap, wrapped_in_bin_order, species, cutoff_matrix,
            prefilter_squared, periodic_cell, atom_bin, bin_grid, bin_start, bin_atoms, kept_keys,
            first, index, shift, vector, distance,
        )


# ----------------------------------------------------------------------------------------------
# Reuse of a list built with a skin
# ----------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _select_entries(i, positions, periodic_cell, species, cutoff_matrix, skin_first, skin_index, skin_shift,
                    index, shift, vector, distance, out):
    """Recompute the vectors of atom i's skin-list entries and write those within the true cut-off, in
    order, to the output arrays from position ``out``; returns the position after the last one."""
    species_i = species[i]
    for p in range(skin_first[i], skin_first[i + 1]):
        j = skin_index[p]
        n0 = skin_shift[p, 0]
        n1 = skin_shift[p, 1]
        n2 = skin_shift[p, 2]
        vx, vy, vz, r = _image_vector(positions, periodic_cell, i, j, n0, n1, n2)
        if not r < cutoff_matrix[species_i, species[j]]:
            continue
        index[out] = j
        shift[out, 0] = n0
        shift[out, 1] = n1
        shift[out, 2] = n2
        vector[out, 0] = vx
        vector[out, 1] = vy
        vector[out, 2] = vz
        distance[out] = r
        out += 1
    return out


@njit(cache=True, parallel=True)
def _refresh_select(positions, periodic_cell, species, cutoff_matrix, skin_first, skin_index, skin_shift,
                    counts, index, shift, vector, distance):
    """For every atom i (in parallel): recompute the vectors of its skin-list entries and write those
    within the true cut-off, in order, to the start of its own skin-list slot skin_first[i]:... of the
    output arrays; counts[i] = how many."""
    for iu in prange(positions.shape[0]):
        i = np.int64(iu)
        out = _select_entries(i, positions, periodic_cell, species, cutoff_matrix, skin_first, skin_index,
                              skin_shift, index, shift, vector, distance, skin_first[i])
        counts[i] = out - skin_first[i]


@njit(cache=True, parallel=True)
def _compact(skin_first, first, index, shift, vector, distance, out_index, out_shift, out_vector, out_distance):
    """Copy the selected entries of every atom from its skin-list slot to its CSR slot."""
    for iu in prange(first.shape[0] - 1):
        i = np.int64(iu)
        src = skin_first[i]
        dst = first[i]
        for k in range(first[i + 1] - dst):
            out_index[dst + k] = index[src + k]
            out_shift[dst + k, 0] = shift[src + k, 0]
            out_shift[dst + k, 1] = shift[src + k, 1]
            out_shift[dst + k, 2] = shift[src + k, 2]
            out_vector[dst + k, 0] = vector[src + k, 0]
            out_vector[dst + k, 1] = vector[src + k, 1]
            out_vector[dst + k, 2] = vector[src + k, 2]
            out_distance[dst + k] = distance[src + k]


@njit(cache=True)
def _refresh_serial(positions, periodic_cell, species, cutoff_matrix, skin_first, skin_index, skin_shift,
                    first, index, shift, vector, distance):
    """One thread: the selection of :func:`_refresh_select` written compactly in one pass."""
    out = 0
    first[0] = 0
    for i in range(positions.shape[0]):
        out = _select_entries(i, positions, periodic_cell, species, cutoff_matrix, skin_first, skin_index,
                              skin_shift, index, shift, vector, distance, out)
        first[i + 1] = out
    return out


def refresh_neighbour_list(skin_list: NeighbourList, positions, cell, pbc, species, cutoff_matrix) -> NeighbourList:
    """The neighbour list at new positions from a list built with larger cut-offs (cut-off + skin) at
    earlier positions: the (i, j, shift) entries are kept, vectors and distances recomputed exactly as
    :func:`build_neighbour_list` computes them, and only entries within ``cutoff_matrix`` are kept
    (same order). The result equals a fresh list entry for entry and bit for bit, provided no pair
    came from outside the skin list's cut-offs, i.e. every atom moved less than skin / 2 (the
    caller's responsibility, see :class:`ace_uq_calc.engine.neighbour_cache.NeighbourListCache`), with the same
    cell, pbc and species. Inputs must be contiguous float64 / int64 / bool arrays."""
    n_atoms = positions.shape[0]
    periodic_cell = np.ascontiguousarray(np.where(np.asarray(pbc, dtype=bool)[:, None], cell, 0.0))
    n_skin = skin_list.index.shape[0]
    index = np.empty(n_skin, dtype=np.int64)
    shift = np.empty((n_skin, 3), dtype=np.int64)
    vector = np.empty((n_skin, 3), dtype=np.float64)
    distance = np.empty(n_skin, dtype=np.float64)
    first = np.zeros(n_atoms + 1, dtype=np.int64)
    if n_atoms and numba.get_num_threads() == 1:
        n_pairs = _refresh_serial(positions, periodic_cell, species, cutoff_matrix, skin_list.first,
                                  skin_list.index, skin_list.shift, first, index, shift, vector, distance)
        return NeighbourList(first, index[:n_pairs], shift[:n_pairs], vector[:n_pairs], distance[:n_pairs])
    if n_atoms:
        _refresh_select(positions, periodic_cell, species, cutoff_matrix, skin_list.first, skin_list.index,
                        skin_list.shift, first[1:], index, shift, vector, distance)
    np.cumsum(first, out=first)
    n_pairs = int(first[-1])
    if n_pairs == n_skin:                  # nothing dropped: the selection is already compact
        return NeighbourList(first, index, shift, vector, distance)
    out = (np.empty(n_pairs, dtype=np.int64), np.empty((n_pairs, 3), dtype=np.int64),
           np.empty((n_pairs, 3), dtype=np.float64), np.empty(n_pairs, dtype=np.float64))
    if n_atoms:
        _compact(skin_list.first, first, index, shift, vector, distance, *out)
    return NeighbourList(first, *out)
