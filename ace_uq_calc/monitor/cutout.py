"""Cluster cut-outs of flagged frames: the uncertain atoms and their neighbours as a free cluster.

A cut-out is cheaper to recompute with the reference method than the whole periodic frame (see
docs/monitor.md, "Cluster cut-outs").
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

#: ``frame.info`` entries copied to the cut-out (besides ``max_<measure>``); the model's energy, forces and
#: stress are not: they belong to the whole frame, not to the cluster
COPIED_INFO_KEYS = ("step", "time_fs", "uq_measure", "uq_reduce", "uq_value", "flag_threshold", "halt_threshold",
                    "n_above_flag", "n_isolated", "flagged", "halted", "halt_reason")


def consistent_images(centres: np.ndarray, i: np.ndarray, j: np.ndarray, shifts: np.ndarray,
                      starts: np.ndarray) -> dict:
    """Periodic image (integer cell shift, (3,) array) of every centre, chosen so that centres that are
    neighbours of each other (directly or through other centres) sit next to each other in the cut-out.

    ``i``, ``j``, ``shifts``: a neighbour list sorted by ``i``; ``starts[a]:starts[a + 1]`` are the pairs
    of atom ``a``.
    """
    centre_set = set(int(c) for c in centres)
    image = {}
    for c in centres:
        c = int(c)
        if c in image:
            continue
        image[c] = np.zeros(3, dtype=int)
        stack = [c]
        while stack:
            a = stack.pop()
            for b, s in zip(j[starts[a]:starts[a + 1]], shifts[starts[a]:starts[a + 1]]):
                b = int(b)
                if b in centre_set and b not in image:
                    image[b] = image[a] + s
                    stack.append(b)
    return image


def cut_out_cluster(frame: Atoms, values: np.ndarray, threshold: float, cutoff: float, vacuum: float,
                    measure: str, neighbour_count: np.ndarray | None = None) -> Atoms:
    """The atoms of ``frame`` whose ``values`` are above ``threshold`` and their neighbours within
    ``cutoff`` (Å) as a free, non-periodic cluster centred in a box with ``vacuum`` Å on each side.

    Periodic images are unfolded, consistently for flagged atoms that are neighbours. The cluster
    carries the arrays ``<measure>`` (the per-atom ``values``), ``source_index`` (index in ``frame``),
    ``flagged`` (above ``threshold``) and, when ``neighbour_count`` is given, ``source_neighbour_count``;
    its info has :data:`COPIED_INFO_KEYS` and ``max_<measure>`` of ``frame.info``, ``cut_out=True``,
    ``cluster_cutoff`` and ``n_source_atoms``.

    Returns ``frame`` itself when no value is above ``threshold`` (e.g. a custom reduction flagged the
    frame), and ``frame`` with ``info["cut_out"] = False`` when the cluster would have at least as many
    atoms as the periodic structure (it would be no cheaper to compute).
    """
    centres = np.flatnonzero(values > threshold)
    if len(centres) == 0:
        return frame
    i, j, shifts = neighbor_list("ijS", frame, cutoff)
    order = np.argsort(i, kind="stable")
    i, j, shifts = i[order], j[order], shifts[order]
    starts = np.searchsorted(i, np.arange(len(frame) + 1))
    image = consistent_images(centres, i, j, shifts, starts)
    members: dict[tuple, bool] = {}     # (source index, image) -> flagged
    for c in centres:
        c = int(c)
        members[(c, tuple(image[c]))] = True
    for c in centres:
        c = int(c)
        for b, s in zip(j[starts[c]:starts[c + 1]], shifts[starts[c]:starts[c + 1]]):
            members.setdefault((int(b), tuple(image[c] + s)), False)
    if len(members) >= len(frame) and frame.pbc.any():
        frame.info["cut_out"] = False
        return frame
    index = np.array([k[0] for k in members], dtype=int)
    shift = np.array([k[1] for k in members], dtype=float).reshape(-1, 3)
    positions = frame.positions[index] + shift @ frame.cell.array
    cluster = Atoms(numbers=frame.numbers[index], positions=positions, pbc=False)
    cluster.center(vacuum=vacuum)
    cluster.arrays[measure] = values[index]
    cluster.arrays["source_index"] = index
    cluster.arrays["flagged"] = np.array(list(members.values()), dtype=bool)
    if neighbour_count is not None:
        cluster.arrays["source_neighbour_count"] = np.asarray(neighbour_count)[index]
    copied = set(COPIED_INFO_KEYS) | {f"max_{measure}"}
    cluster.info.update((key, value) for key, value in frame.info.items() if key in copied)
    cluster.info["cut_out"] = True
    cluster.info["cluster_cutoff"] = cutoff
    cluster.info["n_source_atoms"] = len(frame)
    return cluster
