"""Command line interface ``ace-uq``: a thin layer over the Python API.

Sub-commands:
  demo        evaluate the bundled example model with its active set along a short MD run
  info        summary of a potential file
  evaluate    energies, forces and gamma of structures in a file, written as extended XYZ
  activeset   build a pacemaker ``.asi`` active set from training structures
  md          molecular dynamics watched by an UncertaintyMonitor (flag extrapolative frames, halt)
  relax       structure (and cell) relaxation watched by an UncertaintyMonitor
  uq-report   ranking, calibration and novelty detection of the uncertainties on labelled data
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _cmd_info(args):
    from .model.basis import load_basis

    basis = load_basis(args.potential)
    pot = basis.potential
    print(f"potential      {pot.source}")
    print(f"elements       {' '.join(basis.elements)}")
    for e, el in enumerate(basis.elements):
        ranks = basis.function_rank[basis.function_start[e]: basis.function_start[e + 1]]
        per_rank = "/".join(str(int((ranks == r).sum())) for r in range(1, int(ranks.max(initial=0)) + 1))
        emb = pot.embeddings[el]
        print(f"  {el:3s} functions {basis.nfunc[el]} (rank 1.. = {per_rank}), ndensity {emb.ndensity}, {emb.npoti}")
    print(f"radial sizes   nradbase {basis.nradbase}, nradmax {basis.nradmax}, lmax {basis.lmax}")
    print(f"cut-off        {basis.cutoff_max} A; inner cut-off type "
          f"{next(iter(pot.bonds.values())).inner_cutoff_type}")
    return 0


def _cmd_evaluate(args):
    import ase.io
    import numpy as np

    from .calculator import ACECalculator
    from .io import write_frames

    calc = ACECalculator(args.potential, active_set=args.active_set, num_threads=args.num_threads,
                         local_active_set=args.local_active_set)
    frames = ase.io.read(args.structures, index=":")
    out = []
    for atoms in frames:
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        atoms.info["ace_energy"] = energy
        atoms.arrays["ace_forces"] = atoms.get_forces().copy()
        if calc.active_set is not None:
            atoms.arrays["gamma"] = calc.results["gamma"].copy()
            atoms.info["max_gamma"] = calc.results["max_gamma"]
        if calc.local_active_set is not None:
            atoms.arrays["gamma_local"] = calc.results["gamma_local"].copy()
            atoms.arrays["gamma_cluster"] = calc.results["gamma_cluster"].copy()
            atoms.info["max_gamma_local"] = calc.results["max_gamma_local"]
        out.append(atoms)
        line = f"{len(atoms):6d} atoms  E = {energy:.6f} eV"
        if calc.active_set is not None:
            line += f"  max gamma = {calc.results['max_gamma']:.3f}"
        if calc.local_active_set is not None:
            line += f"  max gamma_local = {calc.results['max_gamma_local']:.3f}"
        print(line)
    if args.output:
        for atoms in out:
            atoms.calc = None
        write_frames(args.output, out)
        print(f"wrote {len(out)} frames to {args.output}")
    del np
    return 0


def _cmd_activeset(args):
    from .uncertainty.build import build_active_set_from_files

    if args.local or args.clusters is not None or args.cluster_by is not None:
        return _activeset_local(args)

    t0 = time.perf_counter()
    active_set = build_active_set_from_files(
        args.potential, args.training, nonlinear=args.nonlinear, batch_size=args.batch_size,
        tolerance=args.tolerance, progress=not args.quiet,
    )
    active_set.save(args.output)
    for el, cond in active_set.condition_numbers.items():
        print(f"{el}: active set {active_set.inverse[el].shape[0]} rows, condition number {cond:.3g}")
    print(f"wrote {args.output} in {time.perf_counter() - t0:.1f} s")
    return 0


def _activeset_local(args) -> int:
    """``ace-uq activeset POT TRAIN... --local [--clusters K | --cluster-by KEY] [--seed S] -o FILE``."""
    import ase.io
    import numpy as np

    from .uncertainty.local_build import build_local_active_set

    t0 = time.perf_counter()
    if args.cluster_by is not None and args.clusters is not None:
        raise ValueError("give either --clusters K or --cluster-by KEY, not both")
    n_clusters = None
    if args.clusters is not None and args.clusters != "auto":
        try:
            n_clusters = int(args.clusters)
        except ValueError:
            raise ValueError(f"--clusters must be an integer or 'auto', got {args.clusters!r}") from None
    frames = [atoms for path in args.training for atoms in ase.io.read(path, index=":")]
    local = build_local_active_set(args.potential, frames, cluster_by=args.cluster_by, n_clusters=n_clusters,
                                   seed=args.seed, nonlinear=args.nonlinear, tolerance=args.tolerance)
    local.save(args.output)
    for el, cs in local.clusters.items():
        reduced = int(np.count_nonzero(cs.distance_scale > 0))
        print(f"{el}: {cs.n_clusters} clusters ({local.method}), width {cs.width}, atoms per cluster "
              f"{cs.n_train.min()}..{cs.n_train.max()}, {reduced} reduced (rank < width)")
    print(f"wrote {args.output} in {time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_demo(args):
    from .demo import run_demo

    return run_demo(steps=args.steps, temperature=args.temperature, seed=args.seed)


# ---------------------------------------------------------------------------------------------
# md and relax: dynamics watched by an UncertaintyMonitor (docs/monitor.md)

EXIT_HALTED = 3   # the run was stopped by the monitor (summary written); 2 is an error


class _Progress:
    """A plain progress line on stderr (no dependency): redrawn in place on a terminal, otherwise
    one line per tenth of the run."""

    def __init__(self, total: int, label: str, stream=None, enabled: bool = True):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_time = 0.0
        self._last_decile = -1
        self._last_step = None
        self._width = 0

    def update(self, step: int, text, force: bool = False) -> None:
        """``text``: a string or a callable giving it (called only when a line is printed)."""
        if not self.enabled or (force and step == self._last_step):
            return
        fraction = min(step / self.total, 1.0)
        if self.tty:
            now = time.perf_counter()
            if not force and now - self._last_time < 0.2:
                return
            self._last_time = now
            self._last_step = step
            text = text() if callable(text) else text
            bar = "#" * int(24 * fraction)
            line = f"{self.label} [{bar:<24s}] {step}/{self.total} {text}"
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            decile = int(10 * fraction)
            if not force and decile == self._last_decile:
                return
            self._last_decile = decile
            self._last_step = step
            text = text() if callable(text) else text
            self.stream.write(f"{self.label} {step}/{self.total} ({100 * fraction:3.0f}%) {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


_OUTPUT_NAMES = ("trajectory.xyz", "flagged.xyz", "final.xyz", "summary.json")


def _prepare_output_dir(outdir: str, overwrite: bool) -> dict:
    os.makedirs(outdir, exist_ok=True)
    paths = {name.split(".")[0]: os.path.join(outdir, name) for name in _OUTPUT_NAMES}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist(s); use --overwrite or another -o directory")
    for path in existing:
        os.unlink(path)
    return paths


def _monitored_calculator(args):
    """The calculator for md/relax, with clear errors for what this version cannot do yet."""
    import inspect

    from .calculator import ACECalculator
    from .monitor import get_measure

    measure = get_measure(args.measure)
    kwargs = {}
    if args.ensemble:
        if "ensemble" not in inspect.signature(ACECalculator.__init__).parameters:
            raise ValueError("--ensemble is not supported yet: this version of ACECalculator evaluates a "
                             "single model (measures available: gamma, with --active-set)")
        kwargs["ensemble"] = args.ensemble
    if measure.name == "gamma" and args.active_set is None:
        raise ValueError("--measure gamma needs --active-set POT.asi (build one with 'ace-uq activeset')")
    if getattr(args, "local_active_set", None):
        kwargs["local_active_set"] = args.local_active_set
    elif measure.name == "gamma_local":
        raise ValueError("--measure gamma_local needs --local-active-set FILE (build one with "
                         "'ace-uq activeset POT.yaml TRAIN.xyz --local -o FILE')")
    if getattr(args, "error_calibration", None):
        kwargs["error_calibration"] = args.error_calibration
    elif measure.name == "forces_error_estimate":
        raise ValueError(f"--measure {args.measure} needs --error-calibration FILE (a map from gamma, gamma_local or "
                         f"forces_dev to the expected force error; make one with 'ace-uq uq-report --calibrate')")
    calc = ACECalculator(args.potential, active_set=args.active_set, num_threads=args.num_threads, **kwargs)
    if measure.key not in calc.implemented_properties:
        raise ValueError(f"--measure {args.measure} is not supported yet: ACECalculator does not provide "
                         f"'{measure.key}' ({measure.description}; expected from {measure.provided_by}). "
                         f"It provides: {', '.join(calc.implemented_properties)}")
    return calc, measure


def _read_structure(path):
    import ase.io

    atoms = ase.io.read(path)   # the last frame of a multi-frame file
    atoms.calc = None
    return atoms


def _make_monitor(args, atoms, paths, dynamics, trajectory_interval):
    from .monitor import UncertaintyMonitor

    return UncertaintyMonitor(
        atoms, measure=args.measure, flag_threshold=args.flag, halt_threshold=args.halt,
        reduce=args.reduce, flag_file=paths["flagged"], trajectory_file=paths["trajectory"],
        patience=args.patience, min_flag_gap=args.min_flag_gap, halt_on_isolated=args.halt_on_isolated,
        cluster_cutoff=args.cluster_cutoff, dynamics=dynamics, trajectory_interval=trajectory_interval,
        append=True,
    )


def _finish(args, command, monitor, paths, atoms, extra: dict, t_start: float) -> int:
    from ._atomic_io import atomic_write
    from .io import write_frames

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


def _cmd_md(args):
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import Stationary

    if args.steps < 0 or args.timestep <= 0 or args.temperature < 0 or args.interval < 1:
        raise ValueError("--steps >= 0, --timestep > 0, --temperature >= 0 and --interval >= 1 are required")
    t_start = time.perf_counter()
    calc, _ = _monitored_calculator(args)
    atoms = _read_structure(args.structure)
    atoms.calc = calc
    paths = _prepare_output_dir(args.output_dir, args.overwrite)
    rng = np.random.default_rng(args.seed)
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:   # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    dt = args.timestep * units.fs
    if args.thermostat == "langevin":
        from ase.md.langevin import Langevin

        dyn = Langevin(atoms, dt, temperature_K=args.temperature, friction=args.friction / units.fs,
                       fixcm=False, rng=rng)
    else:
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, dt)
    monitor = _make_monitor(args, atoms, paths, dyn, trajectory_interval=args.interval)
    dyn.attach(monitor, interval=1)      # every step: gamma comes with every force call anyway
    progress = _Progress(args.steps, "md", enabled=not args.quiet)
    m = monitor.label

    def report(final=False):
        value = monitor.history[-1].value if monitor.history else float("nan")
        progress.update(dyn.nsteps, lambda: f"T {atoms.get_temperature():7.1f} K  {m} {value:.3g}  flags "
                        f"{monitor.n_flags}", force=final or monitor.halted)

    dyn.attach(report, interval=1)
    try:
        monitor.run(dyn, steps=args.steps)
        report(final=True)
    finally:
        progress.close()
    extra = {"temperature_K": args.temperature, "timestep_fs": args.timestep, "thermostat": args.thermostat,
             "friction_per_fs": args.friction if args.thermostat == "langevin" else None, "seed": args.seed,
             "steps_requested": args.steps, "steps_run": int(dyn.nsteps),
             "simulated_time_fs": float(dyn.get_time() / units.fs), "trajectory_interval": args.interval,
             "status": "halted" if monitor.halted else "completed"}
    return _finish(args, "md", monitor, paths, atoms, extra, t_start)


def _cmd_relax(args):
    import numpy as np
    from ase import units

    if args.steps < 0 or args.fmax <= 0 or args.interval < 1:
        raise ValueError("--steps >= 0, --fmax > 0 and --interval >= 1 are required")
    t_start = time.perf_counter()
    calc, _ = _monitored_calculator(args)
    atoms = _read_structure(args.structure)
    atoms.calc = calc
    paths = _prepare_output_dir(args.output_dir, args.overwrite)
    target = atoms
    if args.cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms, scalar_pressure=args.pressure * units.GPa)
    if args.optimizer == "BFGS":
        from ase.optimize import BFGS as Optimizer
    else:
        from ase.optimize import FIRE as Optimizer
    opt = Optimizer(target, logfile=None)
    monitor = _make_monitor(args, target, paths, opt, trajectory_interval=args.interval)
    opt.attach(monitor, interval=1)
    progress = _Progress(args.steps, "relax", enabled=not args.quiet)
    m = monitor.label

    def fmax_now():
        return float(np.sqrt((target.get_forces() ** 2).sum(axis=1).max())) if len(atoms) else 0.0

    def report(final=False):
        value = monitor.history[-1].value if monitor.history else float("nan")
        progress.update(opt.nsteps, lambda: f"E {atoms.get_potential_energy():.5f} eV  fmax "
                        f"{fmax_now():.4f}  {m} {value:.3g}", force=final or monitor.halted)

    opt.attach(report, interval=1)
    try:
        converged = bool(monitor.run(opt, steps=args.steps, fmax=args.fmax))
        report(final=True)
    finally:
        progress.close()
    extra = {"optimizer": args.optimizer, "fmax_target": args.fmax, "cell": bool(args.cell),
             "pressure_GPa": args.pressure if args.cell else None, "steps_requested": args.steps,
             "steps_run": int(opt.nsteps), "converged": converged and not monitor.halted,
             "final_energy_eV": float(atoms.get_potential_energy()), "final_fmax_eV_per_A": fmax_now(),
             "trajectory_interval": args.interval,
             "status": "halted" if monitor.halted else ("converged" if converged else "not converged")}
    if args.cell:
        extra["final_cell"] = atoms.cell.array.tolist()
    return _finish(args, "relax", monitor, paths, atoms, extra, t_start)


def _add_threads_option(p) -> None:
    p.add_argument("--num-threads", type=int, default=None, metavar="N",
                   help="Numba threads for the evaluation (default: all cores, or NUMBA_NUM_THREADS)")


def _add_monitor_options(p, default_outdir: str) -> None:
    from .monitor import ALIASES, MEASURES, REDUCTIONS

    p.add_argument("potential", help="pacemaker .yaml potential")
    p.add_argument("--active-set", default=None, help="pacemaker .asi active set (needed for gamma)")
    p.add_argument("--local-active-set", default=None, help="local active set (needed for gamma_local)")
    _add_threads_option(p)
    p.add_argument("--structure", required=True, help="starting structure (any ASE format; last frame)")
    p.add_argument("--measure", default="gamma", choices=sorted(MEASURES) + sorted(ALIASES),
                   help="per-atom uncertainty to watch (default gamma; 'error' = forces_error_estimate)")
    p.add_argument("--flag", type=float, default=None,
                   help="flag threshold (default: the measure's, gamma 2, forces 0.1 eV/A)")
    p.add_argument("--halt", type=float, default=None,
                   help="halt threshold (default: the measure's, gamma 10, forces 0.5 eV/A)")
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
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _add_md_relax_parsers(sub) -> None:
    p = sub.add_parser("md", help="MD with an uncertainty monitor (flag extrapolative frames, halt)",
                       description="Langevin or NVE MD; exit status 0 when the run completed, "
                                   f"{EXIT_HALTED} when the monitor halted it, 2 on errors.")
    _add_monitor_options(p, "ace-uq-md")
    p.add_argument("--temperature", type=float, required=True, help="K (thermostat and initial velocities)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--timestep", type=float, required=True, help="fs")
    p.add_argument("--thermostat", choices=("langevin", "nve"), default="langevin")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="random seed (velocities, Langevin noise)")
    p.set_defaults(func=_cmd_md)

    p = sub.add_parser("relax", help="relaxation with an uncertainty monitor (flag, halt)",
                       description="BFGS or FIRE relaxation, optionally of the cell (FrechetCellFilter); "
                                   f"exit status 0 when the run ended normally (converged or not), "
                                   f"{EXIT_HALTED} when the monitor halted it, 2 on errors.")
    _add_monitor_options(p, "ace-uq-relax")
    p.set_defaults(interval=1)
    p.add_argument("--fmax", type=float, default=0.05, help="eV/A (default 0.05)")
    p.add_argument("--steps", type=int, default=500, help="maximum optimizer steps (default 500)")
    p.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    p.add_argument("--pressure", type=float, default=0.0, help="GPa, with --cell (default 0)")
    p.add_argument("--optimizer", choices=("BFGS", "FIRE"), default="BFGS")
    p.set_defaults(func=_cmd_relax)


def _cmd_fit(args):
    import ase.io

    from .fitting.linear_fit import FitWeights
    from .fitting.metrics import error_table, format_table
    from .fitting.recipe import fit
    from .model.basis import build_basis
    from .model.yaml_format import write_potential_file

    train = [a for path in args.training for a in ase.io.read(path, index=":")]
    weights = FitWeights(energy=args.energy_weight, forces=args.force_weight, stress=args.stress_weight)
    limits = None
    if (args.nmax is None) != (args.lmax is None):
        raise SystemExit("ace-uq fit: --nmax and --lmax go together (one value per rank, e.g. --nmax 12,8,5,3 "
                         "--lmax 0,4,3,2)")
    if args.nmax is not None:
        from .fitting.basis_construction import BasisLimits

        limits = BasisLimits(_int_list(args.nmax, "--nmax"), _int_list(args.lmax, "--lmax"))
    result = fit(train, cutoff=args.cutoff, functions=args.functions, weights=weights, seed=args.seed,
                 core_repulsion=args.core_repulsion, progress=not args.quiet, limits=limits,
                 max_body_order=args.max_body_order, radial_basis=args.radial_basis)
    write_potential_file(result.potential, args.output)
    basis = build_basis(result.potential)
    print(f"fitted {', '.join(f'{el}: {n}' for el, n in basis.nfunc.items())} functions on {len(train)} structures "
          f"in {result.fit_time:.1f} s (ridge {result.regularisation:g}); wrote {args.output}")
    print("reference energies (eV/atom, stored in the .yaml metadata; pacemaker/LAMMPS exclude them): "
          + ", ".join(f"{el} {e0:.6f}" for el, e0 in result.reference_energies.items()))
    from .calculator import ACECalculator

    calc = ACECalculator(basis)
    print(format_table(error_table([calc], train), "\ntraining set"))
    if args.test:
        test = [a for path in args.test for a in ase.io.read(path, index=":")]
        print(format_table(error_table([calc], test), "\ntest set"))
    if args.active_set:
        from .uncertainty.build import build_active_set

        active = build_active_set(basis, train, progress=not args.quiet)
        active.save(args.active_set)
        print(f"wrote active set {args.active_set}")
    if args.ensemble:

        print_ensemble_fit(args, basis, result, train, weights)
    return 0


def ensemble_spread_lines(calc, frames) -> list:
    """Lines summarising an ensemble calculator's spread over ``frames``: mean and max forces_dev (eV/A),
    RMS forces_std (eV/A, per component) and RMS energy_std per atom (meV/atom)."""
    import numpy as np

    dev, fstd, estd = [], [], []
    for atoms in frames:
        work = atoms.copy()
        work.calc = calc
        work.get_forces()
        dev.append(calc.results["forces_dev"])
        fstd.append(calc.results["forces_std"].ravel())
        estd.append(calc.results["energy_std"] / max(len(work), 1))
    dev = np.concatenate(dev) if dev else np.zeros(0)
    fstd = np.concatenate(fstd) if fstd else np.zeros(0)
    estd = np.array(estd)
    if not dev.size:
        return ["ensemble spread: no atoms"]
    return [
        f"ensemble spread ({calc.ensemble.size} members, "
        f"{'one shared basis' if calc.ensemble.shared else 'several bases'}):",
        f"  forces_dev  mean {dev.mean():.4f}  max {dev.max():.4f} eV/A",
        f"  forces_std  RMS {np.sqrt(np.mean(fstd ** 2)):.4f} eV/A (per component)",
        f"  energy_std  RMS {1000 * np.sqrt(np.mean(estd ** 2)):.3f} meV/atom",
    ]


def print_ensemble_fit(args, basis, result, train, weights) -> None:
    """``ace-uq fit --ensemble K``: build, write and evaluate the members (training and test tables of the
    ensemble mean, and its spread)."""
    import ase.io

    from .calculator import ACECalculator
    from .fitting.ensemble_fit import ensemble_potentials, write_ensemble
    from .fitting.metrics import error_table, format_table

    members = ensemble_potentials(basis, result, args.ensemble_method, args.ensemble, frames=train,
                                  weights=weights, seed=args.seed, progress=not args.quiet)
    paths, ensemble_file = write_ensemble(members, args.output)
    print(f"\nwrote {len(paths)} ensemble members ({args.ensemble_method}) to {os.path.dirname(ensemble_file)}/, "
          f"ensemble file {ensemble_file}")
    if args.ensemble_method == "posterior" and result.n_validation:
        print(f"posterior spread widened by {result.posterior_scale:.3g}: the factor that makes it match the "
              "validation split's error (the posterior alone is the coefficients' statistical uncertainty)")
    elif args.ensemble_method == "posterior":
        print("posterior spread NOT calibrated: fewer than 10 training structures, so no validation split; "
              "the spread is the coefficients' statistical uncertainty only and underestimates the error")
    calc = ACECalculator(ensemble_file)
    print(format_table(error_table([calc], train), "\ntraining set, ensemble mean"))
    print("\n".join(ensemble_spread_lines(calc, train)))
    if args.test:
        test = [a for path in args.test for a in ase.io.read(path, index=":")]
        print(format_table(error_table([calc], test), "\ntest set, ensemble mean"))
        print("\n".join(ensemble_spread_lines(calc, test)))


def _int_list(text: str, option: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"ace-uq fit: {option} takes comma-separated integers (one per rank), found {text!r}")


def _cmd_eval(args):
    import ase.io

    from .calculator import ACECalculator
    from .fitting.metrics import error_table, format_table
    from .model.ensemble_file import member_list

    frames = ase.io.read(args.data, index=":")
    if len(member_list(args.potentials)) > 1:
        calc = ACECalculator(args.potentials if len(args.potentials) > 1 else args.potentials[0])
        label = f"mean of an ensemble of {calc.ensemble.size} potentials"
        print(format_table(error_table([calc], frames), f"{label} on {args.data}"))
        print("\n".join(ensemble_spread_lines(calc, frames)))
        return 0
    calcs = [ACECalculator(path) for path in args.potentials]
    label = args.potentials[0]
    print(format_table(error_table(calcs, frames), f"{label} on {args.data}"))
    return 0


def _add_fit_parsers(sub):
    from .fitting.recipe import (
        DEFAULT_CUTOFF, DEFAULT_FUNCTIONS, DEFAULT_MAX_BODY_ORDER, DEFAULT_RADIAL_BASIS, DEFAULT_WEIGHTS,
    )
    from .model.yaml_format import RADIAL_BASES

    p = sub.add_parser("fit", help="fit a linear ACE potential to labelled structures (extended XYZ)")
    p.add_argument("training", nargs="+", help="training structures with energies (and forces, stress)")
    p.add_argument("-o", "--output", required=True, help="output pacemaker B-basis .yaml")
    p.add_argument("--test", nargs="*", default=None, help="test structures: error table printed")
    p.add_argument("--cutoff", type=float, default=DEFAULT_CUTOFF, help="cut-off radius, Angstrom")
    p.add_argument("--functions", type=int, default=DEFAULT_FUNCTIONS, help="target number of functions per element")
    p.add_argument("--radial-basis", choices=RADIAL_BASES, default=DEFAULT_RADIAL_BASIS,
                   help=f"radial basis functions (default {DEFAULT_RADIAL_BASIS})")
    p.add_argument("--max-body-order", type=int, default=DEFAULT_MAX_BODY_ORDER,
                   help=f"maximal body order, 2 to 5 (rank + 1; default {DEFAULT_MAX_BODY_ORDER})")
    p.add_argument("--nmax", default=None, help="per-rank maximal radial index, e.g. 12,8,5,3 (with --lmax; "
                                                "replaces --functions)")
    p.add_argument("--lmax", default=None, help="per-rank maximal l, e.g. 0,4,3,2 (with --nmax)")
    p.add_argument("--energy-weight", type=float, default=DEFAULT_WEIGHTS.energy)
    p.add_argument("--force-weight", type=float, default=DEFAULT_WEIGHTS.forces)
    p.add_argument("--stress-weight", type=float, default=DEFAULT_WEIGHTS.stress)
    p.add_argument("--core-repulsion", action="store_true", help="exponential core repulsion below 1.5 A")
    p.add_argument("--active-set", default=None, help="also build the .asi active set from the training data")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--ensemble", type=int, default=None, metavar="K",
                   help="also write K ensemble members: OUT.ensemble/member_NN.yaml and the ensemble file "
                        "OUT.ensemble/ensemble.yaml (docs/ensembles.md)")
    p.add_argument("--ensemble-method", choices=("posterior", "bootstrap"), default="posterior",
                   help="posterior: samples of the ridge fit's coefficient posterior, widened to match the "
                        "validation error (default, nearly free); bootstrap: refits on resampled structures")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("eval", help="error table of one potential (or the mean of several) on labelled data")
    p.add_argument("potentials", nargs="+")
    p.add_argument("data")
    p.set_defaults(func=_cmd_eval)


def _cmd_uq_report(args):
    import ase.io

    from .calculator import ACECalculator
    from .report.collect import collect
    from .report.uq_report import write_report

    options = {"num_threads": args.num_threads}
    if args.active_set:
        options["active_set"] = args.active_set
    if args.local_active_set:
        options["local_active_set"] = args.local_active_set
    potential = args.potential if len(args.potential) > 1 else args.potential[0]
    calc = ACECalculator(potential, **options)

    def read(paths):
        return [a for path in paths for a in ase.io.read(path, index=":")]

    def progress(label):
        if args.quiet:
            return None
        return lambda done, total: print(f"\r{label}: {done}/{total} structures", end="" if done < total else "\n",
                                         file=sys.stderr, flush=True)

    test = collect(calc, read(args.test), progress("test"))
    if not test.measures:
        print("ace-uq uq-report: note: no uncertainty measure available (give --active-set, --local-active-set "
              "or several potentials for an ensemble); only errors are reported", file=sys.stderr)
    novel = {}
    for path in args.novel or []:
        label = os.path.splitext(os.path.basename(path))[0]
        novel[label] = collect(calc, read([path]), progress(label))
    os.makedirs(args.output, exist_ok=True)
    setup = {"potential": args.potential, "active_set": args.active_set, "local_active_set": args.local_active_set,
             "test": args.test, "novel": args.novel}
    if args.calibrate:
        from .uncertainty.calibration import fit_error_calibration

        source = collect(calc, read(args.validation), progress("validation")) if args.validation else test
        if args.calibrate not in source.measures:
            raise ValueError(f"--calibrate {args.calibrate}: the calculator does not provide this measure")
        calibration = fit_error_calibration(source.measures[args.calibrate], source.force_error, args.calibrate,
                                            info={"fitted_on": args.validation or args.test})
        path = os.path.join(args.output, "error_calibration.json")
        calibration.save(path)
        setup["error_calibration"] = path
        if not args.validation:
            print("ace-uq uq-report: note: the error calibration was fitted on the test set itself (give "
                  "--validation for an independent fit)", file=sys.stderr)
    result = write_report(args.output, test, novel, extra=setup)
    for label, nv in result["novel"].items():
        aucs = ", ".join(f"{k} {v['auc_atom']:.3f}" for k, v in nv["measures"].items())
        print(f"{label}: per-atom ROC-AUC {aucs or '-'}")
    print(f"wrote {os.path.join(args.output, 'report.md')}")
    return 0


def _add_uq_report_parser(sub):
    p = sub.add_parser("uq-report", help="how well the uncertainties rank, calibrate and detect novel structures")
    p.add_argument("--potential", nargs="+", required=True,
                   help="potential .yaml (several: an ensemble, mean and spread)")
    p.add_argument("--active-set", default=None, help="pacemaker .asi (gamma)")
    p.add_argument("--local-active-set", default=None, help="local active-set file (gamma_local)")
    p.add_argument("--test", nargs="+", required=True, help="in-domain labelled test structures")
    p.add_argument("--novel", nargs="*", default=None, help="labelled structures of families absent from training")
    p.add_argument("--calibrate", choices=["gamma", "gamma_local", "forces_dev"], default=None,
                   help="fit a map from this measure to the expected force error (error_calibration.json)")
    p.add_argument("--validation", nargs="*", default=None, help="labelled structures to fit the calibration on")
    p.add_argument("-o", "--output", required=True, help="output directory (report.md, metrics.json, PNG plots)")
    p.add_argument("--quiet", action="store_true")
    _add_threads_option(p)
    p.set_defaults(func=_cmd_uq_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ace-uq", description="ACE potentials with uncertainty for ASE")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the bundled example (model, active set, short MD with gamma)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--temperature", type=float, default=600.0, help="K")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("info", help="summarise a potential file")
    p.add_argument("potential")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("evaluate", help="evaluate structures (any ASE-readable file)")
    p.add_argument("potential")
    p.add_argument("structures")
    p.add_argument("--active-set", default=None)
    p.add_argument("--local-active-set", default=None, help="local active set (ace-uq activeset --local): gamma_local")
    p.add_argument("-o", "--output", default=None, help="extended XYZ with results in arrays/info")
    _add_threads_option(p)
    p.set_defaults(func=_cmd_evaluate)

    _add_fit_parsers(sub)

    p = sub.add_parser("activeset", help="build a pacemaker .asi active set (MaxVol) from training data")
    p.add_argument("potential")
    p.add_argument("training", nargs="+", help="training structures (extended XYZ or any ASE format)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--nonlinear", action="store_true", help="non-linear projections (one block per density)")
    p.add_argument("--batch-size", type=int, default=20000, help="atoms per projection batch")
    p.add_argument("--tolerance", type=float, default=1.001, help="MaxVol tolerance (pacemaker: 1.001)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--local", action="store_true",
                   help="build a local active set (one per cluster of environments; docs/local-d-optimality.md)")
    p.add_argument("--clusters", default=None, metavar="K",
                   help="--local: number of k-means clusters, or 'auto' (the default)")
    p.add_argument("--cluster-by", default=None, metavar="KEY",
                   help="--local: partition by the label atoms.info[KEY] (e.g. config_type) instead of k-means")
    p.add_argument("--seed", type=int, default=0, help="--local: k-means seed")
    p.set_defaults(func=_cmd_activeset)

    _add_md_relax_parsers(sub)
    _add_uq_report_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"ace-uq {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
