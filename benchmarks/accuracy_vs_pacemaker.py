"""Worst-case differences to pacemaker's reference results over every fixture structure.

    python benchmarks/accuracy_vs_pacemaker.py

Prints, per potential, the largest relative difference of energy, per-atom energies, forces
(relative to max(largest force, 1 eV/A)), stress (relative to max(largest component, 1e-3 eV/A^3))
and the largest |dgamma| / (kappa gamma + 1) (spec section 13.4 / 10.5).
"""
from pathlib import Path

import numpy as np
from ase import Atoms

from ace_uq_calc import ACECalculator
from ace_uq_calc.model.basis import load_basis

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "pacemaker"


def main():
    for name in ["Cu_fs500", "AlNi_fs", "W_defect"]:
        if not (FIXTURES / f"{name}.yaml").exists():
            print(f"{name}: fixture absent, skipped")
            continue
        basis = load_basis(FIXTURES / f"{name}.yaml")
        z = np.load(FIXTURES / f"{name}_reference.npz")
        worst = dict(E=0.0, Ei=0.0, F=0.0, S=0.0, gamma=0.0)
        calc = ACECalculator(basis, active_set=str(FIXTURES / f"{name}.asi"))
        for k in range(int(z["n_structures"])):
            p = "s%02d_" % k
            a = Atoms(numbers=z[p + "numbers"], positions=z[p + "positions"], cell=z[p + "cell"], pbc=z[p + "pbc"])
            a.calc = calc
            e, er = a.get_potential_energy(), float(z[p + "energy"])
            worst["E"] = max(worst["E"], abs(e - er) / max(abs(er), 1))
            ei = z[p + "energies"]
            worst["Ei"] = max(worst["Ei"], np.abs(a.get_potential_energies() - ei).max() / max(np.abs(ei).max(), 1))
            fr = z[p + "forces"]
            worst["F"] = max(worst["F"], np.abs(a.get_forces() - fr).max() / max(np.abs(fr).max(), 1))
            s = z[p + "stress"]
            if np.all(np.isfinite(s)):
                worst["S"] = max(worst["S"], np.abs(a.get_stress() - s).max() / max(np.abs(s).max(), 1e-3))
            g, gr, kappa = calc.results["gamma"], z[p + "gamma"], z[p + "gamma_amplification"]
            worst["gamma"] = max(worst["gamma"], float(np.max(np.abs(g - gr) / (kappa * gr + 1))))
        print(f"{name:9s} " + "  ".join(f"{k} {v:.1e}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
