"""Error tables of a potential (or ensemble mean) against labelled structures.

Energy errors in meV/atom, force errors in eV/A (per component), stress errors in GPa
(per Voigt component), overall and per ``atoms.info["config_type"]``.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from ase.units import GPa


def predict(calculators, atoms):
    """Mean energy, forces and stress (None without a 3-D cell) over one or more calculators."""
    energies, forces, stresses = [], [], []
    work = atoms.copy()
    for calc in calculators:
        work.calc = calc
        energies.append(work.get_potential_energy())
        forces.append(work.get_forces())
        stresses.append(work.get_stress() if work.cell.rank == 3 else None)
    stress = None if stresses[0] is None else np.mean(stresses, axis=0)
    return float(np.mean(energies)), np.mean(forces, axis=0), stress


def error_table(calculators, frames) -> dict:
    """{group: {"n": structures, "E_mae", "E_rmse" (meV/atom), "F_mae", "F_rmse" (eV/A), "S_mae", "S_rmse" (GPa)}},
    with group "all" and one per config_type."""
    groups = defaultdict(lambda: {"e": [], "f": [], "s": []})
    for atoms in frames:
        e_ref = atoms.get_potential_energy()
        calc = atoms.calc
        f_ref = np.asarray(calc.results["forces"]) if calc is not None and "forces" in calc.results else None
        s_ref = np.asarray(calc.results["stress"]) if calc is not None and "stress" in calc.results else None
        energy, forces, stress = predict(calculators, atoms)
        for key in ("all", str(atoms.info.get("config_type", "-"))):
            g = groups[key]
            g["e"].append((energy - e_ref) / len(atoms))
            if f_ref is not None:
                g["f"].append((forces - f_ref).ravel())
            if s_ref is not None and stress is not None and s_ref.shape == (6,):
                g["s"].append((stress - s_ref) / GPa)
    table = {}
    for key, g in groups.items():
        e = np.array(g["e"]) * 1000.0
        row = {"n": len(e), "E_mae": float(np.abs(e).mean()), "E_rmse": float(np.sqrt((e ** 2).mean()))}
        f = np.concatenate(g["f"]) if g["f"] else np.zeros(0)
        row["F_mae"] = float(np.abs(f).mean()) if f.size else float("nan")
        row["F_rmse"] = float(np.sqrt((f ** 2).mean())) if f.size else float("nan")
        s = np.concatenate(g["s"]) if g["s"] else np.zeros(0)
        row["S_mae"] = float(np.abs(s).mean()) if s.size else float("nan")
        row["S_rmse"] = float(np.sqrt((s ** 2).mean())) if s.size else float("nan")
        table[key] = row
    return table


def format_table(table: dict, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'group':<18} {'n':>5} {'E MAE':>8} {'E RMSE':>8} {'F MAE':>8} {'F RMSE':>8} "
                 f"{'S MAE':>8} {'S RMSE':>8}")
    lines.append(f"{'':<18} {'':>5} {'meV/at':>8} {'meV/at':>8} {'eV/A':>8} {'eV/A':>8} {'GPa':>8} {'GPa':>8}")
    keys = ["all"] + sorted(k for k in table if k != "all")
    for key in keys:
        r = table[key]
        lines.append(f"{key[:18]:<18} {r['n']:5d} {r['E_mae']:8.3f} {r['E_rmse']:8.3f} {r['F_mae']:8.4f} "
                     f"{r['F_rmse']:8.4f} {r['S_mae']:8.3f} {r['S_rmse']:8.3f}")
    return "\n".join(lines)
