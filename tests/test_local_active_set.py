"""Local (clustering-enhanced) D-optimality: building, grading kernel, file, calculator, CLI."""
import json
import warnings

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from conftest import TEST_DATA, fixture_file

from ace_uq_calc import ACECalculator
from ace_uq_calc.cli import main
from ace_uq_calc.demo import example_files
from ace_uq_calc.model.basis import load_basis
from ace_uq_calc.uncertainty.active_set import (
    AceUqWarning,
    build_active_set_from_projections,
)
from ace_uq_calc.uncertainty.local_active_set import LocalActiveSet
from ace_uq_calc.uncertainty.local_build import (
    build_cluster_set,
    build_local_active_set,
    build_local_active_set_from_projections,
    cluster_operator,
    min_grade_over_models,
    training_projections,
)

TOLERANCE = 1.001


@pytest.fixture(scope="module")
def potential():
    return example_files()[0]            # bundled linear Cu model, 142 functions


def cu_frames(count, amplitude, seed, size=2, label=None, vacancy=False):
    frames = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(size)
        if vacancy:
            del atoms[0]
        atoms.rattle(amplitude * (1 + 0.3 * k), seed=seed + k)
        if label is not None:
            atoms.info["config_type"] = label
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def training():
    # 10 x 32 bulk atoms + 4 x 31 vacancy atoms + 1 x 4 atoms of a small label (fewer atoms than functions)
    small = bulk("Cu", "fcc", a=3.61, cubic=True)
    small.rattle(0.05, seed=99)
    small.info["config_type"] = "tiny"
    return (cu_frames(10, 0.04, 0, label="bulk") + cu_frames(4, 0.06, 50, label="vacancy", vacancy=True)
            + [small])


@pytest.fixture(scope="module")
def projections(potential, training):
    x, labels = training_projections(potential, training, cluster_by="config_type")
    return x["Cu"], labels["Cu"]


@pytest.fixture(scope="module")
def local_kmeans(projections):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AceUqWarning)
        return build_local_active_set_from_projections({"Cu": projections[0]}, n_clusters=3, seed=0)


@pytest.fixture(scope="module")
def local_labels(projections):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AceUqWarning)
        return build_local_active_set_from_projections({"Cu": projections[0]}, {"Cu": projections[1]})


@pytest.fixture(scope="module")
def novel(potential):
    """Projections of strongly rattled and compressed structures (outside the training clusters)."""
    frames = cu_frames(2, 0.25, 500)
    squeezed = bulk("Cu", "fcc", a=3.3, cubic=True).repeat(2)
    squeezed.rattle(0.1, seed=7)
    x, _ = training_projections(potential, frames + [squeezed])
    return x["Cu"]


def numpy_grades(cs, x):
    """Reference: every cluster graded from its stored arrays; the off-subspace distance from a
    least-squares fit on the active rows (independent of the stored pseudo-inverse)."""
    grades = np.empty((len(x), cs.n_clusters))
    for c in range(cs.n_clusters):
        asi = cs.inverse[:, cs.column_offsets[c]:cs.column_offsets[c + 1]]
        g = np.abs(x @ asi).max(axis=1)
        if cs.distance_scale[c] > 0:
            a = cs.active_rows[cs.row_offsets[c]:cs.row_offsets[c + 1]]
            coefficients = np.linalg.lstsq(a.T, x.T, rcond=None)[0]
            distance = np.linalg.norm(x.T - a.T @ coefficients, axis=0)
            g = np.maximum(g, distance / cs.distance_scale[c])
        grades[:, c] = g / cs.calibration[c]
    return grades


@pytest.mark.parametrize("which", ["local_kmeans", "local_labels"])
def test_training_atoms_of_every_cluster_are_within_tolerance(which, request, projections):
    local = request.getfixturevalue(which)
    x = projections[0]
    gamma, cluster = local.grades("Cu", x)
    assert np.all(gamma <= TOLERANCE + 1e-9)
    assert np.all(np.isfinite(gamma)) and np.all(cluster >= 0)
    # and each atom is within tolerance of its OWN cluster too (not only of some other one)
    cs = local.clusters["Cu"]
    per_cluster = numpy_grades(cs, x)
    if which == "local_labels":
        own = np.searchsorted(cs.labels, projections[1])
        assert np.all(per_cluster[np.arange(len(x)), own] <= TOLERANCE + 1e-9)


@pytest.mark.parametrize("which", ["local_kmeans", "local_labels"])
def test_kernel_agrees_with_numpy_reference_and_cluster_is_the_argmin(which, request, projections, novel):
    local = request.getfixturevalue(which)
    cs = local.clusters["Cu"]
    x = np.concatenate([projections[0], novel, np.zeros((1, cs.width))])
    gamma, cluster = local.grades("Cu", x)
    reference = numpy_grades(cs, x)
    np.testing.assert_allclose(gamma, reference.min(axis=1), rtol=1e-9, atol=1e-12)
    # gamma_cluster attains the minimum
    np.testing.assert_allclose(reference[np.arange(len(x)), cluster], reference.min(axis=1), rtol=1e-9, atol=1e-12)
    assert gamma[-1] == 0.0          # an atom without neighbours has a zero projection: gamma 0 exactly
    assert gamma[len(projections[0]):-1].max() > 1.5     # the novel structures are extrapolative


def test_single_full_rank_cluster_is_a_valid_global_active_set(projections, novel):
    """One full-rank cluster is an ordinary (global) active set: its grade is max_j |(x A^-1)_j| for its
    active rows A (independent numpy), every training row is within the tolerance, and it and the global
    active set of the same data dominate each other within the tolerance (both are MaxVol solutions)."""
    x = projections[0]
    local = build_local_active_set_from_projections({"Cu": x}, n_clusters=1)
    cs = local.clusters["Cu"]
    assert cs.distance_scale[0] == 0       # full rank
    active_rows = np.linalg.inv(cs.inverse)
    for rows in (x, novel):
        gamma, cluster = local.grades("Cu", rows)
        np.testing.assert_allclose(gamma, np.abs(rows @ np.linalg.inv(active_rows)).max(axis=1), rtol=1e-8)
        assert np.all(cluster == 0)
    assert local.grades("Cu", x)[0].max() <= 1.001 + 1e-9
    global_set = build_active_set_from_projections({"Cu": x})
    assert global_set.grades("Cu", x).max() <= 1.001 + 1e-9
    assert global_set.grades("Cu", active_rows).max() <= 1.001 + 1e-6
    assert local.grades("Cu", global_set.active_projections["Cu"])[0].max() <= 1.001 + 1e-6


def test_small_cluster_gives_positive_finite_grades_off_its_subspace(local_labels, projections, novel):
    cs = local_labels.clusters["Cu"]
    tiny = int(np.flatnonzero(cs.labels == "tiny")[0])
    assert cs.n_train[tiny] == 4 < cs.width and cs.distance_scale[tiny] > 0 and cs.rank[tiny] <= 4
    x_tiny = projections[0][projections[1] == "tiny"]
    others = np.concatenate([projections[0][projections[1] != "tiny"], novel])
    own = numpy_grades(cs, x_tiny)[:, tiny]
    off = numpy_grades(cs, others)[:, tiny]
    assert np.all(own <= TOLERANCE + 1e-9)
    assert np.all(np.isfinite(off)) and off.min() > 1.0       # never a silent 0 for other environments


def test_rank_deficient_cluster_operator_is_never_zero_off_subspace():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 10))
    rows = rng.normal(size=(40, 3)) @ basis                   # 40 rows spanning 3 of 10 dimensions
    op = cluster_operator(rows)
    assert op["rank"] == 3 and op["distance_scale"] > 0
    direction = np.linalg.svd(basis)[2][-1]                  # orthogonal to the spanned subspace
    probe = np.stack([direction, rows[0] + 0.5 * direction])
    coefficients = probe @ op["inverse"]
    distance = np.linalg.norm(probe - coefficients @ op["active_rows"], axis=1) / op["distance_scale"]
    np.testing.assert_allclose(distance[0], 1.0 / op["distance_scale"], rtol=1e-10)
    assert np.all(np.maximum(np.abs(coefficients).max(1), distance) > 0)


def test_one_label_is_an_error(projections):
    x = projections[0]
    with pytest.raises(ValueError, match="only one distinct label"):
        build_cluster_set(x, labels=np.full(len(x), "bulk"))


def test_invariances_rotation_permutation_translation(potential, local_labels):
    atoms = cu_frames(1, 0.15, 321)[0]
    calc = ACECalculator(potential, local_active_set=local_labels)
    atoms.calc = calc
    atoms.get_potential_energy()
    gamma = calc.results["gamma_local"].copy()
    cluster = calc.results["gamma_cluster"].copy()
    moved = atoms.copy()
    moved.rotate(37, (1, 2, 3), rotate_cell=True)
    moved.translate((0.3, -1.1, 2.0))
    order = np.random.default_rng(3).permutation(len(moved))
    moved = moved[order]
    moved.calc = calc
    moved.get_potential_energy()
    np.testing.assert_allclose(calc.results["gamma_local"], gamma[order], rtol=1e-8)
    np.testing.assert_array_equal(calc.results["gamma_cluster"], cluster[order])


def test_save_load_round_trip_is_bit_identical(local_kmeans, tmp_path, novel):
    path = tmp_path / "cu.lasi"
    local_kmeans.save(path)
    loaded = LocalActiveSet.load(path)
    for name, value in vars(local_kmeans.clusters["Cu"]).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(loaded.clusters["Cu"], name), value, err_msg=name)
            assert getattr(loaded.clusters["Cu"], name).dtype == value.dtype
    assert loaded.nonlinear == local_kmeans.nonlinear and loaded.tolerance == local_kmeans.tolerance
    for a, b in zip(loaded.grades("Cu", novel), local_kmeans.grades("Cu", novel)):
        np.testing.assert_array_equal(a, b)
    with np.load(path, allow_pickle=False) as archive:      # plain arrays, no pickled objects
        assert "Cu.inverse" in archive.files and str(archive["format"]) == "ace_uq_calc.local_active_set"


def test_wrong_files_and_potentials_give_clear_errors(local_kmeans, tmp_path, potential):
    path = tmp_path / "cu.lasi"
    local_kmeans.save(path)
    with pytest.raises(ValueError, match="width 142, the potential needs 500"):
        ACECalculator(fixture_file("Cu_fs500.yaml"), local_active_set=str(path))
    with pytest.raises(ValueError, match="not a local active set"):
        LocalActiveSet.load(example_files()[1])               # a global .asi file
    (tmp_path / "junk.lasi").write_text("not an archive")
    with pytest.raises(ValueError, match="not a local active set"):
        LocalActiveSet.load(tmp_path / "junk.lasi")


def test_calculator_shares_one_descriptor_pass(potential, local_labels, monkeypatch):
    import ace_uq_calc.engine.model as engine_model

    calls = []
    original = engine_model.evaluate

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_model, "evaluate", counting)
    pot, asi = example_files()
    calc = ACECalculator(pot, active_set=asi, local_active_set=local_labels)
    atoms = cu_frames(1, 0.1, 11)[0]
    atoms.calc = calc
    atoms.get_potential_energy()
    assert len(calls) == 1
    for key in ("gamma", "gamma_local", "gamma_cluster", "max_gamma_local"):
        assert key in calc.results and key in calc.implemented_properties
    assert calc.results["gamma_local"].shape == (32,) and calc.results["gamma_cluster"].dtype == np.int64
    assert calc.results["max_gamma_local"] == calc.results["gamma_local"].max()
    plain = ACECalculator(pot)
    with pytest.raises(Exception, match="local active set"):
        plain.get_property("gamma_local", atoms)


def test_fs_potential_linear_and_nonlinear_local_sets():
    pot = TEST_DATA / "AlNi_fs.yaml"
    frames = []
    for k in range(3):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat(2)
        atoms.symbols[::3] = "Ni"
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    basis = load_basis(pot)
    for nonlinear in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AceUqWarning)
            local = build_local_active_set(pot, frames, n_clusters=2, nonlinear=nonlinear)
        calc = ACECalculator(pot, local_active_set=local)
        for atoms in frames:
            atoms.calc = calc
            atoms.get_potential_energy()
            assert np.all(calc.results["gamma_local"] <= TOLERANCE + 1e-9)
        width = local.clusters["Al"].width
        assert width == basis.nfunc["Al"] * (int(basis.ndensity[0]) if nonlinear else 1)


def test_min_grade_over_models_is_the_minimum_of_the_models(potential, training):
    from ace_uq_calc.uncertainty.build import build_active_set

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AceUqWarning)
        first = build_active_set(potential, training[:10])
        second = build_active_set(potential, training[10:14] + cu_frames(2, 0.2, 900))
    atoms = cu_frames(1, 0.12, 77)[0]
    expected = []
    for active in (first, second):
        calc = ACECalculator(potential, active_set=active)
        atoms.calc = calc
        atoms.get_potential_energy()
        expected.append(calc.results["gamma"].copy())
    gamma, model = min_grade_over_models([(potential, first), (potential, second)], atoms)
    np.testing.assert_allclose(gamma, np.minimum(*expected), rtol=1e-6)   # BLAS vs kernel summation order
    np.testing.assert_array_equal(model, np.argmin(np.stack(expected), axis=0))


def test_cli_local_activeset_evaluate_and_md(potential, training, tmp_path, capsys):
    train = tmp_path / "train.xyz"
    ase.io.write(train, training)
    out = tmp_path / "cu.lasi"
    assert main(["activeset", potential, str(train), "--local", "--clusters", "2", "-o", str(out)]) == 0
    assert "2 clusters" in capsys.readouterr().out
    # one label only: a clear error, no file
    single = tmp_path / "single.xyz"
    ase.io.write(single, training[:3])
    assert main(["activeset", potential, str(single), "--local", "--cluster-by", "config_type",
                 "-o", str(tmp_path / "x.lasi")]) == 2
    assert "only one distinct label" in capsys.readouterr().err and not (tmp_path / "x.lasi").exists()
    # evaluate writes gamma_local per atom
    result = tmp_path / "eval.xyz"
    assert main(["evaluate", potential, str(train), "--local-active-set", str(out), "-o", str(result)]) == 0
    frames = ase.io.read(result, ":")
    assert frames[0].arrays["gamma_local"].max() <= TOLERANCE + 1e-9
    # md watched by the gamma_local monitor end to end
    start = tmp_path / "start.xyz"
    ase.io.write(start, training[0])
    md = tmp_path / "md"
    assert main(["md", potential, "--local-active-set", str(out), "--measure", "gamma_local", "--structure",
                 str(start), "--temperature", "300", "--steps", "4", "--timestep", "2", "-o", str(md)]) == 0
    with open(md / "summary.json") as handle:
        summary = json.load(handle)
    assert summary["steps_run"] == 4 and summary["max_measure"] > 0


def test_ensemble_calculator_grades_with_the_local_set_of_its_shared_basis(potential, local_labels):
    """Members sharing one basis have identical projections: an ensemble calculator's gamma_local and
    gamma_cluster equal those of a single-model calculator of its first member."""
    from ace_uq_calc.model.yaml_format import read_potential_file

    first = read_potential_file(potential)
    second = read_potential_file(potential)
    for specs in second.functions.values():
        for spec in specs:
            spec.coefficients = spec.coefficients * 1.01
    ensemble = ACECalculator([first, second], local_active_set=local_labels)
    single = ACECalculator(first, local_active_set=local_labels)
    for atoms in cu_frames(2, 0.2, 70, vacancy=True):
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = ensemble, single
        a.get_forces()
        b.get_forces()
        assert np.array_equal(ensemble.results["gamma_local"], single.results["gamma_local"])
        assert np.array_equal(ensemble.results["gamma_cluster"], single.results["gamma_cluster"])
        assert ensemble.results["forces_dev"].max() > 0          # a real ensemble (members differ)
