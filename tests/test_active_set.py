"""Active sets: grades against pyace's fixtures, MaxVol / streaming selection, the .asi file, atomic writes.

Reference values come from the pacemaker fixtures or from independent numpy computations
(np.linalg.inv, np.linalg.slogdet), never from the code under test.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np
import pytest
from conftest import FIXTURES, require_shared

from ace_uq_calc.atomic_io import atomic_write
from ace_uq_calc.uncertainty.active_set import ActiveSet, build_active_set_from_projections, companion_path
from ace_uq_calc.uncertainty.maxvol import AceUqWarning, maxvol
from ace_uq_calc.uncertainty.subspace_selection import rank_tolerance, select_subspace_active_set
from ace_uq_calc.uncertainty.thresholds import GradeDistribution
from ace_uq_calc.uncertainty.grades import extrapolation_grade, gamma_amplification

TOLERANCE = 1.001

# (reference archive, .asi file, projection key, gamma key, kappa key, nfunc, ndensity, non-linear?)
FIXTURE_CASES = [
    ("Cu_fs500", "Cu_fs500.asi", "projections", "gamma", "gamma_amplification",
     {"Cu": 500}, {"Cu": 2}, False),
    ("AlNi_fs", "AlNi_fs.asi", "projections", "gamma", "gamma_amplification",
     {"Al": 110, "Ni": 110}, {"Al": 2, "Ni": 2}, False),
    ("AlNi_fs", "AlNi_fs_nonlinear.asi", "projections_nonlinear", "gamma_nonlinear",
     "gamma_nonlinear_amplification", {"Al": 110, "Ni": 110}, {"Al": 2, "Ni": 2}, True),
    ("W_defect", "W_defect.asi", "projections", "gamma", "gamma_amplification", {"W": 72}, {"W": 8}, False),
]


def numpy_grades(x, active_rows):
    """Independent reference: gamma = max_j |(x inv(A))_j|."""
    return np.max(np.abs(x @ np.linalg.inv(active_rows)), axis=1)


def random_projections(rng, n_rows=2000, m=30):
    """Correlated, heavy-tailed but well-conditioned random 'projections'."""
    mixing = np.eye(m) + 0.3 * rng.normal(size=(m, m))
    return rng.standard_t(df=5, size=(n_rows, m)) @ mixing


def batches_of(x, size):
    return lambda: (x[start:start + size] for start in range(0, x.shape[0], size))


# ---------------------------------------------------------------------------------------------------
# grades against pyace
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", FIXTURE_CASES, ids=lambda c: c[1])
def test_grades_match_pyace_fixtures(case):
    reference, asi_name, x_key, gamma_key, kappa_key, nfunc, ndensity, nonlinear = case
    z = np.load(require_shared(FIXTURES / f"{reference}_reference.npz"))
    active_set = ActiveSet.load(require_shared(FIXTURES / asi_name), nfunc_per_element=nfunc,
                                ndensity_per_element=ndensity)
    assert active_set.nonlinear is nonlinear
    elements = [str(e) for e in z["elements"]]
    assert sorted(active_set.elements) == sorted(elements)
    checked = 0
    for k in range(int(z["n_structures"])):
        p = f"s{k:02d}_"
        species, x_all = z[p + "species_index"], z[p + x_key]
        gamma_ref, kappa_ref = z[p + gamma_key], z[p + kappa_key]
        for e, element in enumerate(elements):
            mine = species == e
            width = active_set.inverse[element].shape[0]
            x = x_all[mine]
            assert not np.any(x[:, width:]), "fixture padding beyond the element's width must be zero"
            gamma = active_set.grades(element, x[:, :width])
            bound = 1e-12 * kappa_ref[mine] * gamma_ref[mine] + 1e-12
            assert np.all(np.abs(gamma - gamma_ref[mine]) <= bound), (k, element)
            kappa = gamma_amplification(x[:, :width], active_set.inverse[element])
            assert np.allclose(kappa, kappa_ref[mine], rtol=1e-6, atol=1e-9), (k, element)
            checked += int(mine.sum())
    assert checked > 0


# ---------------------------------------------------------------------------------------------------
# grades on random data
# ---------------------------------------------------------------------------------------------------

def test_grades_equal_independent_numpy_evaluation():
    rng = np.random.default_rng(1)
    m = 30
    q, _ = np.linalg.qr(rng.normal(size=(m, m)))
    active_rows = q * rng.uniform(0.5, 2.0, size=m)          # cond <= 4
    x = rng.normal(size=(200, m))
    expected = numpy_grades(x, active_rows)
    got = ActiveSet({"Cu": np.linalg.inv(active_rows)}).grades("Cu", x)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(numpy_grades(active_rows, active_rows), 1.0, atol=1e-12)
    assert extrapolation_grade(np.zeros((3, m)), np.linalg.inv(active_rows)).tolist() == [0.0, 0.0, 0.0]
    assert extrapolation_grade(np.zeros((0, m)), np.eye(m)).shape == (0,)
    with pytest.raises(ValueError, match="width"):
        extrapolation_grade(np.zeros((2, m + 1)), np.eye(m))


# ---------------------------------------------------------------------------------------------------
# MaxVol and streaming selection
# ---------------------------------------------------------------------------------------------------

def test_maxvol_increases_volume_monotonically():
    rng = np.random.default_rng(2)
    x = random_projections(rng, n_rows=400, m=20)
    initial = rng.choice(400, size=20, replace=False)
    log_volumes = []
    for iterations in range(0, 60, 3):
        selected, _ = maxvol(x, TOLERANCE, max_iterations=iterations, initial=initial)
        log_volumes.append(np.linalg.slogdet(x[selected])[1])
    steps = np.diff(log_volumes)
    assert np.all(steps >= -1e-9)
    assert log_volumes[-1] > log_volumes[0] + 1.0
    selected, coefficient_max = maxvol(x, TOLERANCE, initial=initial)
    assert len(set(selected.tolist())) == 20
    b = x @ np.linalg.inv(x[selected])
    assert np.max(np.abs(b)) <= TOLERANCE + 1e-9
    assert abs(coefficient_max - np.max(np.abs(b))) <= 1e-9
    assert np.linalg.slogdet(x[selected])[1] >= log_volumes[-1] - 1e-9


@pytest.mark.parametrize("batch_size", [7, 29, 30, 250, 2000])
@pytest.mark.parametrize("memory_budget", [0.0, 1e9])
def test_streaming_selection_bounds_training_grades(batch_size, memory_budget):
    rng = np.random.default_rng(3)
    x = random_projections(rng)
    result = select_subspace_active_set(batches_of(x, batch_size), 30, tolerance=TOLERANCE,
                                        memory_budget=memory_budget)
    assert result.rank == 30 and result.rows.shape == (30, 30) and result.converged
    assert result.source_reads == (1 if memory_budget else 1 + result.passes)
    for row in result.rows:                          # every active row is a training row
        assert np.any(np.all(x == row, axis=1))
    np.testing.assert_allclose(numpy_grades(result.rows, result.rows), 1.0, atol=1e-9)
    assert numpy_grades(x, result.rows).max() <= TOLERANCE + 1e-9
    # full rank: the grading operator is the inverse of the active rows (pacemaker's gamma)
    np.testing.assert_allclose(result.operator, np.linalg.inv(result.rows), rtol=0,
                               atol=1e-9 * np.abs(result.operator).max())


def test_selection_independent_of_batching_and_equal_to_unstreamed_maxvol_up_to_tolerance():
    rng = np.random.default_rng(3)
    x = random_projections(rng)
    selections = [select_subspace_active_set(batches_of(x, size), 30, TOLERANCE).rows for size in (7, 250, 2000)]
    unstreamed, _ = maxvol(x, TOLERANCE)
    selections.append(x[unstreamed])
    volumes = [np.linalg.slogdet(rows)[1] for rows in selections]
    for a in selections:
        for b in selections:
            assert numpy_grades(a, b).max() <= TOLERANCE + 1e-9
    # a = C b with |C_ij| <= tolerance, so Hadamard's inequality gives |det a| <= (sqrt(m) tol)^m |det b|
    assert max(volumes) - min(volumes) <= 30 * np.log(np.sqrt(30) * TOLERANCE) + 1e-9


def test_selection_converges_in_few_passes():
    rng = np.random.default_rng(13)
    x = random_projections(rng, n_rows=20000, m=60)
    result = select_subspace_active_set(batches_of(x, 4096), 60, TOLERANCE)
    assert result.converged and result.passes <= 3 and result.source_reads == 1, result.passes
    assert numpy_grades(x, result.rows).max() <= TOLERANCE + 1e-9


def test_maxvol_rejects_rank_deficient_matrix_and_bad_input():
    rng = np.random.default_rng(12)
    low_rank = rng.normal(size=(100, 4)) @ rng.normal(size=(4, 8))
    with pytest.raises(np.linalg.LinAlgError, match="rank deficient"):
        maxvol(low_rank)
    with pytest.raises(ValueError):
        maxvol(rng.normal(size=(5, 8)))
    with pytest.raises(ValueError):
        maxvol(rng.normal(size=(20, 8)), initial=[0, 0, 1, 2, 3, 4, 5, 6])


def test_unconverged_selection_warns():
    rng = np.random.default_rng(3)
    x = random_projections(rng)
    with pytest.warns(AceUqWarning, match=r"did not converge within 1 MaxVol pass\(es\)"):
        select_subspace_active_set(batches_of(x, 50), 30, TOLERANCE, max_passes=1)


def test_selection_accepts_sequences_and_one_shot_iterators():
    rng = np.random.default_rng(4)
    x = random_projections(rng, n_rows=600, m=12)
    as_list = [x[i:i + 100] for i in range(0, 600, 100)]
    rows = select_subspace_active_set(as_list, tolerance=TOLERANCE).rows
    assert numpy_grades(x, rows).max() <= TOLERANCE + 1e-9
    one_shot = select_subspace_active_set(iter(as_list), tolerance=TOLERANCE).rows
    assert one_shot.shape == (12, 12) and numpy_grades(x, one_shot).max() <= TOLERANCE + 1e-9


def test_rank_deficient_data_grade_in_the_subspace_plus_distance():
    """Data of rank 10 in 30 functions: the rank is found, training rows stay within the tolerance,
    an environment inside the span gets the grade of its coordinates in the active rows (independent
    numpy: least squares on the active rows), and one outside the span a grade that rises linearly
    with its distance from the span. The grades are finite: no 'condition number inf'."""
    rng = np.random.default_rng(7)
    span = rng.normal(size=(10, 30))
    x = rng.normal(size=(2000, 10)) @ span
    active_set = build_active_set_from_projections({"W": x}, tolerance=TOLERANCE, batch_size=128)
    assert active_set.ranks["W"] == 10 and np.isfinite(active_set.condition_numbers["W"])
    assert active_set.distance_columns["W"].shape == (30, 20)
    assert active_set.grades("W", x).max() <= TOLERANCE + 1e-9
    rows = active_set.active_projections["W"]
    inside = rng.normal(size=(50, 10)) @ span
    coefficients = np.linalg.lstsq(rows.T, inside.T, rcond=None)[0].T      # inside = c @ rows
    np.testing.assert_allclose(active_set.grades("W", inside), np.abs(coefficients).max(axis=1), rtol=1e-8)
    normal = np.linalg.svd(span)[2][-1]                                    # a direction outside the span
    base = inside[:1]
    grades = [active_set.grades("W", base + eps * normal)[0] for eps in (0.0, 1e-3, 1e-2, 1e-1, 1.0, 1e2, 1e3)]
    assert grades[0] <= grades[1] <= grades[2] < grades[3] < grades[4] < grades[5] < grades[6]
    assert grades[6] / grades[5] == pytest.approx(10.0, rel=1e-2)      # linear far outside the span
    # pacemaker's view (the .asi alone) sees only the subspace grade
    assert np.abs((base + 1e3 * normal) @ active_set.inverse["W"]).max() < 0.5 * grades[6]
    # fewer environments than functions: still finite
    small = build_active_set_from_projections({"W": rng.normal(size=(12, 30))})
    assert small.ranks["W"] == 12 and np.all(np.isfinite(small.grades("W", rng.normal(size=(5, 30)))))


def test_rank_decision_is_scale_free():
    """Columns of very different scales (1 .. 1e-10) are still resolved: the rank decision is made on
    column-equilibrated data, like MaxVol itself is scale free."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(500, 12)) * np.logspace(0, -10, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AceUqWarning)
        active_set = build_active_set_from_projections({"Cu": x}, tolerance=TOLERANCE)
    assert active_set.ranks["Cu"] == 12
    assert active_set.grades("Cu", x).max() <= TOLERANCE + 1e-6
    assert rank_tolerance(12) == pytest.approx(10 * np.sqrt(12 * np.finfo(float).eps))


def test_build_active_set_from_arrays():
    rng = np.random.default_rng(5)
    data = {"Al": random_projections(rng, 700, 16), "Ni": random_projections(rng, 500, 16)}
    active_set = build_active_set_from_projections(data, tolerance=TOLERANCE, batch_size=64)
    assert active_set.nonlinear is False
    for element, x in data.items():
        rows = active_set.active_projections[element]
        asi = active_set.inverse[element]
        assert asi.flags["C_CONTIGUOUS"] and asi.dtype == np.float64
        np.testing.assert_allclose(asi, np.linalg.inv(rows), rtol=0, atol=1e-10 * np.abs(asi).max())
        assert active_set.grades(element, x).max() <= TOLERANCE + 1e-9
        scale = np.linalg.norm(x, axis=0)          # conditioning in column-equilibrated coordinates
        assert active_set.condition_numbers[element] == pytest.approx(np.linalg.cond(rows / scale), rel=1e-8)


def test_progress_bar_goes_to_stderr(capsys):
    rng = np.random.default_rng(6)
    build_active_set_from_projections({"W": random_projections(rng, 300, 8)}, batch_size=50, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "W: 100%" in captured.err and "300/300" in captured.err and "pass " in captured.err


def test_well_conditioned_build_does_not_warn():
    rng = np.random.default_rng(9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AceUqWarning)
        build_active_set_from_projections({"Cu": random_projections(rng, 300, 10)})


def test_empty_or_non_finite_training_data_raise():
    with pytest.raises(ValueError, match="no training projections"):
        build_active_set_from_projections({"Cu": np.zeros((0, 5))})
    bad = np.ones((20, 5))
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        build_active_set_from_projections({"Cu": bad})


# ---------------------------------------------------------------------------------------------------
# the .asi file
# ---------------------------------------------------------------------------------------------------

def test_save_load_round_trip_is_bit_identical(tmp_path):
    rng = np.random.default_rng(10)
    inverse = {"Al": rng.normal(size=(6, 6)), "Ni": np.asfortranarray(rng.normal(size=(6, 6)))}
    path = tmp_path / "pot.asi"
    ActiveSet(inverse).save(path)
    loaded = ActiveSet.load(path, nfunc_per_element={"Al": 6, "Ni": 6})
    for element, matrix in inverse.items():
        assert loaded.inverse[element].tobytes() == np.ascontiguousarray(matrix).tobytes()
    with np.load(path, allow_pickle=False) as plain:
        assert sorted(plain.files) == ["Al", "Ni"]
        for element in plain.files:
            member = plain[element]
            assert member.dtype == np.dtype("<f8") and member.flags["C_CONTIGUOUS"]
            assert not member.flags["F_CONTIGUOUS"]
            assert np.array_equal(member, inverse[element])
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    assert not [p for p in tmp_path.iterdir() if p.name != "pot.asi"], "temporary file left behind"


def test_companion_file_round_trip_and_integrity(tmp_path):
    """A rank-deficient set with a grade distribution: the .asi stays pacemaker's layout (one square member
    per element), the rest goes to the companion file; reading both gives the same grades and thresholds;
    an altered companion, or an .asi replaced after both were written, is refused naming the file."""
    rng = np.random.default_rng(14)
    x = rng.normal(size=(800, 6)) @ rng.normal(size=(6, 15))
    distribution = GradeDistribution.from_grades(rng.lognormal(-1.0, 0.5, 500), 50)
    active_set = build_active_set_from_projections({"W": x}, grade_distribution=distribution)
    path = tmp_path / "pot.asi"
    active_set.save(path)
    with np.load(path, allow_pickle=False) as plain:
        assert plain.files == ["W"] and plain["W"].shape == (15, 15)
    loaded = ActiveSet.load(path, nfunc_per_element={"W": 15})
    probe = rng.normal(size=(20, 15))
    assert np.array_equal(loaded.grades("W", probe), active_set.grades("W", probe))
    assert loaded.ranks == {"W": 6} and loaded.thresholds(100) == active_set.thresholds(100)
    assert loaded.info["W"]["rank"] == 6
    companion = companion_path(path)
    original = open(companion, "rb").read()
    members = dict(np.load(companion, allow_pickle=False))
    members["W.distance_columns"] = members["W.distance_columns"] * 2
    with open(companion, "wb") as handle:
        np.savez(handle, **members)
    with pytest.raises(ValueError, match=r"pot\.asi\.uq\.npz: checksum mismatch"):
        ActiveSet.load(path, nfunc_per_element={"W": 15})
    with open(companion, "wb") as handle:
        handle.write(original)
    ActiveSet({"W": np.eye(15)}).save(tmp_path / "other.asi")
    os.replace(tmp_path / "other.asi", path)                        # the .asi replaced, the companion kept
    with pytest.raises(ValueError, match=r"belongs to another active set"):
        ActiveSet.load(path, nfunc_per_element={"W": 15})
    ActiveSet({"W": np.eye(15)}).save(path)                         # saving without extras removes it
    assert not os.path.exists(companion) and ActiveSet.load(path).thresholds(10) is None


@pytest.mark.parametrize("n_atoms", [1, 9, 100, 2000])
def test_thresholds_reproduce_their_target_rates_on_synthetic_grades(n_atoms):
    """Per-atom grades drawn from a known distribution (log-normal body, Pareto-like tail); thresholds from
    40 000 held-out atoms; then 200 000 / n_atoms-sized fresh structures of the same distribution: the
    fractions above the flag and halt thresholds match 1 % and 0.1 % within the binomial noise (and the
    tail model's error for the far quantiles of large structures)."""
    rng = np.random.default_rng(15)

    def draw(size):
        return rng.lognormal(-1.0, 0.6, size) * (1.0 + rng.pareto(4.0, size) * (rng.random(size) < 0.2))

    distribution = GradeDistribution.from_grades(draw(40000), 4000)
    flag, halt = distribution.thresholds(n_atoms)
    assert flag >= 1.0 and halt >= flag
    n_structures = 400_000 // max(n_atoms, 1) if n_atoms < 100 else 4000
    maxima = draw((n_structures, n_atoms)).max(axis=1)
    flagged, halted = (maxima > flag).mean(), (maxima > halt).mean()
    if flag > 1.0:                              # (a threshold at the floor of 1 flags fewer)
        assert flagged == pytest.approx(0.01, rel=0.35), (flag, flagged)
    assert halted <= 0.002 + 3 * np.sqrt(0.001 / n_structures), (halt, halted)
    assert distribution.thresholds(10 * n_atoms)[0] >= flag              # larger structures: higher


def test_pacemaker_file_round_trip(tmp_path):
    source = require_shared(FIXTURES / "AlNi_fs.asi")
    active_set = ActiveSet.load(source, nfunc_per_element={"Al": 110, "Ni": 110})
    active_set.save(tmp_path / "copy.asi")
    with np.load(source) as original, np.load(tmp_path / "copy.asi") as copy:
        assert sorted(original.files) == sorted(copy.files)
        for element in original.files:
            assert original[element].tobytes() == copy[element].tobytes()


def test_compressed_archive_is_readable(tmp_path):
    rng = np.random.default_rng(11)
    matrix = rng.normal(size=(4, 4))
    with open(tmp_path / "c.asi", "wb") as handle:
        np.savez_compressed(handle, Cu=matrix)
    loaded = ActiveSet.load(tmp_path / "c.asi", nfunc_per_element={"Cu": 4})
    assert np.array_equal(loaded.inverse["Cu"], matrix)


def test_linear_or_nonlinear_detected_from_sizes(tmp_path):
    path = require_shared(FIXTURES / "AlNi_fs_nonlinear.asi")
    nfunc, ndensity = {"Al": 110, "Ni": 110}, {"Al": 2, "Ni": 2}
    assert ActiveSet.load(path, nfunc, ndensity).nonlinear is True
    assert ActiveSet.load(path, nfunc).nonlinear is True
    with pytest.raises(ValueError, match=r"AlNi_fs_nonlinear\.asi.*'Al'.*220x220.*100"):
        ActiveSet.load(path, {"Al": 100, "Ni": 110}, ndensity)
    mixed = tmp_path / "mixed.asi"
    _savez(mixed, Al=np.eye(3), Ni=np.eye(6))
    with pytest.raises(ValueError, match=r"mixed\.asi.*mix linear and non-linear"):
        ActiveSet.load(mixed, {"Al": 3, "Ni": 3}, {"Al": 2, "Ni": 2})


def _savez(path, **arrays):
    """np.savez to exactly ``path`` (np.savez given a name would append .npz)."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize("kind", ["text", "single_npy", "missing_element", "wrong_size", "non_square",
                                  "nan", "strings"])
def test_malformed_files_raise_value_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"bad_{kind}.asi"
    nfunc = {"Al": 3, "Ni": 3}
    if kind == "text":
        path.write_text("this is not an npz archive\n")
    elif kind == "single_npy":
        with open(path, "wb") as handle:
            np.save(handle, np.eye(3))
    elif kind == "missing_element":
        _savez(path, Al=np.eye(3))
    elif kind == "wrong_size":
        _savez(path, Al=np.eye(3), Ni=np.eye(4))
    elif kind == "non_square":
        _savez(path, Al=np.eye(3), Ni=np.ones((3, 2)))
    elif kind == "nan":
        broken = np.eye(3)
        broken[1, 2] = np.nan
        _savez(path, Al=np.eye(3), Ni=broken)
    elif kind == "strings":
        _savez(path, Al=np.eye(3), Ni=np.array([["a"] * 3] * 3))
    with pytest.raises(ValueError, match=rf"bad_{kind}\.asi") as info:
        ActiveSet.load(path, nfunc_per_element=nfunc)
    if kind in ("missing_element", "wrong_size", "non_square", "nan", "strings"):
        assert "'Ni'" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# atomic writing
# ---------------------------------------------------------------------------------------------------

def test_atomic_write_keeps_old_file_on_exception(tmp_path):
    target = tmp_path / "out.dat"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write(b"partial new")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.dat"]


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    with atomic_write(target, "w") as handle:
        handle.write("new text\n")
    assert target.read_text() == "new text\n"
    assert (os.stat(target).st_mode & 0o777) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_write(tmp_path / "fresh.bin") as handle:
        handle.write(b"x")
    assert (tmp_path / "fresh.bin").read_bytes() == b"x"
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "appended.bin", "ab"):
            pass


_WRITER = textwrap.dedent("""
    import sys, time
    from ace_uq_calc.atomic_io import atomic_write
    target, n_chunks = sys.argv[1], int(sys.argv[2])
    with atomic_write(target) as handle:
        for i in range(n_chunks):
            handle.write(bytes([i % 251]) * 65536)
            if i == 0:
                print("writing", flush=True)
            time.sleep(0.002)
    print("done", flush=True)
""")

_CHUNKS = 200   # 12.5 MiB, about 0.5 s of writing


def _expected_content():
    return b"".join(bytes([i % 251]) * 65536 for i in range(_CHUNKS))


def _run_writer(target):
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(_CHUNKS)],
                            stdout=subprocess.PIPE, text=True)


def test_sigkill_while_writing_leaves_old_or_complete_file(tmp_path):
    target = tmp_path / "big.dat"
    target.write_bytes(b"old")
    expected = _expected_content()
    killed_midway = 0
    for delay in (0.0, 0.05, 0.15):
        process = _run_writer(target)
        assert process.stdout.readline().strip() == "writing"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        content = target.read_bytes()
        assert content in (b"old", expected)
        strays = [p for p in tmp_path.iterdir() if p.name != "big.dat"]
        if content == b"old":
            killed_midway += 1
            assert strays, "a kill during writing leaves its temporary file, never a partial target"
        for stray in strays:
            stray.unlink()
    assert killed_midway >= 1
    process = _run_writer(target)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and out.split() == ["writing", "done"]
    assert target.read_bytes() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["big.dat"]
