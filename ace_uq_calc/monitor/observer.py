"""Uncertainty-aware molecular dynamics and optimisation: flag extrapolative frames, halt runaway runs.

:class:`UncertaintyMonitor` is an observer for any ASE dynamics or optimizer (``VelocityVerlet``,
``Langevin``, the NVT/NPT integrators, ``BFGS``, ``FIRE``, ..., also with a cell filter such as
``FrechetCellFilter`` wrapping the atoms)::

    from ase.md.langevin import Langevin
    from ace_uq_calc import ACECalculator
    from ace_uq_calc.monitor import UncertaintyMonitor

    atoms.calc = ACECalculator("Cu.yaml", active_set="Cu.asi")
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=900, friction=0.01 / units.fs)
    monitor = UncertaintyMonitor(atoms, flag_file="flagged.xyz", dynamics=dyn)
    dyn.attach(monitor, interval=1)
    dyn.run(10_000)                       # returns early when the monitor halts the run
    monitor.halted, monitor.step, monitor.reason

Per call the monitor reads a per-atom uncertainty *measure* from ``atoms.calc`` (the registry
:data:`ace_uq_calc.monitor.measures.MEASURES`), reduces it to one number per structure (``reduce="max"``
by default), and

* **flags** the frame when that number is above ``flag_threshold``: the frame is appended as one
  complete extended-XYZ frame to ``flag_file`` (or, with ``cluster_cutoff``, only the uncertain atoms
  and their neighbours as a free cluster), at most one flag per ``min_flag_gap`` steps;
* **halts** the run when the number has been above ``halt_threshold`` on ``patience`` consecutive
  calls (or, with ``halt_on_isolated=True``, when an atom has no neighbours at all).

How the run is stopped (checked against ASE 3.29's ``Dynamics.irun`` and ``MolecularDynamics.irun``):
both loops re-test ``self.nsteps < self.max_steps`` after calling the observers, so the monitor sets
``dynamics.max_steps = dynamics.nsteps``: the current step finishes normally (the remaining observers,
e.g. ASE's own trajectory writer, still see it) and ``dyn.run()`` returns. This needs the monitor to
know the dynamics object: pass ``dynamics=dyn``, use :meth:`UncertaintyMonitor.attach` or
:meth:`UncertaintyMonitor.run`, or simply ``dyn.attach(monitor)`` -- the monitor then finds the
dynamics that is calling it (the caller whose observer list contains the monitor). When the
dynamics is unknown, or when a dynamics with its own loop (e.g. ``SwitchLangevin``, the SciPy
optimizers) calls the monitor again after the halt, the monitor raises :class:`ExtrapolationHalt`
instead; :meth:`UncertaintyMonitor.run` catches it, so ``monitor.run(dyn, steps)`` returns cleanly
with every dynamics. With ``raise_on_halt=True`` the exception is always raised (it carries
``step``, ``reason``, ``value``). Files are opened only for the duration of one append, so none is
left open in either case, and every frame written is complete.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.constraints import FixAtoms

from ..io import append_frame
from .cutout import cut_out_cluster
from .measures import MEASURES, REDUCTIONS, MeasureUnavailableError, get_measure

__all__ = ["ExtrapolationHalt", "IsolatedAtomsWarning", "Observation", "StepRecord", "UncertaintyMonitor"]


class ExtrapolationHalt(RuntimeError):
    """The monitor stopped a run. Attributes: ``step``, ``reason``, ``value`` (the reduced measure),
    ``time_fs`` (None for optimizers) and ``cause`` (``"threshold"`` or ``"isolated"``)."""

    def __init__(self, reason: str, step=None, value=None, time_fs=None, cause=None):
        super().__init__(reason if step is None else f"step {step}: {reason}")
        self.reason = reason
        self.step = step
        self.value = value
        self.time_fs = time_fs
        self.cause = cause


class IsolatedAtomsWarning(UserWarning):
    """Atoms without any neighbour within the cut-off appeared (their gamma is 0 by construction)."""


class StepRecord(NamedTuple):
    """One monitor call: ``value`` is the reduced measure, ``maximum`` the largest per-atom value,
    ``flagged`` whether the frame was flagged (written to the flag file), ``time_fs`` None for
    optimizers, ``n_isolated`` None when the calculator gives no neighbour counts."""

    step: int
    time_fs: float | None
    value: float
    maximum: float
    n_isolated: int | None
    flagged: bool
    halted: bool


@dataclass
class Observation:
    """The measure read for one state (:meth:`UncertaintyMonitor.observe`): ``values`` per atom and
    ``value`` reduced (the measure's unit, non-finite values as inf), ``maximum`` the largest per-atom
    value, ``neighbour_count`` (N,) or None, ``n_isolated`` None when the counts are unknown."""

    step: int
    time_fs: float | None
    values: np.ndarray
    value: float
    maximum: float
    neighbour_count: np.ndarray | None
    n_isolated: int | None


# ----------------------------------------------------------------------------------------------
# helpers


def _underlying_atoms(obj):
    """The ``ase.Atoms`` behind ``obj`` (an Atoms, a filter such as FrechetCellFilter, or an
    Optimizable), unwrapping ``.atoms`` as often as needed."""
    seen = 0
    while not isinstance(obj, Atoms):
        inner = getattr(obj, "atoms", None)
        if inner is None or seen > 8:
            raise TypeError(f"expected ase.Atoms or a filter wrapping one, got {type(obj).__name__}")
        obj = inner
        seen += 1
    return obj


def _finite(x):
    """A float for JSON/extxyz: non-finite values become the strings 'inf'/'nan'."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


_RESULT_NAMES = ("energy", "free_energy", "forces", "stress", "energies", "stresses", "magmom",
                 "magmoms", "dipole", "charges")


class UncertaintyMonitor:
    """Observer that flags and halts ASE dynamics/optimisation runs on a per-atom uncertainty.

    Parameters
    ----------
    atoms : ase.Atoms or a filter wrapping one (``FrechetCellFilter``, ``UnitCellFilter``, ...)
        The structure being propagated; its calculator must provide the measure.
    measure : str or Measure
        ``"gamma"`` (default; ``ACECalculator(..., active_set=...)``), ``"gamma_local"``
        (``local_active_set=...``), ``"forces_dev"`` (an ensemble, ``ACECalculator([pot1, pot2, ...])``),
        ``"forces_error_estimate"`` (alias ``"error"``; ``error_calibration=...``); see
        :data:`ace_uq_calc.monitor.measures.MEASURES`.
    flag_threshold, halt_threshold : float, optional
        In the measure's unit. ``None``: for gamma reduced by its maximum, the thresholds of the
        calculator's active set for a structure of this many atoms (``ActiveSet.thresholds``: about 1 % of
        in-domain structures flagged, 0.1 % halted, from held-out training structures); otherwise, and for
        active sets without that information, the measure's fixed default (gamma: flag 2, halt 10;
        force measures: 0.1 and 0.5 eV/Å; reasons in docs/monitor.md). ``threshold_source`` says which.
        ``math.inf`` disables.
        Comparisons are strict (``value > threshold``); a non-finite value counts as infinite.
    reduce : {"max", "mean", "percentile95"} or callable
        Per-structure reduction of the per-atom values (isolated atoms excluded, they are
        reported separately).
    flag_file : path, optional
        Extended-XYZ file that flagged frames are appended to (one complete frame per append).
    trajectory_file : path, optional
        Extended-XYZ file that every ``trajectory_interval``-th observed step is appended to (and
        the halting step, always).
    patience : int
        Halt after this many consecutive calls above ``halt_threshold`` (1: at the first).
    min_flag_gap : int
        Minimum number of steps between two flags (0 or 1: every frame above the threshold).
        The halting frame is flagged regardless of the gap when it is above ``flag_threshold``.
    halt_on_isolated : bool
        Halt as soon as an atom has no neighbour within the cut-off (needs
        ``calc.results["neighbour_count"]``).
    raise_on_halt : bool
        Raise :class:`ExtrapolationHalt` instead of stopping the dynamics quietly.
    cluster_cutoff : float, optional
        Å. Write flagged frames as a free cluster: the atoms above ``flag_threshold`` and their
        neighbours within this distance (periodic images unfolded), non-periodic, centred in a box
        with ``cluster_vacuum`` Å of vacuum on each side (``info["cut_out"] = True``). Use at least
        the model's cut-off so the flagged atoms keep their whole environment. When the cluster
        would be as large as the periodic structure, the whole frame is written instead.
    dynamics : ase dynamics or optimizer, optional
        Used for the step number (``nsteps``), the time (``get_time()``) and to stop the run. Found
        automatically when the dynamics calls the monitor as an attached observer.
    trajectory_interval : int
        Steps between trajectory frames.
    cluster_vacuum : float
        Å of vacuum on each side of a cut-out cluster.
    append : bool
        Append to existing ``flag_file``/``trajectory_file``; by default they are removed first
        (as ASE dynamics do with their trajectory files).

    Attributes
    ----------
    halted, reason, step, halt_cause, halt_value
        Whether and why the run was halted, and at which step (``step`` is None until a halt).
    history : list of :class:`StepRecord`
        One record per call (about 100 bytes each).
    n_flags, flagged_steps, n_isolated, max_n_isolated, first_isolated_step, isolated_indices
    max_value, max_value_step
        Largest reduced measure seen and where.
    """

    def __init__(self, atoms, measure="gamma", flag_threshold=None, halt_threshold=None, reduce="max",
                 flag_file=None, trajectory_file=None, patience: int = 1, min_flag_gap: int = 10,
                 halt_on_isolated: bool = False, raise_on_halt: bool = False, cluster_cutoff=None,
                 dynamics=None, *, trajectory_interval: int = 1, cluster_vacuum: float = 6.0,
                 append: bool = False):
        self.atoms = _underlying_atoms(atoms)
        self.measure = get_measure(measure)
        data_flag, data_halt, self.threshold_source = self._default_thresholds(reduce)
        self.flag_threshold = float(data_flag if flag_threshold is None else flag_threshold)
        self.halt_threshold = float(data_halt if halt_threshold is None else halt_threshold)
        if flag_threshold is not None and halt_threshold is not None:
            self.threshold_source = "given"
        if math.isnan(self.flag_threshold) or math.isnan(self.halt_threshold):
            raise ValueError("thresholds must be numbers (use math.inf to disable)")
        if callable(reduce):
            self.reduce_name = getattr(reduce, "__name__", "custom")
            self._reduce = reduce
        elif reduce in REDUCTIONS:
            self.reduce_name = reduce
            self._reduce = REDUCTIONS[reduce]
        else:
            raise ValueError(f"reduce must be one of {sorted(REDUCTIONS)} or a callable, not {reduce!r}")
        if int(patience) < 1:
            raise ValueError("patience must be >= 1")
        if int(min_flag_gap) < 0:
            raise ValueError("min_flag_gap must be >= 0")
        if int(trajectory_interval) < 1:
            raise ValueError("trajectory_interval must be >= 1")
        if cluster_cutoff is not None and not float(cluster_cutoff) > 0:
            raise ValueError("cluster_cutoff must be a positive distance in Å")
        self.patience = int(patience)
        self.min_flag_gap = int(min_flag_gap)
        self.halt_on_isolated = bool(halt_on_isolated)
        self.raise_on_halt = bool(raise_on_halt)
        self.cluster_cutoff = None if cluster_cutoff is None else float(cluster_cutoff)
        self.cluster_vacuum = float(cluster_vacuum)
        self.trajectory_interval = int(trajectory_interval)
        self.flag_file = None if flag_file is None else os.fspath(flag_file)
        self.trajectory_file = None if trajectory_file is None else os.fspath(trajectory_file)
        self.dynamics = dynamics
        if not append:
            for path in (self.flag_file, self.trajectory_file):
                if path is not None and os.path.exists(path):
                    os.unlink(path)
        self._check_calculator()
        self._warned_cluster = False
        self.reset()

    # -- state ----------------------------------------------------------------------------------

    def _default_thresholds(self, reduce) -> tuple[float, float, str]:
        """(flag, halt, where they come from) when none are given: for the largest gamma of a structure,
        the thresholds of the calculator's active set for this many atoms (from the in-domain grades of
        held-out training structures, ``ActiveSet.thresholds``) when it has them, else the measure's fixed
        defaults."""
        if self.measure.key == "gamma" and reduce == "max":
            active_set = getattr(getattr(self.atoms, "calc", None), "active_set", None)
            thresholds = getattr(active_set, "thresholds", None)
            values = thresholds(len(self.atoms)) if callable(thresholds) and len(self.atoms) else None
            if values is not None:
                return values[0], values[1], f"active set: in-domain grades of held-out structures, {len(self.atoms)} atoms"
            if active_set is not None:
                return (self.measure.flag_threshold, self.measure.halt_threshold,
                        "fixed defaults (the active set carries no in-domain grade distribution: built by pacemaker "
                        "or by an older ace_uq_calc; rebuild it with ace-uq activeset for data thresholds)")
        return self.measure.flag_threshold, self.measure.halt_threshold, "fixed defaults of the measure"

    def reset(self) -> None:
        """Forget the halt state and all counters (e.g. to continue a run after a halt)."""
        self.halted = False
        self.reason = None
        self.step = None
        self.halt_cause = None
        self.halt_value = None
        self.halt_time_fs = None
        self.history: list[StepRecord] = []
        self.flagged_steps: list[int] = []
        self.n_above_flag = 0
        self.n_isolated = None
        self.isolated_indices = np.zeros(0, dtype=int)
        self.max_n_isolated = 0
        self.first_isolated_step = None
        self.max_value = None
        self.max_value_step = None
        self.max_atom_value = None
        self.last_step = None
        self.last_trajectory_step = None
        self._consecutive = 0
        self._last_flag_step = None
        self._calls = 0
        self._warned_isolated = False

    @property
    def n_flags(self) -> int:
        return len(self.flagged_steps)

    @property
    def label(self) -> str:
        """Human-readable name of the reduced quantity, e.g. ``"max gamma"``."""
        return f"{self.reduce_name} {self.measure.name}"

    # -- attaching and running ------------------------------------------------------------------

    def attach(self, dynamics, interval: int = 1):
        """``dynamics.attach(self, interval)`` and remember the dynamics (to stop it on a halt)."""
        self.dynamics = dynamics
        if not self._is_attached_to(dynamics):
            dynamics.attach(self, interval=interval)
        return self

    def run(self, dynamics, steps: int, interval: int = 1, **kwargs):
        """Run ``dynamics.run(steps=steps, **kwargs)`` under this monitor (attaching it if needed).

        Returns what ``dynamics.run`` returns, or False when the monitor halted the run. Catches
        :class:`ExtrapolationHalt` unless ``raise_on_halt`` is set, so this returns cleanly with
        any dynamics, including those that do not honour ``max_steps``.
        """
        self.attach(dynamics, interval=interval)
        try:
            result = dynamics.run(steps=steps, **kwargs)
        except ExtrapolationHalt:
            if self.raise_on_halt:
                raise
            return False
        return False if self.halted else result

    def _is_attached_to(self, dynamics) -> bool:
        return any(entry[0] is self for entry in getattr(dynamics, "observers", ()))

    def _discover_dynamics(self):
        """The dynamics object calling this observer: the nearest caller frame whose ``self`` has
        this monitor among its observers and propagates our atoms (ASE's ``call_observers``)."""
        frame = sys._getframe(2)
        for _ in range(6):
            if frame is None:
                break
            candidate = frame.f_locals.get("self")
            if candidate is not None and candidate is not self and hasattr(candidate, "nsteps") \
                    and self._is_attached_to(candidate):
                try:
                    if _underlying_atoms(candidate.atoms) is self.atoms:
                        return candidate
                except (TypeError, AttributeError):
                    pass
            frame = frame.f_back
        return None

    # -- reading the measure --------------------------------------------------------------------

    def _check_calculator(self) -> None:
        """Early, cheap check (no calculation) that the calculator can give the measure."""
        calc = self.atoms.calc
        if calc is None:
            return  # may be attached later; checked again on every call
        key = self.measure.key
        implemented = getattr(calc, "implemented_properties", None)
        if implemented is not None and key not in implemented and key not in getattr(calc, "results", {}):
            raise MeasureUnavailableError(self._unavailable_message(calc))
        if key == "gamma" and hasattr(calc, "active_set") and calc.active_set is None:
            raise MeasureUnavailableError(
                f"measure 'gamma' needs an active set: {type(calc).__name__}(potential, "
                "active_set='potential.asi')"
            )
        if self.halt_on_isolated and implemented is not None and "neighbour_count" not in implemented:
            raise MeasureUnavailableError(
                f"halt_on_isolated needs calc.results['neighbour_count'], which "
                f"{type(calc).__name__} does not provide"
            )

    def _unavailable_message(self, calc, detail: str = "") -> str:
        m = self.measure
        name = type(calc).__name__
        implemented = list(getattr(calc, "implemented_properties", []) or [])
        results = [k for k in getattr(calc, "results", {}) if k not in implemented]
        provided = ", ".join(implemented + results) or "nothing"
        measures = [k for k, v in MEASURES.items() if v.key in implemented or v.key in results]
        msg = (f"uncertainty measure {m.name!r} needs calc.results[{m.key!r}] ({m.description}; "
               f"provided by {m.provided_by}); {name} provides: {provided}")
        msg += f" -- usable measures: {', '.join(measures)}" if measures else " -- no usable measure"
        return msg + (f" ({detail})" if detail else "")

    def _read(self, atoms) -> tuple[np.ndarray, np.ndarray | None]:
        calc = atoms.calc
        if calc is None:
            raise MeasureUnavailableError("the atoms have no calculator")
        key = self.measure.key
        implemented = getattr(calc, "implemented_properties", ()) or ()
        try:
            if key in implemented:
                # computes only when the cached results are stale (they normally are current)
                values = calc.get_property(key, atoms)
            else:
                atoms.get_forces()   # make calc.results current, without recomputing when cached
                if key not in calc.results:
                    raise MeasureUnavailableError(self._unavailable_message(calc))
                values = calc.results[key]
        except PropertyNotImplementedError as exc:
            raise MeasureUnavailableError(self._unavailable_message(calc, str(exc))) from exc
        values = np.asarray(values, dtype=float)
        if values.shape != (len(atoms),):
            raise MeasureUnavailableError(
                f"calc.results[{key!r}] has shape {values.shape}; a per-atom (N,) = ({len(atoms)},) "
                "array is needed"
            )
        counts = calc.results.get("neighbour_count")
        if counts is not None:
            counts = np.asarray(counts)
            if counts.shape != (len(atoms),):
                counts = None
        return values, counts

    def observe(self) -> Observation:
        """Read and reduce the measure for the current state (no flagging, no halting)."""
        atoms = self.atoms
        values, counts = self._read(atoms)
        values = np.where(np.isnan(values), np.inf, values)    # a NaN grade must not look safe
        dyn = self.dynamics
        step = int(dyn.nsteps) if dyn is not None and hasattr(dyn, "nsteps") else self._calls
        time_fs = None
        if dyn is not None and callable(getattr(dyn, "get_time", None)):
            time_fs = float(dyn.get_time()) / units.fs
        if counts is not None:
            isolated = counts == 0
            n_isolated = int(isolated.sum())
            environment = values[~isolated]
        else:
            n_isolated = None
            environment = values
        value = float(self._reduce(environment)) if len(environment) else 0.0
        if math.isnan(value):
            value = math.inf
        maximum = float(values.max()) if len(values) else 0.0
        return Observation(step, time_fs, values, value, maximum, counts, n_isolated)

    # -- the observer ---------------------------------------------------------------------------

    def __call__(self) -> None:
        if self.dynamics is None:
            self.dynamics = self._discover_dynamics()
        if self.halted:
            # the dynamics went on after the halt (its loop ignores max_steps, or run() was called
            # again without reset()): stop it the only way that always works
            raise ExtrapolationHalt(
                f"{self.reason} (the run continued after the halt; call monitor.reset() to go on)",
                step=self.step, value=self.halt_value, time_fs=self.halt_time_fs, cause=self.halt_cause,
            )
        obs = self.observe()
        self._calls += 1
        self.last_step = obs.step

        # isolated atoms
        if obs.n_isolated is not None:
            self.n_isolated = obs.n_isolated
            self.isolated_indices = np.flatnonzero(obs.neighbour_count == 0)
            if obs.n_isolated:
                self.max_n_isolated = max(self.max_n_isolated, obs.n_isolated)
                if self.first_isolated_step is None:
                    self.first_isolated_step = obs.step
                if not self._warned_isolated and not self.halt_on_isolated:
                    self._warned_isolated = True
                    warnings.warn(
                        f"step {obs.step}: {obs.n_isolated} atom(s) without neighbours within the "
                        f"cut-off (indices {self.isolated_indices[:10].tolist()}); their "
                        f"{self.measure.name} is 0 by construction, not a sign of a safe environment",
                        IsolatedAtomsWarning, stacklevel=2,
                    )
        elif self.halt_on_isolated:
            raise MeasureUnavailableError("halt_on_isolated needs calc.results['neighbour_count']")

        if self.max_value is None or obs.value > self.max_value:
            self.max_value, self.max_value_step = obs.value, obs.step
        if self.max_atom_value is None or obs.maximum > self.max_atom_value:
            self.max_atom_value = obs.maximum

        # halt decision
        above_halt = obs.value > self.halt_threshold
        self._consecutive = self._consecutive + 1 if above_halt else 0
        halt_reasons = []
        cause = None
        if self._consecutive >= self.patience:
            cause = "threshold"
            runs = f" on {self._consecutive} consecutive checks" if self.patience > 1 else ""
            halt_reasons.append(f"{self.label} = {obs.value:.4g} > halt threshold "
                                f"{self.halt_threshold:g}{runs}")
        if self.halt_on_isolated and obs.n_isolated:
            cause = cause or "isolated"
            halt_reasons.append(f"{obs.n_isolated} isolated atom(s) (no neighbours within the cut-off; "
                                f"indices {self.isolated_indices[:10].tolist()})")
        halt = bool(halt_reasons)

        # flag decision
        above_flag = obs.value > self.flag_threshold
        if above_flag:
            self.n_above_flag += 1
        gap_ok = self._last_flag_step is None or obs.step - self._last_flag_step >= self.min_flag_gap
        flagged = above_flag and (gap_ok or halt)

        reason = "; ".join(halt_reasons) if halt else None

        # writing: the frames first, then the state, so a failed write leaves no false record
        frame = None
        write_traj = self.trajectory_file is not None and (
            halt or obs.step % self.trajectory_interval == 0)
        if write_traj or (flagged and self.flag_file is not None):
            frame = self._frame(obs, flagged=flagged, halted=halt, reason=reason)
        if write_traj:
            append_frame(self.trajectory_file, frame)
            self.last_trajectory_step = obs.step
        if flagged:
            if self.flag_file is not None:
                out = self._cluster(frame, obs) if self.cluster_cutoff is not None else frame
                append_frame(self.flag_file, out)
            self.flagged_steps.append(obs.step)
            self._last_flag_step = obs.step

        self.history.append(StepRecord(obs.step, obs.time_fs, obs.value, obs.maximum, obs.n_isolated,
                                       flagged, halt))
        if halt:
            self.halted = True
            self.reason = reason
            self.step = obs.step
            self.halt_cause = cause
            self.halt_value = obs.value
            self.halt_time_fs = obs.time_fs
            self._stop(obs)

    def _stop(self, obs: Observation) -> None:
        exc = ExtrapolationHalt(self.reason, step=obs.step, value=obs.value, time_fs=obs.time_fs,
                                cause=self.halt_cause)
        if self.raise_on_halt:
            raise exc
        dyn = self.dynamics
        if dyn is not None and hasattr(dyn, "max_steps") and hasattr(dyn, "nsteps"):
            dyn.max_steps = dyn.nsteps     # ASE's irun loops end after this step's observers
            return
        exc.args = (exc.args[0] + " (the monitor does not know the dynamics to stop it quietly: pass "
                    "dynamics=dyn or use monitor.run(dyn, steps))",)
        raise exc

    # -- frames ---------------------------------------------------------------------------------

    def write_trajectory_frame(self) -> None:
        """Append the current state to ``trajectory_file`` now (e.g. the last step of a run that
        did not fall on ``trajectory_interval``)."""
        if self.trajectory_file is None:
            return
        obs = self.observe()
        append_frame(self.trajectory_file, self._frame(obs, flagged=False, halted=False, reason=None))
        self.last_trajectory_step = obs.step

    def _frame(self, obs: Observation, flagged: bool, halted: bool, reason):
        """A calculator-free copy of the atoms with the measure and the model's results attached.

        The model's energy/forces/stress are stored as ``ace_energy``/``ace_forces``/``ace_stress``
        (as ``ace-uq evaluate`` does), not as ``energy``/``forces``: flagged frames go to reference
        calculations, and model predictions must not be mistaken for reference labels.
        """
        atoms = self.atoms
        frame = atoms.copy()
        frame.calc = None
        frame.set_constraint([c for c in atoms.constraints if isinstance(c, FixAtoms)])
        for name in _RESULT_NAMES:
            frame.info.pop(name, None)
            if name in frame.arrays and name not in ("numbers", "positions"):
                del frame.arrays[name]
        m = self.measure.name
        frame.arrays[m] = np.array(obs.values, dtype=float)
        if obs.neighbour_count is not None:
            frame.arrays["neighbour_count"] = np.asarray(obs.neighbour_count, dtype=int)
        results = getattr(atoms.calc, "results", {}) or {}
        if "energy" in results:
            frame.info["ace_energy"] = float(results["energy"])
        if "forces" in results and np.shape(results["forces"]) == (len(atoms), 3):
            frame.arrays["ace_forces"] = np.array(results["forces"], dtype=float)
        if "stress" in results and np.shape(results["stress"]) == (6,):
            frame.info["ace_stress"] = np.array(results["stress"], dtype=float)
        info = frame.info
        info["step"] = int(obs.step)
        if obs.time_fs is not None:
            info["time_fs"] = float(obs.time_fs)
        info["uq_measure"] = m
        info["uq_reduce"] = self.reduce_name
        info["uq_value"] = float(obs.value)
        info[f"max_{m}"] = float(obs.maximum)
        info["flag_threshold"] = self.flag_threshold
        info["halt_threshold"] = self.halt_threshold
        info["n_above_flag"] = int((obs.values > self.flag_threshold).sum())
        if obs.n_isolated is not None:
            info["n_isolated"] = int(obs.n_isolated)
        info["flagged"] = bool(flagged)
        if halted:
            info["halted"] = True
            info["halt_reason"] = str(reason)
        return frame

    def _cluster(self, frame, obs: Observation):
        """The flagged frame as a cut-out cluster (:func:`~ace_uq_calc.monitor.cutout.cut_out_cluster`),
        with a warning (once) when ``cluster_cutoff`` is below the model's cut-off."""
        model_cutoff = getattr(getattr(self.atoms.calc, "basis", None), "cutoff_max", None)
        if model_cutoff is not None and self.cluster_cutoff < model_cutoff and not self._warned_cluster:
            self._warned_cluster = True
            warnings.warn(f"cluster_cutoff {self.cluster_cutoff} Å is smaller than the model cut-off "
                          f"{model_cutoff} Å: flagged atoms lose part of their environment", stacklevel=3)
        return cut_out_cluster(frame, obs.values, self.flag_threshold, self.cluster_cutoff, self.cluster_vacuum,
                               self.measure.name, obs.neighbour_count)

    # -- reporting ------------------------------------------------------------------------------

    def summary(self) -> dict:
        """JSON-ready summary of the run so far."""
        return {
            "measure": self.measure.name,
            "unit": self.measure.unit,
            "reduce": self.reduce_name,
            "flag_threshold": _finite(self.flag_threshold),
            "halt_threshold": _finite(self.halt_threshold),
            "threshold_source": self.threshold_source,
            "patience": self.patience,
            "min_flag_gap": self.min_flag_gap,
            "checks": len(self.history),
            "first_step": self.history[0].step if self.history else None,
            "last_step": self.last_step,
            "halted": self.halted,
            "halt_cause": self.halt_cause,
            "halt_reason": self.reason,
            "halt_step": self.step,
            "halt_time_fs": _finite(self.halt_time_fs),
            "n_flags": self.n_flags,
            "n_above_flag_threshold": self.n_above_flag,
            "flagged_steps": list(self.flagged_steps),
            "max_measure": _finite(self.max_value),
            "max_measure_step": self.max_value_step,
            "max_atom_measure": _finite(self.max_atom_value),
            "n_isolated_max": self.max_n_isolated if self.n_isolated is not None else None,
            "first_isolated_step": self.first_isolated_step,
            "flag_file": self.flag_file,
            "trajectory_file": self.trajectory_file,
        }

    def history_array(self) -> np.ndarray:
        """The history as a numpy structured array (NaN time for optimizers, -1 n_isolated when
        unknown)."""
        dtype = [("step", int), ("time_fs", float), ("value", float), ("maximum", float),
                 ("n_isolated", int), ("flagged", bool), ("halted", bool)]
        rows = [(r.step, np.nan if r.time_fs is None else r.time_fs, r.value, r.maximum,
                 -1 if r.n_isolated is None else r.n_isolated, r.flagged, r.halted) for r in self.history]
        return np.array(rows, dtype=dtype)

    def __repr__(self) -> str:
        state = f"halted at step {self.step}" if self.halted else f"{len(self.history)} checks"
        return (f"UncertaintyMonitor({self.label}, flag > {self.flag_threshold:g}, halt > "
                f"{self.halt_threshold:g}, {state}, {self.n_flags} flags)")
