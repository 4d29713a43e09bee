"""Quick start: energy, forces and extrapolation grades gamma of a structure with the bundled model.

    python examples/quickstart.py

The bundled model is a small linear ACE for Cu fitted to the Zuo et al. (2020) Cu DFT data
(scripts/make_example_model.py; small, for demonstrations), with its active set. gamma <= 1: the model interpolates; 1-2: safe
extrapolation; above ~10 its predictions should not be trusted (docs/monitor.md).
"""
import numpy as np
from ase import Atoms, units
from ase.build import bulk

from ace_uq_calc import ACECalculator, example_files

potential, active_set = example_files()
calc = ACECalculator(potential, active_set=active_set)     # load once, reuse for many structures

atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
del atoms[0]                                               # a vacancy
atoms.rattle(0.05, seed=1)
atoms.calc = calc

energy = atoms.get_potential_energy()                     # eV
forces = atoms.get_forces()                               # eV/Å
stress = atoms.get_stress()                               # eV/Å^3 (Voigt xx yy zz yz xz xy)
gamma = calc.results["gamma"]                             # per atom, dimensionless
print(f"{len(atoms)} Cu atoms with a vacancy, rattled by 0.05 Å")
print(f"  energy            {energy:.6f} eV ({energy / len(atoms):.6f} eV/atom)")
print(f"  max |force|       {np.linalg.norm(forces, axis=1).max():.4f} eV/Å")
print(f"  pressure          {-stress[:3].mean() / units.GPa:.3f} GPa")
print(f"  gamma per atom    min {gamma.min():.3f}  mean {gamma.mean():.3f}  max {calc.results['max_gamma']:.3f}")
print(f"  first forces (eV/Å):\n{np.array2string(forces[:3], precision=4)}")

print("\nmax gamma of structures further from the training data:")
probes = {
    "fcc a = 3.61 Å (trained)": bulk("Cu", "fcc", a=3.61, cubic=True),
    "fcc a = 3.40 Å (compressed)": bulk("Cu", "fcc", a=3.40, cubic=True),
    "fcc a = 3.20 Å (strongly compressed)": bulk("Cu", "fcc", a=3.20, cubic=True),
    "bcc a = 2.87 Å": bulk("Cu", "bcc", a=2.87, cubic=True),
    "free dimer, 2.2 Å": Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.2]]),
    "free dimer, 8 Å (beyond the cut-off)": Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 8.0]]),
}
for label, probe in probes.items():
    probe.calc = calc
    probe.get_potential_energy()
    isolated = int((calc.results["neighbour_count"] == 0).sum())
    note = f"  ({isolated} atom(s) without neighbours: gamma = 0 by construction)" if isolated else ""
    print(f"  {label:38s} {calc.results['max_gamma']:9.3f}{note}")
