"""Linear fitting: recovery of a known linear ACE, streamed vs dense assembly, file round trip."""
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator


def _teacher(seed=0):
    """A small random linear Cu potential (the 'truth' of the synthetic data)."""
    from ace_uq_calc.fitting.basis_construction import (
        BasisLimits,
        new_potential,
        prune_dependent_functions,
    )

    pot = new_potential(["Cu"], BasisLimits((5, 3, 2), (0, 2, 1)), rcut=4.5)
    pot = prune_dependent_functions(pot, count=150)
    rng = np.random.default_rng(seed)
    for spec in pot.functions["Cu"]:
        spec.coefficients = rng.normal(scale=0.05, size=1) / (1 + spec.rank)
    return pot


def _labelled_frames(pot, count=24, seed=1, e0=-0.25):
    from ace_uq_calc import ACECalculator

    calc = ACECalculator(pot)
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.5 + 0.3 * rng.random(), cubic=True)
        if k % 3 == 0:
            atoms = atoms.repeat((2, 1, 1))
        atoms.rattle(0.2, seed=int(rng.integers(1 << 30)))
        atoms.calc = calc
        energy = atoms.get_potential_energy() + e0 * len(atoms)
        forces = atoms.get_forces()
        stress = atoms.get_stress()
        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(labelled, energy=energy, forces=forces, stress=stress)
        frames.append(labelled)
    return frames


def _training_file(tmp_path, count):
    """``count`` structures labelled by the teacher, written to tmp_path/train.xyz (its path)."""
    import ase.io

    path = tmp_path / "train.xyz"
    ase.io.write(path, _labelled_frames(_teacher(), count=count))
    return path


def test_fit_recovers_known_coefficients():
    from ace_uq_calc.fitting.linear_fit import fit_linear
    from ace_uq_calc.model.basis import build_basis

    teacher = _teacher()
    frames = _labelled_frames(teacher)
    result = fit_linear(teacher, frames, lambdas=[0.0])
    truth = build_basis(teacher).coefficients[:, 0]
    np.testing.assert_allclose(result.coefficients, truth, rtol=0, atol=1e-6 * np.abs(truth).max())
    assert result.reference_energies["Cu"] == pytest.approx(-0.25, abs=1e-6)


def test_streamed_assembly_equals_dense():
    from ace_uq_calc.fitting.assembly import assemble, row_norms, structure_rows
    from ace_uq_calc.fitting.weights import FitWeights
    from ace_uq_calc.model.basis import build_basis

    teacher = _teacher()
    basis = build_basis(teacher)
    frames = _labelled_frames(teacher, count=6)
    weights = FitWeights(1.0, 0.3, 0.2)
    norms = row_norms(frames, weights)
    streamed = assemble(basis, frames, weights, norms, {})
    rows, targets = zip(*(structure_rows(basis, a, weights, norms, {}) for a in frames))
    A = np.vstack(rows)
    b = np.concatenate(targets)
    np.testing.assert_allclose(streamed.ata, A.T @ A, rtol=1e-12, atol=1e-12 * np.abs(A.T @ A).max())
    np.testing.assert_allclose(streamed.atb, A.T @ b, rtol=1e-12, atol=1e-12 * np.abs(A.T @ b).max())
    coef = np.linalg.lstsq(A, b, rcond=None)[0]
    assert streamed.sse(coef) == pytest.approx(float(np.sum((A @ coef - b) ** 2)), rel=1e-6, abs=1e-12)


def test_saved_potential_reloads_bit_identical(tmp_path):
    from ace_uq_calc import ACECalculator
    from ace_uq_calc.fitting.linear_fit import fit_linear
    from ace_uq_calc.model.yaml_format import read_potential_file, write_potential_file

    teacher = _teacher()
    frames = _labelled_frames(teacher, count=12)
    result = fit_linear(teacher, frames)
    path = tmp_path / "fitted.yaml"
    write_potential_file(result.potential, path)
    again = tmp_path / "again.yaml"
    write_potential_file(read_potential_file(path), again)
    assert path.read_text() == again.read_text()
    atoms = frames[0].copy()
    atoms.calc = ACECalculator(result.potential)
    e1, f1 = atoms.get_potential_energy(), atoms.get_forces().copy()
    atoms.calc = ACECalculator(str(path))
    assert atoms.get_potential_energy() == e1
    assert np.array_equal(atoms.get_forces(), f1)
    # the reference energy is added by default and can be switched off
    atoms.calc = ACECalculator(str(path), reference_energies=False)
    assert atoms.get_potential_energy() == pytest.approx(e1 - len(atoms) * result.reference_energies["Cu"],
                                                         abs=1e-9)


def test_cli_fit_and_eval(tmp_path, capsys):
    from ace_uq_calc.cli import main

    train = _training_file(tmp_path, 12)
    out = tmp_path / "pot.yaml"
    assert main(["fit", str(train), "--test", str(train), "-o", str(out), "--functions", "60",
                 "--cutoff", "4.5", "--quiet", "--active-set", str(tmp_path / "pot.asi")]) == 0
    text = capsys.readouterr().out
    assert "training set" in text and "test set" in text
    assert main(["eval", str(out), str(train)]) == 0
    assert (tmp_path / "pot.asi").exists()


def test_basis_options_of_fit_reach_the_potential():
    """Per-rank limits, maximal body order and radial basis given to fit() shape the fitted file."""
    from ace_uq_calc.fitting.basis_construction import BasisLimits
    from ace_uq_calc.fitting.recipe import fit

    frames = _labelled_frames(_teacher(), count=8)
    result = fit(frames, cutoff=4.5, limits=BasisLimits((6, 3, 2), (0, 2, 1)), max_body_order=3,
                 radial_basis="ChebExpCos", workers=1)
    specs = result.potential.functions["Cu"]
    assert max(s.rank for s in specs) == 2                     # body order 3: ranks 1 and 2 only
    assert max(max(s.nr) for s in specs if s.rank == 1) == 6
    assert max(max(s.nr) for s in specs if s.rank == 2) <= 3
    assert max(max(s.nl) for s in specs if s.rank == 2) <= 2
    assert {b.radbase for b in result.potential.bonds.values()} == {"ChebExpCos"}
    assert result.potential.metadata["radial_basis"] == "ChebExpCos"
    # without limits the size ladder is truncated to the requested body order as well
    small = fit(frames, cutoff=4.5, functions=40, max_body_order=2, workers=1)
    assert {s.rank for s in small.potential.functions["Cu"]} == {1}


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_body_order=6), "body order"),
    (dict(max_body_order=1), "body order"),
    (dict(limits="BAD_LENGTH"), "one n and one l limit per rank"),
    (dict(limits="BAD_L1"), "first l limit must be 0"),
    (dict(limits="BAD_N"), "n >= 1"),
    (dict(radial_basis="Gaussian"), "unknown radial basis"),
])
def test_bad_basis_options_are_refused_by_name(kwargs, message):
    from ace_uq_calc.fitting.basis_construction import BasisLimits
    from ace_uq_calc.fitting.recipe import fit

    bad = {"BAD_LENGTH": BasisLimits((6, 3), (0, 2, 1)), "BAD_L1": BasisLimits((6, 3), (1, 2)),
           "BAD_N": BasisLimits((6, 0), (0, 2))}
    if isinstance(kwargs.get("limits"), str):
        kwargs = dict(kwargs, limits=bad[kwargs["limits"]])
    frames = _labelled_frames(_teacher(), count=2)
    with pytest.raises(ValueError, match=message):
        fit(frames, cutoff=4.5, workers=1, **kwargs)


def test_cli_fit_basis_flags(tmp_path, capsys):
    from ace_uq_calc.cli import main
    from ace_uq_calc.model.yaml_format import read_potential_file

    train = _training_file(tmp_path, 8)
    out = tmp_path / "pot.yaml"
    assert main(["fit", str(train), "-o", str(out), "--cutoff", "4.5", "--quiet", "--nmax", "5,3,2",
                 "--lmax", "0,2,1", "--radial-basis", "ChebPow"]) == 0
    pot = read_potential_file(out)
    assert max(s.rank for s in pot.functions["Cu"]) == 3
    assert {b.radbase for b in pot.bonds.values()} == {"ChebPow"}
    with pytest.raises(SystemExit, match="--nmax and --lmax go together"):
        main(["fit", str(train), "-o", str(out), "--nmax", "5,3"])
    with pytest.raises(SystemExit, match="comma-separated integers"):
        main(["fit", str(train), "-o", str(out), "--nmax", "5,x", "--lmax", "0,1"])


def _ternary_teacher(seed=2):
    """A random linear Al-Cu-Ni potential: every bond type and mixed-element functions up to rank 3."""
    from ace_uq_calc.fitting.basis_construction import (
        BasisLimits,
        new_potential,
        prune_dependent_functions,
    )

    pot = new_potential(["Al", "Cu", "Ni"], BasisLimits((4, 2, 1), (0, 1, 1)), rcut=4.5)
    pot = prune_dependent_functions(pot, count=300)
    rng = np.random.default_rng(seed)
    for el in pot.elements:
        for spec in pot.functions[el]:
            spec.coefficients = rng.normal(scale=0.05, size=1) / (1 + spec.rank)
    return pot


def test_fit_recovers_a_three_element_potential():
    """Three elements (all nine bonds, functions with three different neighbour elements): the fit of
    data labelled by a known linear ACE returns its coefficients and per-element reference energies."""
    from ace_uq_calc import ACECalculator
    from ace_uq_calc.fitting.linear_fit import fit_linear
    from ace_uq_calc.model.basis import build_basis

    teacher = _ternary_teacher()
    assert any(len(set(s.neighbours)) == 3 for s in teacher.functions["Al"])
    e0 = {"Al": -0.3, "Cu": -0.2, "Ni": -0.45}
    calc = ACECalculator(teacher)
    rng = np.random.default_rng(3)
    frames = []
    for k in range(40):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.3 * rng.random(), cubic=True).repeat((2, 1, 1))
        atoms.set_chemical_symbols(rng.choice(["Al", "Cu", "Ni"], size=len(atoms)).tolist())
        atoms.rattle(0.2, seed=int(rng.integers(1 << 30)))
        atoms.calc = calc
        energy = atoms.get_potential_energy() + sum(e0[s] for s in atoms.get_chemical_symbols())
        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(labelled, energy=energy, forces=atoms.get_forces(),
                                              stress=atoms.get_stress())
        frames.append(labelled)
    result = fit_linear(teacher, frames, lambdas=[0.0], workers=1)
    basis = build_basis(teacher)
    truth = basis.coefficients[:, 0]
    tol = 1e-6 * np.abs(truth).max()
    # pair (rank-1) functions a-b and b-a of different elements see the same distances with the same
    # radial functions: only their sum is determined by any data. Everything else is recovered as is.
    central = np.repeat(np.arange(basis.n_elements), np.diff(basis.function_start))
    rank1 = basis.function_rank == 1
    neighbour = np.where(rank1, basis.function_a1_index // basis.nradbase, -1)
    radial = np.where(rank1, basis.function_a1_index % basis.nradbase, -1)
    cross = rank1 & (neighbour != central)
    np.testing.assert_allclose(result.coefficients[~cross], truth[~cross], rtol=0, atol=tol)
    pairs = 0
    for f in np.nonzero(cross & (central < neighbour))[0]:
        g = np.nonzero(cross & (central == neighbour[f]) & (neighbour == central[f]) & (radial == radial[f]))[0]
        assert len(g) == 1
        assert result.coefficients[f] + result.coefficients[g[0]] == pytest.approx(truth[f] + truth[g[0]], abs=tol)
        pairs += 1
    assert pairs == 3 * basis.nradbase
    # so the fitted potential is the teacher: same forces on a structure not in the data
    atoms = bulk("Ni", "fcc", a=3.7, cubic=True).repeat((1, 2, 1))
    atoms.set_chemical_symbols(["Al", "Cu", "Ni", "Ni", "Cu", "Al", "Al", "Ni"])
    atoms.rattle(0.15, seed=11)
    atoms.calc = calc
    f_teacher = atoms.get_forces().copy()
    atoms.calc = ACECalculator(result.potential)
    np.testing.assert_allclose(atoms.get_forces(), f_teacher, rtol=0, atol=1e-7 * np.abs(f_teacher).max())
    for el, value in e0.items():
        assert result.reference_energies[el] == pytest.approx(value, abs=1e-6)
