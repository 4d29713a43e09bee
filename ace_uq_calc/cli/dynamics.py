"""``ace-uq md`` and ``ace-uq relax``: dynamics watched by an :class:`~ace_uq_calc.monitor.UncertaintyMonitor`
(flag extrapolative frames, halt the run; docs/monitor.md), with their shared monitor options."""
from __future__ import annotations

import json
import os
import time

import ase.io
import numpy as np
from ase import units
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE

from ..atomic_io import atomic_write
from ..calculator import ACECalculator
from ..io import write_frames
from ..monitor import ALIASES, MEASURES, REDUCTIONS, UncertaintyMonitor, get_measure
from ..progress import progress_bar
from .common import add_threads_option

try:
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:   # ASE < 3.29
    from ase.md.velocitydistribution import (
        MaxwellBoltzmannDistribution as thermalize_momenta,
    )

EXIT_HALTED = 3   # the run was stopped by the monitor (summary written); 2 is an error

OUTPUT_NAMES = ("trajectory.xyz", "flagged.xyz", "final.xyz", "summary.json")


def prepare_output_dir(outdir: str, overwrite: bool) -> dict:
    """Paths of :data:`OUTPUT_NAMES` in ``outdir`` (created), keyed by their stem; refuses to replace
    the outputs of an earlier run unless ``overwrite``."""
    os.makedirs(outdir, exist_ok=True)
    paths = {name.split(".")[0]: os.path.join(outdir, name) for name in OUTPUT_NAMES}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist(s); use --overwrite or another -o directory")
    for path in existing:
        os.unlink(path)
    return paths


def monitored_calculator(args):
    """The calculator for md/relax, with a clear error when the options do not give it the watched
    measure."""
    measure = get_measure(args.measure)
    kwargs = {}
    if args.ensemble:
        kwargs["ensemble"] = args.ensemble
    if measure.name == "gamma" and args.active_set is None:
        raise ValueError("--measure gamma needs --active-set POT.asi (build one with 'ace-uq activeset')")
    if args.local_active_set:
        kwargs["local_active_set"] = args.local_active_set
    elif measure.name == "gamma_local":
        raise ValueError("--measure gamma_local needs --local-active-set FILE (build one with "
                         "'ace-uq activeset POT.yaml TRAIN.xyz --local -o FILE')")
    if args.error_calibration:
        kwargs["error_calibration"] = args.error_calibration
    elif measure.name == "forces_error_estimate":
        raise ValueError(f"--measure {args.measure} needs --error-calibration FILE (a map from gamma, gamma_local or "
                         f"forces_dev to the expected force error; make one with 'ace-uq uq-report --calibrate')")
    calc = ACECalculator(args.potential, active_set=args.active_set, num_threads=args.num_threads, **kwargs)
    if measure.key not in calc.implemented_properties:
        raise ValueError(f"--measure {args.measure} is not supported yet: ACECalculator does not provide "
                         f"'{measure.key}' ({measure.description}; expected from {measure.provided_by}). "
                         f"It provides: {', '.join(calc.implemented_properties)}")
    return calc


def start_run(args):
    """(atoms, output paths) of md/relax: the last frame of ``--structure`` with the monitored calculator,
    and the prepared output directory."""
    calc = monitored_calculator(args)
    atoms = ase.io.read(args.structure)
    atoms.calc = calc
    return atoms, prepare_output_dir(args.output_dir, args.overwrite)


def make_monitor(args, atoms, paths, dynamics, trajectory_interval) -> UncertaintyMonitor:
    """The monitor of the command-line options, appending to the output directory's files; prints its
    thresholds and where they come from."""
    monitor = UncertaintyMonitor(
        atoms, measure=args.measure, flag_threshold=args.flag, halt_threshold=args.halt,
        reduce=args.reduce, flag_file=paths["flagged"], trajectory_file=paths["trajectory"],
        patience=args.patience, min_flag_gap=args.min_flag_gap, halt_on_isolated=args.halt_on_isolated,
        cluster_cutoff=args.cluster_cutoff, dynamics=dynamics, trajectory_interval=trajectory_interval,
        append=True,
    )
    print(f"thresholds of {monitor.reduce_name} {monitor.measure.name}: flag > {monitor.flag_threshold:.4g}, "
          f"halt > {monitor.halt_threshold:.4g} ({monitor.threshold_source})")
    return monitor


def finish(args, command, monitor, paths, atoms, extra: dict, t_start: float) -> int:
    """Write final.xyz and summary.json, print the summary; :data:`EXIT_HALTED` when the monitor halted
    the run, else 0."""
    if monitor.last_step is not None and monitor.last_trajectory_step != monitor.last_step:
        monitor.write_trajectory_frame()
    final = atoms.copy()
    final.calc = None
    write_frames(paths["final"], [final])
    summary = {"command": command, "potential": os.path.abspath(args.potential),
               "active_set": None if args.active_set is None else os.path.abspath(args.active_set),
               "structure": os.path.abspath(args.structure), "n_atoms": len(atoms)}
    summary.update(extra)
    summary.update(monitor.summary())
    # flagged.xyz exists only when something was flagged (ASE cannot read an empty file)
    summary["files"] = {k: os.path.abspath(v) for k, v in paths.items() if k == "summary" or os.path.exists(v)}
    summary["wall_time_s"] = round(time.perf_counter() - t_start, 3)
    with atomic_write(paths["summary"], mode="w") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")

    m = monitor.measure.name
    state = f"HALTED at step {monitor.step} ({monitor.reason})" if monitor.halted else extra.get("status", "completed")
    print(f"ace-uq {command}: {extra['steps_run']} of {extra['steps_requested']} steps; {state}")
    best = "n/a" if monitor.max_value is None else f"{monitor.max_value:.4g}"
    isolated = "unknown" if monitor.n_isolated is None else str(monitor.max_n_isolated)
    print(f"  {monitor.reduce_name} {m}: highest {best} (step {monitor.max_value_step}); flag > "
          f"{monitor.flag_threshold:g}: {monitor.n_flags} flagged frame(s); halt > {monitor.halt_threshold:g}; "
          f"isolated atoms (max): {isolated}")
    for key in ("final_energy_eV", "final_fmax_eV_per_A"):
        if key in extra:
            print(f"  {key}: {extra[key]:.6g}")
    print(f"  wrote {', '.join(paths[k] for k in summary['files'])}")
    return EXIT_HALTED if monitor.halted else 0


def latest_value(monitor) -> float:
    """The reduced measure of the monitor's last check (NaN before the first)."""
    return monitor.history[-1].value if monitor.history else float("nan")


def run_with_progress(monitor, dynamics, label: str, quiet: bool, status, steps: int, **run_kwargs):
    """``monitor.run(dynamics, steps, **run_kwargs)`` with a progress bar over the steps (unless
    ``quiet``) whose text after the count is ``status()``, evaluated once per step."""
    with progress_bar(steps, label, enabled=not quiet, unit="step") as bar:
        def report():
            bar.set_postfix_str(status(), refresh=False)
            bar.update(dynamics.nsteps - bar.n)

        if not bar.disable:
            dynamics.attach(report, interval=1)
        return monitor.run(dynamics, steps=steps, **run_kwargs)


def run_md(args) -> int:
    """Langevin or NVE MD from Maxwell-Boltzmann velocities at ``--temperature`` K (``--timestep`` fs,
    ``--friction`` 1/fs), watched by the monitor."""
    if args.steps < 0 or args.timestep <= 0 or args.temperature < 0 or args.interval < 1:
        raise ValueError("--steps >= 0, --timestep > 0, --temperature >= 0 and --interval >= 1 are required")
    t_start = time.perf_counter()
    atoms, paths = start_run(args)
    rng = np.random.default_rng(args.seed)
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    dt = args.timestep * units.fs
    if args.thermostat == "langevin":
        dyn = Langevin(atoms, dt, temperature_K=args.temperature, friction=args.friction / units.fs,
                       fixcm=False, rng=rng)
    else:
        dyn = VelocityVerlet(atoms, dt)
    monitor = make_monitor(args, atoms, paths, dyn, trajectory_interval=args.interval)
    dyn.attach(monitor, interval=1)      # every step: gamma comes with every force call anyway

    def status() -> str:
        return (f"T {atoms.get_temperature():7.1f} K  {monitor.label} {latest_value(monitor):.3g}  "
                f"flags {monitor.n_flags}")

    run_with_progress(monitor, dyn, "md", args.quiet, status, args.steps)
    extra = {"temperature_K": args.temperature, "timestep_fs": args.timestep, "thermostat": args.thermostat,
             "friction_per_fs": args.friction if args.thermostat == "langevin" else None, "seed": args.seed,
             "steps_requested": args.steps, "steps_run": int(dyn.nsteps),
             "simulated_time_fs": float(dyn.get_time() / units.fs), "trajectory_interval": args.interval,
             "status": "halted" if monitor.halted else "completed"}
    return finish(args, "md", monitor, paths, atoms, extra, t_start)


def run_relax(args) -> int:
    """BFGS or FIRE relaxation to ``--fmax`` eV/A, with ``--cell`` of the cell too at ``--pressure`` GPa,
    watched by the monitor."""
    if args.steps < 0 or args.fmax <= 0 or args.interval < 1:
        raise ValueError("--steps >= 0, --fmax > 0 and --interval >= 1 are required")
    t_start = time.perf_counter()
    atoms, paths = start_run(args)
    target = FrechetCellFilter(atoms, scalar_pressure=args.pressure * units.GPa) if args.cell else atoms
    optimizer = {"BFGS": BFGS, "FIRE": FIRE}[args.optimizer]
    opt = optimizer(target, logfile=None)
    monitor = make_monitor(args, target, paths, opt, trajectory_interval=args.interval)
    opt.attach(monitor, interval=1)

    def fmax_now() -> float:
        """eV/A, over the optimizer's degrees of freedom (with --cell including the cell's)."""
        return float(np.sqrt((target.get_forces() ** 2).sum(axis=1).max())) if len(atoms) else 0.0

    def status() -> str:
        return (f"E {atoms.get_potential_energy():.5f} eV  fmax {fmax_now():.4f}  "
                f"{monitor.label} {latest_value(monitor):.3g}")

    converged = bool(run_with_progress(monitor, opt, "relax", args.quiet, status, args.steps, fmax=args.fmax))
    extra = {"optimizer": args.optimizer, "fmax_target": args.fmax, "cell": bool(args.cell),
             "pressure_GPa": args.pressure if args.cell else None, "steps_requested": args.steps,
             "steps_run": int(opt.nsteps), "converged": converged and not monitor.halted,
             "final_energy_eV": float(atoms.get_potential_energy()), "final_fmax_eV_per_A": fmax_now(),
             "trajectory_interval": args.interval,
             "status": "halted" if monitor.halted else ("converged" if converged else "not converged")}
    if args.cell:
        extra["final_cell"] = atoms.cell.array.tolist()
    return finish(args, "relax", monitor, paths, atoms, extra, t_start)


def add_monitor_options(p, default_outdir: str) -> None:
    """The options md and relax share: potential, calculator, structure, monitor and outputs."""
    p.add_argument("potential", help="pacemaker .yaml potential")
    p.add_argument("--active-set", default=None, help="pacemaker .asi active set (needed for gamma)")
    p.add_argument("--local-active-set", default=None, help="local active set (needed for gamma_local)")
    add_threads_option(p)
    p.add_argument("--structure", required=True, help="starting structure (any ASE format; last frame)")
    p.add_argument("--measure", default="gamma", choices=sorted(MEASURES) + sorted(ALIASES),
                   help="per-atom uncertainty to watch (default gamma; 'error' = forces_error_estimate)")
    p.add_argument("--flag", type=float, default=None,
                   help="flag threshold (default for gamma: the active set's, from held-out training "
                        "structures for this many atoms, else 2; forces 0.1 eV/A)")
    p.add_argument("--halt", type=float, default=None,
                   help="halt threshold (default for gamma: the active set's, else 10; forces 0.5 eV/A)")
    p.add_argument("--reduce", default="max", choices=sorted(REDUCTIONS), help="per-structure reduction")
    p.add_argument("--patience", type=int, default=1, help="consecutive steps above --halt before halting")
    p.add_argument("--min-flag-gap", type=int, default=10, help="minimum steps between two flagged frames")
    p.add_argument("--halt-on-isolated", action="store_true",
                   help="halt when an atom has no neighbour within the cut-off")
    p.add_argument("--cluster-cutoff", type=float, default=None,
                   help="A: write flagged atoms and their neighbours as free clusters to flagged.xyz")
    p.add_argument("--ensemble", nargs="+", default=None, metavar="POT2.yaml",
                   help="further models: evaluate an ensemble (mean forces drive the dynamics; measure forces_dev)")
    p.add_argument("--error-calibration", default=None, metavar="FILE",
                   help="error-calibration file (ace-uq uq-report --calibrate): adds forces_error_estimate")
    p.add_argument("--interval", type=int, default=10, help="steps between trajectory frames")
    p.add_argument("-o", "--output-dir", default=default_outdir,
                   help="trajectory.xyz, flagged.xyz, final.xyz, summary.json go here")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parsers(sub) -> None:
    p = sub.add_parser("md", help="MD with an uncertainty monitor (flag extrapolative frames, halt)",
                       description="Langevin or NVE MD; exit status 0 when the run completed, "
                                   f"{EXIT_HALTED} when the monitor halted it, 2 on errors.")
    add_monitor_options(p, "ace-uq-md")
    p.add_argument("--temperature", type=float, required=True, help="K (thermostat and initial velocities)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--timestep", type=float, required=True, help="fs")
    p.add_argument("--thermostat", choices=("langevin", "nve"), default="langevin")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="random seed (velocities, Langevin noise)")
    p.set_defaults(func=run_md)

    p = sub.add_parser("relax", help="relaxation with an uncertainty monitor (flag, halt)",
                       description="BFGS or FIRE relaxation, optionally of the cell (FrechetCellFilter); "
                                   f"exit status 0 when the run ended normally (converged or not), "
                                   f"{EXIT_HALTED} when the monitor halted it, 2 on errors.")
    add_monitor_options(p, "ace-uq-relax")
    p.set_defaults(interval=1)
    p.add_argument("--fmax", type=float, default=0.05, help="eV/A (default 0.05)")
    p.add_argument("--steps", type=int, default=500, help="maximum optimizer steps (default 500)")
    p.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    p.add_argument("--pressure", type=float, default=0.0, help="GPa, with --cell (default 0)")
    p.add_argument("--optimizer", choices=("BFGS", "FIRE"), default="BFGS")
    p.set_defaults(func=run_relax)
