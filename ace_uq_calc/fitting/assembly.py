"""Assembly of the normal equations of a linear fit: weighted design rows of every structure (energy,
forces, stress) summed into A^T A, A^T b, b^T b (memory O(m^2) in the number of functions, not O(data)).

Loss rows (each term averaged over its own rows, so the weights are relative importances):
  w_E * mean_s ((E_s - E^_s) / N_s)^2 + w_F * mean_components (F - F^)^2 + w_S * mean (sigma - sigma^)^2
Energies in eV, forces eV/A, stress eV/A^3.

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
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..model.basis import ACEBasis
from ..progress import progress_bar
from .design import structure_design
from .weights import FitWeights

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


def has_energy(atoms) -> bool:
    try:
        atoms.get_potential_energy()
        return True
    except Exception:
        return False


def labelled_reference(atoms):
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
    energy, forces, stress = labelled_reference(atoms)
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


def row_norms(frames, weights: FitWeights) -> dict:
    n_struct = n_force = n_stress = 0
    for atoms in frames:
        _, forces, stress = labelled_reference(atoms)
        n_struct += 1
        if forces is not None:
            n_force += forces.size
        if stress is not None:
            n_stress += 6
    return {"energy": max(n_struct, 1), "forces": max(n_force, 1), "stress": max(n_stress, 1)}


def consecutive_chunks(frames) -> list:
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


def assemble_chunk(basis: ACEBasis, frames, weights: FitWeights, norms: dict, fixed_e0: dict,
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


def resolve_workers(workers, frames, basis: ACEBasis, n_chunks: int) -> int:
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


def start_workers(n_workers: int, basis: ACEBasis, weights: FitWeights, norms: dict, fixed_e0: dict,
                   e0_offset: dict | None) -> "AssemblyWorkers | None":
    """``n_workers`` assembly processes, or None (assemble in this process) for one worker or when they
    cannot start (with a warning saying why)."""
    if n_workers <= 1:
        return None
    try:
        return AssemblyWorkers(n_workers, basis, weights, norms, fixed_e0, e0_offset)
    except _WorkerStartError as exc:
        warnings.warn(f"parallel assembly unavailable ({exc}); assembling in this process", RuntimeWarning,
                      stacklevel=3)
        return None


def assemble(basis: ACEBasis, frames, weights: FitWeights, norms: dict, fixed_e0: dict,
             progress: bool = False, label: str = "assembling", workers: int | None = None,
             pool: "AssemblyWorkers | None" = None, e0_offset: dict | None = None) -> NormalEquations:
    """Normal equations of ``frames`` (streamed in chunks of consecutive structures).

    workers: processes to use (None: all CPUs for large problems, see :data:`PARALLEL_MIN_WORK`);
    the result is the same (chunk sums added in chunk order) whatever the number of workers.
    """
    frames = list(frames)
    chunks = consecutive_chunks(frames)
    ncols = int(basis.function_start[-1]) + basis.n_elements
    with progress_bar(sum(len(a) for a in frames), label, progress, unit="atom") as bar:
        if pool is not None:
            return pool.assemble(frames, chunks, bar)
        own = start_workers(resolve_workers(workers, frames, basis, len(chunks)), basis, weights, norms,
                             fixed_e0, e0_offset)
        if own is not None:
            with own:
                return own.assemble(frames, chunks, bar)
        eq = NormalEquations.empty(ncols)
        for start, stop in chunks:
            eq += assemble_chunk(basis, frames[start:stop], weights, norms, fixed_e0, e0_offset)
            bar.update(sum(len(a) for a in frames[start:stop]))
        return eq


class _WorkerStartError(RuntimeError):
    pass


_WORKER_COMMAND = "from ace_uq_calc.fitting.assembly import _worker_main; _worker_main()"
_SINGLE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _worker_main() -> None:
    """Body of an assembly worker process: read (basis, weights, norms, fixed_e0, e0_offset), then chunks of
    structures from stdin; write (key, "ok", NormalEquations) or (key, "error", traceback) to stdout."""
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                       # anything else printed goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    proto_in = sys.stdin.buffer
    basis, weights, norms, fixed_e0, e0_offset = pickle.load(proto_in)
    assemble_chunk(basis, [], weights, norms, fixed_e0, e0_offset)
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
            reply = (key, "ok", assemble_chunk(basis, frames, weights, norms, fixed_e0, e0_offset))
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises
            reply = (key, "error", traceback.format_exc())
        pickle.dump(reply, proto_out, protocol=pickle.HIGHEST_PROTOCOL)
        proto_out.flush()


class AssemblyWorkers:
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
