"""Active sets built from training structures: every training atom ends with gamma <= tolerance,
the file round-trips through the CLI, and gamma equals an independent NumPy evaluation."""
import numpy as np
import pytest
from ase.build import bulk
from conftest import fixture_file


def _training_frames(seed=0, count=12):
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        atoms = bulk("Al", "fcc", a=3.9 + 0.05 * rng.normal(), cubic=True).repeat((2, 2, 2))
        symbols = np.where(rng.random(len(atoms)) < 0.5, "Al", "Ni")
        atoms.set_chemical_symbols(list(symbols))
        atoms.rattle(0.05 + 0.1 * rng.random(), seed=int(rng.integers(1 << 30)))
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def alni_basis():
    from ace_uq_calc.model.basis import load_basis

    return load_basis(fixture_file("AlNi_fs.yaml"))


@pytest.mark.parametrize("nonlinear", [False, True])
def test_training_atoms_have_gamma_below_tolerance(alni_basis, tmp_path, nonlinear):
    import warnings

    from ace_uq_calc import ACECalculator
    from ace_uq_calc.uncertainty.build import build_active_set

    frames = _training_frames(count=20 if nonlinear else 12)
    tolerance = 1.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the random AlNi basis gives ill-conditioned sets: warned about
        active = build_active_set(alni_basis, frames, nonlinear=nonlinear, tolerance=tolerance, batch_size=100)
    path = tmp_path / "alni.asi"
    active.save(path)
    calc = ACECalculator(alni_basis, active_set=str(path))
    assert calc.active_set.nonlinear == nonlinear
    worst = 0.0
    for atoms in frames:
        atoms.calc = calc
        atoms.get_potential_energy()
        worst = max(worst, calc.results["max_gamma"])
    assert worst <= tolerance + 1e-9
    assert worst > 0.5      # the active-set atoms themselves sit at gamma = 1


def test_gamma_equals_numpy_and_is_invariant(alni_basis):
    from ace_uq_calc import ACECalculator
    from ace_uq_calc.uncertainty.active_set import ActiveSet
    from ace_uq_calc.uncertainty.projections import structure_projections

    asi = fixture_file("AlNi_fs.asi")
    calc = ACECalculator(alni_basis, active_set=str(asi))
    raw = np.load(asi)
    atoms = _training_frames(seed=3, count=1)[0]
    atoms.calc = calc
    atoms.get_potential_energy()
    gamma = calc.results["gamma"].copy()
    species, x = structure_projections(alni_basis, atoms)
    expected = np.empty(len(atoms))
    for e, el in enumerate(alni_basis.elements):
        mask = species == e
        expected[mask] = np.max(np.abs(x[mask] @ raw[el]), axis=1)
    np.testing.assert_allclose(gamma, expected, rtol=1e-12, atol=1e-12)
    # rotation and permutation of the atoms
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
    rotated.positions = atoms.positions @ q.T
    rotated.calc = calc
    rotated.get_potential_energy()
    kappa_scale = 1e-8 * np.maximum(gamma, 1.0)
    assert np.all(np.abs(calc.results["gamma"] - gamma) <= kappa_scale)
    perm = rng.permutation(len(atoms))
    permuted = atoms[perm]
    permuted.calc = calc
    permuted.get_potential_energy()
    assert np.all(np.abs(calc.results["gamma"] - gamma[perm]) <= kappa_scale)
    assert isinstance(calc.active_set, ActiveSet)


def test_cli_activeset_and_evaluate(alni_basis, tmp_path, capsys):
    import ase.io

    from ace_uq_calc.cli import main

    frames = _training_frames(seed=1, count=12)
    train = tmp_path / "train.xyz"
    ase.io.write(train, frames)
    out = tmp_path / "pot.asi"
    assert main(["activeset", str(fixture_file("AlNi_fs.yaml")), str(train), "-o", str(out),
                 "--tolerance", "1.01", "--quiet"]) == 0
    assert out.exists()
    result = tmp_path / "eval.xyz"
    assert main(["evaluate", str(fixture_file("AlNi_fs.yaml")), str(train), "--active-set", str(out),
                 "-o", str(result)]) == 0
    back = ase.io.read(result, ":")
    assert len(back) == len(frames)
    assert max(a.info["max_gamma"] for a in back) <= 1.01 + 1e-9
    assert back[0].arrays["gamma"].shape == (len(frames[0]),)


def test_gamma_without_active_set_is_a_clear_error(alni_basis):
    from ase.calculators.calculator import PropertyNotImplementedError

    from ace_uq_calc import ACECalculator

    atoms = _training_frames(count=1)[0]
    atoms.calc = ACECalculator(alni_basis)
    with pytest.raises(PropertyNotImplementedError, match="active set"):
        atoms.calc.get_property("gamma", atoms)


def test_empty_structure_has_max_gamma_zero(alni_basis):
    from ase import Atoms

    from ace_uq_calc import ACECalculator

    atoms = Atoms(cell=[5, 5, 5], pbc=True)
    atoms.calc = ACECalculator(alni_basis, active_set=str(fixture_file("AlNi_fs.asi")))
    assert atoms.get_potential_energy() == 0.0
    assert atoms.get_forces().shape == (0, 3)
    assert atoms.calc.results["max_gamma"] == 0.0


def test_held_out_structures_give_thresholds_that_the_monitor_and_cli_use(alni_basis, tmp_path, capsys):
    """build_active_set grades held-out structures against an active set built without them; the thresholds
    grow with the structure size; the monitor takes them when given none (and says so); ``ace-uq info`` on
    the .asi prints them; a pacemaker .asi (no distribution) keeps the fixed defaults with a note."""
    import ase.io

    from ace_uq_calc import ACECalculator, UncertaintyMonitor
    from ace_uq_calc.cli import main
    from ace_uq_calc.uncertainty.build import build_active_set, held_out_structures

    frames = _training_frames(seed=3, count=30)
    held = held_out_structures(len(frames))
    assert len(held) == 3 and len(set(held.tolist())) == 3
    active = build_active_set(alni_basis, frames, tolerance=1.01)
    distribution = active.grade_distribution
    assert distribution.n_structures == 3 and distribution.n_atoms == 3 * len(frames[0])
    small, large = active.thresholds(1), active.thresholds(10_000)
    assert 1.0 <= small[0] <= small[1] and large[0] > small[0] and large[1] >= large[0]
    path = tmp_path / "alni.asi"
    active.save(path)
    atoms = frames[0].copy()
    atoms.calc = ACECalculator(alni_basis, active_set=str(path))
    monitor = UncertaintyMonitor(atoms)
    assert (monitor.flag_threshold, monitor.halt_threshold) == active.thresholds(len(atoms))
    assert monitor.threshold_source.startswith("active set") and monitor.summary()["threshold_source"]
    given = UncertaintyMonitor(atoms, flag_threshold=3.0, halt_threshold=30.0)
    assert (given.flag_threshold, given.halt_threshold, given.threshold_source) == (3.0, 30.0, "given")
    atoms.calc = ACECalculator(alni_basis, active_set=str(fixture_file("AlNi_fs.asi")))
    old = UncertaintyMonitor(atoms)
    assert (old.flag_threshold, old.halt_threshold) == (2.0, 10.0) and "no in-domain grade" in old.threshold_source
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    printed = capsys.readouterr().out
    flag_100 = f"{active.thresholds(100)[0]:.3g}"
    assert "held-out structures" in printed and f"   100 atoms: flag > {flag_100}" in printed
    train = tmp_path / "train.xyz"
    ase.io.write(train, frames)
    assert main(["activeset", str(fixture_file("AlNi_fs.yaml")), str(train), "-o", str(tmp_path / "cli.asi"),
                 "--tolerance", "1.01", "--quiet"]) == 0
    assert "default thresholds of max gamma" in capsys.readouterr().out
