"""UncertaintyMonitor: flagging, halting, isolated atoms, cut-out clusters, dynamics and optimizers.

Most tests use a scripted calculator (harmonic forces, a prescribed per-structure gamma per call) so
that thresholds are crossed at known steps; a few run the bundled example model for real.
"""
import json
import math
import os
import warnings

import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE

from ace_uq_calc.monitor import (
    MEASURES,
    ExtrapolationHalt,
    IsolatedAtomsWarning,
    MeasureUnavailableError,
    StepRecord,
    UncertaintyMonitor,
    get_measure,
)


class ScriptedCalculator(Calculator):
    """Harmonic springs to reference positions; per-structure gamma taken from ``script`` (one entry
    per calculation, the last one repeated). Atom 0 carries the value, the others half of it;
    atoms listed in ``isolated`` get gamma 0 and neighbour_count 0."""

    implemented_properties = ["energy", "free_energy", "forces", "stress", "gamma", "max_gamma",
                              "neighbour_count"]

    def __init__(self, script, reference, k=1.0, isolated=(), **kwargs):
        super().__init__(**kwargs)
        self.script = list(script)
        self.reference = np.array(reference, dtype=float)
        self.k = k
        self.isolated = list(isolated)
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        g = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        n = len(self.atoms)
        d = self.atoms.positions - self.reference
        gamma = np.full(n, 0.5 * g)
        gamma[0] = g
        counts = np.full(n, 12)
        gamma[self.isolated] = 0.0
        counts[self.isolated] = 0
        self.results = {
            "energy": 0.5 * self.k * float((d ** 2).sum()), "forces": -self.k * d,
            "stress": np.zeros(6), "gamma": gamma, "max_gamma": float(np.max(gamma)),
            "neighbour_count": counts,
        }
        self.results["free_energy"] = self.results["energy"]


def scripted_atoms(script, n_rep=(2, 1, 1), displacement=1.0, isolated=()):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n_rep)
    reference = atoms.positions.copy()
    rng = np.random.default_rng(3)
    step = rng.normal(size=reference.shape)
    atoms.positions += displacement * step / np.linalg.norm(step, axis=1)[:, None]
    atoms.calc = ScriptedCalculator(script, reference, isolated=isolated)
    return atoms


def make_dynamics(kind, atoms):
    dt = 1.0 * units.fs
    if kind == "md":
        return VelocityVerlet(atoms, dt), atoms
    if kind == "langevin":
        return Langevin(atoms, dt, temperature_K=300, friction=0.01 / units.fs, fixcm=False), atoms
    if kind == "nvt_nose_hoover_chain":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, dt, temperature_K=300, tdamp=100 * dt), atoms
    if kind == "npt":
        try:
            from ase.md.melchionna import MelchionnaNPT as NPT
        except ImportError:      # ASE < 3.28
            from ase.md.npt import NPT

        return NPT(atoms, dt, temperature_K=300, externalstress=0.0, ttime=25 * units.fs,
                   pfactor=(75 * units.fs) ** 2 * 100 * units.GPa), atoms
    if kind == "bfgs":
        return BFGS(atoms, maxstep=0.02, logfile=None), atoms
    if kind == "fire":
        return FIRE(atoms, maxstep=0.02, logfile=None), atoms
    if kind == "bfgs_cell":
        target = FrechetCellFilter(atoms)
        return BFGS(target, maxstep=0.02, logfile=None), target
    raise ValueError(kind)


def run(dyn, steps):
    return dyn.run(fmax=1e-6, steps=steps) if hasattr(dyn, "fmax") else dyn.run(steps)


def open_paths():
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            pass
    return paths


@pytest.fixture(scope="module")
def ace_calc():
    from ace_uq_calc import ACECalculator
    from ace_uq_calc.demo import example_files

    pot, asi = example_files()
    return ACECalculator(pot, active_set=asi)


# ------------------------------------------------------------------------------------------------


def test_flag_writes_exactly_the_frames_above_threshold(tmp_path):
    script = [0.5, 3.0, 0.8, 2.5, 1.9, 4.0, 2.0, 0.1, 7.5, 0.3]
    atoms = scripted_atoms(script)
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    monitor = UncertaintyMonitor(atoms, flag_threshold=2.0, halt_threshold=math.inf, min_flag_gap=0,
                                 flag_file=tmp_path / "flagged.xyz", trajectory_file=tmp_path / "traj.xyz")
    dyn.attach(monitor, interval=1)
    dyn.run(len(script) - 1)

    expected = [i for i, g in enumerate(script) if g > 2.0]          # 2.0 itself is not above
    assert monitor.flagged_steps == expected
    frames = ase.io.read(tmp_path / "flagged.xyz", index=":")
    assert [f.info["step"] for f in frames] == expected
    for frame in frames:
        g = script[frame.info["step"]]
        assert frame.arrays["gamma"][0] == pytest.approx(g)
        assert frame.arrays["gamma"][1:] == pytest.approx(0.5 * g)
        assert frame.info["max_gamma"] == pytest.approx(g)
        assert frame.info["time_fs"] == pytest.approx(frame.info["step"] * 1.0)
        assert frame.arrays["ace_forces"].shape == (len(atoms), 3)
        assert "ace_energy" in frame.info and frame.info["flagged"]
        assert frame.info["n_isolated"] == 0
        assert frame.calc is None           # model results are not posing as reference labels
    traj = ase.io.read(tmp_path / "traj.xyz", index=":")
    assert [f.info["step"] for f in traj] == list(range(len(script)))
    assert [r.value for r in monitor.history] == pytest.approx(script)
    assert [r.flagged for r in monitor.history] == [g > 2.0 for g in script]
    assert not monitor.halted and monitor.step is None


def test_halt_stops_at_first_step_above_threshold_and_keeps_every_frame(tmp_path):
    script = [0.5, 1.0, 3.0, 9.0, 12.0, 0.5, 20.0]
    atoms = scripted_atoms(script)
    dyn = VelocityVerlet(atoms, 2.0 * units.fs)
    monitor = UncertaintyMonitor(atoms, flag_file=tmp_path / "f.xyz", trajectory_file=tmp_path / "t.xyz",
                                 trajectory_interval=3, min_flag_gap=0)
    dyn.attach(monitor, interval=1)               # no dynamics= given: found from the caller
    dyn.run(100)                                  # returns normally
    assert monitor.dynamics is dyn
    assert dyn.nsteps == 4
    assert monitor.halted and monitor.step == 4 and monitor.halt_cause == "threshold"
    assert "max gamma = 12 > halt threshold 10" in monitor.reason
    assert monitor.halt_time_fs == pytest.approx(8.0)
    traj = ase.io.read(tmp_path / "t.xyz", index=":")
    assert [f.info["step"] for f in traj] == [0, 3, 4]        # interval frames + the halting frame
    assert traj[-1].info["halted"] and "halt threshold" in traj[-1].info["halt_reason"]
    flagged = ase.io.read(tmp_path / "f.xyz", index=":")
    assert [f.info["step"] for f in flagged] == [2, 3, 4]
    # each file ends with a complete frame
    for name in ("t.xyz", "f.xyz"):
        assert (tmp_path / name).read_text().endswith("\n")


def test_patience_counts_consecutive_checks():
    script = [0.5, 11.0, 0.5, 11.0, 11.0, 0.5, 11.0, 11.0, 11.0, 11.0]
    atoms = scripted_atoms(script)
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    monitor = UncertaintyMonitor(atoms, patience=3, dynamics=dyn)
    dyn.attach(monitor)
    dyn.run(50)
    assert monitor.step == 8 and dyn.nsteps == 8
    assert "3 consecutive" in monitor.reason


def test_raise_on_halt_raises_dedicated_exception_and_closes_files(tmp_path):
    script = [0.5, 3.0, 50.0]
    atoms = scripted_atoms(script)
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    flag, traj = tmp_path / "f.xyz", tmp_path / "t.xyz"
    monitor = UncertaintyMonitor(atoms, raise_on_halt=True, flag_file=flag, trajectory_file=traj,
                                 min_flag_gap=0)
    dyn.attach(monitor)
    with pytest.raises(ExtrapolationHalt) as info:
        dyn.run(20)
    exc = info.value
    assert isinstance(exc, RuntimeError)
    assert exc.step == 2 and exc.value == pytest.approx(50.0) and exc.cause == "threshold"
    assert "halt threshold" in exc.reason and str(exc) == f"step 2: {exc.reason}"
    assert monitor.halted and monitor.step == 2
    assert str(flag.resolve()) not in open_paths() and str(traj.resolve()) not in open_paths()
    assert len(ase.io.read(traj, index=":")) == 3
    assert [f.info["step"] for f in ase.io.read(flag, index=":")] == [1, 2]
    # monitor.run with raise_on_halt also lets the exception through
    monitor.reset()
    with pytest.raises(ExtrapolationHalt):
        monitor.run(dyn, steps=5)


def test_min_flag_gap_limits_flags_but_keeps_the_halting_frame(tmp_path):
    script = [3.0] * 9 + [30.0]
    atoms = scripted_atoms(script)
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    monitor = UncertaintyMonitor(atoms, min_flag_gap=4, flag_file=tmp_path / "f.xyz")
    dyn.attach(monitor)
    dyn.run(30)
    assert monitor.flagged_steps == [0, 4, 8, 9]
    assert monitor.n_above_flag == 10
    assert [f.info["step"] for f in ase.io.read(tmp_path / "f.xyz", index=":")] == [0, 4, 8, 9]


@pytest.mark.parametrize("kind", ["md", "langevin", "nvt_nose_hoover_chain", "npt", "bfgs", "fire", "bfgs_cell"])
def test_same_behaviour_in_md_optimizers_and_cell_filter(kind, tmp_path):
    script = [0.5, 2.5, 0.7, 3.0, 1.0, 1.5, 12.0, 0.5, 0.5]
    atoms = scripted_atoms(script)
    dyn, target = make_dynamics(kind, atoms)
    monitor = UncertaintyMonitor(target, min_flag_gap=0, flag_file=tmp_path / "f.xyz")
    assert monitor.atoms is atoms                        # a filter is unwrapped
    result = monitor.run(dyn, steps=50)
    assert result is False
    assert monitor.flagged_steps == [1, 3, 6]
    assert monitor.halted and monitor.step == 6 and dyn.nsteps == 6
    assert [r.step for r in monitor.history] == list(range(7))
    frames = ase.io.read(tmp_path / "f.xyz", index=":")
    assert len(frames[0]) == len(atoms) and frames[-1].info["halted"]
    if kind in ("md", "langevin", "nvt_nose_hoover_chain", "npt"):
        assert frames[-1].info["time_fs"] == pytest.approx(6.0)
        assert "momenta" in frames[-1].arrays
    else:
        assert "time_fs" not in frames[-1].info and monitor.history[0].time_fs is None


def test_custom_dynamics_loop_is_stopped_by_the_exception_path(tmp_path):
    class LoopDynamics:
        """A dynamics with its own loop that ignores max_steps (like ASE's SwitchLangevin)."""

        def __init__(self, atoms):
            self.atoms, self.nsteps, self.max_steps, self.observers = atoms, 0, 0, []

        def attach(self, function, interval=1, *args, **kwargs):
            self.observers.append((function, interval, args, kwargs))

        def run(self, steps):
            for _ in range(steps):
                self.atoms.positions[0, 0] += 0.01
                self.nsteps += 1
                for function, interval, args, kwargs in self.observers:
                    if self.nsteps % interval == 0:
                        function(*args, **kwargs)
            return True

    atoms = scripted_atoms([0.5, 0.5, 0.5, 15.0, 0.5])
    atoms.get_forces()                     # call 0 happens before the loop (step 0 is not observed)
    dyn = LoopDynamics(atoms)
    monitor = UncertaintyMonitor(atoms, trajectory_file=tmp_path / "t.xyz")
    assert monitor.run(dyn, steps=10) is False
    assert monitor.halted and monitor.step == 3
    assert dyn.nsteps == 4                 # one extra step, then the monitor raised
    assert [f.info["step"] for f in ase.io.read(tmp_path / "t.xyz", index=":")] == [1, 2, 3]

    # without any dynamics the monitor can only raise
    atoms = scripted_atoms([20.0])
    monitor = UncertaintyMonitor(atoms)
    with pytest.raises(ExtrapolationHalt, match="does not know the dynamics"):
        monitor()


def test_isolated_atom_is_reported_and_can_halt(ace_calc, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.pbc = False
    atoms.center(vacuum=12.0)
    atoms.positions[5] += [0.0, 0.0, 20.0]          # pulled 20 Å out of range
    atoms.center(vacuum=12.0)
    atoms.calc = ace_calc
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    # (the corners of this small free cube extrapolate, gamma ~ 15: thresholds off here)
    monitor = UncertaintyMonitor(atoms, trajectory_file=tmp_path / "t.xyz", dynamics=dyn,
                                 flag_threshold=math.inf, halt_threshold=math.inf)
    dyn.attach(monitor)
    with pytest.warns(IsolatedAtomsWarning, match="1 atom"):
        dyn.run(2)
    assert not monitor.halted
    assert monitor.n_isolated == 1 and monitor.isolated_indices.tolist() == [5]
    assert monitor.max_n_isolated == 1 and monitor.first_isolated_step == 0
    assert all(r.n_isolated == 1 for r in monitor.history)
    frame = ase.io.read(tmp_path / "t.xyz", index=0)
    assert frame.info["n_isolated"] == 1
    assert frame.arrays["neighbour_count"][5] == 0 and frame.arrays["gamma"][5] == 0.0
    assert monitor.summary()["n_isolated_max"] == 1

    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    monitor = UncertaintyMonitor(atoms, halt_on_isolated=True, halt_threshold=math.inf)
    assert monitor.run(dyn, steps=5) is False
    assert monitor.halted and monitor.step == 0 and monitor.halt_cause == "isolated"
    assert "isolated" in monitor.reason and "[5]" in monitor.reason


def test_reductions_exclude_isolated_atoms():
    atoms = scripted_atoms([4.0], isolated=[3])
    expected_atoms = np.r_[4.0, np.full(len(atoms) - 2, 2.0)]
    for reduce, expected in [("max", 4.0), ("mean", expected_atoms.mean()),
                             ("percentile95", np.percentile(expected_atoms, 95))]:
        monitor = UncertaintyMonitor(atoms, reduce=reduce, flag_threshold=math.inf,
                                     halt_threshold=math.inf)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IsolatedAtomsWarning)
            monitor()
        assert monitor.history[-1].value == pytest.approx(expected)
        assert monitor.history[-1].maximum == pytest.approx(4.0)
        assert monitor.n_isolated == 1
    with pytest.raises(ValueError, match="reduce"):
        UncertaintyMonitor(atoms, reduce="median")


def test_nan_measure_counts_as_above_every_threshold():
    atoms = scripted_atoms([0.5, float("nan")])
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    monitor = UncertaintyMonitor(atoms)
    monitor.run(dyn, steps=10)
    assert monitor.halted and monitor.step == 1
    json.dumps(monitor.summary(), allow_nan=False)


def test_cluster_cutout_is_a_free_cluster_of_flagged_atoms_and_neighbours(tmp_path):
    script = [5.0]                       # atom 0 at 5 (above 2), all others at 2.5 -> use flag 3
    for cutoff, n_expected in [(3.0, 13), (5.0, 43)]:
        atoms = scripted_atoms(script, n_rep=(3, 3, 3), displacement=0.0)   # atom 0 at the corner
        path = tmp_path / f"cluster{cutoff}.xyz"
        monitor = UncertaintyMonitor(atoms, flag_threshold=3.0, halt_threshold=math.inf,
                                     flag_file=path, cluster_cutoff=cutoff, cluster_vacuum=6.0)
        monitor()
        cluster = ase.io.read(path)
        assert len(cluster) == n_expected                 # 1 + 12 (+ 6 + 24 with images unfolded)
        assert not cluster.pbc.any()
        assert cluster.arrays["flagged"].sum() == 1
        centre = np.flatnonzero(cluster.arrays["flagged"])[0]
        assert cluster.arrays["source_index"][centre] == 0
        assert cluster.arrays["gamma"][centre] == pytest.approx(5.0)
        d = np.linalg.norm(cluster.positions - cluster.positions[centre], axis=1)
        assert d.max() <= cutoff + 1e-9
        pair = np.linalg.norm(cluster.positions[:, None] - cluster.positions[None], axis=2)
        assert pair[np.triu_indices(len(cluster), 1)].min() == pytest.approx(3.61 / 2 ** 0.5)
        span = cluster.positions.max(axis=0) - cluster.positions.min(axis=0)
        assert np.diag(cluster.cell.array) == pytest.approx(span + 12.0)
        assert cluster.info["step"] == 0 and cluster.info["cluster_cutoff"] == cutoff
        assert cluster.info["cut_out"] is True
    # in a 32-atom cell the 43-atom cut-out would be larger than the cell: the whole frame is kept
    atoms = scripted_atoms(script, n_rep=(2, 2, 2), displacement=0.0)
    monitor = UncertaintyMonitor(atoms, flag_threshold=3.0, flag_file=tmp_path / "small.xyz",
                                 cluster_cutoff=5.0)
    monitor()
    frame = ase.io.read(tmp_path / "small.xyz")
    assert len(frame) == 32 and frame.pbc.all() and frame.info["cut_out"] is False


def test_unknown_or_missing_measure_gives_clear_errors(ace_calc):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.calc = ace_calc
    with pytest.raises(ValueError, match="unknown uncertainty measure 'bogus'.*gamma"):
        UncertaintyMonitor(atoms, measure="bogus")
    with pytest.raises(MeasureUnavailableError) as info:
        UncertaintyMonitor(atoms, measure="forces_dev")
    message = str(info.value)
    assert "forces_dev" in message and "ACECalculator provides" in message
    assert "neighbour_count" in message and "usable measures: gamma" in message
    assert get_measure("error") is MEASURES["forces_error_estimate"]

    from ace_uq_calc import ACECalculator

    atoms.calc = ACECalculator(ace_calc.basis)                      # no active set
    with pytest.raises(MeasureUnavailableError, match="active set"):
        UncertaintyMonitor(atoms)


def test_history_summary_and_thresholds_defaults():
    atoms = scripted_atoms([0.5, 2.5, 0.5])
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    monitor = UncertaintyMonitor(atoms)
    monitor.run(dyn, steps=2)
    assert (monitor.flag_threshold, monitor.halt_threshold) == (2.0, 10.0)
    assert isinstance(monitor.history[0], StepRecord)
    assert monitor.history_array()["flagged"].tolist() == [False, True, False]
    summary = monitor.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["n_flags"] == 1 and summary["max_measure"] == pytest.approx(2.5)
    assert summary["max_measure_step"] == 1 and summary["halted"] is False
    assert MEASURES["forces_dev"].flag_threshold == 0.1 and MEASURES["forces_dev"].unit == "eV/Å"


def test_real_model_langevin_heated_halts(ace_calc, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.calc = ace_calc
    rng = np.random.default_rng(0)
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=8000, friction=0.02 / units.fs, fixcm=False, rng=rng)
    traj = tmp_path / "t.xyz"
    monitor = UncertaintyMonitor(atoms, flag_file=tmp_path / "f.xyz", trajectory_file=traj,
                                 trajectory_interval=10)
    dyn.attach(monitor)
    dyn.run(400)
    assert monitor.halted and dyn.nsteps == monitor.step < 400
    assert monitor.history[0].value < 1.0                     # the perfect crystal interpolates
    frames = ase.io.read(traj, index=":")
    assert frames[-1].info["step"] == monitor.step and frames[-1].info["max_gamma"] > 10
    assert frames[-1].arrays["gamma"].max() == pytest.approx(frames[-1].info["max_gamma"])
    assert len(ase.io.read(tmp_path / "f.xyz", index=":")) == monitor.n_flags >= 1


def test_real_model_bfgs_with_cell_filter(ace_calc, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.50, cubic=True)     # small: few steps (cell-filter steps are costly)
    atoms.rattle(0.03, seed=1)
    atoms.calc = ace_calc
    target = FrechetCellFilter(atoms)
    opt = BFGS(target, logfile=None)
    monitor = UncertaintyMonitor(target, trajectory_file=tmp_path / "t.xyz")
    converged = monitor.run(opt, steps=40, fmax=0.02)
    assert converged and not monitor.halted
    # relaxed from 3.50 to the bundled model's equilibrium (fitted to PBE Cu data: a = 3.635 A)
    assert atoms.cell.lengths() == pytest.approx([3.635] * 3, abs=0.01)
    frames = ase.io.read(tmp_path / "t.xyz", index=":")
    assert len(frames) == opt.nsteps + 1
    assert frames[-1].cell.lengths() == pytest.approx(atoms.cell.lengths())
    assert "ace_stress" in frames[-1].info
    assert max(r.value for r in monitor.history) < 2.0
