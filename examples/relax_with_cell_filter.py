"""BFGS relaxation of positions and cell (FrechetCellFilter) watched by an UncertaintyMonitor.

    python examples/relax_with_cell_filter.py [OUTPUT_DIR]

Three starting points: a compressed Cu crystal with a vacancy (inside the training domain), one
compressed to a = 3.3 Å (extrapolative at the start: flagged frames), and one at a = 3.2 Å (gamma
above the halt threshold: the relaxation is refused at step 0 rather than trusted).
"""
import os
import sys

import ase.io
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from ace_uq_calc import ACECalculator, UncertaintyMonitor, example_files

outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join("example_output", "relax_with_cell_filter")
os.makedirs(outdir, exist_ok=True)
calc = ACECalculator(*example_files())

cases = {"vacancy_a3.50": 3.50, "compressed_a3.30": 3.30, "compressed_a3.20": 3.20}
for name, a in cases.items():
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))
    if name.startswith("vacancy"):
        del atoms[0]
    atoms.rattle(0.02, seed=3)
    atoms.calc = calc
    target = FrechetCellFilter(atoms)            # the monitor reads the Atoms inside the filter
    opt = BFGS(target, logfile=None)
    monitor = UncertaintyMonitor(
        target, min_flag_gap=0,
        flag_file=os.path.join(outdir, f"{name}_flagged.xyz"),
        trajectory_file=os.path.join(outdir, f"{name}_trajectory.xyz"),
    )
    converged = monitor.run(opt, steps=200, fmax=0.01)
    values = [r.value for r in monitor.history]
    print(f"{name}: start a = {a:.2f} Å, {len(atoms)} atoms")
    print(f"  max gamma: start {values[0]:.2f}, end {values[-1]:.2f}; flagged steps {monitor.flagged_steps}")
    if monitor.halted:
        print(f"  HALTED: {monitor.reason}")
        print("  -> outside the training domain: add reference data for such structures before relaxing")
    else:
        lengths = atoms.cell.lengths() / 2
        print(f"  {'converged' if converged else 'not converged'} in {opt.nsteps} steps; "
              f"E = {atoms.get_potential_energy():.4f} eV; cubic cell edge {lengths.mean():.4f} Å")
    frames = ase.io.read(monitor.trajectory_file, index=":")
    print(f"  {len(frames)} trajectory frames in {monitor.trajectory_file}")
