"""Small Numba helpers for the per-call checks of :func:`ace_uq_calc.engine.evaluate.evaluate`.

Each replaces several numpy calls on small arrays (about a microsecond of Python overhead each) by
one compiled loop; the callers run the detailed numpy checks, which build the error messages, only
when a helper reports a problem.
"""
import math

from numba import njit


@njit(cache=True)
def all_finite(values):
    """True if every entry of the C-contiguous array ``values`` is finite."""
    for v in values.ravel():
        if not math.isfinite(v):
            return False
    return True


@njit(cache=True)
def species_in_range(species, n_elements):
    for s in species:
        if s < 0 or s >= n_elements:
            return False
    return True


@njit(cache=True)
def max_squared_displacement(positions, reference):
    """max_i |positions[i] - reference[i]|^2 (inf if any entry is not finite); both (N, 3)."""
    best = 0.0
    for i in range(positions.shape[0]):
        dx = positions[i, 0] - reference[i, 0]
        dy = positions[i, 1] - reference[i, 1]
        dz = positions[i, 2] - reference[i, 2]
        d = dx * dx + dy * dy + dz * dz
        if not d <= best:          # also NaN
            if d != d:
                return math.inf
            best = d
    return best


@njit(cache=True)
def neighbour_list_summary(first, distance):
    """(largest neighbour count, its atom, smallest distance, its entry) of a CSR list."""
    n_atoms = first.shape[0] - 1
    most = 0
    most_atom = 0
    for i in range(n_atoms):
        c = first[i + 1] - first[i]
        if c > most:
            most = c
            most_atom = i
    dmin = math.inf
    entry = -1
    for p in range(distance.shape[0]):
        d = distance[p]
        if d < dmin or d != d:
            dmin = d
            entry = p
            if d != d:
                break
    return most, most_atom, dmin, entry
