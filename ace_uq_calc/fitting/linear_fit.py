"""Linear ACE fits of energies, forces and stresses by regularised least squares.

Assembly streams over structures into normal equations (memory O(m^2) in the number of functions,
not O(data)). The ridge strength is chosen on a validation split of the training structures
(by structure, fixed seed) using the validation normal equations, then the model is refitted on
all training structures with that strength.

Loss (each term averaged over its own rows, so the weights are relative importances):
  w_E * mean_s ((E_s - E^_s) / N_s)^2 + w_F * mean_components (F - F^)^2 + w_S * mean (sigma - sigma^)^2
Energies in eV, forces eV/A, stress eV/A^3.

One-body reference energies E0 per element are extra, unregularised columns (or fixed from
isolated-atom structures when the data contain them), fitted as corrections to a least-squares fit of
the total energies on the compositions alone (which keeps the normal equations well conditioned when
the energies are large, e.g. all-electron totals). pacemaker's .yaml has no field for them: they
are stored in the file's ``metadata`` as ``reference_energy_<El>`` (eV), which pacemaker ignores and
:class:`~ace_uq_calc.ACECalculator` adds by default.

Parallel assembly: structures are grouped into chunks of consecutive structures (at least
:data:`CHUNK_ATOMS` atoms each); the normal equations of a chunk are summed in chunk order, so the result
does not depend on how many processes computed them. With more than one CPU and enough work, chunks are
computed by worker processes (``python -c ...`` children fed by pipes, one BLAS/Numba thread each), which
avoids both the Numba kernels' GIL and multiprocessing's re-import of the caller's main script.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..model.basis import ACEBasis, build_basis
from ..model.yaml_format import (  # noqa: F401
    REFERENCE_ENERGY_KEY,
    PotentialFile,
    reference_energies_of,
)
from ..progress import progress_bar
from .design import is_linear, structure_design
from .posterior import posterior_scale_from_validation


@dataclass
class FitWeights:
    energy: float = 1.0
    forces: float = 0.01
    stress: float = 0.01


#: ridge strengths tried on the validation split: 1e-16 ... 1 in half decades (relative to the diagonal
#: of the column-normalised normal equations)
DEFAULT_LAMBDAS = tuple(10.0 ** np.arange(-16.0, 0.25, 0.5))

#: consecutive structures are assembled in chunks of at least this many atoms
CHUNK_ATOMS = 512

#: below this much work (atoms x functions) the normal equations are assembled in this process
PARALLEL_MIN_WORK = 3_000_000


@dataclass
class NormalEquations:
    """Accumulated A^T A, A^T b and b^T b of weighted least squares (m + n_elements columns)."""

    ata: np.ndarray
    atb: np.ndarray
    btb: float = 0.0
    rows: int = 0

    @classmethod
    def empty(cls, n: int) -> "NormalEquations":
        return cls(np.zeros((n, n)), np.zeros(n))

    def add(self, rows: np.ndarray, targets: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self.ata += rows.T @ rows
        self.atb += rows.T @ targets
        self.btb += float(targets @ targets)
        self.rows += len(targets)

    def __iadd__(self, other: "NormalEquations") -> "NormalEquations":
        self.ata += other.ata
        self.atb += other.atb
        self.btb += other.btb
        self.rows += other.rows
        return self

    def sse(self, coef: np.ndarray) -> float:
        """Weighted sum of squared residuals of ``coef`` (from the normal equations alone)."""
        return float(coef @ self.ata @ coef - 2 * coef @ self.atb + self.btb)


def isolated_atom_energies(frames, basis: ACEBasis) -> dict:
    """E0 per element from single-atom structures with no neighbour within the cut-off."""
    from ..kernels.neighbours import build_neighbour_list

    out = {}
    for atoms in frames:
        if len(atoms) != 1 or not _has_energy(atoms):
            continue
        species = basis.species_of(atoms.get_chemical_symbols())
        nl = build_neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, species, basis.cutoff_matrix)
        if len(nl.index) == 0:
            out.setdefault(atoms.get_chemical_symbols()[0], atoms.get_potential_energy())
    return out


def _has_energy(atoms) -> bool:
    try:
        atoms.get_potential_energy()
        return True
    except Exception:
        return False


def _reference(atoms):
    """(energy, forces or None, stress Voigt or None) of a labelled structure."""
    energy = atoms.get_potential_energy()
    forces = None
    stress = None
    calc = atoms.calc
    if calc is not None and "forces" in calc.results:
        forces = np.asarray(calc.results["forces"], dtype=float)
    if calc is not None and "stress" in calc.results and atoms.cell.rank == 3:
        s = np.asarray(calc.results["stress"], dtype=float)
        stress = s if s.shape == (6,) else np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    return energy, forces, stress


_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def structure_rows(basis: ACEBasis, atoms, weights: FitWeights, norms: dict, fixed_e0: dict,
                   e0_offset: dict | None = None):
    """Weighted design rows and targets of one structure (energy, forces, stress).

    fixed_e0: reference energies that are not fitted (their columns are zero, the energy moves to the
    target); e0_offset: energies subtracted from the target while their E0 columns stay free (the
    fitted column is then a correction to the offset)."""
    m = int(basis.function_start[-1])
    S = basis.n_elements
    energy, forces, stress = _reference(atoms)
    use_forces = forces is not None and weights.forces > 0
    design = structure_design(basis, atoms, with_forces=use_forces or (stress is not None and weights.stress > 0))
    n = len(atoms)
    symbols = atoms.get_chemical_symbols()
    counts = np.array([symbols.count(el) for el in basis.elements], dtype=float)
    rows, targets = [], []
    # energy row: coefficients then E0 columns (fixed E0 move to the target)
    e_row = np.concatenate([design.energy, counts])
    target = energy - design.baseline_energy
    for e, el in enumerate(basis.elements):
        if el in fixed_e0:
            target -= counts[e] * fixed_e0[el]
            e_row[m + e] = 0.0
        elif e0_offset and el in e0_offset:
            target -= counts[e] * e0_offset[el]
    w = np.sqrt(weights.energy / norms["energy"]) / n
    rows.append(w * e_row[None, :])
    targets.append(np.array([w * target]))
    if use_forces:
        w = np.sqrt(weights.forces / norms["forces"])
        f_rows = np.hstack([design.forces, np.zeros((3 * n, S))])
        rows.append(w * f_rows)
        targets.append(w * (forces.ravel() - design.baseline_forces))
    if stress is not None and weights.stress > 0:
        volume = abs(np.linalg.det(atoms.cell.array))
        w = np.sqrt(weights.stress / norms["stress"])
        v = design.virial.reshape(3, 3, m)
        bv = design.baseline_virial.reshape(3, 3)
        s_rows = np.array([(v[a, b] + v[b, a]) / (2 * volume) for a, b in _VOIGT])
        s_base = np.array([(bv[a, b] + bv[b, a]) / (2 * volume) for a, b in _VOIGT])
        rows.append(w * np.hstack([s_rows, np.zeros((6, S))]))
        targets.append(w * (stress - s_base))
    return np.vstack(rows), np.concatenate(targets)


def _norms(frames, weights: FitWeights) -> dict:
    n_struct = n_force = n_stress = 0
    for atoms in frames:
        _, forces, stress = _reference(atoms)
        n_struct += 1
        if forces is not None:
            n_force += forces.size
        if stress is not None:
            n_stress += 6
    return {"energy": max(n_struct, 1), "forces": max(n_force, 1), "stress": max(n_stress, 1)}


def _chunks(frames) -> list:
    """Consecutive index ranges [(start, stop), ...] of at least CHUNK_ATOMS atoms (the last may be smaller)."""
    out, start, atoms = [], 0, 0
    for k, a in enumerate(frames):
        atoms += len(a)
        if atoms >= CHUNK_ATOMS:
            out.append((start, k + 1))
            start, atoms = k + 1, 0
    if start < len(frames):
        out.append((start, len(frames)))
    return out


def _assemble_chunk(basis: ACEBasis, frames, weights: FitWeights, norms: dict, fixed_e0: dict,
                    e0_offset: dict | None = None) -> NormalEquations:
    eq = NormalEquations.empty(int(basis.function_start[-1]) + basis.n_elements)
    for atoms in frames:
        rows, targets = structure_rows(basis, atoms, weights, norms, fixed_e0, e0_offset)
        eq.add(rows, targets)
    return eq


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:     # not on Linux
        return os.cpu_count() or 1


def _resolve_workers(workers, frames, basis: ACEBasis, n_chunks: int) -> int:
    """Number of processes to use: ``workers`` if given (env ACE_UQ_FIT_WORKERS otherwise), else all
    available CPUs when the work is large enough; never more than the number of chunks."""
    if workers is None:
        env = os.environ.get("ACE_UQ_FIT_WORKERS")
        if env:
            workers = int(env)
        else:
            work = sum(len(a) for a in frames) * int(basis.function_start[-1])
            workers = available_cpus() if work >= PARALLEL_MIN_WORK else 1
    return max(1, min(int(workers), n_chunks))


def _start_workers(n_workers: int, basis: ACEBasis, weights: FitWeights, norms: dict, fixed_e0: dict,
                   e0_offset: dict | None) -> "_AssemblyWorkers | None":
    """``n_workers`` assembly processes, or None (assemble in this process) for one worker or when they
    cannot start (with a warning saying why)."""
    if n_workers <= 1:
        return None
    try:
        return _AssemblyWorkers(n_workers, basis, weights, norms, fixed_e0, e0_offset)
    except _WorkerStartError as exc:
        warnings.warn(f"parallel assembly unavailable ({exc}); assembling in this process", RuntimeWarning,
                      stacklevel=3)
        return None


def assemble(basis: ACEBasis, frames, weights: FitWeights, norms: dict, fixed_e0: dict,
             progress: bool = False, label: str = "assembling", workers: int | None = None,
             pool: "_AssemblyWorkers | None" = None, e0_offset: dict | None = None) -> NormalEquations:
    """Normal equations of ``frames`` (streamed in chunks of consecutive structures).

    workers: processes to use (None: all CPUs for large problems, see :data:`PARALLEL_MIN_WORK`);
    the result is the same (chunk sums added in chunk order) whatever the number of workers.
    """
    frames = list(frames)
    chunks = _chunks(frames)
    ncols = int(basis.function_start[-1]) + basis.n_elements
    with progress_bar(sum(len(a) for a in frames), label, progress, unit="atom") as bar:
        if pool is not None:
            return pool.assemble(frames, chunks, bar)
        own = _start_workers(_resolve_workers(workers, frames, basis, len(chunks)), basis, weights, norms,
                             fixed_e0, e0_offset)
        if own is not None:
            with own:
                return own.assemble(frames, chunks, bar)
        eq = NormalEquations.empty(ncols)
        for start, stop in chunks:
            eq += _assemble_chunk(basis, frames[start:stop], weights, norms, fixed_e0, e0_offset)
            bar.update(sum(len(a) for a in frames[start:stop]))
        return eq


class _WorkerStartError(RuntimeError):
    pass


_WORKER_COMMAND = "from ace_uq_calc.fitting.linear_fit import _worker_main; _worker_main()"
_SINGLE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _worker_main() -> None:
    """Body of an assembly worker process: read (basis, weights, norms, fixed_e0, e0_offset), then chunks of
    structures from stdin; write (key, "ok", NormalEquations) or (key, "error", traceback) to stdout."""
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                       # anything else printed goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    proto_in = sys.stdin.buffer
    basis, weights, norms, fixed_e0, e0_offset = pickle.load(proto_in)
    _assemble_chunk(basis, [], weights, norms, fixed_e0, e0_offset)
    pickle.dump("ready", proto_out)
    proto_out.flush()
    while True:
        try:
            message = pickle.load(proto_in)
        except EOFError:
            break
        if message is None:
            break
        key, frames = message
        try:
            reply = (key, "ok", _assemble_chunk(basis, frames, weights, norms, fixed_e0, e0_offset))
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises
            reply = (key, "error", traceback.format_exc())
        pickle.dump(reply, proto_out, protocol=pickle.HIGHEST_PROTOCOL)
        proto_out.flush()


class _AssemblyWorkers:
    """``n`` worker processes that assemble chunks of structures (see :func:`_worker_main`)."""

    def __init__(self, n: int, basis: ACEBasis, weights: FitWeights, norms: dict, fixed_e0: dict,
                 e0_offset: dict | None = None):
        env = dict(os.environ)
        env.update({name: "1" for name in _SINGLE_THREAD})
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in [env.get("PYTHONPATH")] if p])
        setup = pickle.dumps((basis, weights, norms, fixed_e0, e0_offset), protocol=pickle.HIGHEST_PROTOCOL)
        self.procs = []
        try:
            for _ in range(n):
                proc = subprocess.Popen([sys.executable, "-c", _WORKER_COMMAND], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)
                self.procs.append(proc)
                proc.stdin.write(setup)
                proc.stdin.flush()
            for proc in self.procs:
                if pickle.load(proc.stdout) != "ready":
                    raise OSError("unexpected reply")
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self.close(kill=True)
            raise _WorkerStartError(f"{type(exc).__name__}: {exc}") from exc

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(kill=exc_type is not None)

    def close(self, kill: bool = False) -> None:
        for proc in self.procs:
            try:
                if not kill:
                    pickle.dump(None, proc.stdin)
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            if kill:
                proc.kill()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.procs = []

    def assemble(self, frames, chunks, bar: tqdm) -> NormalEquations:
        """Normal equations of ``frames``: chunks dispatched to the workers as they become free,
        results summed in chunk order."""
        results: dict = {}
        failure: list = []
        cond = threading.Condition()
        next_chunk = iter(range(len(chunks)))

        def serve(proc):
            try:
                while True:
                    with cond:
                        if failure:
                            return
                        key = next(next_chunk, None)
                    if key is None:
                        return
                    start, stop = chunks[key]
                    pickle.dump((key, frames[start:stop]), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                    proc.stdin.flush()
                    got, status, payload = pickle.load(proc.stdout)
                    with cond:
                        if status != "ok":
                            failure.append(f"assembly worker failed on structures {start}-{stop - 1}:\n{payload}")
                        else:
                            results[got] = payload
                        cond.notify_all()
            except BaseException as exc:  # noqa: BLE001 - a dead worker (killed, out of memory, ...)
                with cond:
                    failure.append(f"assembly worker (pid {proc.pid}) stopped: {exc!r}")
                    cond.notify_all()

        threads = [threading.Thread(target=serve, args=(proc,), daemon=True) for proc in self.procs]
        for t in threads:
            t.start()
        total = None
        for key in range(len(chunks)):
            with cond:
                while key not in results and not failure:
                    cond.wait()
                if failure:
                    break
                eq = results.pop(key)
            if total is None:
                total = eq
            else:
                total += eq
            start, stop = chunks[key]
            bar.update(sum(len(a) for a in frames[start:stop]))
        if failure:
            self.close(kill=True)
            for t in threads:
                t.join()
            raise RuntimeError(failure[0])
        for t in threads:
            t.join()
        return total


def solve_ridge(eq: NormalEquations, lam: float, m: int, e0_ridge: float = 0.0) -> np.ndarray:
    """Minimise ||A c - b||^2 + lam * ||D c_ACE||^2, D = sqrt(diag(A^T A)) of the ACE columns
    (a scale-free ridge; the E0 columns are penalised only by ``e0_ridge``, default 0)."""
    d = np.sqrt(np.maximum(np.diag(eq.ata), 1e-300))
    ata = eq.ata / np.outer(d, d)
    atb = eq.atb / d
    reg = np.full(len(d), float(e0_ridge))
    reg[:m] = lam
    # columns that never appear (no data) get a unit ridge so the system stays regular
    reg[np.diag(eq.ata) == 0] = 1.0
    system = ata + np.diag(reg)
    try:        # Cholesky (half the cost of LU); near-singular systems (tiny lam) fall back to LU
        from scipy.linalg import LinAlgError, cho_factor, cho_solve

        scaled = cho_solve(cho_factor(system, lower=False, check_finite=False), atb, check_finite=False)
        if not np.all(np.isfinite(scaled)):
            raise LinAlgError("non-finite solution")
    except (LinAlgError, ValueError):
        try:
            scaled = np.linalg.solve(system, atb)
        except np.linalg.LinAlgError:      # exactly singular (lam = 0 with dependent columns)
            scaled = np.linalg.lstsq(system, atb, rcond=None)[0]
    return scaled / d


#: ridge on the (scaled) E0 columns when the training compositions do not determine them all
DEGENERATE_E0_RIDGE = 1e-8


def composition_offsets(frames, elements, fixed_e0: dict):
    """Least-squares E0 per free element from the total energies and compositions alone
    (minimum-norm when the compositions do not determine them), and the free elements whose E0 the
    compositions leave undetermined (empty list when they are all determined)."""
    free = [el for el in elements if el not in fixed_e0]
    if not free:
        return {}, []
    counts, energies = [], []
    for atoms in frames:
        if not _has_energy(atoms):
            continue
        symbols = atoms.get_chemical_symbols()
        energies.append(atoms.get_potential_energy() - sum(fixed_e0.get(s, 0.0) for s in symbols))
        counts.append([symbols.count(el) for el in free])
    C = np.array(counts, dtype=float).reshape(-1, len(free))
    if C.size == 0:
        return {el: 0.0 for el in free}, []
    offset = np.linalg.lstsq(C, np.array(energies), rcond=None)[0]
    present = C.any(axis=0)
    rank = np.linalg.matrix_rank(C[:, present]) if present.any() else 0
    undetermined = [el for el, p in zip(free, present) if p] if rank < present.sum() else []
    return {el: float(v) for el, v in zip(free, offset)}, undetermined


@dataclass
class FitResult:
    potential: PotentialFile
    coefficients: np.ndarray
    reference_energies: dict
    regularisation: float
    validation_curve: list = field(default_factory=list)
    fit_time: float = 0.0
    n_train: int = 0
    n_validation: int = 0
    #: energies subtracted per atom of each element before assembling (composition-only fit); the E0
    #: columns of the normal equations are corrections to these (reference_energies include them)
    e0_offset: dict = field(default_factory=dict)
    #: the final (training + validation) normal equations, for posterior ensembles
    normal_equations: NormalEquations | None = None
    #: ridge on the E0 columns used in the final solve; E0 fixed by isolated atoms (not fitted)
    e0_ridge: float = 0.0
    fixed_e0: dict = field(default_factory=dict)
    #: widening of the posterior that makes its spread match the validation error (1 without a
    #: validation split; see fitting.posterior.posterior_scale_from_validation)
    posterior_scale: float = 1.0


def fit_linear(basis_or_potential, frames, weights: FitWeights | None = None, validation_fraction: float = 0.1,
               seed: int = 0, lambdas=None, reference_energies: dict | None = None,
               progress: bool = False, workers: int | None = None) -> FitResult:
    """Fit the coefficients of a linear basis (one density, F = rho) to labelled ASE structures.

    frames: Atoms with energies (and forces, stress when present) attached as calculator results
    (e.g. from ``ase.io.read(extxyz, ":")``). reference_energies: E0 per element to use (eV); by default
    taken from isolated-atom structures in ``frames`` if present, otherwise fitted.
    lambdas: ridge strengths to try on the validation split (default :data:`DEFAULT_LAMBDAS`).
    workers: processes for the assembly (None: all available CPUs for large fits, or the environment
    variable ACE_UQ_FIT_WORKERS; 1: this process only). The fit does not depend on it.
    Returns the potential with fitted coefficients and E0 in its metadata.
    """
    t0 = time.perf_counter()
    weights = weights or FitWeights()
    if isinstance(basis_or_potential, ACEBasis):
        basis = basis_or_potential
    else:
        basis = build_basis(basis_or_potential)
    if not is_linear(basis):
        raise ValueError("fit_linear needs a linear basis: one density per element with F(rho) = rho")
    frames = [a for a in frames if len(a) > 0]
    if not frames:
        raise ValueError("no training structures")
    fixed = dict(reference_energies) if reference_energies else isolated_atom_energies(frames, basis)
    # centre the energies on a composition-only fit (better conditioned normal equations); the E0
    # columns then fit the corrections. If the compositions cannot separate the E0 of some elements
    # (e.g. every structure is AB), a tiny ridge on the E0 columns picks the minimum-norm split.
    offset, undetermined = composition_offsets(frames, basis.elements, fixed)
    e0_ridge = DEGENERATE_E0_RIDGE if undetermined else 0.0
    if undetermined:
        warnings.warn(f"the compositions of the training structures do not determine the reference energies of "
                      f"{', '.join(undetermined)} separately (only combinations of them); they are split by a "
                      f"minimum-norm rule. Energies of other compositions are then not meaningful: add structures "
                      f"of other compositions or isolated atoms, or pass reference_energies.", RuntimeWarning,
                      stacklevel=2)
    m = int(basis.function_start[-1])
    norms = _norms(frames, weights)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frames))
    n_val = int(round(validation_fraction * len(frames))) if len(frames) >= 10 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_frames = [frames[i] for i in train_idx]
    val_frames = [frames[i] for i in val_idx]
    pool = _start_workers(_resolve_workers(workers, frames, basis, len(_chunks(train_frames))), basis, weights,
                          norms, fixed, offset)
    try:
        train_eq = assemble(basis, train_frames, weights, norms, fixed, progress, "fit: assembling", pool=pool,
                            e0_offset=offset)
        val_eq = (assemble(basis, val_frames, weights, norms, fixed, progress, "fit: validation", pool=pool,
                           e0_offset=offset) if n_val else None)
    finally:
        if pool is not None:
            pool.close()
    lambdas = list(lambdas) if lambdas is not None else list(DEFAULT_LAMBDAS)
    curve = []
    if n_val:
        for lam in lambdas:
            coef = solve_ridge(train_eq, lam, m, e0_ridge)
            curve.append((lam, val_eq.sse(coef)))
        best = min(curve, key=lambda item: item[1])[0]
        scale = posterior_scale_from_validation(train_eq, val_eq, best, m, e0_ridge)
        train_eq += val_eq
    else:
        best = 1e-8
        scale = 1.0
    coef = solve_ridge(train_eq, best, m, e0_ridge)
    fitted, e0 = fitted_potential(basis, coef, offset, fixed)
    return FitResult(potential=fitted, coefficients=coef[:m], reference_energies=e0, regularisation=best,
                     validation_curve=curve, fit_time=time.perf_counter() - t0,
                     n_train=len(train_idx), n_validation=n_val, e0_offset=dict(offset),
                     normal_equations=train_eq, e0_ridge=e0_ridge, fixed_e0=dict(fixed), posterior_scale=scale)


def fitted_potential(basis: ACEBasis, coef: np.ndarray, offset: dict, fixed: dict):
    """The potential of ``basis`` with the linear coefficients ``coef`` (m ACE columns then one E0 column
    per element, as solved from the normal equations) and its reference energies (metadata
    ``reference_energy_<El>``: fitted E0 column + composition offset, or the fixed value).
    Returns (PotentialFile, {element: E0 in eV})."""
    m = int(basis.function_start[-1])
    e0 = {el: float(coef[m + e]) + offset.get(el, 0.0) for e, el in enumerate(basis.elements)}
    e0.update(fixed)
    pot = basis.potential
    new_functions = {}
    for e, el in enumerate(basis.elements):
        specs = []
        f0 = basis.function_start[e]
        for k, spec in enumerate(basis.ordered_functions[el]):
            clone = type(spec)(central=spec.central, neighbours=spec.neighbours, nr=spec.nr, nl=spec.nl,
                               lint=spec.lint, coefficients=np.array([coef[f0 + k]]))
            clone.file_index = k
            specs.append(clone)
        new_functions[el] = specs
    metadata = dict(pot.metadata)
    for el, value in e0.items():
        metadata[REFERENCE_ENERGY_KEY + el] = repr(float(value))
    fitted = PotentialFile(elements=list(pot.elements), delta_spline_bins=pot.delta_spline_bins,
                           embeddings=pot.embeddings, bonds=pot.bonds, functions=new_functions,
                           metadata=metadata, source=pot.source)
    return fitted, e0
