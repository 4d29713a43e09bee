"""Per-atom predictions, errors and uncertainties of labelled structures, gathered into flat arrays
for the UQ report.

Works with any ASE calculator; the uncertainty measures are whatever per-atom results the calculator
provides among :data:`ATOM_MEASURES` (gamma from an active set, gamma_local from a local active set,
forces_dev from an ensemble), plus the ensemble's ``forces_std`` (N, 3) and ``energy_std`` when present.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: per-atom uncertainty measures the report looks for in ``calc.results``
ATOM_MEASURES = ("gamma", "gamma_local", "forces_dev")


@dataclass
class AtomTable:
    """Flat per-atom arrays over a list of structures (all forces eV/A, energies eV)."""

    structure: np.ndarray                  # (n,) index of the structure of each atom
    structure_size: np.ndarray             # (S,) atoms per structure
    config_type: list                      # (S,) atoms.info["config_type"] or "-"
    force_error: np.ndarray                # (n,) ||F_pred - F_ref||
    force_error_components: np.ndarray     # (n, 3) F_pred - F_ref
    force_reference: np.ndarray            # (n, 3)
    force_predicted: np.ndarray            # (n, 3)
    energy_error: np.ndarray               # (S,) (E_pred - E_ref) / N, eV/atom
    measures: dict = field(default_factory=dict)          # name -> (n,)
    forces_std: np.ndarray | None = None                  # (n, 3) ensemble spread, when available
    energy_std: np.ndarray | None = None                  # (S,) eV/atom

    @property
    def n_atoms(self) -> int:
        return len(self.structure)

    def per_structure_max(self, values) -> np.ndarray:
        """Maximum of a per-atom array within each structure (S,)."""
        values = np.asarray(values, dtype=float)
        out = np.full(len(self.structure_size), -np.inf)
        np.maximum.at(out, self.structure, values)
        return out


def _reference(atoms):
    calc = atoms.calc
    if calc is None or "energy" not in calc.results or "forces" not in calc.results:
        raise ValueError("labelled structures need reference energies and forces (extended XYZ with "
                         "energy and forces, read by ase.io.read)")
    return float(calc.results["energy"]), np.asarray(calc.results["forces"], dtype=float)


def collect(calculator, frames, progress=None) -> AtomTable:
    """Evaluate ``frames`` (labelled: reference energy and forces) with ``calculator``.

    progress: optional callable(done, total) called after each structure.
    """
    structure, sizes, ctypes = [], [], []
    f_ref_all, f_pred_all, e_err = [], [], []
    measures = {}
    fstd, estd = [], []
    for s, atoms in enumerate(frames):
        e_ref, f_ref = _reference(atoms)
        work = atoms.copy()
        work.calc = calculator
        forces = np.array(work.get_forces(), dtype=float)
        energy = float(work.get_potential_energy())
        results = calculator.results
        n = len(atoms)
        structure.append(np.full(n, s))
        sizes.append(n)
        ctypes.append(str(atoms.info.get("config_type", "-")))
        f_ref_all.append(f_ref)
        f_pred_all.append(forces)
        e_err.append((energy - e_ref) / n)
        for name in ATOM_MEASURES:
            if name in results:
                measures.setdefault(name, []).append(np.asarray(results[name], dtype=float).reshape(n))
        if "forces_std" in results:
            fstd.append(np.asarray(results["forces_std"], dtype=float).reshape(n, 3))
        if "energy_std" in results:
            estd.append(float(results["energy_std"]) / n)
        if progress:
            progress(s + 1, len(frames))
    count = len(sizes)
    for name, parts in list(measures.items()):
        if len(parts) != count:          # a measure missing for some structures is not usable
            del measures[name]
    f_ref = np.concatenate(f_ref_all) if f_ref_all else np.zeros((0, 3))
    f_pred = np.concatenate(f_pred_all) if f_pred_all else np.zeros((0, 3))
    diff = f_pred - f_ref
    return AtomTable(
        structure=np.concatenate(structure) if structure else np.zeros(0, dtype=int),
        structure_size=np.array(sizes, dtype=int),
        config_type=ctypes,
        force_error=np.linalg.norm(diff, axis=1),
        force_error_components=diff,
        force_reference=f_ref,
        force_predicted=f_pred,
        energy_error=np.array(e_err),
        measures={k: np.concatenate(v) for k, v in measures.items()},
        forces_std=np.concatenate(fstd) if len(fstd) == count and count else None,
        energy_std=np.array(estd) if len(estd) == count and count else None,
    )
