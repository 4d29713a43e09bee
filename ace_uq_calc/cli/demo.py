"""``ace-uq demo``: the bundled example model with its active set along a short MD run and on a few
structures it never saw, printing energies and extrapolation grades."""
from __future__ import annotations

import time

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from ..calculator import ACECalculator
from ..demo import example_files


def run_demo(steps: int = 200, temperature: float = 600.0, seed: int = 0, interval: int = 20) -> int:
    """Langevin MD of 108 Cu atoms (``steps`` of 2 fs at ``temperature`` K, a line every ``interval``
    steps), then the maximum gamma of four probe structures."""
    t_start = time.perf_counter()
    potential, active_set = example_files()
    calc = ACECalculator(potential, active_set=active_set)
    meta = calc.basis.potential.metadata.get("comment", "")
    print(f"model: {potential}\n  {meta}")

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng)
    print(f"\nLangevin MD, {len(atoms)} Cu atoms, {temperature:.0f} K, 2 fs steps")
    print(f"{'step':>6} {'E_pot (eV/atom)':>16} {'T (K)':>8} {'max gamma':>10}")

    def report():
        print(f"{dyn.nsteps:6d} {atoms.get_potential_energy() / len(atoms):16.5f} "
              f"{atoms.get_temperature():8.1f} {calc.results['max_gamma']:10.3f}")

    dyn.attach(report, interval=interval)
    dyn.run(steps)

    print("\nextrapolation grades of environments the model never saw:")
    probes = {
        "fcc, a = 3.61 A (trained)": bulk("Cu", "fcc", a=3.61, cubic=True),
        "fcc compressed, a = 3.2 A": bulk("Cu", "fcc", a=3.2, cubic=True),
        "bcc, a = 2.87 A": bulk("Cu", "bcc", a=2.87, cubic=True),
        "free dimer, 2.2 A": Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.2]]),
    }
    for label, probe in probes.items():
        probe.calc = calc
        probe.get_potential_energy()
        print(f"  {label:28s} max gamma = {calc.results['max_gamma']:10.3f}")
    print(f"\ngamma <= 1: interpolation; 1-5: mild extrapolation; > 5: unreliable. "
          f"Done in {time.perf_counter() - t_start:.1f} s.")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="run the bundled example (model, active set, short MD with gamma)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--temperature", type=float, default=600.0, help="K")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda args: run_demo(steps=args.steps, temperature=args.temperature, seed=args.seed))
