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
from ace_uq_calc.uncertainty.active_set import (
    AceUqWarning,
    ActiveSet,
    build_active_set_from_projections,
    maxvol,
    select_active_set_streaming,
)
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
def test_streaming_selection_bounds_training_grades(batch_size):
    rng = np.random.default_rng(3)
    x = random_projections(rng)
    rows = select_active_set_streaming(batches_of(x, batch_size), 30, tolerance=TOLERANCE)
    assert rows.shape == (30, 30)
    # every active row is a training row
    for row in rows:
        assert np.any(np.all(x == row, axis=1))
    np.testing.assert_allclose(numpy_grades(rows, rows), 1.0, atol=1e-9)
    assert numpy_grades(x, rows).max() <= TOLERANCE + 1e-9


def test_selection_independent_of_batching_up_to_tolerance():
    rng = np.random.default_rng(3)
    x = random_projections(rng)
    selections = [select_active_set_streaming(batches_of(x, size), 30, TOLERANCE) for size in (7, 250, 2000)]
    volumes = [np.linalg.slogdet(rows)[1] for rows in selections]
    for a in selections:
        for b in selections:
            assert numpy_grades(a, b).max() <= TOLERANCE + 1e-9
    # a = C b with |C_ij| <= tolerance, so Hadamard's inequality gives |det a| <= (sqrt(m) tol)^m |det b|
    assert max(volumes) - min(volumes) <= 30 * np.log(np.sqrt(30) * TOLERANCE) + 1e-9


def test_maxvol_rejects_rank_deficient_matrix_and_bad_input():
    rng = np.random.default_rng(12)
    low_rank = rng.normal(size=(100, 4)) @ rng.normal(size=(4, 8))
    with pytest.raises(np.linalg.LinAlgError, match="rank deficient"):
        maxvol(low_rank)
    with pytest.raises(ValueError):
        maxvol(rng.normal(size=(5, 8)))
    with pytest.raises(ValueError):
        maxvol(rng.normal(size=(20, 8)), initial=[0, 0, 1, 2, 3, 4, 5, 6])


def test_unconverged_streaming_warns():
    rng = np.random.default_rng(3)
    x = random_projections(rng)
    with pytest.warns(AceUqWarning, match=r"did not converge within 1 pass\(es\)"):
        select_active_set_streaming(batches_of(x, 50), 30, TOLERANCE, max_passes=1)


def test_streaming_accepts_sequences_and_one_shot_iterators():
    rng = np.random.default_rng(4)
    x = random_projections(rng, n_rows=600, m=12)
    as_list = [x[i:i + 100] for i in range(0, 600, 100)]
    rows = select_active_set_streaming(as_list, tolerance=TOLERANCE)
    assert numpy_grades(x, rows).max() <= TOLERANCE + 1e-9
    one_shot = select_active_set_streaming(iter(as_list), tolerance=TOLERANCE)
    assert one_shot.shape == (12, 12)
    assert np.all(np.isfinite(numpy_grades(x, one_shot)))


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
        assert active_set.condition_numbers[element] == pytest.approx(np.linalg.cond(rows), rel=1e-8)


def test_progress_bar_goes_to_stderr(capsys):
    rng = np.random.default_rng(6)
    build_active_set_from_projections({"W": random_projections(rng, 300, 8)}, batch_size=50, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "W: 100%" in captured.err and "300/300" in captured.err and "pass " in captured.err


def test_rank_deficient_data_warns_and_stays_finite():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, 10)) @ rng.normal(size=(10, 30))     # rank 10 < m = 30
    with pytest.warns(AceUqWarning, match=r"10 of 30.*condition number"):
        rows = select_active_set_streaming(batches_of(x, 128), 30, TOLERANCE)
    assert np.all(np.isfinite(rows))
    with pytest.warns(AceUqWarning, match=r"condition number inf \([0-9.e+]+ on the spanned subspace\)"):
        active_set = build_active_set_from_projections({"W": x}, tolerance=TOLERANCE, batch_size=128)
    asi = active_set.inverse["W"]
    assert np.all(np.isfinite(asi))
    training_grades = active_set.grades("W", x)
    assert np.all(np.isfinite(training_grades)) and training_grades.max() <= TOLERANCE + 1e-9
    new_grades = active_set.grades("W", rng.normal(size=(50, 30)))
    assert np.all(np.isfinite(new_grades)) and np.all(new_grades > 0)
    # fewer environments than functions: still no crash
    with pytest.warns(AceUqWarning, match="12 of 30"):
        small = build_active_set_from_projections({"W": rng.normal(size=(12, 30))})
    assert np.all(np.isfinite(small.inverse["W"]))


def test_ill_conditioned_active_set_warns_with_condition_number():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(500, 12)) * np.logspace(0, -10, 12)
    with pytest.warns(AceUqWarning, match=r"ill-conditioned, condition number [0-9.]+e\+1[0-9]"):
        active_set = build_active_set_from_projections({"Cu": x}, tolerance=TOLERANCE)
    assert active_set.condition_numbers["Cu"] > 1e8
    assert active_set.grades("Cu", x).max() <= TOLERANCE + 1e-6


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
