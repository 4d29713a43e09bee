"""Linear fitting: recovery of a known linear ACE, streamed vs dense assembly, file round trip."""
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator


def _teacher(seed=0):
    """A small random linear Cu potential (the 'truth' of the synthetic data)."""
    from ace_uq_calc.fitting.basis_construction import BasisLimits, new_potential, prune_dependent_functions

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


def test_fit_recovers_known_coefficients():
    from ace_uq_calc.fitting.linear_fit import fit_linear
    from ace_uq_calc.potential.basis import build_basis

    teacher = _teacher()
    frames = _labelled_frames(teacher)
    result = fit_linear(teacher, frames, lambdas=[0.0])
    truth = build_basis(teacher).coefficients[:, 0]
    np.testing.assert_allclose(result.coefficients, truth, rtol=0, atol=1e-6 * np.abs(truth).max())
    assert result.reference_energies["Cu"] == pytest.approx(-0.25, abs=1e-6)


def test_streamed_assembly_equals_dense():
    from ace_uq_calc.fitting.linear_fit import FitWeights, _norms, assemble, structure_rows
    from ace_uq_calc.potential.basis import build_basis

    teacher = _teacher()
    basis = build_basis(teacher)
    frames = _labelled_frames(teacher, count=6)
    weights = FitWeights(1.0, 0.3, 0.2)
    norms = _norms(frames, weights)
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
    from ace_uq_calc.potential.yaml_format import read_potential_file, write_potential_file

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
    import ase.io

    from ace_uq_calc.cli import main

    frames = _labelled_frames(_teacher(), count=12)
    train = tmp_path / "train.xyz"
    ase.io.write(train, frames)
    out = tmp_path / "pot.yaml"
    assert main(["fit", str(train), "--test", str(train), "-o", str(out), "--functions", "60",
                 "--cutoff", "4.5", "--quiet", "--active-set", str(tmp_path / "pot.asi")]) == 0
    text = capsys.readouterr().out
    assert "training set" in text and "test set" in text
    assert main(["eval", str(out), str(train)]) == 0
    assert (tmp_path / "pot.asi").exists()
