"""UQ metrics (ranking, calibration, novelty detection), the error calibration map and the
``ace-uq uq-report`` command."""
import itertools
import json
import math

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from scipy import special

from ace_uq_calc.report import metrics as m
from ace_uq_calc.uncertainty.calibration import ErrorCalibration, fit_error_calibration

# ---- metrics against brute force ---------------------------------------------------------------------

def _auc_brute(neg, pos):
    wins = 0.0
    for p, q in itertools.product(pos, neg):
        wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_pair_counting_with_ties(seed):
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, 6, size=37).astype(float)        # many ties
    pos = rng.integers(2, 9, size=23).astype(float)
    assert m.roc_auc(neg, pos) == pytest.approx(_auc_brute(neg, pos), abs=1e-12)


def test_roc_auc_extremes_and_curve_area():
    assert m.roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert m.roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert m.roc_auc([1, 1], [1, 1, 1]) == 0.5
    rng = np.random.default_rng(5)
    neg, pos = rng.normal(size=300), rng.normal(0.7, size=200)
    fpr, tpr, _ = m.roc_curve(neg, pos)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(m.roc_auc(neg, pos), abs=1e-12)
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        m.roc_auc([], [1.0])


def test_spearman_is_rank_pearson():
    rng = np.random.default_rng(1)
    u = rng.lognormal(size=50)
    e = u ** 2 + rng.normal(scale=0.5, size=50)
    ru, re = np.argsort(np.argsort(u)), np.argsort(np.argsort(e))
    assert m.spearman(u, e) == pytest.approx(np.corrcoef(ru, re)[0, 1], abs=1e-12)
    assert m.spearman(u, np.exp(u)) == pytest.approx(1.0)
    assert math.isnan(m.spearman([1, 1, 1, 1], [1, 2, 3, 4]))


def test_gaussian_coverage_and_miscalibration_area():
    rng = np.random.default_rng(2)
    sigma = rng.uniform(0.01, 0.5, size=200_000)
    err = rng.normal(size=sigma.size) * sigma
    cov = m.gaussian_coverage(err, sigma)
    for k, (observed, expected) in cov.items():
        assert expected == pytest.approx(special.erf(k / math.sqrt(2)))
        assert observed == pytest.approx(expected, abs=0.005)
    assert m.miscalibration_area(err, sigma) < 0.005
    over_confident = m.miscalibration_area(err, sigma / 10)
    under_confident = m.miscalibration_area(err, sigma * 10)
    assert over_confident > 0.3 and under_confident > 0.3


def test_error_by_bin_and_flagged_fraction():
    u = np.array([0.5, 0.9, 1.5, 3.0, 12.0, 40.0])
    e = np.array([0.01, 0.02, 0.03, 0.04, 0.5, 1.0])
    edges = m.log_bins(u, per_decade=1)
    assert edges[0] <= 0.5 and edges[-1] >= 40.0
    rows = m.error_by_bin(u, e, edges)
    assert sum(r["count"] for r in rows) == len(u)
    assert rows[-1]["mean"] == pytest.approx(np.mean(e[u >= edges[-2]]))
    assert m.flagged_fraction(u, 1.0) == pytest.approx(4 / 6)
    assert m.flagged_fraction(u, 5.0) == pytest.approx(2 / 6)


# ---- error calibration ------------------------------------------------------------------------------

def _power_law_data(n=20_000, seed=3):
    rng = np.random.default_rng(seed)
    u = 10 ** rng.uniform(-1, 1.5, size=n)
    true_rms = 0.02 * u ** 0.8
    # error norm of a 3-d Gaussian vector with per-component sigma s has RMS sqrt(3) s
    err = np.linalg.norm(rng.normal(size=(n, 3)), axis=1) * true_rms / math.sqrt(3)
    return u, err


def test_calibration_recovers_a_power_law_and_extrapolates_monotonically():
    u, err = _power_law_data()
    cal = fit_error_calibration(u, err, "gamma")
    grid = 10 ** np.linspace(-0.8, 1.3, 30)
    assert np.allclose(cal.predict(grid), 0.02 * grid ** 0.8, rtol=0.15)
    assert cal.tail_slope == pytest.approx(0.8, abs=0.1)
    far = cal.predict([1e2, 1e3, 1e4])
    assert np.all(np.diff(far) > 0)
    assert np.all(np.diff(cal.predict(10 ** np.linspace(-3, 4, 200))) >= 0)


def test_calibration_is_monotone_even_for_decreasing_data(tmp_path):
    rng = np.random.default_rng(4)
    u = 10 ** rng.uniform(0, 2, size=5000)
    err = 1.0 / u * rng.uniform(0.5, 1.5, size=u.size)          # error falls with u: a useless measure
    cal = fit_error_calibration(u, err, "forces_dev")
    values = cal.predict(10 ** np.linspace(-1, 3, 100))
    assert np.all(np.diff(values) >= -1e-15) and cal.tail_slope == 0.0
    path = tmp_path / "cal.json"
    cal.save(path)
    back = ErrorCalibration.load(path)
    assert back.measure == "forces_dev"
    assert np.array_equal(back.predict(u), cal.predict(u))


def test_calibration_bad_input_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="unknown uncertainty measure"):
        fit_error_calibration([1.0] * 50, [0.1] * 50, "temperature")
    with pytest.raises(ValueError, match="at least 20 atoms"):
        fit_error_calibration([1.0] * 5, [0.1] * 5, "gamma")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not an error-calibration file"):
        ErrorCalibration.load(bad)
    bad.write_text(json.dumps({"format": "ace_uq_calc error calibration", "version": 1, "measure": "gamma",
                               "log_u": [0, 1], "log_error": [0.0, -1.0], "counts": [5, 5], "tail_slope": 0}))
    with pytest.raises(ValueError, match="must not decrease"):
        ErrorCalibration.load(bad)


def test_calculator_returns_the_calibrated_error_estimate(tmp_path):
    from ace_uq_calc import ACECalculator
    from ace_uq_calc.demo import example_files

    pot, asi = example_files()
    u, err = _power_law_data(n=2000)
    cal = fit_error_calibration(u, err, "gamma")
    path = tmp_path / "cal.json"
    cal.save(path)
    atoms = bulk("Cu", "fcc", a=3.63, cubic=True).repeat(2)
    atoms.rattle(0.15, seed=1)
    atoms.calc = ACECalculator(pot, active_set=asi, error_calibration=path)
    atoms.get_forces()
    estimate = atoms.calc.get_property("forces_error_estimate")
    assert "forces_error_estimate" in ACECalculator.implemented_properties
    assert np.array_equal(estimate, cal.predict(atoms.calc.results["gamma"]))
    no_gamma = ACECalculator(pot, error_calibration=path)          # no active set: gamma unavailable
    atoms.calc = no_gamma
    from ase.calculators.calculator import PropertyNotImplementedError
    with pytest.raises(PropertyNotImplementedError, match="maps 'gamma'"):
        no_gamma.get_property("forces_error_estimate", atoms)


# ---- the report end to end ----------------------------------------------------------------------------

def _emt_labelled(atoms_list):
    out = []
    for atoms in atoms_list:
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


def test_uq_report_cli_end_to_end(tmp_path):
    from ace_uq_calc.cli import main
    from ace_uq_calc.demo import example_files

    pot, asi = example_files()
    rng = np.random.default_rng(0)
    test = []
    for k in range(6):
        a = bulk("Cu", "fcc", a=3.63 * (1 + 0.01 * rng.normal()), cubic=True).repeat((2, 2, 2))
        a.rattle(0.03, seed=k)
        a.info["config_type"] = "bulk"
        test.append(a)
    novel = []
    for k in range(4):              # strongly compressed and distorted: far from the training data
        a = bulk("Cu", "fcc", a=3.0, cubic=True).repeat((2, 2, 2))
        a.rattle(0.25, seed=10 + k)
        novel.append(a)
    ase.io.write(tmp_path / "test.xyz", _emt_labelled(test))
    ase.io.write(tmp_path / "squeezed.xyz", _emt_labelled(novel))
    out = tmp_path / "report"
    rc = main(["uq-report", "--potential", pot, "--active-set", asi, "--test", str(tmp_path / "test.xyz"),
               "--novel", str(tmp_path / "squeezed.xyz"), "--calibrate", "gamma", "-o", str(out), "--quiet"])
    assert rc == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["test"]["atoms"] == 6 * 32
    auc = result["novel"]["squeezed"]["measures"]["gamma"]["auc_atom"]
    assert auc > 0.95                   # every squeezed atom is far outside the training polytope
    assert result["novel"]["squeezed"]["measures"]["gamma"]["detect_atoms_flag"] > 0.9
    text = (out / "report.md").read_text()
    assert "Novelty detection" in text and "squeezed" in text
    for png in ("parity_forces.png", "error_vs_gamma.png", "roc_atoms.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cal = ErrorCalibration.load(out / "error_calibration.json")
    assert cal.measure == "gamma"
