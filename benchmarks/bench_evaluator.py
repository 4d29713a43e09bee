#!/usr/bin/env python
"""Speed of the ace_uq_calc evaluator behind ASE (run by hand; not part of the test suite).

Structures: rattled fcc Cu supercells (a = 3.61 A, cubic cell repeated 2..16 times, Gaussian rattle
0.05 A with a fixed seed) of 32, 108, 500, 2048 and 16384 atoms; potential ``Cu_fs500.yaml``
(500 B-functions, cut-off 7 A) and, for the extrapolation grade, its active set ``Cu_fs500.asi``.

Printed:

* a table of the median wall time per atom (microseconds) of one full ASE calculation of energy and
  forces (``atoms.get_forces(); atoms.get_potential_energy()``, neighbour list included: the
  calculators use ``skin=0``, so every call builds a new list, and one atom is moved by 1e-4 A before
  each call, so ASE sees a change and recomputes), for 1 and 2 Numba threads
  (``numba.set_num_threads``), without and with the active set (gamma);
* MD steps (velocity Verlet, 500 atoms): a force call that rebuilds the neighbour list versus one that
  reuses it (skin 0.5 A), and a step without skin;
* the time to the first forces in a *fresh* Python process (import + load potential + first
  ``get_forces`` on 32 atoms), with the Numba on-disk cache already populated ("cache warm"; with
  ``cache=True`` Numba keeps it in the ``__pycache__`` directories of the package, e.g.
  ``ace_uq_calc/kernels/__pycache__``, unless NUMBA_CACHE_DIR is set); ``--cold`` adds one run
  with an empty temporary cache (full compilation);
* the per-call Python overhead on 32 atoms: wall time of the ASE call minus the time spent inside
  the Numba kernels (every Numba dispatcher called from Python code of the package is wrapped by a
  timer for this measurement), with a new neighbour list every call and with the list reused;
* with ``--pyace-python PATH``: the same timings of pacemaker's ``pyace.PyACECalculator`` on the
  same structures (written to a temporary extxyz file), in a subprocess run by that interpreter
  (pacemaker lives in its own virtual environment and is never imported here), and the ratio
  pyace time / ace_uq_calc time (> 1: ace_uq_calc is faster). pyace is run once, single-threaded
  (OMP/OpenBLAS/MKL threads = 1); each row compares it with that row's thread count.

Peak RSS (``resource.getrusage``, Linux: kB) is the peak of the whole process so far; sizes are run
in increasing order, so the value after a size is the peak needed up to that size.

Examples::

    python benchmarks/bench_evaluator.py --quick
    python benchmarks/bench_evaluator.py --pyace-python /path/to/pyace-venv/bin/python --json out.json

Timings on a shared machine are noisy: the table reports medians; repeat runs before drawing
conclusions. OpenBLAS threads (numpy linear algebra; no longer used by the gamma step, a Numba
kernel) are not limited by ``numba.set_num_threads``; ``--blas-threads N`` (or OPENBLAS_NUM_THREADS)
pins them.

This file must stay importable by an interpreter that has only ase + numpy (the pyace worker mode):
ace_uq_calc and numba are imported inside functions.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
DEFAULT_FIXTURES = PROJECT.parent / "shared" / "fixtures" / "pacemaker"

LATTICE = 3.61        # Angstrom, fcc Cu
RATTLE = 0.05         # Angstrom, standard deviation of ase's Atoms.rattle
SEED = 42
STEP = 1e-4           # Angstrom, displacement of atom 0 before every timed call
ALL_SIZES = (32, 108, 500, 2048, 16384)
QUICK_SIZES = (32, 108, 500)


# ----------------------------------------------------------------------------------------------
# Shared helpers (also used by the pyace worker: only ase + numpy here)
# ----------------------------------------------------------------------------------------------


def repeats_for(n_atoms: int) -> int:
    reps = round((n_atoms / 4) ** (1.0 / 3.0))
    if 4 * reps ** 3 != n_atoms:
        raise SystemExit(f"size {n_atoms} is not a cubic fcc supercell (4 n^3 atoms: 32, 108, 256, 500, ...)")
    return reps


def make_structure(n_atoms: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=LATTICE, cubic=True).repeat(repeats_for(n_atoms))
    atoms.rattle(stdev=RATTLE, seed=SEED)
    return atoms


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0 ** 2


def time_ase_calls(atoms, calc, max_calls: int, budget: float, min_calls: int = 3, check=None):
    """Wall times (s) of full ASE energy+forces calculations, each after moving atom 0 by +-STEP.

    One untimed call first (warm-up: compilation, allocation, first neighbour list). Then timed
    calls until ``max_calls`` or, once ``min_calls`` are done, until ``budget`` seconds are spent.
    Returns (wall times, process CPU times (all threads), energy of the warm-up call).
    """
    atoms.calc = calc
    atoms.get_forces()
    energy0 = float(atoms.get_potential_energy())
    if check is not None:
        check(calc)
    times, cpu = [], []
    sign = 1.0
    start = time.perf_counter()
    for _ in range(max_calls):
        atoms.positions[0, 0] += sign * STEP
        sign = -sign
        c0 = time.process_time()
        t0 = time.perf_counter()
        atoms.get_forces()
        atoms.get_potential_energy()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if len(times) >= min_calls and time.perf_counter() - start > budget:
            break
    atoms.calc = None
    return times, cpu, energy0


def count_calculations(calc):
    """Make ``calc.calculate`` count its calls (to check that every timed call really recomputes)."""
    original = calc.calculate
    calc.n_calculate = 0

    def counting(*args, **kwargs):
        calc.n_calculate += 1
        return original(*args, **kwargs)

    calc.calculate = counting
    return calc


def median_us_per_atom(times, n_atoms):
    return 1e6 * statistics.median(times) / n_atoms if times else math.nan


# ----------------------------------------------------------------------------------------------
# pyace worker (runs inside pacemaker's interpreter)
# ----------------------------------------------------------------------------------------------


def pyace_worker(config_path: str) -> int:
    import ase.io
    from pyace import PyACECalculator

    config = json.loads(Path(config_path).read_text())
    frames = ase.io.read(config["structures"], index=":")
    out = {"python": sys.version.split()[0], "sizes": {}}
    try:
        from importlib.metadata import version

        out["python_ace_version"] = version("python-ace")
    except Exception:  # noqa: BLE001 - informative only
        out["python_ace_version"] = "?"
    for atoms in frames:
        n = len(atoms)
        entry = {}
        calc = count_calculations(PyACECalculator(config["potential"]))
        times, cpu, energy = time_ase_calls(atoms, calc, config["max_calls"], config["budget"],
                                            config["min_calls"])
        entry["ef"] = {"times": times, "cpu": cpu, "energy": energy, "n_calculate": calc.n_calculate}
        if config.get("active_set"):
            try:
                calc = PyACECalculator(config["potential"])
                calc.set_active_set(config["active_set"])
                count_calculations(calc)

                def has_gamma(c):
                    if "gamma" not in c.results:
                        raise RuntimeError("PyACECalculator did not return gamma")

                times, cpu, energy = time_ase_calls(atoms, calc, config["max_calls"], config["budget"],
                                                    config["min_calls"], check=has_gamma)
                entry["efg"] = {"times": times, "cpu": cpu, "energy": energy, "n_calculate": calc.n_calculate}
            except Exception as exc:  # noqa: BLE001 - reported in the table
                entry["efg"] = {"error": f"{type(exc).__name__}: {exc}"}
        entry["peak_rss_mb"] = peak_rss_mb()
        out["sizes"][str(n)] = entry
        print(f"  pyace {n:6d} atoms done", file=sys.stderr, flush=True)
    print("PYACE_RESULT " + json.dumps(out))
    return 0


def run_pyace(python: str, frames, args, potential, active_set, log):
    """Time PyACECalculator in a subprocess of ``python``; None (and a message) if pyace is unavailable."""
    probe = subprocess.run([python, "-c", "import pyace, ase; from pyace import PyACECalculator"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        log(f"pyace is not importable by {python}: {last}")
        return None
    import ase.io

    with tempfile.TemporaryDirectory(prefix="bench_ace_") as tmp:
        structures = Path(tmp) / "structures.extxyz"
        ase.io.write(structures, frames, format="extxyz")
        config = {
            "structures": str(structures), "potential": str(potential),
            "active_set": str(active_set) if active_set else None,
            "max_calls": args.repeats, "min_calls": args.min_repeats, "budget": args.budget,
        }
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(config))
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--_pyace-worker", str(config_path)],
                              stdout=subprocess.PIPE, stderr=None, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("PYACE_RESULT "):
            return json.loads(line[len("PYACE_RESULT "):])
    log(f"pyace worker failed (exit code {proc.returncode})")
    return None


# ----------------------------------------------------------------------------------------------
# ace_uq_calc measurements
# ----------------------------------------------------------------------------------------------


class KernelTimer:
    """Replace, in the namespaces of the package's Python modules, every Numba dispatcher that plain
    Python code of the package calls by a wrapper that adds its wall time to ``elapsed``.

    Only names referenced from non-jitted functions are wrapped; jitted callers keep their compiled
    references. Use after a warm-up call (no compilation can happen while wrapped)."""

    def __init__(self):
        self.elapsed = 0.0
        self.per_kernel: dict[str, float] = {}
        self._patched = []

    @staticmethod
    def _code_names(code, names):
        names.update(code.co_names)
        for const in code.co_consts:
            if hasattr(const, "co_names"):
                KernelTimer._code_names(const, names)

    def _python_functions(self, module):
        import types

        for obj in list(vars(module).values()):
            if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
                yield obj
            elif isinstance(obj, type) and obj.__module__ == module.__name__:
                for member in vars(obj).values():
                    func = getattr(member, "__func__", member)
                    if isinstance(func, property):
                        func = func.fget
                    if isinstance(func, types.FunctionType):
                        yield func

    def install(self):
        from numba.core.dispatcher import Dispatcher

        for name, module in list(sys.modules.items()):
            if not (name == "ace_uq_calc" or name.startswith("ace_uq_calc.")) or module is None:
                continue
            used = set()
            for func in self._python_functions(module):
                self._code_names(func.__code__, used)
            for attr in sorted(used):
                target = vars(module).get(attr)
                if isinstance(target, Dispatcher):
                    label = f"{target.py_func.__module__}.{target.py_func.__name__}"
                    setattr(module, attr, self._wrap(label, target))
                    self._patched.append((module, attr, target))
        return self

    def _wrap(self, label, dispatcher):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return dispatcher(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.elapsed += dt
                self.per_kernel[label] = self.per_kernel.get(label, 0.0) + dt

        return timed

    def remove(self):
        for module, attr, target in reversed(self._patched):
            setattr(module, attr, target)
        self._patched.clear()


def measure_overhead(basis, n_atoms: int, calls: int, skin: float = 0.0):
    """Per-call times (s) on ``n_atoms``: full ASE call, inside evaluate(), inside Numba kernels.
    skin 0: a new neighbour list every call; skin > 0: the list is reused (the 1e-4 A moves never
    trigger a rebuild)."""
    import ace_uq_calc.calculator as calculator_module
    from ace_uq_calc import ACECalculator

    atoms = make_structure(n_atoms)
    calc = ACECalculator(basis, skin=skin)
    atoms.calc = calc
    for _ in range(5):                      # warm-up (no compilation while the timers are installed)
        atoms.positions[0, 0] += STEP
        atoms.get_forces()
    timer = KernelTimer().install()
    original_evaluate = calculator_module.evaluate
    inside_evaluate = [0.0]

    def timed_evaluate(*a, **k):
        t0 = time.perf_counter()
        try:
            return original_evaluate(*a, **k)
        finally:
            inside_evaluate[0] += time.perf_counter() - t0

    calculator_module.evaluate = timed_evaluate
    total, evaluate_t, kernel_t = [], [], []
    per_kernel = {}
    try:
        sign = 1.0
        for _ in range(calls):
            atoms.positions[0, 0] += sign * STEP
            sign = -sign
            timer.elapsed = 0.0
            inside_evaluate[0] = 0.0
            t0 = time.perf_counter()
            atoms.get_forces()
            atoms.get_potential_energy()
            total.append(time.perf_counter() - t0)
            evaluate_t.append(inside_evaluate[0])
            kernel_t.append(timer.elapsed)
        per_kernel = {k: v / calls for k, v in timer.per_kernel.items()}
    finally:
        calculator_module.evaluate = original_evaluate
        timer.remove()
    return {"total": total, "evaluate": evaluate_t, "kernels": kernel_t, "per_kernel_mean": per_kernel}


def measure_md(basis, n_atoms: int, steps: int, skin: float, temperature: float, timestep_fs: float):
    """Velocity-Verlet MD on a rattled fcc cell: wall time (s) of every force call, and whether that call
    built a new neighbour list (skin > 0: only when an atom moved more than skin / 2)."""
    import numpy as np
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from ace_uq_calc import ACECalculator

    atoms = make_structure(n_atoms)
    calc = ACECalculator(basis, skin=skin)
    atoms.calc = calc
    masses = atoms.get_masses()[:, None]
    rng = np.random.default_rng(SEED)
    atoms.set_momenta(rng.normal(size=(n_atoms, 3)) * np.sqrt(masses * units.kB * temperature))
    atoms.get_forces()                                  # warm-up (first list)
    original = calc.calculate
    record = []

    def timed(*a, **k):
        builds = calc.neighbour_cache.builds
        t0 = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            record.append((time.perf_counter() - t0, calc.neighbour_cache.builds > builds))

    calc.calculate = timed
    VelocityVerlet(atoms, timestep=timestep_fs * units.fs).run(steps)
    calc.calculate = original
    return record


FIRST_CALL_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from ace_uq_calc import ACECalculator
import ace_uq_calc.calculator
t1 = time.perf_counter()
calc = ACECalculator(sys.argv[1])
t2 = time.perf_counter()
from ase.build import bulk
atoms = bulk("Cu", "fcc", a=%(a)r, cubic=True).repeat(2)
atoms.rattle(stdev=%(rattle)r, seed=%(seed)r)
atoms.calc = calc
t3 = time.perf_counter()
atoms.get_forces()
t4 = time.perf_counter()
print("FIRST_CALL " + json.dumps({"import": t1 - t0, "load": t2 - t1, "first_forces": t4 - t3,
                                  "total": (t4 - t0) - (t3 - t2)}))
""" % {"a": LATTICE, "rattle": RATTLE, "seed": SEED}


def first_call_run(potential, cache_dir=None):
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", FIRST_CALL_SCRIPT, str(potential)],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("FIRST_CALL "):
            result = json.loads(line[len("FIRST_CALL "):])
            result["process_wall"] = wall
            return result
    raise RuntimeError(f"first-call subprocess failed:\n{proc.stderr[-2000:]}")


def numba_cache_location():
    if os.environ.get("NUMBA_CACHE_DIR"):
        return f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}"
    try:
        from ace_uq_calc.kernels import evaluator

        path = Path(evaluator.evaluate_atoms._cache._cache_path)
        try:
            return str(path.relative_to(PROJECT))
        except ValueError:
            return str(path)
    except Exception:  # noqa: BLE001 - informative only
        return "ace_uq_calc/kernels/__pycache__"


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x],
                   help="comma-separated atom counts, each 4 n^3 (default: 32,108,500,2048,16384)")
    p.add_argument("--quick", action="store_true", help="sizes 32,108,500 only")
    p.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 2],
                   help="comma-separated Numba thread counts (default: 1,2)")
    p.add_argument("--repeats", type=int, default=21,
                   help="maximum number of timed calls per table entry (default 21)")
    p.add_argument("--min-repeats", type=int, default=3,
                   help="minimum number of timed calls per table entry (default 3)")
    p.add_argument("--budget", type=float, default=4.0,
                   help="seconds per table entry after which no new call is started once --min-repeats "
                        "calls are done (keeps the big sizes short; default 4)")
    p.add_argument("--no-gamma", action="store_true", help="skip the E+F+gamma column")
    p.add_argument("--blas-threads", type=int, metavar="N",
                   help="set OPENBLAS_NUM_THREADS/MKL_NUM_THREADS=N for this process before numpy is imported "
                        "(the gamma step is a BLAS product; default: leave the environment alone)")
    p.add_argument("--potential", type=Path, default=DEFAULT_FIXTURES / "Cu_fs500.yaml")
    p.add_argument("--active-set", type=Path, default=DEFAULT_FIXTURES / "Cu_fs500.asi")
    p.add_argument("--pyace-python", metavar="PATH",
                   help="python interpreter of a venv with python-ace (pacemaker); adds pyace columns")
    p.add_argument("--first-call-runs", type=int, default=3,
                   help="fresh processes timed for 'first call (cache warm)' (median; default 3)")
    p.add_argument("--cold", action="store_true",
                   help="also time one fresh process with an empty NUMBA_CACHE_DIR (full compilation)")
    p.add_argument("--overhead-calls", type=int, default=200,
                   help="calls timed for the 32-atom overhead measurement (default 200)")
    p.add_argument("--skin", type=float, default=0.5,
                   help="neighbour-list skin (A) of the 'reuse' overhead row and the MD measurement (default 0.5)")
    p.add_argument("--md-steps", type=int, default=150,
                   help="velocity-Verlet steps timed per MD run (default 150; 0 skips the MD measurement)")
    p.add_argument("--md-atoms", type=int, default=500, help="atoms of the MD cell (default 500)")
    p.add_argument("--md-temperature", type=float, default=1500.0,
                   help="initial temperature, K (default 1500: several list rebuilds within the run)")
    p.add_argument("--md-timestep", type=float, default=2.0, help="fs (default 2)")
    p.add_argument("--json", metavar="OUT", type=Path, help="write all numbers to this JSON file")
    p.add_argument("--_pyace-worker", dest="pyace_worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else ALL_SIZES)
    args.sizes = sorted(set(args.sizes))
    for n in args.sizes:
        repeats_for(n)
    if args.md_steps > 0:
        repeats_for(args.md_atoms)
    return args


def fmt(x, spec=".1f", width=8):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a".rjust(width)
    return format(x, spec).rjust(width)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pyace_worker:
        return pyace_worker(args.pyace_worker)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.blas_threads is not None:
        if "numpy" in sys.modules:
            log("warning: numpy already imported; --blas-threads may have no effect")
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)

    import ase
    import numba
    import numpy as np

    import ace_uq_calc
    from ace_uq_calc import ACECalculator, load_basis

    max_threads = numba.config.NUMBA_NUM_THREADS
    threads = [t for t in args.threads if 1 <= t <= max_threads]
    if len(threads) != len(args.threads):
        log(f"note: Numba allows at most {max_threads} threads here; using {threads}")
    if not threads:
        raise SystemExit("no usable thread count")
    potential = args.potential.resolve()
    active_set_path = None if args.no_gamma else args.active_set.resolve()
    rss_baseline = peak_rss_mb()

    basis = load_basis(str(potential))
    calc_ef = ACECalculator(basis)
    calc_efg, gamma_error = None, None
    if active_set_path is not None:
        try:
            calc_efg = ACECalculator(basis, active_set=str(active_set_path))
        except Exception as exc:  # noqa: BLE001 - reported in the table
            gamma_error = f"{type(exc).__name__}: {exc}"
            log(f"E+F+gamma not measured: {gamma_error}")

    # Compile / load the Numba cache before anything is timed.
    warm = make_structure(32)
    warm.calc = calc_ef
    warm.get_forces()
    if calc_efg is not None:
        warm.calc = calc_efg
        warm.get_forces()
    rss_after_warmup = peak_rss_mb()

    frames = {n: make_structure(n) for n in args.sizes}

    # ---- pacemaker (subprocess) first, so that its run does not overlap ours
    pyace = None
    if args.pyace_python:
        log(f"timing pyace with {args.pyace_python} ...")
        pyace = run_pyace(args.pyace_python, [frames[n] for n in args.sizes], args, potential,
                          active_set_path, log)

    # ---- main table
    rows = []
    for n in args.sizes:
        for t in threads:
            numba.set_num_threads(t)
            row = {"atoms": n, "threads": t}
            atoms = frames[n].copy()
            calc = count_calculations(ACECalculator(basis, skin=0.0))
            times, cpu, energy = time_ase_calls(atoms, calc, args.repeats, args.budget, args.min_repeats)
            assert calc.n_calculate == len(times) + 1, "a timed call did not recompute"
            row["ef"] = {"times": times, "cpu": cpu, "energy": energy}
            if calc_efg is not None:
                calc = count_calculations(ACECalculator(basis, active_set=calc_efg.active_set, skin=0.0))

                def has_gamma(c):
                    if "gamma" not in c.results:
                        raise RuntimeError("ACECalculator did not return gamma")

                atoms = frames[n].copy()
                times, cpu, _ = time_ase_calls(atoms, calc, args.repeats, args.budget, args.min_repeats,
                                               check=has_gamma)
                assert calc.n_calculate == len(times) + 1, "a timed call did not recompute"
                row["efg"] = {"times": times, "cpu": cpu}
            row["peak_rss_mb"] = peak_rss_mb()
            rows.append(row)
            log(f"  {n:6d} atoms, {t} thread(s): E+F {median_us_per_atom(row['ef']['times'], n):.1f} us/atom")

    # ---- per-call overhead, 32 atoms: a new neighbour list every call, and (first thread count) reused
    overhead = {}
    for t in threads:
        numba.set_num_threads(t)
        overhead[(t, "rebuild")] = measure_overhead(basis, 32, args.overhead_calls, skin=0.0)
    numba.set_num_threads(threads[0])
    overhead[(threads[0], "reuse")] = measure_overhead(basis, 32, args.overhead_calls, skin=args.skin)

    # ---- MD steps with and without neighbour-list reuse
    md = {}
    if args.md_steps > 0:
        log(f"MD steps, {args.md_atoms} atoms ...")
        numba.set_num_threads(threads[0])
        for skin in (args.skin, 0.0):
            md[skin] = measure_md(basis, args.md_atoms, args.md_steps, skin, args.md_temperature, args.md_timestep)
    numba.set_num_threads(max(threads))

    # ---- first call in a fresh process
    log("timing fresh processes ...")
    priming = first_call_run(potential)
    warm_runs = [first_call_run(potential) for _ in range(max(1, args.first_call_runs))]
    cold = None
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="numba_cold_") as tmp:
            cold = first_call_run(potential, cache_dir=tmp)

    # ---- report
    out = []
    pr = out.append
    n_func = sum(basis.nfunc.values())
    pr(f"ace_uq_calc {ace_uq_calc.__version__} evaluator benchmark: {potential.name} ({n_func} functions, "
       f"cut-off {basis.cutoff_max:g} A)")
    pr(f"rattled fcc Cu, a = {LATTICE} A, rattle {RATTLE} A (seed {SEED}); Python {platform.python_version()}, "
       f"numba {numba.__version__}, numpy {np.__version__}, ase {ase.__version__}, {os.cpu_count()} CPUs")
    pr(f"BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')} "
       f"(numba threading layer: {numba.threading_layer()})")
    pr("median us/atom of one ASE energy+forces calculation (neighbour list included; atom 0 moved "
       f"{STEP:g} A before each call); [n] = timed calls")
    pr("cpu = median process CPU time per atom (all threads); with 1 thread, wall >> cpu means the CPUs were "
       "busy with other work")
    if pyace:
        pr(f"pyace = pacemaker python-ace {pyace.get('python_ace_version', '?')} PyACECalculator, 1 thread; "
           "ratio = pyace / ace_uq_calc (> 1: ace_uq_calc faster)")
    pr("")
    head = f"{'atoms':>6} {'thr':>3} | {'E+F':>8} {'[n]':>4} {'ms/call':>9} {'cpu':>7} | {'E+F+gam':>8} {'[n]':>4}"
    if pyace:
        head += f" | {'pyace':>8} {'cpu':>7} {'ratio':>6} | {'pyace+g':>8} {'ratio':>6}"
    head += f" | {'peak RSS MB':>11}"
    pr(head)
    pr("-" * len(head))
    energy_check = []
    for row in rows:
        n = row["atoms"]
        ef = median_us_per_atom(row["ef"]["times"], n)
        line = (f"{n:6d} {row['threads']:3d} | {fmt(ef)} {len(row['ef']['times']):4d} "
                f"{fmt(1e3 * statistics.median(row['ef']['times']), '.2f', 9)} "
                f"{fmt(median_us_per_atom(row['ef']['cpu'], n), '.1f', 7)} | ")
        efg = None
        if "efg" in row:
            efg = median_us_per_atom(row["efg"]["times"], n)
            line += f"{fmt(efg)} {len(row['efg']['times']):4d}"
        else:
            line += f"{fmt(None)} {'':4s}"
        if pyace:
            entry = pyace["sizes"].get(str(n), {})
            p_ef = median_us_per_atom(entry["ef"]["times"], n) if "ef" in entry else None
            p_cpu = median_us_per_atom(entry["ef"]["cpu"], n) if "ef" in entry else None
            p_efg = (median_us_per_atom(entry["efg"]["times"], n)
                     if "times" in entry.get("efg", {}) else None)
            line += (f" | {fmt(p_ef)} {fmt(p_cpu, '.1f', 7)} {fmt(p_ef / ef if p_ef else None, '.2f', 6)}"
                     f" | {fmt(p_efg)} {fmt(p_efg / efg if (p_efg and efg) else None, '.2f', 6)}")
            if "ef" in entry and row["threads"] == threads[0]:
                energy_check.append(abs(entry["ef"]["energy"] - row["ef"]["energy"]) / n)
        line += f" | {row['peak_rss_mb']:11.0f}"
        pr(line)
    pr("")
    pr(f"peak RSS after import + potential load + warm-up: {rss_after_warmup:.0f} MB "
       f"(interpreter + imports before loading: {rss_baseline:.0f} MB)")
    if gamma_error:
        pr(f"E+F+gamma: not measured ({gamma_error})")
    if pyace:
        if energy_check:
            pr(f"pyace vs ace_uq_calc energy, max |dE|/atom over sizes: {max(energy_check):.2e} eV "
               "(structures passed through extxyz)")
        errs = {n: e["efg"]["error"] for n, e in pyace["sizes"].items() if "error" in e.get("efg", {})}
        if errs:
            pr(f"pyace E+F+gamma failed: {next(iter(errs.values()))}")
        pr(f"pyace peak RSS (its own process, after the largest size): "
           f"{max(e['peak_rss_mb'] for e in pyace['sizes'].values()):.0f} MB")
    elif args.pyace_python:
        pr("pyace: not measured (see the messages above)")
    pr("")
    pr("per-call Python overhead, 32 atoms, E+F (median over "
       f"{args.overhead_calls} calls; overhead = ASE call - time inside Numba kernels):")
    pr(f"  {'thr':>3} {'list':>7} | {'ASE call us':>11} | {'in evaluate() us':>16} | {'in Numba kernels us':>19} | "
       f"{'overhead us':>11} | {'ASE+calculator layer':>20} | {'evaluate() Python':>17}")
    for (t, kind), o in overhead.items():
        tot = 1e6 * statistics.median(o["total"])
        ev = 1e6 * statistics.median(o["evaluate"])
        ker = 1e6 * statistics.median(o["kernels"])
        over = 1e6 * statistics.median([a - b for a, b in zip(o["total"], o["kernels"])])
        layer = 1e6 * statistics.median([a - b for a, b in zip(o["total"], o["evaluate"])])
        evpy = 1e6 * statistics.median([a - b for a, b in zip(o["evaluate"], o["kernels"])])
        pr(f"  {t:3d} {kind:>7} | {tot:11.0f} | {ev:16.0f} | {ker:19.0f} | {over:11.0f} | {layer:20.0f} | "
           f"{evpy:17.0f}")
    pr(f"  (rebuild: skin 0, a new neighbour list every call; reuse: skin {args.skin:g} A, the list of the previous "
       "call refreshed)")
    for key in ((threads[0], "rebuild"), (threads[0], "reuse")):
        last = overhead[key]["per_kernel_mean"]
        pr(f"  kernels timed (mean us/call, {key[0]} thread(s), {key[1]}): "
           + ", ".join(f"{k.split('.')[-1]} {1e6 * v:.0f}" for k, v in sorted(last.items(), key=lambda kv: -kv[1])))
    pr("")
    if md:
        pr(f"MD steps ({args.md_atoms} atoms, velocity Verlet {args.md_timestep:g} fs from {args.md_temperature:g} K, "
           f"{args.md_steps} steps, {threads[0]} thread(s)): ms per force call, median [count]")
        with_skin = md[args.skin]
        rebuild = [dt for dt, built in with_skin if built]
        reuse = [dt for dt, built in with_skin if not built]
        fresh = [dt for dt, _ in md[0.0]]
        med = lambda v: 1e3 * statistics.median(v) if v else math.nan  # noqa: E731
        pr(f"  skin {args.skin:g} A: step that rebuilds the list {med(rebuild):.2f} [{len(rebuild)}], "
           f"step that reuses it {med(reuse):.2f} [{len(reuse)}]; reuse / rebuild = "
           f"{med(reuse) / med(rebuild) if rebuild and reuse else math.nan:.2f}")
        pr(f"  skin 0 (new list every step): {med(fresh):.2f} [{len(fresh)}]; reuse step / skin-0 step = "
           f"{med(reuse) / med(fresh) if reuse else math.nan:.2f}")
        pr("")

    def first_call_line(label, r):
        return (f"  {label}: {r['total']:.2f} s  (import {r['import']:.2f} s, load potential {r['load']:.2f} s, "
                f"first get_forces {r['first_forces']:.2f} s; process wall incl. interpreter start "
                f"{r['process_wall']:.2f} s)")

    pr(f"fresh process, 32 atoms (Numba cache: {numba_cache_location()}):")
    med = {k: statistics.median(r[k] for r in warm_runs) for k in warm_runs[0]}
    pr(first_call_line(f"first call (cache warm, median of {len(warm_runs)})", med))
    pr(first_call_line("priming run (cache as found)", priming))
    if cold is not None:
        pr(first_call_line("first call (cache cold, empty NUMBA_CACHE_DIR)", cold))
    text = "\n".join(out)
    print(text)

    if args.json:
        record = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if k not in ("pyace_worker", "json")},
            "environment": {"python": platform.python_version(), "numba": numba.__version__,
                            "numpy": np.__version__, "ase": ase.__version__, "cpus": os.cpu_count(),
                            "numba_max_threads": max_threads, "ace_uq_calc": ace_uq_calc.__version__},
            "structure": {"lattice": LATTICE, "rattle": RATTLE, "seed": SEED, "step": STEP},
            "rows": [dict(r, ef_us_per_atom=median_us_per_atom(r["ef"]["times"], r["atoms"]),
                          efg_us_per_atom=(median_us_per_atom(r["efg"]["times"], r["atoms"])
                                           if "efg" in r else None)) for r in rows],
            "gamma_error": gamma_error,
            "overhead_32_atoms": {f"{t}-{kind}": o for (t, kind), o in overhead.items()},
            "md": {str(k): v for k, v in md.items()},
            "first_call": {"warm_runs": warm_runs, "warm_median": med, "priming": priming, "cold": cold},
            "peak_rss_mb": {"baseline": rss_baseline, "after_warmup": rss_after_warmup},
            "pyace": pyace,
            "table": text,
        }
        args.json.write_text(json.dumps(record, indent=1))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
