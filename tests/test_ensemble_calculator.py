"""Ensembles of ACE potentials: shared-basis kernel, ensemble calculator, ensemble fits and files.

References: single-model evaluations of each member (the single-model kernel is checked against
pacemaker's numbers and finite differences elsewhere), NumPy means / standard deviations of those,
and synthetic data from a known linear potential.
"""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from conftest import FIXTURES, fixture_file, require_shared
from test_fitting import _labelled_frames, _teacher, _training_file

from ace_uq_calc import ACECalculator
from ace_uq_calc.engine.evaluate import evaluate, evaluate_shared
from ace_uq_calc.engine.model import Model, shared_basis_mismatch
from ace_uq_calc.engine.statistics import ENSEMBLE_PROPERTIES
from ace_uq_calc.model.basis import load_basis
from ace_uq_calc.model.ensemble_file import read_ensemble_file, write_ensemble_file

RESULT_KEYS = {"energy", "free_energy", "forces", "stress", "energies"} | set(ENSEMBLE_PROPERTIES)


def _members(basis, count, scale=0.05, seed=0):
    """Copies of ``basis`` with coefficients perturbed by a relative Gaussian factor (shared basis)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coef = basis.coefficients * (1.0 + scale * rng.standard_normal(basis.coefficients.shape))
        out.append(dataclasses.replace(basis, coefficients=np.ascontiguousarray(coef)))
    return out


def _copper(repeat=2, seed=3):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.08, seed=seed)
    return atoms


def _alni(seed=4):
    atoms = bulk("Al", "fcc", a=3.9, cubic=True).repeat((2, 2, 1))
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[::3] = "Ni"
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.rattle(0.1, seed=seed)
    return atoms


def _assert_close(actual, expected, rtol=1e-12):
    scale = max(np.abs(expected).max(), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def _species(basis, atoms):
    return basis.species_of(atoms.get_chemical_symbols())


def _compressed_tungsten(seed=6):
    """bcc W squeezed so that nearest neighbours (~2.05-2.15 A) sit inside W_defect's ZBL switching
    region (r_in 2.053 A, delta_in 0.1 A): the core / ZBL weights and their derivatives are exercised."""
    atoms = bulk("W", "bcc", a=2.45, cubic=True).repeat(2)
    atoms.rattle(0.04, seed=seed)
    return atoms


@pytest.mark.parametrize("case", ["Cu_fs500", "AlNi_fs", "linear", "W_defect"])
def test_each_member_equals_its_single_model_evaluation(case):
    if case == "linear":
        basis, atoms = load_basis(_teacher()), _copper(seed=5)
    elif case == "Cu_fs500":
        basis, atoms = load_basis(str(fixture_file("Cu_fs500.yaml"))), _copper()
    elif case == "W_defect":          # ZBL inner cut-off, 8 Finnis-Sinclair densities (read from ../shared only)
        basis = load_basis(str(require_shared(FIXTURES / "W_defect.yaml")))
        atoms = _compressed_tungsten()
        d = atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)]
        r_in, delta = basis.bond_r_in[0], basis.bond_delta_in[0]
        assert ((d > r_in - delta) & (d < r_in)).sum() >= 3   # pairs inside the switching region
    else:
        basis, atoms = load_basis(str(fixture_file("AlNi_fs.yaml"))), _alni()
    members = _members(basis, 3)
    stacked = np.stack([m.coefficients for m in members], axis=2)
    sp = _species(basis, atoms)
    shared = evaluate_shared(basis, stacked, atoms.positions, atoms.cell.array, atoms.pbc, sp, projections=True)
    energies, forces, virial, proj = shared.energies, shared.forces, shared.virial, shared.projections
    for k, member in enumerate(members):
        single = evaluate(member, atoms.positions, atoms.cell.array, atoms.pbc, sp, projections=True)
        _assert_close(energies[k], single.energies)
        _assert_close(forces[k], single.forces)
        _assert_close(virial[k], single.virial)
        assert np.array_equal(proj, single.projections)      # B values: same code, same order
    assert np.abs(forces[0] - forces[1]).max() > 1e-6        # the members really differ


def test_one_member_equals_the_single_model():
    basis = load_basis(str(fixture_file("Cu_fs500.yaml")))
    atoms = _copper()
    sp = _species(basis, atoms)
    one = evaluate_shared(basis, basis.coefficients[:, :, None], atoms.positions, atoms.cell.array, atoms.pbc, sp)
    single = evaluate(basis, atoms.positions, atoms.cell.array, atoms.pbc, sp)
    _assert_close(one.energies[0], single.energies)
    _assert_close(one.forces[0], single.forces)
    _assert_close(one.virial[0], single.virial)


def test_results_do_not_depend_on_the_number_of_threads():
    basis = load_basis(str(fixture_file("Cu_fs500.yaml")))
    atoms = _copper(repeat=3)
    stacked = np.stack([m.coefficients for m in _members(basis, 2)], axis=2)
    sp = _species(basis, atoms)
    one = evaluate_shared(basis, stacked, atoms.positions, atoms.cell.array, atoms.pbc, sp, num_threads=1)
    two = evaluate_shared(basis, stacked, atoms.positions, atoms.cell.array, atoms.pbc, sp, num_threads=2)
    for name in ("energies", "forces", "virial"):
        assert np.array_equal(getattr(one, name), getattr(two, name))


def test_equal_members_have_exactly_zero_spread():
    basis = load_basis(str(fixture_file("Cu_fs500.yaml")))
    atoms = _copper()
    calc = ACECalculator([basis, basis, basis])
    atoms.calc = calc
    single = ACECalculator(basis)
    reference = atoms.copy()
    reference.calc = single
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), rel=1e-13)
    _assert_close(atoms.get_forces(), reference.get_forces())
    assert calc.get_property("energy_std", atoms) == 0.0
    for key in ("energies_std", "forces_std", "stress_std", "forces_dev"):
        assert np.all(calc.get_property(key, atoms) == 0.0), key


def test_mean_of_two_members_is_the_average_of_the_single_models():
    basis = load_basis(str(fixture_file("AlNi_fs.yaml")))
    a, b = _members(basis, 2, scale=0.2, seed=7)
    atoms = _alni()
    singles = []
    for member in (a, b):
        work = atoms.copy()
        work.calc = ACECalculator(member)
        singles.append((work.get_potential_energy(), work.get_potential_energies(), work.get_forces(),
                        work.get_stress()))
    atoms.calc = calc = ACECalculator([a, b])
    e = [s[0] for s in singles]
    assert atoms.get_potential_energy() == pytest.approx(np.mean(e), rel=1e-12)
    assert calc.results["energy_std"] == pytest.approx(abs(e[0] - e[1]) / 2, rel=1e-9)
    _assert_close(atoms.get_potential_energies(), (singles[0][1] + singles[1][1]) / 2)
    _assert_close(calc.results["energies_std"], np.abs(singles[0][1] - singles[1][1]) / 2, rtol=1e-9)
    _assert_close(atoms.get_forces(), (singles[0][2] + singles[1][2]) / 2)
    _assert_close(atoms.get_stress(), (singles[0][3] + singles[1][3]) / 2)
    f = np.stack([singles[0][2], singles[1][2]])
    _assert_close(calc.results["forces_std"], f.std(axis=0), rtol=1e-9)
    # K = 2: both members are ||F_1 - F_2|| / 2 from the mean
    _assert_close(calc.results["forces_dev"], np.linalg.norm(f[0] - f[1], axis=1) / 2, rtol=1e-9)
    _assert_close(calc.results["stress_std"], np.abs(singles[0][3] - singles[1][3]) / 2, rtol=1e-9)


def test_slow_path_equals_fast_path_and_mixed_bases_work():
    basis = load_basis(str(fixture_file("Cu_fs500.yaml")))
    members = _members(basis, 3)
    atoms = _copper()
    sp = _species(basis, atoms)
    fast = Model(members)
    slow = Model(members, fast=False)
    assert fast.shared and fast.groups == [[0, 1, 2]]
    r_fast = fast.evaluate(atoms.positions, atoms.cell.array, atoms.pbc, sp)
    r_slow = slow.evaluate(atoms.positions, atoms.cell.array, atoms.pbc, sp)
    _assert_close(r_fast.energies, r_slow.energies)
    _assert_close(r_fast.forces, r_slow.forces)
    _assert_close(r_fast.virial, r_slow.virial)
    # a member with another basis (different functions and cut-off): two groups, same numbers as singles
    other = load_basis(_teacher())
    assert shared_basis_mismatch(basis, other) is not None
    mixed = Model([members[0], other, members[1]])
    assert mixed.groups == [[0, 2], [1]] and not mixed.shared
    r_mixed = mixed.evaluate(atoms.positions, atoms.cell.array, atoms.pbc, sp)
    for k, member in enumerate([members[0], other, members[1]]):
        single = evaluate(member, atoms.positions, atoms.cell.array, atoms.pbc, sp)
        _assert_close(r_mixed.energies[k], single.energies)
        _assert_close(r_mixed.forces[k], single.forces)


def test_shared_basis_mismatch_names_the_difference():
    basis = load_basis(str(fixture_file("Cu_fs500.yaml")))
    assert shared_basis_mismatch(basis, _members(basis, 1)[0]) is None
    table = basis.radial_tables.copy()
    table[0, 5, 0, 0] += 1e-12
    assert shared_basis_mismatch(basis, dataclasses.replace(basis, radial_tables=table)) == "radial_tables"
    weight = basis.embedding_weight.copy()
    weight[0, 0] *= 2
    assert shared_basis_mismatch(basis, dataclasses.replace(basis, embedding_weight=weight)) == "embedding_weight"


def test_implemented_properties_cover_every_result_and_single_models_keep_working():
    basis = load_basis(str(fixture_file("Cu_fs500.yaml")))
    atoms = _copper()
    calc = ACECalculator(_members(basis, 2))
    atoms.calc = calc
    atoms.get_forces()
    assert set(calc.results) >= RESULT_KEYS
    for key in calc.results:
        if key != "ensemble_energies":
            assert key in calc.implemented_properties, key
    for key in RESULT_KEYS:
        calc.get_property(key, atoms)
    single = ACECalculator(basis)
    atoms.calc = single
    atoms.get_forces()
    atoms.get_stress()
    assert set(single.results) <= set(single.implemented_properties)
    with pytest.raises(PropertyNotImplementedError):
        single.get_property("forces_dev", atoms)
    with pytest.raises(PropertyNotImplementedError, match="need an ensemble"):
        single.calculate(atoms, ["forces_std"])


def test_reference_energies_are_per_member(tmp_path):
    from ace_uq_calc.model.yaml_format import (
        REFERENCE_ENERGY_KEY,
        read_potential_file,
        write_potential_file,
    )

    pot = read_potential_file(fixture_file("Cu_fs500.yaml"))
    paths = []
    for k, e0 in enumerate((-1.0, -3.0)):
        pot.metadata = dict(pot.metadata or {}, **{REFERENCE_ENERGY_KEY + "Cu": repr(e0)})
        path = tmp_path / f"m{k}.yaml"
        write_potential_file(pot, path)
        paths.append(str(path))
    atoms = _copper()
    atoms.calc = calc = ACECalculator(paths)
    energy = atoms.get_potential_energy()
    atoms.calc = ACECalculator(paths[0], reference_energies=False)
    bare = atoms.get_potential_energy()
    assert energy == pytest.approx(bare - 2.0 * len(atoms), rel=1e-12)
    assert calc.results["energy_std"] == pytest.approx(len(atoms), rel=1e-12)
    assert np.all(calc.results["forces_std"] == 0.0)


def test_gamma_of_an_ensemble_is_that_of_the_first_member():
    basis = load_basis(str(fixture_file("AlNi_fs.yaml")))
    members = _members(basis, 2)
    atoms = _alni()
    for asi in ("AlNi_fs.asi", "AlNi_fs_nonlinear.asi"):
        atoms.calc = calc = ACECalculator(members, active_set=str(fixture_file(asi)))
        atoms.get_forces()
        gamma = calc.results["gamma"]
        single = atoms.copy()
        single.calc = ACECalculator(members[0], active_set=str(fixture_file(asi)))
        single.get_forces()
        _assert_close(gamma, single.calc.results["gamma"])


def test_ensemble_file_round_trip(tmp_path):
    fixture = fixture_file("Cu_fs500.yaml")
    ensemble = tmp_path / "ens.yaml"
    write_ensemble_file(ensemble, [fixture, fixture])
    assert [Path(p).resolve() for p in read_ensemble_file(ensemble)] == [Path(fixture).resolve()] * 2
    atoms = _copper()
    atoms.calc = calc = ACECalculator(str(ensemble))
    assert calc.ensemble.size == 2 and calc.ensemble.shared
    energy = atoms.get_potential_energy()
    atoms.calc = ACECalculator(str(fixture))
    assert energy == atoms.get_potential_energy()
    bad = tmp_path / "bad.yaml"
    bad.write_text("ace_uq_ensemble: []\n")
    with pytest.raises(ValueError, match="non-empty list"):
        ACECalculator(str(bad))


def test_members_must_know_the_same_elements():
    with pytest.raises(ValueError, match="elements"):
        ACECalculator([str(fixture_file("Cu_fs500.yaml")), str(fixture_file("AlNi_fs.yaml"))])


@pytest.mark.parametrize("method", ["posterior", "bootstrap"])
def test_ensemble_members_scatter_around_the_truth_of_noise_free_data(method):
    """Noise-free labels of a known linear potential: every member (posterior sample or bootstrap refit)
    recovers the truth closely, and the members differ from each other only a little."""
    from ace_uq_calc.fitting.ensemble_fit import ensemble_potentials
    from ace_uq_calc.fitting.linear_fit import fit_linear
    from ace_uq_calc.fitting.weights import FitWeights
    from ace_uq_calc.model.basis import build_basis

    teacher = _teacher()
    truth = build_basis(teacher).coefficients[:, 0]
    frames = _labelled_frames(teacher, count=24)
    weights = FitWeights()
    result = fit_linear(teacher, frames, weights=weights, lambdas=[1e-12])
    basis = build_basis(result.potential)
    members = ensemble_potentials(basis, result, method, 4, frames=frames, weights=weights, seed=1)
    coefs = np.array([build_basis(m).coefficients[:, 0] for m in members])
    np.testing.assert_allclose(coefs, np.broadcast_to(truth, coefs.shape), rtol=0, atol=1e-3 * np.abs(truth).max())
    for m in members:
        assert float(m.metadata["reference_energy_Cu"]) == pytest.approx(-0.25, abs=1e-4)


@pytest.mark.parametrize("method", ["posterior", "bootstrap"])
def test_members_spread_with_noisy_labels(method):
    from ace_uq_calc.fitting.ensemble_fit import ensemble_potentials
    from ace_uq_calc.fitting.linear_fit import fit_linear
    from ace_uq_calc.fitting.weights import FitWeights
    from ace_uq_calc.model.basis import build_basis

    teacher = _teacher()
    frames = _labelled_frames(teacher, count=24)
    rng = np.random.default_rng(3)
    for atoms in frames:
        atoms.calc.results["forces"] = atoms.calc.results["forces"] + 0.05 * rng.standard_normal((len(atoms), 3))
    weights = FitWeights()
    result = fit_linear(teacher, frames, weights=weights)
    basis = build_basis(result.potential)
    members = ensemble_potentials(basis, result, method, 6, frames=frames, weights=weights, seed=2)
    coefs = np.array([build_basis(m).coefficients[:, 0] for m in members])
    assert np.all(coefs.std(axis=0) > 0)
    # the members scatter around the ridge solution by about its standard error, not by orders more
    assert np.abs(coefs.mean(axis=0) - result.coefficients).max() < 5 * coefs.std(axis=0).max()
    if method == "posterior":
        # antithetic pairs: the members' mean is the fit; the widening factor is recorded in each member
        np.testing.assert_allclose(coefs.mean(axis=0), result.coefficients, rtol=0,
                                   atol=1e-10 * np.abs(result.coefficients).max())
        assert result.posterior_scale > 1.0
        assert all(float(m.metadata["posterior_scale"]) == result.posterior_scale for m in members)


def test_cli_fit_with_ensemble_writes_members_that_reload_bit_identically(tmp_path, capsys):
    import ase.io

    from ace_uq_calc.cli import main
    from ace_uq_calc.model.yaml_format import read_potential_file, write_potential_file

    train = _training_file(tmp_path, 12)
    out = tmp_path / "pot.yaml"
    assert main(["fit", str(train), "-o", str(out), "--functions", "60", "--cutoff", "4.5", "--quiet",
                 "--ensemble", "3", "--test", str(train)]) == 0
    text = capsys.readouterr().out
    assert "ensemble mean" in text and "forces_dev" in text
    members = sorted((tmp_path / "pot.ensemble").glob("member_*.yaml"))
    assert [p.name for p in members] == ["member_00.yaml", "member_01.yaml", "member_02.yaml"]
    ensemble_file = tmp_path / "pot.ensemble" / "ensemble.yaml"
    assert [Path(p).resolve() for p in read_ensemble_file(ensemble_file)] == [p.resolve() for p in members]
    bases = []
    for path in members:
        again = tmp_path / "again.yaml"
        write_potential_file(read_potential_file(path), again)
        assert again.read_text() == path.read_text()
        bases.append(load_basis(str(path)))
    assert all(shared_basis_mismatch(bases[0], b) is None for b in bases[1:])
    assert not np.array_equal(bases[0].coefficients, bases[1].coefficients)
    # the ensemble calculator from the file equals the members evaluated one by one
    first = ase.io.read(train, index=0)
    atoms = first.copy()
    atoms.calc = calc = ACECalculator(str(ensemble_file))
    assert calc.ensemble.shared
    forces = atoms.get_forces()
    single = []
    for path in members:
        work = first.copy()
        work.calc = ACECalculator(str(path))
        single.append(work.get_forces())
    _assert_close(forces, np.mean(single, axis=0))
    assert main(["eval", str(ensemble_file), str(train)]) == 0
    text = capsys.readouterr().out
    assert "ensemble of 3" in text and "forces_dev" in text
    assert main(["eval", *map(str, members), str(train)]) == 0
    assert "ensemble of 3" in capsys.readouterr().out


def test_posterior_members_without_validation_split_warn_and_stay_unwidened():
    from ace_uq_calc.fitting.ensemble_fit import ensemble_potentials
    from ace_uq_calc.fitting.linear_fit import fit_linear
    from ace_uq_calc.model.basis import build_basis

    teacher = _teacher()
    result = fit_linear(teacher, _labelled_frames(teacher, count=6))        # < 10 structures: no split
    assert result.n_validation == 0 and result.posterior_scale == 1.0
    with pytest.warns(RuntimeWarning, match="no validation split"):
        ensemble_potentials(build_basis(result.potential), result, "posterior", 2)
