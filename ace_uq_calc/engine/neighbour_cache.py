"""Neighbour lists reused across calls (molecular dynamics, relaxations) with a skin."""
from __future__ import annotations

import numpy as np

from ..kernels.checks import max_squared_displacement
from ..kernels.neighbours import (
    NeighbourList,
    build_neighbour_list,
    refresh_neighbour_list,
)
from ..model.basis import ACEBasis
from .structure import check_duplicate_positions, check_image_density


class NeighbourListCache:
    """Neighbour lists reused across calls (molecular dynamics, relaxations) with a skin.

    The list is built with cut-offs + ``skin`` (Angstrom) and kept, with the positions it was built
    at, as long as the cell, pbc and species are unchanged and no atom has moved more than skin / 2
    since; meanwhile each call recomputes the vectors of the kept (i, j, shift) entries from the
    current positions and keeps those within the true cut-offs
    (:func:`~ace_uq_calc.kernels.neighbours.refresh_neighbour_list`). Two atoms that each moved less
    than skin / 2 approached each other by less than skin, so every pair within the cut-off now was
    within cut-off + skin then: the list equals a freshly built one entry for entry (same order, same
    floating-point vectors). ``skin = 0`` builds a new list on every call.
    """

    def __init__(self, skin: float = 0.0):
        skin = float(skin)
        if not (np.isfinite(skin) and skin >= 0.0):
            raise ValueError(f"skin must be a finite number >= 0 Angstrom, got {skin!r}")
        self.skin = skin
        self.builds = 0          # lists built (for tests and diagnostics)
        self.reuses = 0          # calls served by refreshing a kept list
        self._state = None       # (positions, cell, pbc, species, skin list, basis) of the last build

    def clear(self):
        self._state = None

    def neighbour_list(self, basis: ACEBasis, positions, cell, pbc, species) -> NeighbourList:
        """The exact neighbour list (cut-offs of ``basis``) of validated, contiguous inputs."""
        if self.skin > 0.0:
            state = self._state
            if (state is not None and state[5] is basis and state[0].shape == positions.shape
                    and (state[1] == cell).all() and (state[2] == pbc).all() and (state[3] == species).all()
                    and max_squared_displacement(positions, state[0]) < 0.25 * self.skin * self.skin):
                self.reuses += 1
                return refresh_neighbour_list(state[4], positions, cell, pbc, species, basis.cutoff_matrix)
        n_atoms = len(positions)
        check_duplicate_positions(positions)
        check_image_density(n_atoms, cell, pbc, basis.cutoff_max)
        self.builds += 1
        if self.skin <= 0.0:
            return build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix)
        self._state = None
        try:
            skin_list = build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix + self.skin)
        except ValueError:      # e.g. a cell too small for cut-off + skin only: the exact list decides
            return build_neighbour_list(positions, cell, pbc, species, basis.cutoff_matrix)
        self._state = (positions.copy(), cell.copy(), pbc.copy(), species.copy(), skin_list, basis)
        return refresh_neighbour_list(skin_list, positions, cell, pbc, species, basis.cutoff_matrix)
