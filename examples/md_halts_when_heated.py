"""Langevin MD of the bundled Cu model, heated from 300 K at 10 K per step, watched by an
UncertaintyMonitor: frames above the flag threshold (gamma > 2) are written for later reference
calculations, and the run halts cleanly when gamma exceeds the halt threshold (10).

    python examples/md_halts_when_heated.py [OUTPUT_DIR]

Writes OUTPUT_DIR/trajectory.xyz (every 20 steps and the halting step) and OUTPUT_DIR/flagged.xyz
(default OUTPUT_DIR: ./example_output/md_halts_when_heated).
"""
import os
import sys
import time

import ase.io
import numpy as np
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

from ace_uq_calc import ACECalculator, UncertaintyMonitor, example_files

try:
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # ASE < 3.29
    from ase.md.velocitydistribution import (
        MaxwellBoltzmannDistribution as thermalize_momenta,
    )

outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join("example_output", "md_halts_when_heated")
os.makedirs(outdir, exist_ok=True)

t0 = time.perf_counter()
atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
atoms.calc = ACECalculator(*example_files())
rng = np.random.default_rng(42)
T0, ramp, steps = 300.0, 10.0, 2000              # K, K per step, maximum steps (2 fs each)
thermalize_momenta(atoms, temperature_K=T0, rng=rng)
Stationary(atoms)
dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=T0, friction=0.02 / units.fs, fixcm=False, rng=rng)

monitor = UncertaintyMonitor(
    atoms,                                       # measure "gamma": flag above 2, halt above 10
    flag_file=os.path.join(outdir, "flagged.xyz"),
    trajectory_file=os.path.join(outdir, "trajectory.xyz"), trajectory_interval=20,
    min_flag_gap=10,                             # at most one flagged frame per 10 steps (20 fs)
)
dyn.attach(monitor, interval=1)                  # the monitor finds `dyn` to stop it when needed


def heat():
    dyn.set_temperature(temperature_K=T0 + ramp * dyn.nsteps)


def report():
    r = monitor.history[-1]
    print(f"{dyn.nsteps:5d} {r.time_fs:7.0f} {T0 + ramp * dyn.nsteps:10.0f} {atoms.get_temperature():8.0f} "
          f"{r.value:9.3f} {monitor.n_flags:6d}")


dyn.attach(heat, interval=1)
dyn.attach(report, interval=25)
print(f"Langevin MD, {len(atoms)} Cu atoms, heated from {T0:.0f} K by {ramp:.0f} K per 2 fs step")
print(f"{'step':>5} {'t (fs)':>7} {'T_set (K)':>10} {'T (K)':>8} {'max gamma':>9} {'flags':>6}")
dyn.run(steps)                                   # returns early when the monitor halts the run

print()
if monitor.halted:
    print(f"halted at step {monitor.step} (t = {monitor.halt_time_fs:.0f} fs, thermostat at "
          f"{T0 + ramp * monitor.step:.0f} K): {monitor.reason}")
else:
    print(f"not halted within {steps} steps; highest max gamma {monitor.max_value:.3f}")
traj = ase.io.read(monitor.trajectory_file, index=":")
flagged = ase.io.read(monitor.flag_file, index=":") if monitor.n_flags else []
print(f"{len(flagged)} flagged frame(s) at steps {monitor.flagged_steps} -> {monitor.flag_file}")
print(f"{len(traj)} trajectory frames (last at step {traj[-1].info['step']}, max gamma "
      f"{traj[-1].info['max_gamma']:.2f}) -> {monitor.trajectory_file}")
print(f"done in {time.perf_counter() - t0:.1f} s")
